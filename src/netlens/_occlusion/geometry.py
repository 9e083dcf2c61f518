"""Where the occluder goes: its window and stride over the last dims of a sample, and its grid.

:class:`OccluderGrid` answers the index arithmetic of the occluder's positions: how many there
are along each window dim, the flat indices each window hides, where each window starts, which
elements each window covers (to spread each position's drop back over the input), and where each
position's cell sits when a per-position map is drawn over the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from .._core.checks import check_sizes
from .._core.errors import NetlensValueError

__all__ = ["OccluderGrid", "check_grid", "spread_drops"]


@dataclass(frozen=True)
class OccluderGrid:
    """The occluder's window and stride over the last ``len(window)`` dims of one sample.

    Attributes:
        sample_shape: The shape of one input, without the batch dim.
        window: The occluder's size over the last ``len(window)`` dims.
        stride: The step between positions in each of those dims.
    """

    sample_shape: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def occluded_shape(self) -> tuple[int, ...]:
        """The sizes of the dims the window covers."""
        return self.sample_shape[len(self.sample_shape) - len(self.window) :]

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of positions along each window dim."""
        return tuple(
            (size - window) // stride + 1
            for size, window, stride in zip(
                self.occluded_shape, self.window, self.stride, strict=True
            )
        )

    @property
    def positions(self) -> int:
        """Number of positions in all."""
        return math.prod(self.grid)

    @property
    def plane_size(self) -> int:
        """Number of elements of the occluded dims of one sample."""
        return math.prod(self.occluded_shape)

    def plane_strides(self) -> list[int]:
        """The flat-index step of each occluded dim."""
        shape = self.occluded_shape
        return [math.prod(shape[d + 1 :]) for d in range(len(shape))]

    def cells(self, start: int, stop: int, device: torch.device) -> torch.Tensor:
        """``(stop - start, window size)``: flat plane indices under the window at each position."""
        plane_strides = self.plane_strides()
        offsets = torch.zeros(1, dtype=torch.long, device=device)
        for size, step in zip(self.window, plane_strides, strict=True):
            offsets = (offsets[:, None] + torch.arange(size, device=device) * step).reshape(-1)
        remaining = torch.arange(start, stop, device=device)
        origin = torch.zeros_like(remaining)
        for d in reversed(range(len(self.grid))):
            origin += (remaining % self.grid[d]) * (self.stride[d] * plane_strides[d])
            remaining = remaining // self.grid[d]
        return origin[:, None] + offsets[None, :]

    def origins(self) -> torch.Tensor:
        """``(positions, len(window))`` (int64, CPU): where each window starts, in order."""
        axes = [
            torch.arange(count) * stride
            for count, stride in zip(self.grid, self.stride, strict=True)
        ]
        return torch.cartesian_prod(*axes).reshape(self.positions, len(self.window))

    def coverage(self, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
        """Per window dim, ``(grid, size)``: 1 where the window at a position covers an index."""
        matrices = []
        for size, window, stride, count in zip(
            self.occluded_shape, self.window, self.stride, self.grid, strict=True
        ):
            index = torch.arange(size, device=device)
            start = torch.arange(count, device=device)[:, None] * stride
            matrices.append(((index >= start) & (index < start + window)).to(dtype))
        return matrices

    # -- drawing per-position maps over the input's plane (its last two dims) ----------------

    def check_drawable(self) -> None:
        """Refuse an occluder that moves over dims before the drawn plane (the last two)."""
        plane_dims = min(2, len(self.sample_shape))
        extra = len(self.window) - plane_dims
        if extra > 0 and any(n != 1 for n in self.grid[:extra]):
            raise NetlensValueError(
                "Expected the occluder to move over the last two dims of the input only, to draw "
                f"its maps, but it has {self.grid} positions over a window of {self.window}."
            )

    def plane(self) -> tuple[int, int]:
        """``(height, width)`` of the drawn plane: the last two dims, or one row of one."""
        shape = self.sample_shape
        return (shape[-2], shape[-1]) if len(shape) >= 2 else (1, shape[-1])

    def plane_extent(self) -> tuple[float, float, float, float]:
        """``(left, right, bottom, top)`` of the cells of a per-position map over the plane.

        Each cell is centred on its window; one position fills its whole window.
        """
        shape = self.sample_shape
        plane = shape[-2:] if len(shape) >= 2 else (1, *shape)
        first_window_dim = len(shape) - len(self.window)
        spans: list[tuple[float, float]] = []
        for offset, size in enumerate(plane):
            dim = len(shape) - len(plane) + offset
            if dim < first_window_dim or dim < 0:
                spans.append((-0.5, size - 0.5))
                continue
            index = dim - first_window_dim
            window, stride, count = self.window[index], self.stride[index], self.grid[index]
            width = stride if count > 1 else window
            start = (window - 1) / 2 - width / 2
            spans.append((start, start + (count - 1) * stride + width))
        (top, bottom), (left, right) = spans
        return left, right, bottom, top

    # -- maps along a sequence: tokens, time steps, rows --------------------------------------

    def sequence_axis(self) -> Literal["x", "y"] | None:
        """Along which axis of the drawn plane the per-position maps are one-dimensional.

        ``"x"`` when the window moves along the last dim only (a sequence of tokens or values,
        a window ``(k,)`` over ``(C, L)`` signals); ``"y"`` when it moves along the second to
        last dim, covering the whole last one (row sequences ``(T, F)`` with a ``(k, F)``
        window); None for maps over two dims (images).
        """
        shape, window, grid = self.sample_shape, self.window, self.grid
        if len(shape) == 1 or len(window) == 1:
            return "x"
        whole_rows = grid[-2] == 1 and window[-2] == shape[-2]
        whole_columns = grid[-1] == 1 and window[-1] == shape[-1]
        if whole_columns and not whole_rows:
            return "y"
        if whole_rows and not whole_columns:
            return "x"
        return None

    def sequence_length(self) -> int:
        """How many positions the sequence has (see :meth:`sequence_axis`)."""
        return self.sample_shape[-1] if self.sequence_axis() == "x" else self.sample_shape[-2]

    def _sequence_window(self) -> tuple[int, int, int]:
        """``(window, stride, positions)`` of the occluder along the sequence."""
        index = -1 if self.sequence_axis() == "x" else -2
        return self.window[index], self.stride[index], self.grid[index]

    def sequence_span(self) -> tuple[float, float]:
        """Where the first cell of a per-position map starts and its last ends, along the sequence.

        Each cell is centred on its window; one position fills its whole window.
        """
        window, stride, count = self._sequence_window()
        width = stride if count > 1 else window
        start = (window - 1) / 2 - width / 2
        return start, start + (count - 1) * stride + width

    def sequence_centres(self) -> torch.Tensor:
        """The centre of each window along the sequence (float64, CPU), in order."""
        window, stride, count = self._sequence_window()
        return torch.arange(count, dtype=torch.float64) * stride + (window - 1) / 2

    def plane_cells(self, values: torch.Tensor) -> torch.Tensor:
        """A per-position map (``grid`` values) as a 2-D array of cells over the plane."""
        plane_dims = min(2, len(self.sample_shape))
        windowed = min(plane_dims, len(self.window))
        cells = values.reshape(self.grid[len(self.grid) - windowed :])
        while cells.dim() < 2:
            cells = cells.unsqueeze(0)
        return cells


def check_grid(inputs: torch.Tensor, window: object, stride: object) -> OccluderGrid:
    """The occluder's grid over ``inputs`` ``(N, ...)``, from the user's window and stride.

    An int window covers every dim after dim 1 (the channels of images); the default stride is
    the window (no overlap).
    """
    sample_shape = tuple(inputs.shape[1:])
    default_rank = max(1, len(sample_shape) - 1)
    if isinstance(window, (list, tuple)) and not 1 <= len(window) <= len(sample_shape):
        raise NetlensValueError(
            f"Expected a window of 1 to {len(sample_shape)} sizes for inputs of shape "
            f"{tuple(inputs.shape)} (it covers the last len(window) dims), but got {len(window)} "
            f"sizes: {tuple(window)}."
        )
    windows = check_sizes("window", window, default_rank)
    occluded = sample_shape[len(sample_shape) - len(windows) :]
    if any(w > size for w, size in zip(windows, occluded, strict=True)):
        raise NetlensValueError(
            f"Expected a window no larger than the occluded dims {occluded} of inputs of shape "
            f"{tuple(inputs.shape)}, but got window {windows}."
        )
    if stride is None:
        strides = windows
    else:
        if isinstance(stride, (list, tuple)) and len(stride) != len(windows):
            raise NetlensValueError(
                f"Expected one stride per window dim ({len(windows)}), but got {tuple(stride)}."
            )
        strides = check_sizes("stride", stride, len(windows))
        # A stride past the free space means one position; clamped, so that no index
        # arithmetic overflows (stride=2**62).
        strides = tuple(
            min(step, size - w + 1)
            for step, size, w in zip(strides, occluded, windows, strict=True)
        )
    return OccluderGrid(sample_shape, windows, strides)


def spread_drops(drops: torch.Tensor, grid: OccluderGrid) -> torch.Tensor:
    """Spread each position's drop over its window and average per element (the attribution).

    The window is a box, so its indicator factorises over dims: contracting the drops with one
    coverage matrix per dim sums them per element without a loop over positions.

    Args:
        drops: ``(N, *grid)``, the drop of the target score at each position.
        grid: The occluder's grid.

    Returns:
        ``(N, *sample_shape)``; 0 where no window covers an element.
    """
    matrices = grid.coverage(drops.dtype, drops.device)
    total = drops
    count = torch.ones((), dtype=drops.dtype, device=drops.device)
    for matrix in matrices:
        total = torch.tensordot(total, matrix, dims=([1], [0]))  # grid dim out, size dim in (last)
        count = count[..., None] * matrix.sum(0)
    average = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    shape = (drops.shape[0],) + (1,) * (len(grid.sample_shape) - len(grid.window))
    average = average.reshape(shape + grid.occluded_shape)
    return average.expand(drops.shape[0], *grid.sample_shape).contiguous()
