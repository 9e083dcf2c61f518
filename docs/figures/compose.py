"""Compose pictures of the docs from pictures the other figure scripts made; no model needed.

    python docs/figures/compose.py

writes

- ``docs/_static/landing/top9_narrow.png``: the landing page's ``top9.png`` (two columns of
  channels) rearranged into one column, for phones: at 390 px the wide picture's labels are
  4 px high, this one's about 8;
- ``docs/_static/maximization/rgb_conv2_head.png``: the first three rows (24 channels) of
  ``rgb_conv2.png``, the picture the maximisation guide opens with;
- ``docs/_static/getting_started.png``: four of the landing page's card pictures side by side
  (a recording, statistics, occlusion, maximisation), the picture getting started opens with.

Pixels are copied, never resampled.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from PIL import Image

STATIC = Path(__file__).resolve().parents[1] / "_static"


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _blank_rows(image: np.ndarray) -> np.ndarray:
    """Indices of the rows that are white from edge to edge."""
    return np.flatnonzero((image.min(axis=2) >= 250).all(axis=1))


def top9_narrow() -> None:
    wide = _rgb(STATIC / "landing" / "top9.png")
    height, width, _ = wide.shape
    half = width // 2
    # The title is the first band of non-white rows; the channels start at the next blank gap.
    blank = _blank_rows(wide)
    title_end = int(blank[blank > int(np.flatnonzero(~np.isin(np.arange(height), blank))[0])][0])
    title = wide[:title_end, half // 2 : half // 2 + half]
    body = wide[title_end:]
    column = np.concatenate([title, body[:, :half], body[:, half:]], axis=0)
    Image.fromarray(column).save(STATIC / "landing" / "top9_narrow.png", optimize=True)


def rgb_conv2_head(rows: int = 3) -> None:
    grid = _rgb(STATIC / "maximization" / "rgb_conv2.png")
    blank = _blank_rows(grid)
    # Where each run of blank rows starts; a row of the grid is a band of channel numbers and a
    # band of tiles, each followed by such a run.
    run_starts = [int(b) for a, b in itertools.pairwise(blank) if b != a + 1]
    cut = run_starts[2 * rows - 1] if len(run_starts) >= 2 * rows else grid.shape[0]
    Image.fromarray(grid[:cut]).save(STATIC / "maximization" / "rgb_conv2_head.png", optimize=True)


def getting_started() -> None:
    names = ["record", "statistics", "occlusion", "maximization"]
    cards = [_rgb(STATIC / "landing" / f"{name}.png") for name in names]
    gap = np.full((cards[0].shape[0], 12, 3), 255, dtype=np.uint8)
    row: list[np.ndarray] = []
    for card in cards:
        row += [card, gap]
    Image.fromarray(np.concatenate(row[:-1], axis=1)).save(
        STATIC / "getting_started.png", optimize=True
    )


if __name__ == "__main__":
    top9_narrow()
    rgb_conv2_head()
    getting_started()
