"""What an atlas holds: :class:`Atlas` of :class:`AtlasLayer` of :class:`ChannelCard`.

The tensors live once, per layer; a card is a view of one channel of them, made when asked for
(``atlas["conv2"][17]``). Every object shows itself in a notebook (``_repr_html_``, the same
markup as the site's pages, pictures inline) and draws with ``plot()``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._core.errors import LayerNotFoundError, NetlensTypeError, NetlensValueError, describe
from .._core.render import Plottable, figure_axes, set_title
from .._deconvnet.top import TopActivations
from .._stats import ChannelStats
from .histogram import Histogram, display
from .images import as_rgb, as_rgbs, fit, strip, to_image, to_images
from .inputs import Occluded

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "Atlas",
    "AtlasLayer",
    "ChannelCard",
    "features_rgb",
    "patches_rgb",
    "thumbnail",
    "weight_rgb",
]

# Thumbnails' shorter side in pixels: pictures are upscaled by whole pixels to at least this.
THUMBNAIL = 96
PATCH = 48


def patches_rgb(patches: torch.Tensor, *, projection: bool = False) -> np.ndarray:
    """Patches (each on its own range) or projections (centred at zero) as ``(k, H, W, 3)``."""
    cmap = "RdBu_r" if projection else "gray"
    return as_rgbs(to_images(patches), cmap=cmap, symmetric=projection)


def features_rgb(images: torch.Tensor) -> np.ndarray:
    """Feature visualisations (inputs) of a batch ``(k, *input)``, each on its own range."""
    return as_rgbs(to_images(images))


def weight_rgb(weights: torch.Tensor) -> np.ndarray:
    """A channel's weights as a picture: RGB for 3 input channels, else a diverging map."""
    picture = to_image(weights)
    if picture.dim() == 3:
        return as_rgb(picture)
    return as_rgb(picture, cmap="RdBu_r", symmetric=True)


@dataclass(frozen=True, eq=False)
class ChannelCard(Plottable):
    """One channel (unit) of a layer, as its page in the atlas shows it.

    Attributes:
        layer: The layer's name.
        channel: The channel's index in the layer.
        channels: How many channels the layer has (the card's neighbours are ``channel - 1``
            and ``channel + 1``).
        mean: Mean activation over the data (every input and position).
        std: Standard deviation of the activations.
        min: Smallest activation.
        max: Largest activation.
        zero_fraction: Fraction of activations exactly zero.
        count: Number of finite activations the statistics cover.
        dead: Whether every activation was zero.
        saturated: Whether the unit sat at a bound of its activation function (within 1% of
            its range) for at least 99% of the data; ``None`` for unbounded kinds.
        edges: Histogram bin edges from ``min`` to ``max`` (float64).
        counts: Activations per bin (float64: spread from finer bins, see
            :func:`netlens.atlas`).
        activations: The ``k`` strongest activations, strongest first (each at the input's
            strongest position); empty where the atlas has no data-set examples.
        indices: Their inputs' indices in the data.
        patches: The inputs under those activations' receptive fields, ``(k, *patch)``, or
            ``None``.
        projections: Their deconvnet projections, cut like the patches, or ``None``.
        feature: The feature visualisation (an input that excites the channel), or ``None``.
        diverse: Further, diverse feature visualisations ``(n, *input)``, or ``None``.
        weights: The channel's weights where they make a picture, or ``None``.
    """

    layer: str
    channel: int
    channels: int
    mean: float
    std: float
    min: float
    max: float
    zero_fraction: float
    count: int
    dead: bool
    saturated: bool | None
    edges: torch.Tensor
    counts: torch.Tensor
    activations: torch.Tensor
    indices: torch.Tensor
    patches: torch.Tensor | None
    projections: torch.Tensor | None
    feature: torch.Tensor | None
    diverse: torch.Tensor | None
    weights: torch.Tensor | None

    def __repr__(self) -> str:
        return (
            f"ChannelCard(layer={self.layer!r}, channel={self.channel}, mean={self.mean:.4g}, "
            f"max={self.max:.4g}, zero_fraction={self.zero_fraction:.3g}, "
            f"examples={int(self.activations.numel())})"
        )

    def pictures(self) -> dict[str, np.ndarray]:
        """The card's RGB pictures by name (only those it has), as its page shows them.

        ``"feature"``, ``"diverse"`` (a strip), ``"patches"`` and ``"projections"`` (strips of
        the ``k`` examples) and ``"weights"``.
        """
        pictures: dict[str, np.ndarray] = {}
        if self.feature is not None:
            pictures["feature"] = fit(features_rgb(self.feature[None])[0], THUMBNAIL)
            if self.diverse is not None and self.diverse.shape[0]:
                pictures["diverse"] = strip(list(fit(features_rgb(self.diverse), THUMBNAIL)), gap=4)
        if self.patches is not None and self.projections is not None and self.patches.shape[0]:
            pictures["patches"] = strip(list(fit(patches_rgb(self.patches), PATCH)), gap=2)
            projected = patches_rgb(self.projections, projection=True)
            pictures["projections"] = strip(list(fit(projected, PATCH)), gap=2)
        if self.weights is not None:
            pictures["weights"] = fit(weight_rgb(self.weights), PATCH)
        return pictures

    def mosaic(self) -> np.ndarray:
        """The card's pictures as one RGB array: visualisations, then patches, projections."""
        pictures = self.pictures()
        rows = [
            pictures[name] for name in ("feature", "patches", "projections") if name in pictures
        ]
        if "diverse" in pictures:  # beside the first visualisation
            rows[0] = _side_by_side(rows[0], pictures["diverse"])
        if not rows:
            return np.full((1, 1, 3), 255, dtype=np.uint8)
        width = max(row.shape[1] for row in rows)
        padded = [
            np.pad(row, ((0, 6), (0, width - row.shape[1]), (0, 0)), constant_values=255)
            for row in rows
        ]
        return np.concatenate(padded)[:-6]

    def plot(self, ax: Axes | None = None) -> tuple[Figure, Axes]:
        """Draw the card's pictures on one Axes.

        The first row shows the feature visualisation(s), the second the data-set patches of the
        strongest activations, the third their deconvnet projections (red positive, blue
        negative).

        Args:
            ax: An Axes to draw on; a new figure when ``None``.

        Returns:
            ``(Figure, Axes)``.
        """
        picture = self.mosaic()
        height, width = picture.shape[:2]
        figure, axes = figure_axes(ax, width=2 + width / 60, height=1 + height / 60)
        axes.imshow(picture, interpolation="nearest")
        axes.set_axis_off()
        set_title(
            axes,
            f"layer {self.layer!r}, channel {self.channel}: mean {self.mean:.3g}, "
            f"max {self.max:.3g}, zero {100 * self.zero_fraction:.0f}%",
            fontsize=9,
        )
        return figure, axes

    def _repr_html_(self) -> str:
        from .site import card_html

        return card_html(self)


