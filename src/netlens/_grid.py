"""Pictures of weights and activations: filters, feature maps and weight matrices as tile grids.

The grids are composed with numpy. Matplotlib is imported only to apply a colormap or to draw a
figure, so ``to_array()`` of grey or RGB tiles works without it (handy for TensorBoard's
``add_image``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ._core.checks import (
    as_number,
    check_bool,
    check_channel_dim,
    check_choice,
    check_cmap,
    check_dim_in_range,
    check_int,
    check_not_meta,
)
from ._core.errors import NetlensTypeError, NetlensValueError, describe
from ._core.render import Plottable, figure_axes, integer_ticks, position_ticks, set_xlabel

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["ActivationGrid", "FilterGrid", "grid_shape", "image_grid", "tile_grid"]

#: ``"filter"`` (each tile on its own range), ``"global"`` (one range for all tiles),
#: ``"symmetric"`` (one range ``[-m, m]`` centred at zero) or a fixed ``(low, high)`` range.
Normalize = Literal["filter", "global", "symmetric"] | tuple[float, float]

_NORMALIZE_NAMES = ("filter", "global", "symmetric")
_GATES = {"LSTM": ("i", "f", "g", "o"), "GRU": ("r", "z", "n")}
# What the columns and rows of a single heatmap are: a weight (out, in) maps inputs to outputs;
# activations (rows, features) have a row per input, or per position of one input's sequence.
_WEIGHT_AXES = ("input", "output")
_ACTIVATION_AXES = ("feature", "input or position")
# Tiles are upscaled (nearest) until their longer side reaches this many pixels, so that a 5x5
# filter stays readable and one-pixel borders stay thin next to it...
_TARGET_TILE_PIXELS = 32
# ...unless the whole grid would grow beyond this many pixels on its longer side.
_MAX_GRID_PIXELS = 4096
_BACKGROUND = 255


def grid_shape(
    count: int, tile_height: int = 1, tile_width: int = 1, ncols: int | None = None
) -> tuple[int, int]:
    """Rows and columns for ``count`` tiles: near-square in pixels unless ``ncols`` is given.

    Args:
        count: Number of tiles (at least 1).
        tile_height: Height of one tile, to make the grid near-square in pixels.
        tile_width: Width of one tile.
        ncols: Fixed number of columns (capped at ``count``).

    Returns:
        ``(nrows, ncols)``.

    Example:
        >>> from netlens._grid import grid_shape
        >>> grid_shape(32), grid_shape(4, tile_height=128, tile_width=28), grid_shape(10, ncols=4)
        ((6, 6), (1, 4), (3, 4))
    """
    if count < 1:
        raise NetlensValueError(f"Expected at least one tile, but got {count}.")
    if ncols is not None:
        columns = min(_check_ncols(ncols), count)
        return math.ceil(count / columns), columns

    def badness(columns: int) -> tuple[float, int, int]:
        rows = math.ceil(count / columns)
        aspect = abs(math.log((columns * tile_width) / (rows * tile_height)))
        return round(aspect, 6), rows * columns - count, -columns  # ties: the wider grid

    columns = min(range(1, count + 1), key=badness)
    return math.ceil(count / columns), columns


def _check_ncols(ncols: object) -> int:
    return check_int("ncols", ncols)


def _auto_scale(tile_height: int, tile_width: int, nrows: int, ncols: int) -> int:
    scale = max(1, math.ceil(_TARGET_TILE_PIXELS / max(tile_height, tile_width)))
    largest = max(nrows * tile_height, ncols * tile_width)
    return max(1, min(scale, _MAX_GRID_PIXELS // max(largest, 1)))


def tile_grid(
    tiles: NDArray[np.uint8],
    positions: Sequence[tuple[int, int]],
    nrows: int,
    ncols: int,
    *,
    scale: int = 1,
    border: int = 1,
    band: int = 0,
) -> NDArray[np.uint8]:
    """Place RGB tiles ``(N, h, w, 3)`` at ``(row, column)`` positions of a grid.

    Each tile is upscaled by repeating pixels ``scale`` times (no blur); tiles are separated by
    ``border`` white pixels, and each row of tiles gets ``band`` white pixels above it (room
    for titles). Empty cells stay white.

    Returns:
        A ``(H, W, 3)`` uint8 array.
    """
    height, width = tiles.shape[1:3]
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    height, width = height * scale, width * scale
    row_step, col_step = band + height + border, width + border
    canvas = np.full(
        (nrows * row_step - border, ncols * col_step - border, 3), _BACKGROUND, dtype=np.uint8
    )
    for tile, (row, col) in zip(tiles, positions, strict=True):
        top, left = row * row_step + band, col * col_step
        canvas[top : top + height, left : left + width] = tile
    return canvas


def image_grid(
    images: torch.Tensor,
    *,
    ncols: int | None = None,
    normalize: Normalize = "filter",
    cmap: Any = None,
    scale: int | None = None,
    border: int = 1,
) -> NDArray[np.uint8]:
    """Lay out a batch of pictures ``(N, C, H, W)`` (C = 1 grey or 3 RGB) as one uint8 array.

    A shortcut for ``ActivationGrid(images, ...).to_array()``, for techniques that produce
    images (activation maximisation, deconvnet projections).

    Args:
        images: ``(N, 1, H, W)`` or ``(N, 3, H, W)`` pictures.
        ncols: Fixed number of columns; near-square by default.
        normalize: How values map to colours; see :class:`ActivationGrid`.
        cmap: A matplotlib colormap for grey pictures.
        scale: Integer upscaling factor (nearest); automatic by default.
        border: Width of the white lines between tiles, in pixels.

    Returns:
        A ``(height, width, 3)`` uint8 array.

    Example:
        >>> import torch
        >>> from netlens._grid import image_grid
        >>> image_grid(torch.rand(5, 3, 8, 8), ncols=5, scale=1).shape
        (8, 44, 3)
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise NetlensValueError(
            f"Expected pictures of shape (N, 1, H, W) or (N, 3, H, W), but got {describe(images)}."
        )
    grid = ActivationGrid(images, normalize=normalize, cmap=cmap, ncols=ncols, titles=False)
    return grid.to_array(scale=scale, border=border)


