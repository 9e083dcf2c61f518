"""Which path computes the occluded copies, and running it: plain, incremental or ``"auto"``.

``incremental=False`` runs every copy through the whole model (``plain``). ``True`` builds the
incremental engine, checked against the model's own output on the unoccluded inputs, or says
what prevents it. ``"auto"`` builds it only where the unoccluded pass says that building costs
little beside the plain path and the engine's plan needs few enough multiply-adds, and then
keeps it only if its passes, timed, are faster per copy than the plain path's.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from .._core.errors import NetlensValueError
from .._core.model import batched_inputs, evaluating, progress_bar
from .incremental.engine import Engine, build, check_inputs, trace
from .incremental.plan import AUTO_SHARE, worth_trying
from .incremental.trace import Unavailable
from .job import Mode, OcclusionJob
from .plain import (
    ChannelSums,
    PlainPasses,
    copy_count,
    output_bytes,
    plan_chunks,
    whole_positions,
)
from .tally import Tally, checked_scores

__all__ = ["run_job"]

# The first forward pass, before anything is measured, assumes that the model's activations take
# up to this many times the bytes of its input.
_FIRST_GUESS = 256


def run_job(job: OcclusionJob) -> tuple[Tally, bool]:
    """Compute every occluded copy of the job; say whether incremental inference did.

    Returns:
        The tally of every position of every input, and whether the engine computed (part of)
        them.
    """
    tally = Tally(job)
    feature = None if job.layer is None else ChannelSums(job.layer)
    plain = PlainPasses(job, tally, feature)
    inputs = job.inputs
    sample_bytes = inputs[0].numel() * inputs.element_size()
    # Without batch_size, the first pass assumes activations up to _FIRST_GUESS times the input;
    # when more passes follow, it measures every module's outputs to size them.
    rows = job.batch_size or max(1, job.budget // (sample_bytes * (3 + _FIRST_GUESS)))
    engine = None
    with evaluating(job.model), torch.no_grad():
        candidate = job.mode is not False
        if candidate:
            try:
                check_inputs(inputs)
            except Unavailable as reason:
                _refuse(job.mode, reason)
                candidate = False
        if not candidate:
            plain.run_all(rows)
        else:
            engine = _run_candidate(job, plain, rows)
    return tally, engine is not None


def _run_candidate(job: OcclusionJob, plain: PlainPasses, rows: int) -> Engine | None:
    """Run a job that incremental inference may compute; returns the engine if it did.

    The unoccluded inputs alone go through the model first: the reference of every map, what
    the traced graph must reproduce before it is trusted, and the size of the job.
    """
    tally, count, mode = plain.tally, plain.tally.count, job.mode
    positions = job.grid.positions
    started = time.perf_counter()
    with (
        plain.hooked(),
        batched_inputs(job.model, tuple(job.inputs.shape)),
        output_bytes(job.model, job.batch_size is None) as total,
    ):
        for chunk in plan_chunks(0, 0, 1, count, rows):
            plain.run(chunk)
    unoccluded = time.perf_counter() - started
    small = mode == "auto" and not worth_trying(job.model, unoccluded, positions)
    if job.batch_size is None:
        sample_bytes = job.inputs[0].numel() * job.inputs.element_size()
        rows = max(1, int(job.budget // (3 * sample_bytes + total[0] / count)))
    chunks = plan_chunks(1, 0, positions + 1, count, rows)
    if mode == "auto" and not small and len(chunks) < 4:
        # A quarter of the copies at most in the timed chunk, so that timing it leaves the rest
        # to the faster path.
        rows = max(1, -(-positions * count // 4))
        chunks = plan_chunks(1, 0, positions + 1, count, rows)
    done = 0  # chunks of the plain path already run
    plain_seconds = math.inf
    if mode == "auto" and not small and len(chunks) > 1:
        # Time the plain path on its first chunk: what the incremental one must beat.
        started = time.perf_counter()
        plain.run_chunks(chunks[:1], False)
        plain_seconds = (time.perf_counter() - started) / copy_count(chunks[0])
        done = 1
    engine = None
    if mode is True or (not small and len(chunks) > done):
        engine = _engine(job, tally)
    if engine is not None and done:
        engine.skip(whole_positions(chunks[0], count))
        engine = _faster(engine, tally, plain_seconds, copy_count(chunks[0]))
    if engine is None:
        plain.run_chunks(chunks[done:], job.progress)
    else:
        _run_incremental(engine, tally, job.progress)
    return engine


def _run_incremental(engine: Engine, tally: Tally, progress: bool) -> None:
    """Every batch the engine has left, by incremental inference."""
    for batch in progress_bar(
        engine.batches(),
        enabled=progress,
        desc="occlusion",
        unit="batch",
        total=engine.batch_count(),
    ):
        output, sums = engine.evaluate(batch)
        tally.record(batch.positions, batch.first, batch.stop, output, sums)


def _faster(engine: Engine, tally: Tally, plain_seconds: float, rows: int) -> Engine | None:
    """The engine if its passes are faster per copy than the plain path's; else None.

    Under ``incremental="auto"``: the engine runs its first two batches of at most ``rows``
    copies (the plain path's timed chunk; what they compute is kept) and the second one is
    timed (the first also pays for new shapes, once per run), against the plain path's first
    chunk, timed before. Tracing and planning are spent either way; the choice is about what
    is left.
    """
    timed = engine.first_batches(2, rows)
    if len(timed) > 1 and timed[1].group != timed[0].group:
        timed = timed[:1]
    seconds = 0.0
    for batch in timed:
        started = time.perf_counter()
        output, sums = engine.evaluate(batch)
        seconds = time.perf_counter() - started
        tally.record(batch.positions, batch.first, batch.stop, output, sums)
    if timed:
        engine.skip(torch.cat([batch.positions for batch in timed]))
        last = timed[-1]
        per_copy = seconds / (len(last.positions) * (last.stop - last.first))
        if engine.groups and per_copy >= plain_seconds:
            return None
    return engine


def _refuse(mode: Mode, reason: Unavailable) -> None:
    """Under ``incremental=True``, say what prevents incremental inference; else nothing."""
    if mode is True:
        raise NetlensValueError(
            "Expected a model and inputs that incremental inference can run on "
            f"(incremental=True), but {reason}. Pass incremental='auto' to run every occluded "
            "copy through the model where it cannot, or incremental=False."
        ) from None


def _engine(job: OcclusionJob, tally: Tally) -> Engine | None:
    """The incremental engine, checked against the model's own unoccluded pass; or None."""
    view = job.layer
    expected_scores = torch.cat(tally.unoccluded_scores)
    expected_sums = torch.cat(tally.unoccluded_sums) if tally.unoccluded_sums else None

    def check(first: int, stop: int, output: Any, sums: torch.Tensor | None) -> None:
        """The traced graph must give the model's own output on the unoccluded inputs."""
        traced = checked_scores(job.scores, output, stop - first, job.custom_scores)
        if not _close(traced, expected_scores[first:stop]):
            raise Unavailable(
                "the traced graph's output on the unoccluded inputs differs from the model's "
                "(the forward pass does something torch.fx does not record)"
            )
        if (
            sums is not None
            and expected_sums is not None
            and not _close(sums, expected_sums[first:stop])
        ):
            assert view is not None
            raise Unavailable(f"layer {view.name!r} outputs other values in the traced graph")

    try:
        engine = build(
            trace(job.model, job.inputs, view),
            job.inputs,
            job.full_baseline(),
            job.grid.origins(),
            job.grid.window,
            view,
            job.budget,
            job.batch_size,
            check,
        )
    except Unavailable as reason:
        _refuse(job.mode, reason)
        return None
    if job.mode == "auto" and engine.incremental_macs > AUTO_SHARE * engine.plain_macs:
        return None  # too little to save: not worth timing
    return engine


def _close(found: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal up to the rounding of the same operations run in another batch."""
    if found.shape != expected.shape:
        return False
    tolerance = {torch.float64: 1e-9, torch.float32: 1e-4}.get(expected.dtype, 1e-2)
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return bool(torch.allclose(found, expected, rtol=tolerance, atol=tolerance * scale))
