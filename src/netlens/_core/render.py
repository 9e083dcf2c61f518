"""All drawing goes through here: new figures, saving, notebook display, image montages, maps.

matplotlib is imported lazily, inside the functions, so ``import netlens`` stays free of it.
Figures are ``matplotlib.figure.Figure`` objects made directly: pyplot's global state is never
touched, nothing is shown or printed.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from .errors import NetlensTypeError, NetlensValueError, describe

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

__all__ = [
    "Plottable",
    "axes_grid",
    "category_colours",
    "colour_bar",
    "display",
    "draw_categories",
    "draw_cells",
    "draw_input",
    "draw_signed_overlay",
    "figure_axes",
    "frame_plane",
    "grid",
    "montage",
    "new_figure",
    "save_figure",
]

SAVE_FORMATS = ("png", "svg", "pdf")
# The largest side of a figure, in inches: bigger ones are hard to look at and slow to save.
_LARGEST = 16.0


def new_figure(width: float, height: float) -> Figure:
    """A new constrained-layout ``Figure`` of at most 16 x 16 inches, outside pyplot."""
    from matplotlib.figure import Figure

    size = (min(max(width, 1.0), _LARGEST), min(max(height, 1.0), _LARGEST))
    return Figure(figsize=size, layout="constrained")


def figure_axes(ax: Any, *, width: float, height: float) -> tuple[Figure, Axes]:
    """``(ax.figure, ax)`` for a given ``Axes``, else a new figure of that size with one Axes."""
    if ax is not None:
        from matplotlib.axes import Axes

        if not isinstance(ax, Axes):
            raise NetlensTypeError(
                f"Expected ax to be a matplotlib Axes or None, but got {describe(ax)}."
            )
        return cast("Figure", ax.figure), ax
    figure = new_figure(width, height)
    return figure, figure.add_subplot()


def save_figure(figure: Figure, path: str | os.PathLike[str], *, dpi: float | None = None) -> None:
    """Write ``figure`` to a PNG, SVG or PDF file, the format chosen by the path's suffix."""
    if not isinstance(path, (str, os.PathLike)):
        raise NetlensTypeError(f"Expected path to be a str or a path, but got {describe(path)}.")
    suffix = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if suffix not in SAVE_FORMATS:
        raise NetlensValueError(
            f"Expected a path ending in .png, .svg or .pdf, but got {os.fspath(path)!r}."
        )
    figure.savefig(path, format=suffix, dpi=dpi if dpi is not None else "figure")


class Plottable:
    """``save`` and notebook display for results and grids, both drawn by their ``plot``."""

    def plot(self, ax: Any = None) -> tuple[Figure, Axes]:
        """Draw on ``ax`` or a new figure; returns ``(Figure, Axes)``."""
        raise NotImplementedError

    def save(self, path: str | os.PathLike[str], *, dpi: float | None = None) -> None:
        """Write the figure of :meth:`plot` to a PNG, SVG or PDF file, chosen by the suffix.

        Args:
            path: Where to write; its suffix (``.png``, ``.svg``, ``.pdf``) picks the format.
            dpi: Resolution of a PNG (the figure's own when None).
        """
        figure, _ = self.plot()
        save_figure(figure, path, dpi=dpi)

    def _repr_png_(self) -> bytes:
        """The figure of :meth:`plot` as PNG bytes, so that notebooks show the result."""
        figure, _ = self.plot()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()


def display(
    sample: torch.Tensor,
    *,
    centred: bool,
    value_range: tuple[float, float] | None = None,
    flat: float = 0.5,
) -> np.ndarray:
    """An input-shaped tensor as an RGB image in [0, 1].

    Three-channel inputs are drawn in colour, others as the mean over their leading dims; a
    vector is one row. Scaled on its own (``centred``: zero at 0.5) unless ``value_range``
    gives a common range; an input without range (constant, not ``centred``) is ``flat``.
    """
    values = sample.detach().to("cpu", torch.float64)
    if values.dim() == 0:
        values = values.reshape(1, 1)
    if values.dim() == 1:
        values = values.unsqueeze(0)
    if values.dim() >= 3:
        values = values.reshape(-1, *values.shape[-2:])
        values = values.permute(1, 2, 0) if values.shape[0] == 3 else values.mean(dim=0)
    if centred:
        extent = float(values.abs().max())
        values = values / (2 * extent) + 0.5 if extent > 0 else torch.full_like(values, 0.5)
    else:
        low, high = value_range or (float(values.min()), float(values.max()))
        values = (values - low) / (high - low) if high > low else torch.full_like(values, flat)
    array = values.clamp(0, 1).numpy()
    return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array


def montage(
    rows: list[list[np.ndarray]], gap: int = 1
) -> tuple[np.ndarray, list[float], list[float]]:
    """Tile equally shaped RGB images on a white canvas; also the tile centres (x, y)."""
    height, width = rows[0][0].shape[:2]
    columns = max(len(row) for row in rows)
    canvas = np.ones((len(rows) * (height + gap) - gap, columns * (width + gap) - gap, 3))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            top, left = r * (height + gap), c * (width + gap)
            canvas[top : top + height, left : left + width] = tile
    centres_x = [c * (width + gap) + (width - 1) / 2 for c in range(columns)]
    centres_y = [r * (height + gap) + (height - 1) / 2 for r in range(len(rows))]
    return canvas, centres_x, centres_y


def grid(tiles: list[np.ndarray], ncols: int, gap: int = 1) -> np.ndarray:
    """Tile equally shaped RGB images row by row, ``ncols`` per row."""
    rows = [tiles[start : start + ncols] for start in range(0, len(tiles), ncols)]
    return montage(rows, gap)[0]


