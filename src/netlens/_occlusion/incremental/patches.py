"""A changed box pasted into a kept map, and the index arithmetic that gathers and pastes boxes.

A pass holds each patched map as a :class:`Patch`: the box each copy changed, where it starts,
and the kept unoccluded map around it. Window operations gather a window around a box (from the
patch where it covers the window, else from the kept map with the box pasted in); an operation
that reads the whole map gets the kept map with the box pasted in (:func:`materialize`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Patch", "Skipped", "box_locations", "gather", "gather_kept", "materialize"]


@dataclass
class Patch:
    """A changed map of one batch: ``data`` is the box at ``start`` of each copy.

    ``data`` is ``(P, M, C, *size)`` for P positions and M inputs, ``start`` ``(P, d)``;
    ``clean`` the kept activation of the M inputs ``(M, C, *S)`` (None where never needed).
    """

    data: torch.Tensor
    start: torch.Tensor
    clean: torch.Tensor | None


@dataclass
class Skipped:
    """A flatten whose only users take the change of its input (``delta`` steps)."""


def box_locations(
    origin: torch.Tensor, size: tuple[int, ...], bounds: tuple[int, ...]
) -> torch.Tensor:
    """``(P, prod(size))``: the flat index in a map of ``bounds`` of each element of a box.

    ``origin`` (``(P, d)``, on the CPU) is each box's first corner; the boxes lie in the map.
    """
    count = origin.shape[0]
    flat = torch.zeros((count,) + (1,) * len(size), dtype=torch.long)
    step = 1
    for dim in reversed(range(len(size))):
        shape = [count] + [1] * len(size)
        shape[dim + 1] = size[dim]
        flat = flat + (origin[:, dim, None] + torch.arange(size[dim])).view(shape) * step
        step *= bounds[dim]
    return flat.expand((count, *size)).reshape(count, -1)


def _overlap(
    origin: Sequence[int], size: Sequence[int], other: Sequence[int], other_size: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Where the box ``origin, size`` meets the box ``other, other_size``: slices into each."""
    mine, theirs = [], []
    for low_a, size_a, low_b, size_b in zip(origin, size, other, other_size, strict=True):
        low, high = max(low_a, low_b), min(low_a + size_a, low_b + size_b)
        if low >= high:
            return None
        mine.append(slice(low - low_a, high - low_a))
        theirs.append(slice(low - low_b, high - low_b))
    return tuple(mine), tuple(theirs)


# Boxes are copied position by position with slices: contiguous copies, several times faster
# than gathering the same elements by index, for the few dozen positions of a pass.
_ALL = (slice(None), slice(None))


def gather_kept(
    kept: torch.Tensor, start: torch.Tensor, size: tuple[int, ...], pad: float
) -> torch.Tensor:
    """The box of ``size`` at each ``start`` (``(P, d)``) of maps ``(M, C, *S)``.

    Returns ``(P, M, C, *size)``; elements outside the maps take ``pad``.
    """
    bounds = tuple(kept.shape[2:])
    origins = start.tolist()
    inside = all(
        low >= 0 and low + extent <= bound
        for origin in origins
        for low, extent, bound in zip(origin, size, bounds, strict=True)
    )
    shape = (len(origins), *kept.shape[:2], *size)
    out = kept.new_empty(shape) if inside else kept.new_full(shape, pad)
    zeros = [0] * len(bounds)
    for index, origin in enumerate(origins):
        found = _overlap(origin, size, zeros, bounds)
        if found is not None:
            out[index][(*_ALL, *found[0])] = kept[(*_ALL, *found[1])]
    return out


def gather(
    source: Patch | torch.Tensor, start: torch.Tensor, size: tuple[int, ...], pad: float
) -> torch.Tensor:
    """The box of ``size`` at ``start`` of each copy's map: ``(P, M, C, *size)``.

    ``source`` is a patch (its box pasted into the kept map) or full maps ``(P, M, C, *S)``.
    Elements outside the map take ``pad`` (the operation's padding value).
    """
    if isinstance(source, torch.Tensor):
        bounds = tuple(source.shape[3:])
        origins = start.tolist()
        shape = (*source.shape[:3], *size)
        out = source.new_full(shape, pad)
        zeros = [0] * len(bounds)
        for index, origin in enumerate(origins):
            found = _overlap(origin, size, zeros, bounds)
            if found is not None:
                out[index][(*_ALL, *found[0])] = source[index][(*_ALL, *found[1])]
        return out
    data = source.data
    patch_size = tuple(data.shape[3:])
    origins, patches = start.tolist(), source.start.tolist()
    within = all(
        low_p <= low and low + extent <= low_p + extent_p
        for origin, patch in zip(origins, patches, strict=True)
        for low, extent, low_p, extent_p in zip(origin, size, patch, patch_size, strict=True)
    )
    if within:
        out = data.new_empty((*data.shape[:3], *size))
    else:  # the box reaches past the patch: the kept map around it
        assert source.clean is not None
        out = gather_kept(source.clean, start, size, pad)
    for index, (origin, patch) in enumerate(zip(origins, patches, strict=True)):
        found = _overlap(origin, size, patch, patch_size)
        if found is not None:
            out[index][(*_ALL, *found[0])] = data[index][(*_ALL, *found[1])]
    return out


def materialize(patch: Patch, bounds: tuple[int, ...]) -> torch.Tensor:
    """The full maps of a patch, ``(P * M, C, *S)``: the kept map with the box pasted in."""
    data = patch.data
    count, members, channels = data.shape[:3]
    size = tuple(data.shape[3:])
    if size == bounds:
        return data.reshape(count * members, channels, *bounds)
    assert patch.clean is not None
    # A copy even for one position: the kept map itself must not be written into.
    full = (
        patch.clean.unsqueeze(0)
        .expand(count, members, channels, *bounds)
        .clone(memory_format=torch.contiguous_format)
    )
    for index, origin in enumerate(patch.start.tolist()):
        box = tuple(slice(low, low + extent) for low, extent in zip(origin, size, strict=True))
        full[index][(*_ALL, *box)] = data[index]
    return full.view(count * members, channels, *bounds)
