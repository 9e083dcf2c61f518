"""What the figure scripts share: the trained reference checkpoints they draw from."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from numpy.typing import NDArray


def require(*paths: Path) -> None:
    """Exit with a one-line error when a checkpoint is missing, before any long work."""
    for path in paths:
        if not path.is_file():
            sys.exit(f"error: checkpoint {path} is missing; train it first (see examples/).")


def load(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """``model`` with the weights in ``path``, in eval mode, on the CPU."""
    require(path)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


# The docs' text column is about 900 px wide and shows images at most at that width: figures
# are saved at DPI with widths of at most WIDTH inches, so nothing is scaled down in the page.
DPI = 100
WIDTH = 9.0


def fit(figure: Figure) -> Figure:
    """``figure`` scaled down, keeping its aspect, to at most WIDTH inches wide."""
    width, height = figure.get_size_inches()
    if width > WIDTH:
        figure.set_size_inches(WIDTH, height * WIDTH / width)
    return figure


def pixel_figure(
    panels: Sequence[tuple[NDArray[np.uint8], str]],
    *,
    gap: int = 16,
    band: int = 22,
    numbered: tuple[int, int] | None = None,
    colorbar: tuple[float, float, str] | None = None,
) -> Figure:
    """The ``(array, title)`` panels side by side at one image pixel per screen pixel.

    ``figimage`` places each array unresampled, so tiles composed by ``to_array(scale=k)`` keep
    their exact, equal pixel sizes in the PNG; each title is written in the band above its panel.
    ``numbered=(nrows, ncols)`` labels the tiles of the first panel, a one-pixel-bordered grid,
    with the column number above and the index of the row's first tile on the left (the tile's
    index is their sum); ``colorbar=(low, high, cmap)`` adds a colour scale on the right.
    """
    band = band if any(title for _, title in panels) else 0
    numbers = 16 if numbered else 0
    left = 30 if numbered else 0
    right = 84 if colorbar else 0
    inner = sum(array.shape[1] for array, _ in panels) + gap * (len(panels) - 1)
    width = left + inner + right
    tallest = max(array.shape[0] for array, _ in panels)
    height = tallest + band + numbers + 4
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    x = left
    for array, title in panels:
        figure.figimage(array, xo=x, yo=height - band - numbers - array.shape[0], origin="upper")
        if title:
            centre = (x + array.shape[1] / 2) / width
            figure.text(centre, 1 - band / 2 / height, title, ha="center", va="center", fontsize=9)
        x += array.shape[1] + gap
    if numbered:
        rows, columns = numbered
        array = panels[0][0]
        tile_w = (array.shape[1] + 1) / columns
        tile_h = (array.shape[0] + 1) / rows
        top = height - band - numbers
        for column in range(columns):
            figure.text(
                (left + (column + 0.5) * tile_w) / width,
                (top + 2) / height,
                str(column),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        for row in range(rows):
            figure.text(
                (left - 4) / width,
                (top - (row + 0.5) * tile_h) / height,
                str(row * columns),
                ha="right",
                va="center",
                fontsize=8,
            )
    if colorbar:
        low, high, cmap = colorbar
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        bottom = height - band - numbers - tallest
        cax = figure.add_axes(
            ((width - right + 10) / width, bottom / height, 12 / width, tallest / height)
        )
        mappable = ScalarMappable(norm=Normalize(low, high), cmap=cmap)
        figure.colorbar(mappable, cax=cax).ax.tick_params(labelsize=8)
    return figure