# -- maps over an input's plane -------------------------------------------------------------
#
# A map drawn over an input shares the input's plane: ``(height, width)`` of its last two dims
# (one row for a vector), the image's pixels centred on integer coordinates. A map with other
# cells (one per position of a sliding window) is placed by an ``extent`` so that its cells sit
# where they belong on the input.


def frame_plane(axis: Axes, height: int, width: int) -> None:
    """Show exactly a plane of ``height x width`` pixels on ``axis``, without ticks.

    The aspect is equal unless one side is over eight times the other (a long signal).
    """
    axis.set_xlim(-0.5, width - 0.5)
    axis.set_ylim(height - 0.5, -0.5)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_aspect("auto" if height * 8 < width or width * 8 < height else "equal")


def draw_input(axis: Axes, sample: torch.Tensor, *, grey: bool = False) -> None:
    """Draw one input (an input-shaped tensor) as an image over its plane (see :func:`display`).

    Three-channel inputs are drawn in colour unless ``grey``; others, and grey ones, as the
    mean over their leading dims with the ``"gray"`` colour map.
    """
    values = sample.detach()
    if grey and values.dim() >= 3:
        values = values.float().reshape(-1, *values.shape[-2:]).mean(0)
    picture = display(values, centred=False, flat=0.0)  # a constant input is black
    height, width = picture.shape[:2]
    if values.dim() >= 3 and values.numel() == 3 * height * width:
        axis.imshow(picture, interpolation="nearest")
    else:
        axis.imshow(picture[..., 0], cmap="gray", interpolation="nearest")
    frame_plane(axis, height, width)


def draw_signed_overlay(axis: Axes, values: torch.Tensor, *, cmap: Any, alpha: float) -> None:
    """Draw a map of signed values, one per pixel, over what ``axis`` shows.

    Diverging colours centred at zero: the colour map spans ``[-m, m]`` for the largest
    magnitude ``m`` (1 for an all-zero map).
    """
    limit = float(values.abs().max()) or 1.0
    axis.imshow(
        values.detach().float().cpu().numpy(),
        cmap=cmap,
        vmin=-limit,
        vmax=limit,
        alpha=alpha,
        interpolation="nearest",
    )


def draw_cells(
    axis: Axes,
    cells: torch.Tensor,
    *,
    extent: tuple[float, float, float, float],
    plane: tuple[int, int],
    cmap: Any,
    **options: Any,
) -> AxesImage:
    """Draw a 2-D map of cells stretched over ``extent`` of a plane of ``plane`` pixels.

    Args:
        axis: Where to draw.
        cells: ``(rows, columns)`` values.
        extent: ``(left, right, bottom, top)`` of the cells in the plane's pixel coordinates.
        plane: ``(height, width)`` of the plane, which the Axes then shows.
        cmap: Colour map.
        **options: More options of ``imshow`` (``alpha``, ``vmin``, ``vmax``).

    Returns:
        The image, for a colour bar.
    """
    image = axis.imshow(
        cells.detach().cpu().numpy(),
        cmap=cmap,
        extent=extent,
        interpolation="nearest",
        **options,
    )
    frame_plane(axis, *plane)
    return image


def colour_bar(figure: Figure, image: AxesImage, axis: Axes) -> None:
    """A colour bar for ``image`` beside ``axis``."""
    figure.colorbar(image, ax=axis, shrink=0.8)


def category_colours(categories: list[int]) -> list[Any]:
    """One colour per category number: ``tab10``'s, or ``tab20``'s for numbers from 10 on."""
    from matplotlib import colormaps

    table = colormaps["tab10" if max(categories, default=0) < 10 else "tab20"]
    return [table(c % table.N) for c in categories]


def draw_categories(
    axis: Axes,
    codes: torch.Tensor,
    *,
    colours: list[Any],
    labels: list[str],
    extent: tuple[float, float, float, float],
    plane: tuple[int, int],
) -> None:
    """Draw a map of categories as :func:`draw_cells` does, with a legend beside the Axes.

    Args:
        axis: Where to draw.
        codes: ``(rows, columns)`` category codes: indices into ``colours`` and ``labels``.
        colours: The colour of each code.
        labels: The legend's label of each code.
        extent: As for :func:`draw_cells`.
        plane: As for :func:`draw_cells`.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    draw_cells(
        axis,
        codes,
        extent=extent,
        plane=plane,
        cmap=ListedColormap(colours),
        vmin=-0.5,
        vmax=len(colours) - 0.5,
    )
    axis.legend(
        handles=[
            Patch(color=colour, label=label) for label, colour in zip(labels, colours, strict=True)
        ],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize="small",
        frameon=False,
    )


def axes_grid(
    axes: Any, rows: int, columns: int, *, size: tuple[float, float], what: str
) -> tuple[Figure, np.ndarray]:
    """A ``(rows, columns)`` array of Axes: new ones on a figure of ``size``, or those given.

    Args:
        axes: None for a new figure, or ``rows * columns`` Axes (any array-like shape).
        rows: Rows of panels.
        columns: Panels per row.
        size: ``(width, height)`` in inches of a new figure.
        what: What the panels are, for the message of a wrong number of Axes
            (``"2 inputs times 5 panels"``).

    Returns:
        The figure (that of the first Axes given) and the Axes.

    Raises:
        NetlensValueError: Another number of Axes.
    """
    if axes is None:
        figure = new_figure(*size)
        return figure, np.asarray(figure.subplots(rows, columns, squeeze=False))
    given = np.asarray(axes, dtype=object).reshape(-1)
    if given.size != rows * columns:
        raise NetlensValueError(f"Expected {rows * columns} Axes ({what}), but got {given.size}.")
    arranged = given.reshape(rows, columns)
    return cast("Figure", arranged[0, 0].figure), arranged
