"""Pictures for the atlas as PNG bytes: tensors to RGB, strips of tiles, a small PNG encoder.

The atlas writes thousands of small pictures; drawing each with a Matplotlib figure would take
tens of milliseconds apiece. These functions turn tensors into 8-bit RGB arrays directly
(colour maps are Matplotlib's, read once as lookup tables) and encode them with :mod:`zlib`.
"""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache

import numpy as np
import torch

__all__ = ["as_rgb", "as_rgbs", "fit", "png_bytes", "strip", "to_image", "to_images"]


@lru_cache(maxsize=8)
def _lookup(cmap: str) -> np.ndarray:
    """A colour map as a (256, 3) uint8 table (Matplotlib imported only here)."""
    from matplotlib import colormaps

    return (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def to_image(values: torch.Tensor) -> torch.Tensor:
    """An input-like tensor as a picture ``(H, W)`` or ``(H, W, 3)`` to colour or grey.

    ``(3, H, W)`` is RGB; ``(1, H, W)`` and ``(H, W)`` are grey; other channel counts are
    averaged; a 1-D tensor (one step of a sequence) becomes one row.
    """
    return to_images(values[None])[0]


def to_images(values: torch.Tensor) -> torch.Tensor:
    """:func:`to_image` of each of a batch ``(k, *input)``: ``(k, H, W)`` or ``(k, H, W, 3)``."""
    values = values.detach().to("cpu", torch.float64)
    if values.dim() == 2:
        return values[:, None]
    if values.dim() == 3:
        return values
    if values.dim() > 4:
        values = values.flatten(1, values.dim() - 3)  # e.g. (C, D, H, W): depth into channels
    if values.shape[1] == 3:
        return values.permute(0, 2, 3, 1)
    return values.mean(1)


def as_rgb(
    image: torch.Tensor,
    *,
    cmap: str = "gray",
    symmetric: bool = False,
    limits: tuple[float, float] | None = None,
) -> np.ndarray:
    """A picture from :func:`to_image` as ``(H, W, 3)`` uint8, scaled to its own range.

    A grey picture goes through ``cmap``; ``symmetric`` centres the range at zero (weights,
    projections); ``limits`` fixes the range instead. Non-finite values draw as black.
    """
    picture: np.ndarray = as_rgbs(image[None], cmap=cmap, symmetric=symmetric, limits=limits)[0]
    return picture


def as_rgbs(
    images: torch.Tensor,
    *,
    cmap: str = "gray",
    symmetric: bool = False,
    limits: tuple[float, float] | None = None,
) -> np.ndarray:
    """:func:`as_rgb` of each of a batch from :func:`to_images`, each on its own range."""
    values = images.detach().to("cpu", torch.float64).numpy()
    count = values.shape[0]
    finite = np.isfinite(values)
    flat = values.reshape(count, -1)
    seen = finite.reshape(count, -1)
    if limits is not None:
        low = np.full(count, limits[0])
        high = np.full(count, limits[1])
    else:
        low = np.where(seen, flat, np.inf).min(axis=1)
        high = np.where(seen, flat, -np.inf).max(axis=1)
        empty = ~seen.any(axis=1)
        low[empty], high[empty] = 0.0, 1.0
    if symmetric:
        high = np.maximum(np.abs(low), np.abs(high))
        low = -high
    span = (high - low).reshape(count, *([1] * (values.ndim - 1)))
    low = low.reshape(span.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(span > 0, (values - low) / np.where(span > 0, span, 1.0), 0.5)
    scaled = np.where(finite, scaled, 0.0)
    levels = np.clip(scaled * 255 + 0.5, 0, 255).astype(np.uint8)
    if levels.ndim == 4:
        return levels
    rgb = _lookup(cmap)[levels]
    rgb[~finite] = 0
    return rgb


def strip(tiles: list[np.ndarray], *, gap: int = 1, columns: int | None = None) -> np.ndarray:
    """Equal-sized RGB tiles side by side (``columns`` per row), white between them."""
    if not tiles:
        return np.full((1, 1, 3), 255, dtype=np.uint8)
    height, width = tiles[0].shape[:2]
    columns = len(tiles) if columns is None else max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    sheet = np.full(
        (rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3),
        255,
        dtype=np.uint8,
    )
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        top, left = row * (height + gap), column * (width + gap)
        sheet[top : top + height, left : left + width] = tile
    return sheet


def fit(rgb: np.ndarray, size: int) -> np.ndarray:
    """Upscale by whole pixels towards ``size`` (never down: small inputs stay sharp).

    ``rgb`` is ``(H, W, 3)`` or a batch ``(k, H, W, 3)``.
    """
    height, width = rgb.shape[-3], rgb.shape[-2]
    factor = max(1, size // max(1, height, width))
    if factor == 1:
        return rgb
    return rgb.repeat(factor, axis=-3).repeat(factor, axis=-2)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode ``(H, W, 3)`` uint8 as a PNG (8-bit RGB, no interlace)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width = rgb.shape[:2]
    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, -1)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        # level 1: several times faster than the default, and a few percent larger here
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
        + chunk(b"IEND", b"")
    )
