"""netlens: look inside any PyTorch model.

Activation recorders, weight and activation grids, streaming activation statistics, deconvnet
projections (Zeiler & Fergus 2014), occlusion sensitivity and activation maximisation, for any
``nn.Module``.
"""

from ._deconvnet import Projection, TopActivations, deconvnet, top_activations
from ._errors import (
    LayerNotFoundError,
    NetlensError,
    NetlensTypeError,
    NetlensValueError,
    NotRecordedError,
    UnsupportedModelError,
)
from ._layers import LayerSpec, find_layers
from ._occlusion import OcclusionMap, occlusion
from ._record import Recorder, record
from ._version import __version__

__all__ = [
    "LayerNotFoundError",
    "LayerSpec",
    "NetlensError",
    "NetlensTypeError",
    "NetlensValueError",
    "NotRecordedError",
    "OcclusionMap",
    "Projection",
    "Recorder",
    "TopActivations",
    "UnsupportedModelError",
    "__version__",
    "deconvnet",
    "find_layers",
    "occlusion",
    "record",
    "top_activations",
]
