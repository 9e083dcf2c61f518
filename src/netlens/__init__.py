"""netlens: look inside any PyTorch model.

Activation recorders, weight and activation grids, streaming activation statistics, deconvnet
projections (Zeiler & Fergus 2014), occlusion sensitivity and activation maximisation, for any
``nn.Module``.
"""

from ._errors import (
    LayerNotFoundError,
    NetlensError,
    NetlensTypeError,
    NetlensValueError,
    NotRecordedError,
    UnsupportedModelError,
)
from ._layers import find_layers
from ._record import Recorder, record
from ._version import __version__

__all__ = [
    "LayerNotFoundError",
    "NetlensError",
    "NetlensTypeError",
    "NetlensValueError",
    "NotRecordedError",
    "Recorder",
    "UnsupportedModelError",
    "__version__",
    "find_layers",
    "record",
]