def _check_tile_scaling(normalize: object) -> Normalize:
    expected = (
        "'filter', 'global', 'symmetric' or a (low, high) tuple of finite numbers with low < high"
    )
    if isinstance(normalize, str) and normalize in _NORMALIZE_NAMES:
        return normalize  # type: ignore[return-value]
    if not isinstance(normalize, (str, tuple)):
        raise NetlensTypeError(
            f"Expected normalize to be {expected}, but got {describe(normalize)}."
        )
    if isinstance(normalize, str) or len(normalize) != 2:
        raise NetlensValueError(f"Expected normalize to be {expected}, but got {normalize!r}.")
    bounds = [as_number(value) for value in normalize]
    if bounds[0] is None or bounds[1] is None:
        raise NetlensTypeError(
            f"Expected normalize to be {expected}, but got a tuple of {describe(normalize)}."
        )
    low, high = bounds[0], bounds[1]
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise NetlensValueError(
            f"Expected normalize to be {expected}, but got the bounds ({low}, {high})."
        )
    return (low, high)


def _as_array(tensor: torch.Tensor, name: str) -> NDArray[np.float64]:
    """``tensor`` as float64 numpy values; refuses what cannot be drawn (complex, meta, empty)."""
    if tensor.is_complex():
        raise NetlensTypeError(
            f"Expected real values to draw as {name}, but got complex values "
            f"({describe(tensor)}), whose imaginary part would be lost: draw .real, .imag or "
            ".abs()."
        )
    check_not_meta(tensor, name)
    if tensor.numel() == 0:
        raise NetlensValueError(
            f"Expected {name} with at least one value to draw, but got an empty tensor of shape "
            f"{tuple(tensor.shape)}" + (f" ({_empty_parts(tensor)})." if tensor.dim() == 4 else ".")
        )
    return tensor.detach().to("cpu", torch.float64).numpy()


def _empty_parts(weight: torch.Tensor) -> str:
    """What an empty 4-D conv weight lacks, for messages."""
    out, inputs, height, width = weight.shape
    parts = []
    if out == 0:
        parts.append("no filters")
    if inputs == 0:
        parts.append("no input channels")
    if height == 0 or width == 0:
        parts.append(f"an empty {height}x{width} kernel")
    return ", ".join(parts)


