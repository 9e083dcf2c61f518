"""All drawing goes through here: new figures, saving, notebook display, image montages.

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

__all__ = [
    "Plottable",
    "display",
    "figure_axes",
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
    sample: torch.Tensor, *, centred: bool, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """An input-shaped tensor as an RGB image in [0, 1].

    Three-channel inputs are drawn in colour, others as the mean over their leading dims; a
    vector is one row. Scaled on its own (``centred``: zero at 0.5) unless ``value_range``
    gives a common range.
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
        values = (values - low) / (high - low) if high > low else torch.full_like(values, 0.5)
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
