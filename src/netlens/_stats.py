"""Streaming per-channel activation statistics over a data set.

A functional core (:func:`_batch_moments` for one tensor, :func:`_merge` for two partial results)
wrapped by a small stateful class, :class:`ActivationStats`, with ``update`` / ``merge`` /
``all_reduce`` / ``compute``. Each tensor is reduced over its innermost dims in its own precision,
then everything is accumulated in float64 and merged with Chan et al.'s parallel formulas, so the
memory used is independent of the number of samples and merging shards gives the same result as
one pass.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sized
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
from torch import nn

from ._core.checks import (
    batches,
    check_bool,
    check_channel_dim,
    check_choice,
    check_dim_in_range,
    check_not_meta,
    count_text,
    prepare_inputs,
)
from ._core.distributed import (
    collective_device,
    gather,
    gather_tensors,
    resolve_group,
    same_group,
)
from ._core.errors import (
    NetlensTypeError,
    NetlensValueError,
    NotRecordedError,
    describe,
    warn,
)
from ._core.layers import LayerSpec, unwrap_parallel
from ._core.model import batched_inputs, evaluating, model_dtype_device, progress_bar
from ._core.outputs import LayerView, Select, layer_views
from ._core.render import Plottable, figure_axes, integer_ticks, set_title
from ._record import Recorder

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["ActivationStats", "ChannelStats", "activation_stats"]


class _Moments(NamedTuple):
    """Per-channel partial statistics, all float64 tensors of shape ``(C,)``.

    ``n`` counts the finite values, ``mean`` and ``m2`` (the sum of squared deviations from
    the mean) are over them; ``minimum``/``maximum`` are ``+inf``/``-inf`` while no finite value
    was seen. Counts are exact in float64 up to 2**53 values per channel.
    """

    n: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor
    minimum: torch.Tensor
    maximum: torch.Tensor
    zeros: torch.Tensor
    nans: torch.Tensor
    infs: torch.Tensor


def _empty(channels: int, device: torch.device) -> _Moments:
    zeros = torch.zeros(channels, dtype=torch.float64, device=device)
    inf = torch.full((channels,), math.inf, dtype=torch.float64, device=device)
    return _Moments(zeros, zeros, zeros, inf, -inf, zeros, zeros, zeros)


def _merge(a: _Moments, b: _Moments) -> _Moments:
    """Chan, Golub & LeVeque's pairwise update: exact up to rounding, in any order."""
    count = a.n + b.n
    safe = count.clamp(min=1)  # channels without any finite value keep mean 0 and m2 0
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.n / safe)
    m2 = a.m2 + b.m2 + delta * delta * (a.n * b.n / safe)
    return _Moments(
        count,
        mean,
        m2,
        torch.minimum(a.minimum, b.minimum),
        torch.maximum(a.maximum, b.maximum),
        a.zeros + b.zeros,
        a.nans + b.nans,
        a.infs + b.infs,
    )


# On the CPU, a tensor is reduced in slices of at most this many values (1 MB in float32), so
# that the several passes over a slice, and the scratch buffer they share, stay in the cache.
_CPU_SLICE_VALUES = 1 << 18
# Sums of squares need no shift while mean**2 <= _UNSHIFTED_RATIO * variance in every channel:
# cancellation then costs at most log2(1 + 16) ~ 4 bits of the float32 partial sums, and those
# rounding errors average out over the many partial sums added in float64.
_UNSHIFTED_RATIO = 16.0