def _normalized(
    tiles: NDArray[np.float64], normalize: Normalize
) -> tuple[NDArray[np.float64], tuple[float, float] | None]:
    """Map tile values to [0, 1]; also return the value range when all tiles share one."""
    finite = np.where(np.isfinite(tiles), tiles, np.nan)
    if normalize == "filter" and len(tiles) == 1:
        normalize = "global"  # one tile: its range is the range of the picture
    if normalize == "filter":
        axes = tuple(range(1, tiles.ndim))
        if np.isnan(finite).all():
            low = high = np.zeros((len(tiles),) + (1,) * (tiles.ndim - 1))
        else:
            # all-NaN tiles only warn here; they are drawn mid-grey below.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                low = np.nanmin(finite, axis=axes, keepdims=True)
                high = np.nanmax(finite, axis=axes, keepdims=True)
        value_range = None
    else:
        if isinstance(normalize, tuple):
            low_value, high_value = normalize
        elif np.isnan(finite).all():
            low_value = high_value = 0.0
        elif normalize == "global":
            low_value, high_value = float(np.nanmin(finite)), float(np.nanmax(finite))
        else:  # symmetric
            bound = float(np.nanmax(np.abs(finite)))
            low_value, high_value = -bound, bound
        low, high = np.asarray(low_value), np.asarray(high_value)
        value_range = (low_value, high_value)
    span = high - low
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(span > 0, (tiles - low) / np.where(span > 0, span, 1.0), 0.5)
    scaled = np.where(np.isnan(scaled), 0.5, scaled)
    return np.clip(scaled, 0.0, 1.0), value_range


@dataclass(frozen=True)
class _Layout:
    """How a grid lays out its tiles: row by row, ``ncols`` a row, and how it labels them.

    Attributes:
        nrows: Rows of tiles.
        ncols: Tiles per row.
        titles: One title above each tile (or beside it, for a column of heatmap blocks).
        row_labels: One label per row, on the left.
        col_labels: One label per column, on top.
        heatmap: The tiles are heatmaps (of weights, or of activations ``(N, F)``): unscaled,
            framed, with a colorbar.
        axis_names: ``(x, y)``: what the columns and rows of a single heatmap are.
        heatmap_labels: Names of the rows of a single heatmap (tokens), instead of numbers.
    """

    nrows: int
    ncols: int
    titles: list[str] | None = None
    row_labels: list[str] | None = None
    col_labels: list[str] | None = None
    heatmap: bool = False
    axis_names: tuple[str, str] | None = None
    heatmap_labels: list[str] | None = None

    @classmethod
    def table(
        cls, nrows: int, ncols: int, rows: str, labelled: bool, names: list[str] | None = None
    ) -> _Layout:
        """Rows of ``rows`` (``"in 0"``, ``"in 1"``, ..., or ``names``) by numbered columns."""
        if not labelled:
            return cls(nrows, ncols, row_labels=names)
        row_labels = names or [f"{rows} {i}" for i in range(nrows)]
        return cls(nrows, ncols, row_labels=row_labels, col_labels=[str(i) for i in range(ncols)])


