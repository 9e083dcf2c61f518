"""The plain path: every occluded copy through the whole model, a chunk of copies per pass.

The copies of a chunk are built at once by index arithmetic (the flat indices under each
window, one scatter; no Python loop over positions) in a buffer reused from pass to pass, and
evaluated ``batch_size`` copies per forward pass or as many as the memory budget allows, which
the first pass measures.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

import torch
from torch import nn

from .._core.errors import NetlensValueError
from .._core.hooks import Hooks
from .._core.model import batched_inputs, progress_bar
from .._core.outputs import LayerView, first_tensor
from .tally import Tally, check_finite_sums

if TYPE_CHECKING:
    from .geometry import OccluderGrid
    from .job import OcclusionJob

__all__ = [
    "ChannelSums",
    "Chunk",
    "PlainPasses",
    "copy_count",
    "output_bytes",
    "plan_chunks",
    "whole_positions",
]

# A chunk of copies: (first slot, stop slot, first input, stop input); slot 0 holds the
# unoccluded inputs, slot k the occluder at position k - 1.
Chunk: TypeAlias = tuple[int, int, int, int]


class PlainPasses:
    """Runs chunks of occluded copies through the whole model and reports them to a tally.

    Args:
        job: The checked occlusion request.
        tally: Where each pass's scores and sums go.
        feature: The hook that sums the recorded layer's channels, or None without a layer.
    """

    def __init__(self, job: OcclusionJob, tally: Tally, feature: ChannelSums | None) -> None:
        self.job = job
        self.model = job.model
        self.tally = tally
        self.feature = feature
        count, grid = job.inputs.shape[0], job.grid
        self.copies = Copies(job.inputs.reshape(count, -1, grid.plane_size), job.baseline, grid)

    @contextmanager
    def hooked(self) -> Iterator[None]:
        """The recorded layer's hook, installed for the block."""
        with Hooks() as hooks:
            if self.feature is not None:
                hooks.forward(self.feature.view.module, self.feature.hook)
            yield

    def run(self, chunk: Chunk) -> None:
        """Evaluate one chunk of occluded copies through the model and tally what it says."""
        first, stop, n_first, n_stop = chunk
        rows = (stop - first) * (n_stop - n_first)
        if self.feature is not None:
            self.feature.rows = rows
        output = self.model(self.copies.make(chunk))
        scores = self.tally.scores(output, rows)
        sums = None if self.feature is None else self.feature.take()
        self.tally.add(chunk, scores, sums)

    def run_chunks(self, chunks: list[Chunk], progress: bool) -> None:
        """These chunks of occluded copies through the whole model."""
        with self.hooked():
            for chunk in progress_bar(
                chunks, enabled=progress, desc="occlusion", unit="batch", total=len(chunks)
            ):
                self.run(chunk)

    def run_all(self, rows: int) -> None:
        """Every occluded copy through the whole model, ``rows`` at a time, from slot 0 on.

        The unoccluded inputs ride along in the first pass; without ``batch_size``, that pass
        measures the model's activations to size the passes after it.
        """
        job, count = self.job, self.tally.count
        slots = job.grid.positions + 1
        planes = self.copies.planes
        sample_bytes = planes[0].numel() * planes.element_size()
        first, *chunks = plan_chunks(0, 0, slots, count, rows)
        measure = job.batch_size is None and bool(chunks)
        with (
            self.hooked(),
            batched_inputs(self.model, tuple(job.inputs.shape)),
            output_bytes(self.model, measure) as total,
        ):
            self.run(first)
        if measure:
            rows = max(1, int(job.budget // (3 * sample_bytes + total[0] / copy_count(first))))
            resume, offset = (first[1], 0) if first[3] == count else (first[0], first[3])
            chunks = plan_chunks(resume, offset, slots, count, rows)
        self.run_chunks(chunks, job.progress)


def copy_count(chunk: Chunk) -> int:
    """The number of copies (rows of the forward pass) of a chunk."""
    return (chunk[1] - chunk[0]) * (chunk[3] - chunk[2])


def whole_positions(chunk: Chunk, count: int) -> torch.Tensor:
    """The positions a plain chunk computed for every input (slot ``k`` is position ``k - 1``)."""
    if chunk[2] != 0 or chunk[3] != count:
        return torch.zeros(0, dtype=torch.long)
    return torch.arange(chunk[0] - 1, chunk[1] - 1)


def plan_chunks(start: int, offset: int, stop: int, count: int, rows: int) -> list[Chunk]:
    """Chunks ``(first slot, stop slot, first input, stop input)`` of at most ``rows`` copies.

    They start at slot ``start``, input ``offset``, and take whole slots when the inputs fit,
    else one slot split over the inputs.
    """
    chunks: list[Chunk] = []
    if offset:
        chunks += [(start, start + 1, n, min(n + rows, count)) for n in range(offset, count, rows)]
        start += 1
    if rows >= count:
        step = rows // count
        chunks += [(p, min(p + step, stop), 0, count) for p in range(start, stop, step)]
    else:
        chunks += [
            (p, p + 1, n, min(n + rows, count))
            for p in range(start, stop)
            for n in range(0, count, rows)
        ]
    return chunks


class Copies:
    """The occluded copies of each pass, built in one buffer that is reused from pass to pass.

    Rows of the buffer are ``(slot, input)`` pairs. A pass over every input puts back what the
    previous pass hid (a scatter of the window's cells) and hides the new windows: work in
    proportion to the window rather than to the input. A pass over part of the inputs, or one
    after a forward pass that wrote into its input (seen on the buffer's version counter),
    refreshes the copies from the inputs first.
    """

    def __init__(self, planes: torch.Tensor, baseline: torch.Tensor, grid: OccluderGrid) -> None:
        self.planes = planes  # (inputs, lead, plane)
        self.baseline = baseline.expand(planes.shape)
        self.grid = grid
        self.buffer = _tracked_empty(planes, (0, *planes.shape))
        # Cells hidden in each slot row of the buffer; rows past it hold no valid copy.
        self.hidden = torch.zeros(0, 1, dtype=torch.long, device=planes.device)
        self.version = -1

    def make(self, chunk: Chunk) -> torch.Tensor:
        """The copies of a chunk, slot-major: ``(slots * inputs, *sample_shape)``."""
        first, stop, n_first, n_stop = chunk
        slots, members = stop - first, n_stop - n_first
        every_input = members == self.planes.shape[0]
        cells = self.grid.cells(max(first, 1) - 1, stop - 1, self.planes.device)
        if first == 0:  # the unoccluded inputs: their row "hides" cell 0 under its own value
            cells = torch.cat([cells.new_zeros(1, cells.shape[1]), cells])
        reuse = (
            every_input and slots <= self.hidden.shape[0] and self.buffer._version == self.version
        )
        if not reuse and (self.buffer.shape[0] < slots or self.buffer.shape[1] != members):
            self.buffer = _tracked_empty(self.planes, (slots, members, *self.planes.shape[1:]))
        rows = self.buffer[:slots]
        original = self.planes[None, n_first:n_stop]
        if reuse:
            rows.scatter_(3, *_cells_of(original, self.hidden[:slots], members))
            self.hidden[:slots] = cells
        else:
            rows.copy_(original.expand_as(rows))
            self.hidden = cells if every_input else cells[:0]
        hide = 1 if first == 0 else 0
        base = self.baseline[None, n_first:n_stop]
        rows[hide:].scatter_(3, *_cells_of(base, cells[hide:], members))
        self.version = self.buffer._version
        return rows.reshape(slots * members, *self.grid.sample_shape)


def _tracked_empty(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A new tensor with a version counter, also under ``torch.inference_mode()``.

    Tensors made in inference mode have none, and the copies' buffer needs one to notice a model
    that writes into its input.
    """
    with torch.inference_mode(False):
        return like.new_empty(shape)


def _cells_of(
    source: torch.Tensor, cells: torch.Tensor, members: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index and values for ``scatter_`` along the plane dim: ``source`` at ``cells`` per row.

    ``source`` is ``(1, members, lead, plane)``, ``cells`` is ``(rows, window size)``.
    """
    shape = (cells.shape[0], members, source.shape[2], cells.shape[1])
    index = cells[:, None, None, :].expand(shape)
    return index, source.expand(shape[:3] + source.shape[3:]).gather(3, index)


class ChannelSums:
    """The channel sums of one layer's output in the latest forward pass.

    Summed in the forward hook itself, so that a later in-place operation (a ReLU after a conv)
    cannot change them and no output is kept alive. The layer's latest call per pass counts.
    """

    def __init__(self, view: LayerView) -> None:
        self.view = view
        self.rows = 0
        self.sums: torch.Tensor | None = None

    def hook(self, module: nn.Module, args: Any, output: Any) -> None:
        arranged = self.view.arrange(self.view.tensor(output), self.rows)  # (N, C, *rest)
        self.sums = (
            arranged.sum(tuple(range(2, arranged.dim()))) if arranged.dim() > 2 else arranged
        )

    def take(self) -> torch.Tensor:
        """``(rows, channels)`` of the pass just run."""
        sums, self.sums = self.sums, None
        if sums is None:
            raise NetlensValueError(
                f"Expected layer {self.view.name!r} to run in the model's forward pass, but it "
                "did not run."
            )
        check_finite_sums(sums, self.view.name)
        return sums


@contextmanager
def output_bytes(model: nn.Module, enabled: bool) -> Iterator[list[int]]:
    """Count the bytes of every leaf module's output during the block (in ``total[0]``)."""
    total = [0]
    if not enabled:
        yield total
        return

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        tensor = first_tensor(output, module)
        if tensor is not None:
            total[0] += tensor.numel() * tensor.element_size()

    with Hooks() as hooks:
        for module in model.modules():
            if next(module.children(), None) is None:
                hooks.forward(module, hook)
        yield total
