"""netlens: look inside any PyTorch model.

Activation recorders, weight and activation grids, streaming activation statistics, deconvnet
projections (Zeiler & Fergus 2014), occlusion sensitivity and activation maximisation, for any
``nn.Module``, and an atlas of a model that puts them all together.
"""

from . import objectives
from ._atlas.api import atlas
from ._atlas.cards import Atlas, AtlasLayer, ChannelCard
from ._color import ColorStats, color_stats
from ._core.errors import (
    LayerNotFoundError,
    NetlensError,
    NetlensTypeError,
    NetlensValueError,
    NotRecordedError,
    UnsupportedModelError,
)
from ._core.layers import LayerSpec, find_layers
from ._deconvnet.project import Projection, deconvnet
from ._deconvnet.top import TopActivations, top_activations
from ._grid import ActivationGrid, FilterGrid
from ._maximize.api import Maximization, maximize_activation
from ._occlusion.api import OcclusionMap, occlusion
from ._record import Recorder, record
from ._stats import ActivationStats, ChannelStats, activation_stats
from ._version import __version__

__all__ = [
    "ActivationGrid",
    "ActivationStats",
    "Atlas",
    "AtlasLayer",
    "ChannelCard",
    "ChannelStats",
    "ColorStats",
    "FilterGrid",
    "LayerNotFoundError",
    "LayerSpec",
    "Maximization",
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
    "activation_stats",
    "atlas",
    "color_stats",
    "deconvnet",
    "find_layers",
    "maximize_activation",
    "objectives",
    "occlusion",
    "record",
    "top_activations",
]