def _batch_moments(
    values: torch.Tensor, shift: torch.Tensor | None, scratch: torch.Tensor | None = None
) -> tuple[_Moments, torch.Tensor, bool]:
    """Statistics of ``values`` shaped ``(outer, C, inner)`` over dims 0 and 2.

    The fast path reduces the contiguous inner dim in the input's precision (pairwise sums of
    at most ``inner`` values), then sums those partial results over ``outer`` in float64. The
    mean comes from sums of the values themselves: subtracting a shift in float32 first would
    bias every value by the same rounding error. The spread comes from sums of squares of
    ``values - shift``, with ``shift`` (when given) close to each channel's mean, so that they
    do not cancel catastrophically. A non-finite minimum or maximum reveals NaN or inf values;
    only then (or when the squares overflow float32) the slower float64 masked path runs.

    ``scratch`` is a buffer to reuse (allocating a large tensor per batch costs page faults on
    the CPU); the one used is returned, and whether the masked path ran (only it counts NaN and
    inf values).
    """
    outer, channels, inner = values.shape
    count = outer * inner
    if not values.is_floating_point():
        values = values.to(torch.float64)
    elif values.dtype not in (torch.float32, torch.float64):
        values = values.float()  # half precision partial sums would lose too much
    per_row = max(1, channels * inner)
    rows = max(1, _CPU_SLICE_VALUES // per_row) if values.device.type == "cpu" else outer
    rows = min(rows, outer)
    if shift is not None:
        shift = shift.to(values.dtype).view(1, channels, 1)
    if (
        scratch is None
        or scratch.numel() < rows * per_row
        or scratch.dtype != values.dtype
        or scratch.device != values.device
        # a buffer made under torch.inference_mode() cannot be written outside it
        or (scratch.is_inference() and not torch.is_inference_mode_enabled())
    ):
        scratch = torch.empty(rows * per_row, dtype=values.dtype, device=values.device)
    partials = [
        _slice_sums(part, shift, scratch[: part.numel()].view(part.shape))
        for part in torch.split(values, rows)
    ]
    sums, minimum, maximum, shifted_sums, norms, zero_counts = (
        torch.cat(parts) for parts in zip(*partials, strict=True)
    )
    minimum = minimum.amin(dim=0).double()
    maximum = maximum.amax(dim=0).double()
    squares = norms.double().square().sum(dim=0)
    # NaN or inf values, or squares beyond float32's range: redo in float64, finite values only
    if not bool(torch.isfinite(torch.cat([minimum, maximum, squares])).all()):
        return _masked_moments(values), scratch, True
    mean = sums.double().sum(dim=0) / count
    shifted_sum = shifted_sums.double().sum(dim=0)
    m2 = squares - shifted_sum * shifted_sum / count
    zeros = zero_counts.double().sum(dim=0)
    full = torch.full_like(mean, float(count))
    nothing = torch.zeros_like(mean)
    moments = _Moments(full, mean, m2.clamp(min=0), minimum, maximum, zeros, nothing, nothing)
    return moments, scratch, False


def _slice_sums(
    part: torch.Tensor, shift: torch.Tensor | None, scratch: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Reductions over the inner dim of one slice ``(rows, C, inner)``, each ``(rows, C)``.

    Zeros are counted by comparing into the float scratch buffer and summing: several times
    faster on the CPU than summing a boolean tensor, and exact up to 2**24 values per row.
    """
    sums = part.sum(dim=2)
    if shift is None:
        shifted_sums, norms = sums, torch.linalg.vector_norm(part, dim=2)
    else:
        centred = torch.sub(part, shift, out=scratch)
        shifted_sums = centred.sum(dim=2)
        norms = torch.linalg.vector_norm(centred, dim=2)
    exact = torch.float64 if part.shape[2] > 1 << 24 else None
    zeros = torch.eq(part, 0, out=scratch).sum(dim=2, dtype=exact)
    return sums, part.amin(dim=2), part.amax(dim=2), shifted_sums, norms, zeros


def _shift_for(state: _Moments | None, values: torch.Tensor) -> torch.Tensor | None:
    """The per-channel shift for the sums of squares, or None when none is needed.

    Before any statistics, the mean of a first slice. On the CPU, None while the running
    statistics show that no channel's mean is large against its spread (one pass fewer); on
    other devices always the running mean, to avoid a synchronisation per update.
    """
    if state is None:
        _, channels, inner = values.shape
        rows = max(1, _CPU_SLICE_VALUES // max(1, channels * inner))
        return values[:rows].mean(dim=(0, 2), dtype=torch.float64)
    if values.device.type == "cpu":
        variance = state.m2 / state.n.clamp(min=1)
        if bool((state.mean.square() <= _UNSHIFTED_RATIO * variance).all()):
            return None
    return state.mean.to(values.device)


def _masked_moments(values: torch.Tensor) -> _Moments:
    """Statistics over the finite values only, with NaN and inf counted apart."""
    values = values.to(torch.float64)
    finite = torch.isfinite(values)
    count = finite.sum(dim=(0, 2), dtype=torch.float64)
    nans = torch.isnan(values).sum(dim=(0, 2), dtype=torch.float64)
    infs = torch.isinf(values).sum(dim=(0, 2), dtype=torch.float64)
    kept = torch.where(finite, values, 0.0)
    mean = kept.sum(dim=(0, 2)) / count.clamp(min=1)
    deviations = torch.where(finite, values - mean.view(1, -1, 1), 0.0)
    m2 = deviations.square().sum(dim=(0, 2))
    minimum = torch.where(finite, values, math.inf).amin(dim=(0, 2))
    maximum = torch.where(finite, values, -math.inf).amax(dim=(0, 2))
    zeros = torch.sum(values == 0, dim=(0, 2), dtype=torch.float64)
    return _Moments(count, mean, m2, minimum, maximum, zeros, nans, infs)


@dataclass(frozen=True, eq=False)
class ChannelStats(Plottable):
    """Per-channel statistics of a layer's activations over a data set.

    All tensors have one entry per channel, in channel order: ``channels`` is ``0, 1, ..., C - 1``
    (statistics always cover every channel of the layer). ``mean``, ``std``, ``min``, ``max`` and
    ``zero_fraction`` are over the finite values; NaN and inf values are only counted.

    Attributes:
        channels: The channel indices, a 1-D int64 tensor ``0 .. C - 1``, as in every netlens
            result; index the other tensors with a subset of it.
        mean: Mean (float64).
        std: Standard deviation (float64), the population one (divided by ``count``) unless
            :meth:`ActivationStats.compute` was asked for another ``correction``.
        min: Smallest finite value.
        max: Largest finite value.
        zero_fraction: Fraction of the finite values that are exactly zero (1 for a dead ReLU
            unit).
        count: Number of finite values (int64).
        nan_count: Number of NaN values (int64).
        inf_count: Number of +inf or -inf values (int64).
        layer: The layer's name, when known.
    """

    channels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    min: torch.Tensor
    max: torch.Tensor
    zero_fraction: torch.Tensor
    count: torch.Tensor
    nan_count: torch.Tensor
    inf_count: torch.Tensor
    layer: str = ""

    @property
    def num_channels(self) -> int:
        """The number of channels."""
        return int(self.mean.shape[0])

    @property
    def dead(self) -> torch.Tensor:
        """Boolean per channel: every value seen was exactly zero (a dead ReLU unit).

        For pre-activation layers look at ``max <= 0`` instead: such a channel is dead after
        the ReLU that follows.
        """
        return self.zero_fraction == 1

    def __repr__(self) -> str:
        layer = f"layer={self.layer!r}, " if self.layer else ""
        nans, infs = int(self.nan_count.sum()), int(self.inf_count.sum())
        extra = f", nan={nans}, inf={infs}" if nans or infs else ""
        return (
            f"ChannelStats({layer}channels={self.num_channels}, "
            f"count={int(self.count.max()) if self.num_channels else 0}, "
            f"mean={_span(self.mean)}, std={_span(self.std)}, min={_extreme(self.min, min)}, "
            f"max={_extreme(self.max, max)}, dead={int(self.dead.sum())}{extra})"
        )

    def _rows(self, digits: int) -> tuple[list[str], list[list[str]]]:
        header = ["channel", "mean", "std", "min", "max", "zero fraction", "count"]
        nonfinite = bool((self.nan_count > 0).any() or (self.inf_count > 0).any())
        if nonfinite:
            header += ["NaN", "inf"]
        rows = []
        for c in range(self.num_channels):
            row = [str(int(self.channels[c]))]
            for tensor in (self.mean, self.std, self.min, self.max, self.zero_fraction):
                row.append(f"{float(tensor[c]):.{digits}g}")
            row.append(str(int(self.count[c])))
            if nonfinite:
                row += [str(int(self.nan_count[c])), str(int(self.inf_count[c]))]
            rows.append(row)
        return header, rows

    def to_markdown(self, *, digits: int = 4) -> str:
        """A Markdown table with one row per channel (the NaN and inf columns only if any).

        Args:
            digits: Significant digits of the floating-point columns.

        Returns:
            The table, one line per row, ending with a newline.

        Example:
            >>> import torch
            >>> import netlens as nl
            >>> stats = nl.ActivationStats().update(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
            >>> print(stats.compute().to_markdown(), end="")
            | channel | mean | std | min | max | zero fraction | count |
            |--:|--:|--:|--:|--:|--:|--:|
            | 0 | 1 | 1 | 0 | 2 | 0.5 | 2 |
            | 1 | 2 | 1 | 1 | 3 | 0 | 2 |
        """
        header, rows = self._rows(digits)
        lines = ["| " + " | ".join(header) + " |", "|" + "--:|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """The statistics as CSV (full precision), written to ``path`` when given.

        Args:
            path: A file to write; the text is returned in any case.

        Returns:
            The CSV text with a header row
            ``channel,mean,std,min,max,zero_fraction,count,nan_count,inf_count``.

        Example:
            >>> import torch
            >>> import netlens as nl
            >>> stats = nl.ActivationStats().update(torch.tensor([[0.0], [2.0]])).compute()
            >>> print(stats.to_csv(), end="")
            channel,mean,std,min,max,zero_fraction,count,nan_count,inf_count
            0,1.0,1.0,0.0,2.0,0.5,2,0,0
        """
        out = io.StringIO()
        out.write("channel,mean,std,min,max,zero_fraction,count,nan_count,inf_count\n")
        columns = (self.mean, self.std, self.min, self.max, self.zero_fraction)
        for c in range(self.num_channels):
            floats = ",".join(repr(float(tensor[c])) for tensor in columns)
            counts = ",".join(str(int(t[c])) for t in (self.count, self.nan_count, self.inf_count))
            out.write(f"{int(self.channels[c])},{floats},{counts}\n")
        text = out.getvalue()
        if path is not None:
            with open(path, "w", encoding="utf-8", newline="") as file:
                file.write(text)
        return text

    def plot(self, ax: Axes | None = None) -> tuple[Figure, Axes]:
        """Mean per channel with ±1 std error bars and the min-max range; dead channels in red.

        Args:
            ax: A matplotlib ``Axes`` to draw on; a new ``Figure`` (not pyplot) by default.

        Returns:
            ``(figure, axes)``.
        """
        width = min(12.0, max(4.0, 0.12 * self.num_channels + 2.0))
        figure, ax = figure_axes(ax, width=width, height=3.5)
        channels = self.channels.cpu().numpy()
        mean, std = self.mean.cpu().numpy(), self.std.cpu().numpy()
        ax.vlines(
            channels,
            self.min.cpu().numpy(),
            self.max.cpu().numpy(),
            color="0.8",
            lw=1,
            label="min to max",
        )
        ax.errorbar(channels, mean, yerr=std, fmt="o", ms=3, lw=1, capsize=2, label="mean ± std")
        dead = self.dead.cpu().numpy()
        if dead.any():
            ax.plot(channels[dead], mean[dead], "x", color="tab:red", ms=8, mew=2, label="dead")
        ax.axhline(0.0, color="0.5", lw=0.5)
        ax.set_xlabel("channel")
        ax.set_ylabel("activation")
        integer_ticks(ax, "x")
        if self.layer:
            set_title(ax, self.layer, fontsize="large")
        ax.legend(loc="best", fontsize=8)
        return figure, ax


def _finite(values: torch.Tensor) -> list[float]:
    return [value for value in values.tolist() if math.isfinite(value)]


def _span(values: torch.Tensor) -> str:
    """The range of a statistic over the channels: ``[low, high]`` (NaN: no finite value)."""
    finite = _finite(values)
    if not finite:
        return "nan"
    low, high = min(finite), max(finite)
    return f"{low:.4g}" if low == high else f"[{low:.4g}, {high:.4g}]"


def _extreme(values: torch.Tensor, pick: Callable[[list[float]], float]) -> str:
    finite = _finite(values)
    return f"{pick(finite):.4g}" if finite else "nan"


class ActivationStats:
    """Streaming per-channel statistics: count, mean, std, min, max, fraction of zeros.

    ``channel_dim`` is the channel axis; every other axis is reduced: ``(N, C, H, W)`` conv
    outputs over N, H and W with ``channel_dim=1``, ``(N, F)`` linear outputs with
    ``channel_dim=1`` (or ``-1``), ``(N, T, H)`` recurrent outputs over N and T with
    ``channel_dim=-1``. Where the batch axis is does not matter. Each tensor is first reduced
    over the axes after the channel axis in its own precision (float32 or float64; half
    precision is widened to float32), then accumulated in float64; partial results combine
    with Chan et al.'s parallel formulas, so :meth:`merge` of shards gives one pass's result and
    memory does not grow with the number of samples. The state lives on the device of the first
    tensor. It works under ``torch.inference_mode()`` too.

    NaN and inf values are counted per channel and left out of the mean, std, min and max;
    :meth:`compute` warns when there were any.

    Args:
        channel_dim: The channel axis (negative counts from the end), as ``channel_dim=`` of
            every function that takes a layer.

    Example:
        >>> import torch
        >>> import netlens as nl
        >>> stats = nl.ActivationStats(channel_dim=1)
        >>> for batch in torch.arange(24.0).reshape(3, 2, 4, 1):  # three batches (2, 4, 1)
        ...     _ = stats.update(batch)
        >>> result = stats.compute()
        >>> result.mean, result.count
        (tensor([10., 11., 12., 13.], dtype=torch.float64), tensor([6, 6, 6, 6]))
    """

    def __init__(self, channel_dim: int = 1) -> None:
        self.channel_dim = check_channel_dim("channel_dim", channel_dim)
        self._state: _Moments | None = None
        self._scratch: torch.Tensor | None = None
        # The process group the state was all-reduced over (a string once pickled), and whether
        # values came in since: all_reduce must not count the other ranks' data twice.
        self._reduced_over: Any = None
        self._changed_since = False

    @property
    def num_channels(self) -> int | None:
        """The number of channels, or None before the first update."""
        return None if self._state is None else int(self._state.n.shape[0])

    @property
    def count(self) -> int:
        """The most values seen in one channel so far, NaN and inf included."""
        if self._state is None:
            return 0
        state = self._state
        return int((state.n + state.nans + state.infs).max().item())

    def __repr__(self) -> str:
        return (
            f"ActivationStats(channel_dim={self.channel_dim}, channels={self.num_channels}, "
            f"count={self.count})"
        )

    def update(self, tensor: torch.Tensor) -> ActivationStats:
        """Add every value of ``tensor`` to its channel's statistics.

        Args:
            tensor: Any real tensor with an axis ``channel_dim`` (detached inside).

        Returns:
            ``self``, so that calls chain.

        Raises:
            NetlensTypeError: For a non-tensor or a complex tensor.
            NetlensValueError: For a tensor with too few dimensions or another channel count.
        """
        if not isinstance(tensor, torch.Tensor):
            raise NetlensTypeError(f"Expected a torch.Tensor, but got {describe(tensor)}.")
        if tensor.is_complex():
            raise NetlensTypeError(f"Expected a real tensor, but got {describe(tensor)}.")
        check_not_meta(tensor, "a tensor")
        dim = self.channel_dim
        channel = check_dim_in_range(
            dim,
            tensor.dim(),
            f"Expected a tensor with channel_dim {dim}, so with at least "
            f"{dim + 1 if dim >= 0 else -dim} dims, but got {describe(tensor)}.",
        )
        return self._add(tensor, channel)

    def _add(
        self, tensor: torch.Tensor, dim: int, refuse: Callable[[_Moments], None] | None = None
    ) -> ActivationStats:
        """:meth:`update` with the channel axis ``dim`` (non-negative) of this tensor.

        ``refuse``, when given, sees the tensor's statistics before they are added, and may
        raise (NaN or inf values where the caller does not count them).
        """
        channels = tensor.shape[dim]
        self._check_channels(channels, "update with")
        outer = math.prod(tensor.shape[:dim])
        inner = math.prod(tensor.shape[dim + 1 :])
        if outer * inner == 0 or channels == 0:
            if self._state is None:
                self._state = _empty(channels, tensor.device)
            return self
        self._changed_since = True
        values = tensor.detach().reshape(outer, channels, inner)
        shift = _shift_for(self._state, values)
        batch, scratch, masked = _batch_moments(values, shift, self._scratch)
        # keep the CPU scratch buffer (one slice: 1 MB in float32) for the next batch
        self._scratch = scratch if scratch.device.type == "cpu" else None
        if refuse is not None and masked:  # the fast path has already seen only finite values
            refuse(batch)
        if self._state is None:
            self._state = batch
        else:
            self._state = _merge(self._state, _to(batch, self._state.n.device))
        return self

    def merge(self, other: ActivationStats) -> ActivationStats:
        """Add the statistics accumulated by ``other`` (another shard of the data) to these.

        Args:
            other: Another accumulator with the same number of channels (its
                ``channel_dim`` may differ).

        Returns:
            ``self``.

        Example:
            >>> import torch
            >>> import netlens as nl
            >>> data = torch.randn(100, 3, dtype=torch.float64)
            >>> left = nl.ActivationStats().update(data[:30])
            >>> right = nl.ActivationStats().update(data[30:])
            >>> merged = left.merge(right).compute()
            >>> torch.allclose(merged.std, data.std(0, correction=0))
            True
        """
        if not isinstance(other, ActivationStats):
            raise NetlensTypeError(
                f"Expected an ActivationStats to merge, but got {describe(other)}."
            )
        if other._state is None:
            return self
        self._check_channels(int(other._state.n.shape[0]), "merge")
        self._changed_since = True
        if other._reduced_over is not None and self._reduced_over is None:
            self._reduced_over = _MERGED  # holds other ranks' data: all_reduce refuses it
        if self._state is None:
            self._state = other._state
        else:
            self._state = _merge(self._state, _to(other._state, self._state.n.device))
        return self

    def all_reduce(self, group: Any = None) -> ActivationStats:
        """Merge the statistics of every rank of a ``torch.distributed`` group, on every rank.

        States are gathered and merged in rank order, so every rank ends with the same,
        bitwise identical, result. Ranks that saw no data take part with an empty state. With
        the NCCL backend an empty rank uses the current CUDA device.

        Reducing twice never counts data twice: called again over the same group with no
        :meth:`update` or :meth:`merge` in between, it does nothing (no communication; the
        state already holds every rank's data). After an update or merge, over another group,
        or after merging reduced statistics, it raises: reduce once, after the last update.

        Args:
            group: The process group, or ``"default"``; the default group when None.

        Returns:
            ``self``.

        Raises:
            NetlensValueError: When torch.distributed is not initialised, ranks disagree on
                the number of channels, or the state was already all-reduced (see above).
        """
        group = resolve_group(group, default=True)
        if self._reduced_over is not None:
            if same_group(self._reduced_over, group) and not self._changed_since:
                return self
            raise NetlensValueError(
                "Expected statistics of this rank's data alone to all_reduce, but they already "
                "hold every rank's data (all_reduce ran before"
                + (
                    ", and values were added since"
                    if same_group(self._reduced_over, group)
                    else " over another group, or reduced statistics were merged in"
                )
                + "): reducing again would count that data once per rank. Call all_reduce "
                "once, after the last update."
            )
        device = self._state.n.device if self._state is not None else collective_device(group)
        mine = torch.tensor([-1 if self._state is None else self.num_channels], device=device)
        sizes = gather_tensors(mine, group)
        known = sorted({int(size.item()) for size in sizes if int(size.item()) >= 0})
        if len(known) > 1:
            raise NetlensValueError(
                "Expected every rank to have the same number of channels, but got "
                + ", ".join(f"rank {rank}: {int(size.item())}" for rank, size in enumerate(sizes))
                + "."
            )
        self._reduced_over, self._changed_since = group, False
        if not known:
            return self
        state = self._state if self._state is not None else _empty(known[0], device)
        parts = gather_tensors(torch.stack(list(state)), group)
        merged = _Moments(*parts[0])
        for part in parts[1:]:
            merged = _merge(merged, _Moments(*part))
        self._state = merged
        return self

    def compute(self, *, correction: int = 0) -> ChannelStats:
        """The statistics so far (the accumulator stays usable).

        Args:
            correction: Subtracted from the count in the variance's denominator: 0 (default)
                gives the population std, the right one for statistics over a whole data set;
                1 gives the sample (Bessel-corrected) std, as ``torch.std``'s default.

        Returns:
            A :class:`ChannelStats` on the accumulator's device. Channels without any finite
            value have NaN mean, std, min, max and zero fraction.

        Raises:
            NetlensValueError: Before any value was seen.
        """
        state = self._state
        if state is None or not bool((state.n + state.nans + state.infs).sum() > 0):
            raise NetlensValueError(
                "Expected at least one update with a non-empty tensor before compute(), but got "
                "none."
            )
        seen = state.n > 0
        nan = torch.full_like(state.mean, math.nan)
        denominator = state.n - correction
        variance = torch.where(denominator > 0, state.m2 / denominator.clamp(min=1), nan)
        nonfinite = int((state.nans + state.infs).sum().item())
        if nonfinite:
            warn(
                f"{nonfinite} NaN or inf activations were seen; they are counted in nan_count "
                "and inf_count and left out of the mean, std, min and max.",
                RuntimeWarning,
            )
        return ChannelStats(
            channels=torch.arange(state.n.shape[0], device=state.n.device),
            mean=torch.where(seen, state.mean, nan),
            std=variance.sqrt(),
            min=torch.where(seen, state.minimum, nan),
            max=torch.where(seen, state.maximum, nan),
            zero_fraction=torch.where(seen, state.zeros / state.n.clamp(min=1), nan),
            count=state.n.to(torch.int64),
            nan_count=state.nans.to(torch.int64),
            inf_count=state.infs.to(torch.int64),
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # a process group does not pickle; elsewhere, all_reduce refuses the state all the same
        if state["_reduced_over"] is not None and not isinstance(state["_reduced_over"], str):
            state["_reduced_over"] = _ELSEWHERE
        return state

    def _check_channels(self, channels: int, action: str) -> None:
        if self._state is not None and channels != self.num_channels:
            raise NetlensValueError(
                f"Expected {self.num_channels} channels (from the earlier updates), but got "
                f"{channels} to {action}."
            )


# What the reduced-over group becomes after a merge of reduced statistics, or after pickling.
_MERGED = "merged with all-reduced statistics"
_ELSEWHERE = "all-reduced in another process"


def _to(moments: _Moments, device: torch.device) -> _Moments:
    return _Moments(*(tensor.to(device) for tensor in moments))


def _views(
    model: nn.Module,
    layers: LayerSpec,
    select: object,
    channel_dim: object,
) -> dict[str, LayerView]:
    """The layers' views, with ``channel_dim`` for all of them or a ``{name: dim}`` mapping."""
    if not isinstance(channel_dim, Mapping):
        return layer_views(model, layers, select=select, channel_dim=channel_dim)
    dims = {
        key: check_channel_dim(f"channel_dim[{key!r}]", dim, optional=True)
        for key, dim in channel_dim.items()
    }
    views = layer_views(model, layers, select=select)
    unknown = sorted(str(key) for key in dims if key not in views)
    if unknown:
        raise NetlensValueError(
            f"Expected channel_dim's keys to be among the selected layers {sorted(views)}, but "
            f"got {unknown}."
        )
    for key, checked in dims.items():
        if checked is not None:
            views[key] = replace(views[key], channel_dim=checked)
    return views


def _on(stats: ChannelStats, device: torch.device, layer: str) -> ChannelStats:
    """``stats`` of ``layer`` with every tensor on ``device``."""
    tensors = {item.name: getattr(stats, item.name) for item in fields(stats)}
    del tensors["layer"]
    return ChannelStats(**{name: t.to(device) for name, t in tensors.items()}, layer=layer)


def activation_stats(
    model: nn.Module,
    data: Iterable[Any] | torch.Tensor,
    layers: LayerSpec,
    *,
    progress: bool = False,
    select: Select | None = None,
    channel_dim: int | Mapping[str, int] | None = None,
    group: Any = None,
    nonfinite: Literal["raise", "count"] = "raise",
) -> dict[str, ChannelStats]:
    """Per-channel statistics of the outputs of several layers over a data set, in one pass.

    Each layer's output is read by the layer contract (see the user guide's "Layers and
    outputs"): a tuple or list gives its first tensor, a mapping its first tensor value, a
    ``PackedSequence`` its padded tensor, unless ``select`` picks another part; the channel axis
    follows from the module's kind (dim 1 for the convolution family, the last dim for
    ``nn.Linear``, recurrent, attention, LayerNorm and Embedding layers: a BERT-style linear
    layer on ``(N, T, D)`` has D channels) unless ``channel_dim`` says it. Statistics reduce
    over every other axis, so they are the same for a time-first recurrent layer and its
    batch-first twin.

    The model runs in eval mode (every module's ``training`` flag is set to False) under
    ``torch.no_grad()``, or under ``torch.inference_mode()`` when called inside it; each
    module's own flag is restored on exit, also when something raises, and also when calls in
    several threads overlap (the last one out restores them). Every call of a layer counts: a
    module used twice per forward contributes both outputs. Inputs are moved to the device of
    the model's first layer (floating-point inputs cast to its dtype: a float64 scalar of the
    model's own among float32 layers does not decide); the statistics, float64, come back on
    the device of the inputs. A model wrapped in ``DistributedDataParallel`` or
    ``DataParallel`` runs as the model it wraps (layer names as in it).

    With ``group``, each rank of a ``torch.distributed`` process group passes over its own
    shard of the data (a ``DistributedSampler``) and the statistics are merged across the ranks
    (:meth:`ActivationStats.all_reduce`) before returning: every rank gets the same, bitwise
    identical, statistics of all the data. Every rank must call with the same layers; a rank
    may have no data.

    Args:
        model: Any ``nn.Module``.
        data: An iterable of batches: tensors, or tuples and lists ``(inputs, targets, ...)``
            whose first item is the input (a ``DataLoader``). A single tensor is one batch.
        layers: Which layers, as for :func:`netlens.find_layers`.
        progress: Show a tqdm progress bar (when tqdm is installed).
        select: Which part of each layer's output to use: an index, a key or a callable, as
            for :func:`netlens.record`.
        channel_dim: The channel axis of the outputs: one int for all layers, or a mapping
            from layer name to int for some of them; the module's kind decides for the others.
        group: None (this process's data alone), ``"default"`` (the initialised default
            process group) or a ``torch.distributed`` process group to merge over.
        nonfinite: What NaN and infinite activations do. ``"raise"`` (default): the first
            batch that gives any raises, naming the layer, the batch and how many values in
            how many channels. ``"count"``: they are counted per channel (``nan_count``,
            ``inf_count``), left out of the mean, std, min and max, and a warning says how
            many there were.

    Returns:
        ``{layer name: ChannelStats}`` with population standard deviations.

    Raises:
        NetlensValueError: For empty ``data`` (on every rank, with ``group``), a batch without
            its batch dimension, a ``channel_dim`` outside a layer's output or naming its
            batch axis, or NaN or infinite activations (unless ``nonfinite="count"``). With
            ``group``, an error in one rank's pass is raised on every rank.
        NetlensTypeError: For a batch that is not a tensor or a tuple starting with one, or a
            layer output without a tensor.
        NotRecordedError: For a layer that never ran.

    Example:
        >>> import torch
        >>> import netlens as nl
        >>> from netlens.models import LeNet5
        >>> batches = [torch.randn(8, 1, 28, 28) for _ in range(3)]
        >>> stats = nl.activation_stats(LeNet5(), batches, ["relu1", "fc2"])
        >>> stats["relu1"].num_channels, int(stats["relu1"].count[0]), stats["fc2"].num_channels
        (32, 18816, 10)
    """
    progress = check_bool("progress", progress)
    views = _views(model, layers, select, channel_dim)
    counted = check_choice("nonfinite", nonfinite, ("raise", "count")) == "count"
    process_group = resolve_group(group)
    runner = unwrap_parallel(model)  # a DDP wrapper would synchronise buffers on every pass
    failure: Exception | None = None
    try:
        accumulators, home = _accumulate(runner, data, views, progress, counted)
    except Exception as error:
        if process_group is None:
            raise
        # raised after every rank has reported, so that no rank waits for the others forever
        failure, accumulators, home = error, {}, None
    if process_group is not None:
        message = None if failure is None else f"{type(failure).__name__}: {failure}"
        reports = gather((message, home is not None), process_group)
        if failure is not None:
            raise failure
        for rank, (report, _) in enumerate(reports):
            if report is not None:
                raise NetlensValueError(
                    "Expected every rank of the group to pass over its data, but rank "
                    f"{rank} raised {report}"
                )
        if not any(had_data for _, had_data in reports):
            raise NetlensValueError(
                "Expected the data of at least one rank of the group to yield a batch, but every "
                "rank's data was empty."
            )
        # in the order of the layers, the same on every rank
        for name, view in views.items():
            accumulators.setdefault(name, ActivationStats(view.channel_dim))
            accumulators[name].all_reduce(process_group)
        if home is None:
            _, device = model_dtype_device(runner)
            home = device or torch.device("cpu")
        accumulators = {
            name: stats for name, stats in accumulators.items() if stats._state is not None
        }
    if home is None:
        raise NetlensValueError("Expected data to yield at least one batch, but it was empty.")
    missing = [name for name in views if name not in accumulators]
    if missing:
        raise NotRecordedError(
            f"Expected every selected layer to run during the forward passes, but {missing} "
            "never ran: check that the model's forward uses them."
        )
    return {name: _on(accumulators[name].compute(), home, name) for name in views}


def _accumulate(
    model: nn.Module,
    data: Iterable[Any] | torch.Tensor,
    views: dict[str, LayerView],
    progress: bool,
    counted: bool = False,
) -> tuple[dict[str, ActivationStats], torch.device | None]:
    """One pass over ``data``: the statistics of each layer that ran, and the inputs' device.

    NaN and infinite activations raise at the batch that gives them, unless ``counted``.
    """
    accumulators: dict[str, ActivationStats] = {}
    total = len(data) if isinstance(data, Sized) and not isinstance(data, torch.Tensor) else None
    recorder = Recorder(model, views, detach=True, device=None)
    home: torch.device | None = None
    with evaluating(model), torch.no_grad():
        bar = progress_bar(batches(data), enabled=progress, total=total, desc="activation_stats")
        for number, batch in enumerate(bar):
            inputs, info = prepare_inputs(batch, model, name="each batch of data", floating=False)
            # the first pass checks that inputs reach conv and recurrent layers batched
            check = batched_inputs(model, tuple(batch.shape)) if home is None else nullcontext()
            home = home or info.device
            # hooks only around the forward pass: the reductions then run without the
            # recorder's hooks or its copy-on-write mode
            with check, recorder:
                model(inputs)
            for name, view in views.items():
                if name in recorder:
                    if name not in accumulators:
                        accumulators[name] = ActivationStats(view.channel_dim)
                    refuse = None if counted else _refuse_non_finite(name, number)
                    for output in recorder.calls(name):
                        # the batch axis does not matter: every axis but the channel is reduced
                        _, channel = view.dims(output)
                        accumulators[name]._add(output, channel, refuse)
            recorder.clear()  # frees the outputs before the next batch
    return accumulators, home


def _refuse_non_finite(name: str, number: int) -> Callable[[_Moments], None]:
    """Raise where the statistics of a layer's output on batch ``number`` count NaN or inf."""

    def refuse(moments: _Moments) -> None:
        bad = moments.nans + moments.infs
        if not bool((bad > 0).any()):
            return
        counts = count_text(int(moments.nans.sum().item()), int(moments.infs.sum().item()))
        channels = (bad > 0).nonzero()[:, 0].tolist()
        shown = ", ".join(str(c) for c in channels[:10]) + (", ..." if len(channels) > 10 else "")
        raise NetlensValueError(
            f"Expected finite activations of layer {name!r}, but batch {number} of the data "
            f"(counted from 0) gave {counts} values, in {len(channels)} of its "
            f"{bad.shape[0]} channels ({shown}). Check the model on that batch, or pass "
            'nonfinite="count" to count them apart (nan_count, inf_count) and leave them out '
            "of the statistics."
        )

    return refuse
