"""Per-channel histograms of a layer's activations, counted in the one pass over the data.

How the bins are chosen. Bins fitted to the data need its range before counting: either a
first pass for the range (the atlas promises one pass over the data) or bins fixed by the
first batch (values of later batches may fall outside them, and shards of the data on
different ranks would each have a first batch of their own). Instead, values are counted in
fine bins that do not depend on the data at all: each octave of magnitude from ``2**-20`` to
``2**20`` is cut into 32 equal bins, for each sign (about 3% of a value wide at most), plus one
bin for magnitudes below ``2**-20`` (zero, for a ReLU's zeros); values beyond ``2**20`` count
in the outermost bins. A value's bin is read off its float32 bits (exponent and the top five
bits of the mantissa), so counting costs a few integer operations per value, and float64
values are counted at float32 precision. The counts are integers, so shards add up exactly to
the counts of one pass, on any number of ranks. For the picture, the fine counts are spread
over 32 equal bins between the channel's smallest and largest value (the cumulative count is
interpolated linearly inside each fine bin), which adds up to every value counted.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["BINS", "FINE", "Histogram", "count", "display"]

#: Bins of the picture, between a channel's smallest and largest value.
BINS = 32
_PER_OCTAVE = 32  # the top five bits of a float32 mantissa
_OCTAVES = 20  # magnitudes 2**-20 .. 2**20, each sign
_SIDE = 2 * _OCTAVES * _PER_OCTAVE  # fine bins of one sign
#: Fine bins per channel: the negative ones, the one around zero, the positive ones.
FINE = 2 * _SIDE + 1
# A float32's bits shifted right by 18: its biased exponent times 32 plus its mantissa's top
# five bits. The first fine bin of a sign starts at 2**-20, whose biased exponent is 127 - 20.
_SHIFT = 18
_LOWEST = (127 - _OCTAVES) * _PER_OCTAVE
_INFINITE = 0x7F800000  # a float32 magnitude's bits from here on: inf or NaN


@functools.lru_cache(maxsize=1)
def _fine_edges() -> np.ndarray:
    """The ``FINE + 1`` increasing edges of the fine bins (float64, exact)."""
    keys = np.arange(_LOWEST, _LOWEST + _SIDE + 1)
    exponents, steps = np.divmod(keys, _PER_OCTAVE)
    positive = np.ldexp(1.0 + steps / _PER_OCTAVE, exponents - 127)
    return np.concatenate([-positive[::-1], positive])


@dataclass(frozen=True, eq=False)
class Histogram:
    """Fine counts of a layer's finite values per channel, ``(C, FINE)`` int64.

    Attributes:
        counts: Per channel, the values in each fine bin (see the module's doc).
    """

    counts: torch.Tensor

    def merged(self, other: Histogram) -> Histogram:
        """The counts of both."""
        return Histogram(self.counts + other.counts)


def count(arranged: torch.Tensor) -> Histogram:
    """Count a batch of arranged values ``(N, C, *map)`` into the fine bins, per channel."""
    batch, channels = arranged.shape[0], arranged.shape[1]
    bits = arranged.detach().reshape(batch, channels, -1).float().contiguous().view(torch.int32)
    # In place where possible: this runs over every value of every layer of the data.
    step = bits & 0x7FFFFFFF  # the magnitude's bits
    discard = step >= _INFINITE  # NaN and infinities go to a bin of their own, not shown
    step.bitwise_right_shift_(_SHIFT).sub_(_LOWEST).clamp_(-1, _SIDE - 1)  # -1: below 2**-20
    step.add_(1)
    # the sign (-1 or +1, from the sign bit) times the distance from the zero bin
    sign = bits.bitwise_right_shift(31).mul_(2).add_(1)
    index = step.mul_(sign).add_(_SIDE)
    index.masked_fill_(discard, FINE)
    index += (torch.arange(channels, device=bits.device, dtype=torch.int32) * (FINE + 1))[:, None]
    counted = torch.bincount(index.reshape(-1), minlength=channels * (FINE + 1))
    return Histogram(counted.reshape(channels, FINE + 1)[:, :FINE].cpu())


def display(counts: torch.Tensor, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """One channel's fine ``counts`` as ``BINS`` equal bins over ``[low, high]``: (edges, counts).

    A constant channel (``low == high``) gets the bins of ``[low - 0.5, low + 0.5]``.
    """
    fine = counts.to(torch.float64).numpy()
    if not high > low:
        low, high = low - 0.5, high + 0.5
    edges = _fine_edges().copy()
    # the outermost fine bins hold everything beyond them: stretch them to the data's range
    edges[0], edges[-1] = min(edges[0], low), max(edges[-1], high)
    cumulative = np.concatenate([[0.0], np.cumsum(fine)])
    shown = np.linspace(low, high, BINS + 1)
    at = np.interp(shown, edges, cumulative)
    at[0], at[-1] = 0.0, cumulative[-1]  # every value lies within [low, high]
    return shown, np.diff(at)