def _side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Two RGB pictures in a row, top-aligned, white around them."""
    height = max(left.shape[0], right.shape[0])
    row = np.full((height, left.shape[1] + gap + right.shape[1], 3), 255, dtype=np.uint8)
    row[: left.shape[0], : left.shape[1]] = left
    row[: right.shape[0], left.shape[1] + gap :] = right
    return row


@dataclass(frozen=True, eq=False)
class AtlasLayer(Mapping[int, ChannelCard]):
    """One layer of an atlas: a mapping from channel index to :class:`ChannelCard`.

    Attributes:
        name: The layer's name in the model.
        kind: The module's class name.
        output_shape: One input's output of the layer, arranged channels first ``(C, *map)``.
        parameters: The module's own parameters (its submodules' included).
        stats: Per-channel statistics over the data.
        histogram: Per-channel histograms over the data.
        parts: The strongest activations with patches and projections, in parts of
            consecutive channels (a large layer is projected a part at a time, and written
            parts are read back from the site's stage files only where looked at); empty
            without data-set examples. :attr:`top` joins them.
        features: One feature visualisation per channel ``(C, *input)``, or ``None``.
        diverse: Diverse visualisations ``(C, n, *input)``, or ``None``.
        weights: Per channel, the weights as a picture source, or ``None``.
        saturated: Per channel, whether the unit is saturated, or ``None`` (unbounded kind).
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    parameters: int
    stats: ChannelStats
    histogram: Histogram
    parts: tuple[TopActivations, ...] = ()
    features: torch.Tensor | None = None
    diverse: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    saturated: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.stats.num_channels

    def __contains__(self, channel: object) -> bool:
        return isinstance(channel, (int, np.integer)) and 0 <= int(channel) < len(self)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self)))

    def __getitem__(self, channel: int) -> ChannelCard:
        if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
            raise NetlensTypeError(
                f"Expected a channel index (an int), but got {describe(channel)}."
            )
        index = int(channel)
        if not 0 <= index < len(self):
            raise NetlensValueError(
                f"Expected a channel in [0, {len(self)}) for layer {self.name!r}, but got {index}."
            )
        stats, top = self.stats, None
        for part in self.parts:
            if index < part.channels.shape[0]:
                top = part
                break
            index -= part.channels.shape[0]
        offset, index = index, int(channel)
        edges, counts = display(
            self.histogram.counts[index], float(stats.min[index]), float(stats.max[index])
        )
        empty = torch.empty(0)
        return ChannelCard(
            layer=self.name,
            channel=index,
            channels=len(self),
            mean=float(stats.mean[index]),
            std=float(stats.std[index]),
            min=float(stats.min[index]),
            max=float(stats.max[index]),
            zero_fraction=float(stats.zero_fraction[index]),
            count=int(stats.count[index]),
            dead=bool(stats.dead[index]),
            saturated=None if self.saturated is None else bool(self.saturated[index]),
            edges=torch.from_numpy(edges),
            counts=torch.from_numpy(counts),
            activations=empty if top is None else top.activations[offset],
            indices=empty.long() if top is None else top.indices[offset],
            patches=None if top is None else top.patches[offset],
            projections=None if top is None else top.projections[offset],
            feature=None if self.features is None else self.features[index],
            diverse=None if self.diverse is None else self.diverse[index],
            weights=None if self.weights is None else self.weights[index],
        )

    @property
    def top(self) -> TopActivations | None:
        """The strongest activations of every channel, its parts joined (made when asked for)."""
        if not self.parts:
            return None
        if len(self.parts) == 1:
            return self.parts[0]
        first = self.parts[0]

        def joined(name: str) -> torch.Tensor:
            return torch.cat([getattr(part, name) for part in self.parts])

        return TopActivations(
            layer=first.layer,
            channels=joined("channels"),
            activations=joined("activations"),
            indices=joined("indices"),
            positions=joined("positions"),
            boxes=joined("boxes"),
            patches=joined("patches"),
            projections=joined("projections"),
            samples=first.samples,
        )

    def __repr__(self) -> str:
        return (
            f"AtlasLayer({self.name!r}, kind={self.kind}, output_shape={self.output_shape}, "
            f"channels={len(self)}, dead={int(self.stats.dead.sum())})"
        )

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def plot(self, ax: Axes | None = None, *, ncols: int | None = None) -> tuple[Figure, Axes]:
        """Draw every channel's feature visualisation (or strongest patch) as one grid.

        Args:
            ax: An Axes to draw on; a new figure when ``None``.
            ncols: Tiles per row; about square by default.

        Returns:
            ``(Figure, Axes)``.
        """
        tiles = [thumbnail(self[channel]) for channel in self]
        columns = ncols or max(1, math.ceil(math.sqrt(len(tiles))))
        picture = strip(tiles, gap=2, columns=columns)
        figure, axes = figure_axes(
            ax, width=1 + picture.shape[1] / 50, height=1 + picture.shape[0] / 50
        )
        axes.imshow(picture, interpolation="nearest")
        axes.set_axis_off()
        set_title(axes, f"layer {self.name!r}: {len(self)} channels", fontsize=9)
        return figure, axes

    def _repr_html_(self) -> str:
        from .site import layer_html

        return layer_html(self)