class _Grid(Plottable):
    """Shared composition and drawing of :class:`FilterGrid` and :class:`ActivationGrid`.

    :class:`~netlens._core.render.Plottable` gives ``save`` and ``_repr_png_`` from :meth:`plot`.
    """

    def __init__(
        self,
        tiles: NDArray[np.float64],
        *,
        rgb: bool,
        normalize: object,
        cmap: Any,
        layout: _Layout,
    ) -> None:
        normalize = _check_tile_scaling(normalize)
        self._raw = tiles
        self._rgb = rgb
        self._normalize = normalize
        self._values, self._value_range = _normalized(tiles, normalize)
        if rgb:
            self._cmap: Any = None
        elif cmap is None:
            self._cmap = "RdBu_r" if normalize == "symmetric" else None
        else:
            self._cmap = cmap
        self._nrows, self._ncols = layout.nrows, layout.ncols
        self._positions = [divmod(index, layout.ncols) for index in range(len(tiles))]
        self._titles = layout.titles
        self._row_labels = layout.row_labels
        self._col_labels = layout.col_labels
        self._heatmap = layout.heatmap
        self._axis_names = layout.axis_names
        self._heatmap_labels = layout.heatmap_labels

    # -- public -------------------------------------------------------------------------------

    @property
    def tiles(self) -> torch.Tensor:
        """The raw tile values in float64, ``(N, h, w)`` or ``(N, h, w, 3)`` for RGB tiles."""
        return torch.from_numpy(self._raw.copy())

    @property
    def shape(self) -> tuple[int, int]:
        """``(nrows, ncols)`` of the grid."""
        return self._nrows, self._ncols

    @property
    def non_finite(self) -> int:
        """How many tile values are NaN or inf: drawn mid-grey, and said under the plot."""
        return int((~np.isfinite(self._raw)).sum())

    @property
    def value_range(self) -> tuple[float, float] | None:
        """The value range mapped to the colour scale, or None when each tile has its own."""
        return self._value_range

    def to_array(self, *, scale: int | None = None, border: int = 1) -> NDArray[np.uint8]:
        """Compose the grid as a ``(height, width, 3)`` uint8 RGB array.

        Grey and RGB tiles need no matplotlib; a colormap (``cmap=...`` or ``"symmetric"``)
        imports it. For TensorBoard: ``writer.add_image(tag, array, dataformats="HWC")``.

        Args:
            scale: Integer upscaling factor of each tile (nearest, no blur). By default tiles
                are enlarged until their longer side has at least 32 pixels.
            border: Width of the white lines between tiles, in pixels.

        Returns:
            The composed picture.
        """
        scale = self._default_scale() if scale is None else check_int("scale", scale)
        border = check_int("border", border, minimum=0)
        return tile_grid(
            self._rgb_tiles(), self._positions, self._nrows, self._ncols, scale=scale, border=border
        )

    def plot(self, ax: Axes | None = None) -> tuple[Figure, Axes]:
        """Draw the grid on ``ax``, or on a new matplotlib ``Figure`` (pyplot is not used).

        Tiles are upscaled by repeating pixels and shown with ``interpolation="nearest"``, so
        small filters stay sharp. Titles, when asked for, go above each tile; a colorbar is added
        to heatmaps and to tiles that share one colour scale (``"global"``, ``"symmetric"``, a
        fixed range), except RGB tiles.

        Args:
            ax: A matplotlib ``Axes`` to draw on.

        Returns:
            ``(figure, axes)``.
        """
        scale = self._default_scale()
        height, width = (size * scale for size in self._values.shape[1:3])
        # a column of heatmap blocks (gates) is labelled on the left, other tiles above
        side_labels = self._heatmap and self._ncols == 1 and self._titles is not None
        band = max(4, min(height // 3, 24)) if self._titles and not side_labels else 0
        array = tile_grid(
            self._rgb_tiles(), self._positions, self._nrows, self._ncols, scale=scale, band=band
        )
        ratio = array.shape[0] / array.shape[1]
        if self._heatmap:
            ratio = min(max(ratio, 0.4), 1.5)
        longest = 7.0
        inches = (longest, longest * ratio) if ratio <= 1 else (longest / ratio, longest)
        figure, ax = figure_axes(ax, width=max(inches[0], 2.0), height=max(inches[1], 2.0))
        ax.imshow(array, interpolation="nearest", aspect="auto" if self._heatmap else "equal")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(self._heatmap)
        if self._heatmap and self._nrows * self._ncols == 1:
            # one heatmap: its rows and columns are numbered units (or named rows)
            names = self._axis_names or _WEIGHT_AXES
            ax.set_xlabel(names[0])
            ax.set_ylabel(names[1])
            integer_ticks(ax, "x")
            position_ticks(ax, "y", self._heatmap_labels)
        step_y, step_x = band + height + 1, width + 1
        if side_labels and self._titles is not None:
            ax.set_yticks([row * step_y + height / 2 for row, _ in self._positions], self._titles)
            ax.tick_params(length=0)
            # The white pixel row between gate blocks vanishes where the diverging map is white
            # (weights near zero) and once hundreds of rows are scaled down; a drawn line stays.
            for row in range(1, self._nrows):
                ax.axhline(row * step_y - 1, color="black", linewidth=1.2)
        elif self._titles:
            axes_inches = figure.get_size_inches()[0] * ax.get_position().width
            tile_points = 72 * axes_inches * width / array.shape[1]
            fontsize = min(9.0, max(4.0, tile_points / 3.5))
            for title, (row, col) in zip(self._titles, self._positions, strict=True):
                x, y = col * step_x + width / 2, row * step_y + band - 1
                ax.text(x, y, title, ha="center", va="bottom", fontsize=fontsize)
        if self._col_labels is not None:
            keep = _thinned(self._ncols)
            ax.set_xticks(
                [i * step_x + width / 2 for i in keep], [self._col_labels[i] for i in keep]
            )
            ax.xaxis.tick_top()
            ax.tick_params(length=0, labelsize=7)
        if self._row_labels is not None:
            keep = _thinned(self._nrows)
            ax.set_yticks(
                [i * step_y + height / 2 for i in keep], [self._row_labels[i] for i in keep]
            )
            ax.tick_params(length=0, labelsize=7)
        # a colorbar where it tells something: heatmaps and tiles sharing one range
        shared = self._heatmap or self._normalize != "filter"
        if self._value_range is not None and shared and not self._rgb:
            from matplotlib.cm import ScalarMappable
            from matplotlib.colors import Normalize as ColorNormalize

            mappable = ScalarMappable(
                norm=ColorNormalize(*self._value_range), cmap=self._cmap or "gray"
            )
            figure.colorbar(mappable, ax=ax, shrink=0.8)
        non_finite = self.non_finite
        if non_finite:
            # The NaN rule: never drawn silently. Masks of -inf are common in activations, so
            # a grid draws them (mid-grey) and says how many, rather than refusing the picture.
            set_xlabel(ax, f"{non_finite} NaN or inf values, drawn grey", color="firebrick")
        return figure, ax

    # -- internals ----------------------------------------------------------------------------

    def _default_scale(self) -> int:
        height, width = self._values.shape[1:3]
        if self._heatmap:
            return 1
        return _auto_scale(height, width, self._nrows, self._ncols)

    def _rgb_tiles(self) -> NDArray[np.uint8]:
        values = self._values
        if not self._rgb:
            if self._cmap is None:
                values = np.repeat(values[..., None], 3, axis=-1)
            else:
                from matplotlib import colormaps

                colormap = colormaps[self._cmap] if isinstance(self._cmap, str) else self._cmap
                values = np.asarray(colormap(values))[..., :3]
        return np.round(values * 255).astype(np.uint8)


def _thinned(count: int, most: int = 32) -> list[int]:
    step = max(1, math.ceil(count / most))
    return list(range(0, count, step))


def _titles(titles: bool | Sequence[str], count: int, default: Sequence[str]) -> list[str] | None:
    if isinstance(titles, bool):
        return list(default) if titles else None
    if isinstance(titles, str) or not isinstance(titles, Sequence):
        raise NetlensTypeError(
            f"Expected titles to be a bool or a sequence of strings, but got {describe(titles)}."
        )
    if len(titles) != count:
        raise NetlensValueError(f"Expected {count} titles, one per tile, but got {len(titles)}.")
    return [str(title) for title in titles]


def _heatmap_tiles(
    matrix: NDArray[np.float64], gates: Sequence[str] | None
) -> tuple[NDArray[np.float64], list[str] | None]:
    if not gates:
        return matrix[None], None
    rows = matrix.shape[0]
    if rows % len(gates):
        raise NetlensValueError(
            f"Expected the weight's {rows} rows to split evenly into the {len(gates)} gate blocks "
            f"{tuple(gates)}, but they do not."
        )
    return matrix.reshape(len(gates), rows // len(gates), matrix.shape[1]), list(gates)


class FilterGrid(_Grid):
    """A grid of the filters of a conv layer, or the heatmap of a 2-D weight.

    Conv weights ``(out, in, kh, kw)`` give one tile per output filter: grey for one input
    channel, RGB for three, and otherwise the mean over input channels or one row per input
    channel (``in_channels``). A 2-D weight ``(out, in)`` (``nn.Linear``, or ``weight_ih`` /
    ``weight_hh`` of a recurrent layer) is drawn as a heatmap; for LSTM and GRU weights the
    gate blocks are split and labelled (``i, f, g, o`` and ``r, z, n``, PyTorch's order).

    Args:
        source: A module with a weight (``nn.Conv2d``, ``nn.Linear``, ``nn.LSTM``, ...), or a
            4-D or 2-D tensor.
        normalize: ``"filter"`` puts each tile on its own range, ``"global"`` puts all tiles
            on one range, ``"symmetric"`` on one range ``[-m, m]`` with a diverging colormap
            centred at zero and a colorbar; a ``(low, high)`` tuple fixes the range (finite
            numbers or 0-d tensors, ``low < high``).
        cmap: Matplotlib colormap (name or object) for single-channel tiles; grey by default,
            ``"RdBu_r"`` for ``"symmetric"``. Ignored for RGB tiles.
        ncols: Number of columns; by default the grid is near-square in pixels. Ignored for
            ``in_channels="separate"``, which has one column per filter.
        titles: Draw the filter index above each tile (or these strings, one per tile).
        in_channels: For conv weights: ``"mean"``, ``"separate"`` (rows are input channels,
            columns are filters) or ``"rgb"``; by default grey for 1 input channel, ``"rgb"``
            for 3 and ``"mean"`` otherwise.
        weight: The name of the module's weight to draw; by default ``weight``, and
            ``weight_ih_l0`` (or ``weight_ih`` for cells) for recurrent modules.
        gates: Labels of the row blocks of a 2-D weight; set automatically for LSTM and GRU
            modules, give them for a bare tensor.

    Raises:
        NetlensTypeError: For a source that is neither a tensor nor a module with a weight, a
            complex weight, or an option of the wrong type.
        NetlensValueError: For a weight that is neither 2-D nor 4-D, an empty one (such as a
            ``(4, 1, 0, 0)`` kernel), one on the meta device (no values), a ``weight`` name the
            module has no tensor under, a ``normalize`` range that is not finite or has
            ``low >= high``, or an unknown option or colormap name.

    Example:
        >>> import torch.nn as nn
        >>> import netlens as nl
        >>> grid = nl.FilterGrid(nn.Conv2d(1, 6, 5))
        >>> grid.shape, grid.to_array().shape
        ((2, 3), (71, 107, 3))
        >>> nl.FilterGrid(nn.LSTM(4, 3), weight="weight_hh_l0").tiles.shape  # gates i, f, g, o
        torch.Size([4, 3, 3])
    """

    def __init__(
        self,
        source: nn.Module | torch.Tensor,
        *,
        normalize: Normalize = "filter",
        cmap: Any = None,
        ncols: int | None = None,
        titles: bool | Sequence[str] = True,
        in_channels: Literal["mean", "separate", "rgb"] | None = None,
        weight: str | None = None,
        gates: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(source, (torch.Tensor, nn.Module)):
            raise NetlensTypeError(
                "Expected source to be a module with a weight or a weight tensor, but got "
                f"{describe(source)}."
            )
        if weight is not None and not isinstance(weight, str):
            raise NetlensTypeError(
                f"Expected weight to be None or the name of a weight, but got {describe(weight)}."
            )
        checked_gates = _check_gates(gates)
        cmap = check_cmap("cmap", cmap)
        tensor, found_gates = _find_weight(source, weight)
        gates = found_gates if checked_gates is None else checked_gates
        what = (
            "the weight"
            if isinstance(source, torch.Tensor)
            else f"the weight {weight or _default_weight(source)!r} of {type(source).__name__}"
        )
        values = _as_array(tensor, what)
        tiles, rgb, layout = _filter_tiles(values, tensor, in_channels, ncols, titles, gates)
        super().__init__(tiles, rgb=rgb, normalize=normalize, cmap=cmap, layout=layout)


def _filter_tiles(
    values: NDArray[np.float64],
    tensor: torch.Tensor,
    in_channels: object,
    ncols: int | None,
    titles: bool | Sequence[str],
    gates: Sequence[str] | None,
) -> tuple[NDArray[np.float64], bool, _Layout]:
    """The tiles of a weight, whether they are RGB, and their layout (see :class:`FilterGrid`)."""
    if values.ndim == 2:
        tiles, labels = _heatmap_tiles(values, gates)
        # gate blocks stacked as PyTorch stores them, unless asked otherwise
        nrows, columns = grid_shape(len(tiles), ncols=1 if ncols is None else ncols)
        shown = labels if titles is not False else None
        layout = _Layout(nrows, columns, titles=shown, heatmap=True, axis_names=_WEIGHT_AXES)
        return tiles, False, layout
    if values.ndim != 4:
        raise NetlensValueError(
            "Expected a 4-D conv weight (out, in, kh, kw) or a 2-D weight (out, in), but got "
            f"{describe(tensor)}."
        )
    out_channels, in_count = values.shape[:2]
    if in_channels is None:
        in_channels = "rgb" if in_count == 3 else "mean"
    check_choice("in_channels", in_channels, ("mean", "separate", "rgb"))
    if in_channels == "separate" and in_count > 1:
        tiles = values.transpose(1, 0, 2, 3).reshape(-1, *values.shape[2:])
        return tiles, False, _Layout.table(in_count, out_channels, "in", titles is not False)
    if in_channels == "rgb":
        if in_count != 3:
            raise NetlensValueError(
                f"Expected 3 input channels for in_channels='rgb', but got {in_count}."
            )
        tiles = values.transpose(0, 2, 3, 1)
    else:
        tiles = values.mean(axis=1)
    nrows, columns = grid_shape(out_channels, tiles.shape[1], tiles.shape[2], ncols=ncols)
    labels = _titles(titles, out_channels, [str(i) for i in range(out_channels)])
    return tiles, in_channels == "rgb", _Layout(nrows, columns, titles=labels)


def _check_gates(gates: object) -> list[str] | None:
    if gates is None:
        return None
    if isinstance(gates, str) or not isinstance(gates, Sequence):
        raise NetlensTypeError(
            "Expected gates to be None or a sequence of labels, one per row block (such as "
            f"['r', 'z', 'n']), but got {describe(gates)}."
        )
    if not all(isinstance(gate, str) for gate in gates):
        raise NetlensTypeError(
            f"Expected gates to hold strings, one label per row block, but got {list(gates)!r}."
        )
    return list(gates)


def _find_weight(
    source: nn.Module | torch.Tensor, name: str | None
) -> tuple[torch.Tensor, list[str] | None]:
    if isinstance(source, torch.Tensor):
        if name is not None:
            raise NetlensValueError(
                f"Expected weight=None for a tensor source, but got weight={name!r}."
            )
        return source, None
    recurrent = isinstance(source, (nn.RNNBase, nn.RNNCellBase))
    given = name is not None
    if name is None:
        name = _default_weight(source)
    weight = getattr(source, name, None)
    if not isinstance(weight, torch.Tensor):
        weights = [n for n, p in source.named_parameters(recurse=False) if n.startswith("weight")]
        kind = type(source).__name__
        if given:  # the module is fine, the name is not
            raise NetlensValueError(
                f"Expected weight to name a tensor attribute of {kind}, but got {name!r}; "
                + (f"its weights are {weights}." if weights else f"{kind} has no weight at all.")
            )
        raise NetlensTypeError(
            f"Expected source to be a module with a tensor attribute {name!r}, but {kind} has "
            + (
                f"none; its weights are {weights}: pass weight=."
                if weights
                else "no weight at all."
            )
        )
    gates = None
    if recurrent and name.startswith("weight_"):
        if isinstance(source, nn.RNNBase):
            kind = source.mode
        else:
            kind = (
                "LSTM"
                if isinstance(source, nn.LSTMCell)
                else "GRU"
                if isinstance(source, nn.GRUCell)
                else ""
            )
        gates = list(_GATES[kind]) if kind in _GATES else None
    return weight, gates


def _default_weight(source: nn.Module) -> str:
    if isinstance(source, nn.RNNBase):
        return "weight_ih_l0"
    if isinstance(source, nn.RNNCellBase):
        return "weight_ih"
    return "weight"


class ActivationGrid(_Grid):
    """A grid of feature maps, or of pictures.

    * ``(C, H, W)``: the C feature maps of one input, one grey tile each.
    * ``(N, C, H, W)`` with C = 1, or C = 3 and ``rgb`` not False: N pictures, grey or RGB (for
      example inputs, or the images that activation maximisation synthesises).
    * other ``(N, C, H, W)``: one row per input, one column per channel (one input: near-square).
    * ``(N, F)``: a heatmap of the units (features) of a linear layer, one row per input; or
      ``(T, F)``, one input's features at each position of its sequence (a token model's
      ``recorder[name][0]``), the rows named by ``labels`` (the tokens).

    Activations whose channels are on another axis, such as the channels-last maps
    ``(N, H, W, C)`` of a ConvNeXt or Swin stage, say so with ``channel_dim`` (here ``-1``), as
    every function that takes a layer does; the grid then shows them as ``(N, C, H, W)``.

    Args:
        activations: The tensor (detached and copied to the CPU for drawing), for example a
            recorded output (``recorder[name]``, after any ``select``).
        normalize: As for :class:`FilterGrid`: ``"filter"`` (each tile on its own range),
            ``"global"``, ``"symmetric"`` or a fixed ``(low, high)`` range.
        cmap: Matplotlib colormap for single-channel tiles (grey by default).
        ncols: Number of columns; near-square by default.
        titles: Draw the channel (or picture) index above each tile, or these strings.
        rgb: Whether ``(N, 3, H, W)`` are RGB pictures (default) or three feature maps each.
        channel_dim: The channel axis of ``activations`` (negative counts from the end); by
            default 1 for 4-D and 2-D tensors, 0 for one input's ``(C, H, W)``.
        labels: Names of the rows: of a 2-D heatmap (the tokens of ``(T, F)``), or of the
            inputs of a table of ``(N, C, H, W)`` feature maps; numbers by default. As many
            are shown as fit.

    Raises:
        NetlensTypeError: For a non-tensor, complex values, or an option of the wrong type.
        NetlensValueError: For a tensor that is not 2-, 3- or 4-D, an empty one, one on the meta
            device, a ``channel_dim`` outside it, a ``normalize`` range that is not finite or
            has ``low >= high``, an unknown option, or labels for a grid without rows to name
            or of another length than its rows.

    Example:
        >>> import torch
        >>> import netlens as nl
        >>> grid = nl.ActivationGrid(torch.rand(16, 7, 7))
        >>> grid.shape, grid.to_array(scale=1).shape
        ((4, 4), (31, 31, 3))
        >>> nl.ActivationGrid(torch.rand(2, 7, 7, 16), channel_dim=-1).shape  # channels last
        (2, 16)
    """

    def __init__(
        self,
        activations: torch.Tensor,
        *,
        normalize: Normalize = "filter",
        cmap: Any = None,
        ncols: int | None = None,
        titles: bool | Sequence[str] = True,
        rgb: bool | None = None,
        channel_dim: int | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(activations, torch.Tensor):
            raise NetlensTypeError(
                f"Expected a torch.Tensor of activations, but got {describe(activations)}."
            )
        rgb = None if rgb is None else check_bool("rgb", rgb)
        cmap = check_cmap("cmap", cmap)
        dim = check_channel_dim("channel_dim", channel_dim, optional=True)
        names = _check_labels(labels)
        values = _as_array(_channels_in_place(activations, dim), "activations")
        tiles, is_rgb, layout = _activation_tiles(values, activations, ncols, titles, rgb, names)
        super().__init__(tiles, rgb=is_rgb, normalize=normalize, cmap=cmap, layout=layout)


def _check_labels(labels: object) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise NetlensTypeError(
            "Expected labels to be None or a sequence of strings, one per row (such as the "
            f"tokens), but got {describe(labels)}."
        )
    return [str(label) for label in labels]


def _check_row_count(names: list[str] | None, rows: int, what: str) -> None:
    if names is not None and len(names) != rows:
        raise NetlensValueError(f"Expected {rows} labels, one per {what}, but got {len(names)}.")


def _activation_tiles(
    values: NDArray[np.float64],
    activations: torch.Tensor,
    ncols: int | None,
    titles: bool | Sequence[str],
    rgb: bool | None,
    names: list[str] | None = None,
) -> tuple[NDArray[np.float64], bool, _Layout]:
    """The tiles of activations, whether they are RGB, and their layout (see ActivationGrid)."""
    if values.ndim == 2:
        _check_row_count(names, values.shape[0], "row of the heatmap")
        layout = _Layout(1, 1, heatmap=True, axis_names=_ACTIVATION_AXES, heatmap_labels=names)
        return values[None], False, layout
    if values.ndim not in (3, 4) or 0 in values.shape:
        raise NetlensValueError(
            "Expected activations of shape (C, H, W), (N, C, H, W) or (N, F), but got "
            f"{describe(activations)}."
        )
    is_rgb = values.ndim == 4 and values.shape[1] == 3 and rgb is not False
    if values.ndim == 4 and (values.shape[1] == 1 or is_rgb):
        tiles = values.transpose(0, 2, 3, 1) if is_rgb else values[:, 0]
    elif values.ndim == 4 and values.shape[0] > 1:
        count, channels = values.shape[:2]
        _check_row_count(names, count, "input (row of the table)")
        layout = _Layout.table(count, channels, "input", titles is not False, names)
        return values.reshape(-1, *values.shape[2:]), False, layout
    else:
        tiles = values[0] if values.ndim == 4 else values
    if names is not None:
        raise NetlensValueError(
            "Expected labels only for a 2-D heatmap (one per row) or a table of (N, C, H, W) "
            f"feature maps (one per input), but got activations of shape "
            f"{tuple(activations.shape)}, drawn as separate tiles: name them with titles=."
        )
    count = len(tiles)
    nrows, columns = grid_shape(count, tiles.shape[1], tiles.shape[2], ncols=ncols)
    labels = _titles(titles, count, [str(i) for i in range(count)])
    return tiles, is_rgb, _Layout(nrows, columns, titles=labels)


def _channels_in_place(activations: torch.Tensor, channel_dim: int | None) -> torch.Tensor:
    """``activations`` with the channel axis where the grid expects it (1, or 0 for 3-D)."""
    rank = activations.dim()
    if channel_dim is None or rank not in (2, 3, 4):
        return activations
    dim = check_dim_in_range(
        channel_dim,
        rank,
        f"Expected channel_dim in [{-rank}, {rank}) for activations of shape "
        f"{tuple(activations.shape)}, but got {channel_dim}.",
    )
    return activations.movedim(dim, 0 if rank == 3 else 1)