def thumbnail(card: ChannelCard) -> np.ndarray:
    """A channel's thumbnail: its feature visualisation, else its strongest patch, else blank."""
    if card.feature is not None:
        return fit(features_rgb(card.feature[None])[0], PATCH)
    if card.patches is not None and card.patches.shape[0]:
        return fit(patches_rgb(card.patches[:1])[0], PATCH)
    return np.full((8, 8, 3), 255, dtype=np.uint8)


@dataclass(frozen=True, eq=False)
class Atlas(Mapping[str, AtlasLayer]):
    """An atlas of a model: a mapping from layer name to :class:`AtlasLayer`.

    ``atlas["conv2"][17]`` is layer ``conv2``'s channel 17, a :class:`ChannelCard`.

    Attributes:
        model: The model's class name.
        samples: How many inputs the data pass covered.
        input_shape: One input's shape.
        k: Data-set examples kept per channel.
        out: Where the site was written, or ``None``.
        site_bytes: The site's size on disk in bytes (0 without a site).
        seconds: Wall-clock seconds per stage of the build (``"pass"``, ``"examples"``,
            ``"features"``, ``"occlusion"``, ``"site"``); stages loaded from an earlier build
            are absent.
        occluded: The occlusion maps and most probable classes of ``inputs_for_occlusion``
            (``.occlusion``, an :class:`~netlens.OcclusionMap`; ``.classes`` and
            ``.probabilities``, the five most probable per input), or ``None``.
        class_names: The names of the model's classes, where given.
    """

    model: str
    samples: int
    input_shape: tuple[int, ...]
    k: int
    layers: dict[str, AtlasLayer]
    out: Path | None = None
    site_bytes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    occluded: Occluded | None = None
    class_names: tuple[str, ...] | None = None

    def __getitem__(self, name: str) -> AtlasLayer:
        if name not in self.layers:
            raise LayerNotFoundError(
                f"Expected one of the atlas' layers {list(self.layers)}, but got {name!r}."
            )
        return self.layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        channels = sum(len(layer) for layer in self.layers.values())
        where = f", out={str(self.out)!r}" if self.out is not None else ""
        return (
            f"Atlas(model={self.model}, layers={list(self.layers)}, channels={channels}, "
            f"samples={self.samples}{where})"
        )

    def save(self, out: str | os.PathLike[str]) -> Atlas:
        """Write the atlas as a static site into the folder ``out``; returns it with ``out`` set.

        The site opens from the file system (``out/index.html``) in any browser, without a
        server or a network.
        """
        from .site import write_site

        if not isinstance(out, (str, os.PathLike)):
            raise NetlensTypeError(f"Expected out to be a str or a path, but got {describe(out)}.")
        folder = Path(out)
        size = write_site(self, folder)
        return replace(self, out=folder, site_bytes=size, seconds=dict(self.seconds))

    def _repr_html_(self) -> str:
        from .site import atlas_html

        return atlas_html(self)
