"""The atlas' one pass over the data: every layer's statistics, histograms and top-k at once.

One forward per batch (stopping after the deepest requested layer) feeds, per layer, the
streaming statistics (:class:`~netlens.ActivationStats`), the histograms
(:mod:`netlens._atlas.histogram`), the count of values at the bounds of a bounded activation,
and the running top-k of the deconvnet's data-set examples
(:func:`netlens._deconvnet.top.search`). Memory is bounded by ``k`` inputs per channel. Under a
process group each rank passes over its own shard and the ranks merge exactly: integer counts
add, statistics merge in rank order, top-k candidates merge by value then index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._core.distributed import gather
from .._core.errors import NetlensValueError
from .._core.outputs import LayerView
from .._deconvnet.ranking import RunningTop, Winners, merge_shards, shard_of
from .._deconvnet.top import DataPass, search
from .._stats import ActivationStats, ChannelStats
from .histogram import Histogram, count

__all__ = ["LayerPass", "PassResult", "bounds_of", "data_pass"]

# A bounded activation's output range, by module class: a unit is saturated where nearly all
# of its values sit within 1% of that range from a bound.
_BOUNDED: dict[type[nn.Module], tuple[float, float]] = {
    nn.Sigmoid: (0.0, 1.0),
    nn.Tanh: (-1.0, 1.0),
    nn.Softsign: (-1.0, 1.0),
    nn.Hardsigmoid: (0.0, 1.0),
    nn.ReLU6: (0.0, 6.0),
}
_NEAR = 0.01  # of the range, from a bound
SATURATED_SHARE = 0.99


def bounds_of(module: nn.Module) -> tuple[float, float] | None:
    """The output range of a bounded activation (or a recurrent layer's tanh output), or None."""
    if isinstance(module, nn.Hardtanh):
        return float(module.min_val), float(module.max_val)
    if isinstance(module, (nn.LSTM, nn.GRU)) or (
        isinstance(module, nn.RNN) and module.nonlinearity == "tanh"
    ):
        return None if getattr(module, "proj_size", 0) else (-1.0, 1.0)
    for kind, bounds in _BOUNDED.items():
        if isinstance(module, kind):
            return bounds
    return None


@dataclass
class LayerPass:
    """One layer's share of the pass, merged over every rank."""

    stats: ChannelStats
    histogram: Histogram
    saturated: torch.Tensor | None  # bool per channel, or None for an unbounded kind
    winners: Winners
    found: DataPass
    output_shape: tuple[int, ...]


@dataclass
class PassResult:
    """The pass over the whole data: per layer, and what it saw of the inputs."""

    layers: dict[str, LayerPass]
    tops: dict[str, RunningTop]  # this rank's running tops (the winners' inputs)
    samples: int
    input_shape: tuple[int, ...]
    value_range: tuple[float, float]


class _Tally:
    """What the observer of the pass accumulates on this rank, per layer."""

    def __init__(self, views: dict[str, LayerView]) -> None:
        self.stats = {name: ActivationStats(channel_dim=1) for name in views}
        self.histograms: dict[str, Histogram] = {}
        self.bounds = {name: bounds_of(view.module) for name, view in views.items()}
        self.near: dict[str, torch.Tensor] = {}
        self.values: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.low, self.high = float("inf"), float("-inf")
        self.last_batch: torch.Tensor | None = None

    def observe(self, name: str, given: torch.Tensor, output: torch.Tensor) -> None:
        if given is not self.last_batch:  # once per batch, not per layer
            self.last_batch = given
            finite = given[torch.isfinite(given)] if given.is_floating_point() else given
            if finite.numel():
                self.low = min(self.low, float(finite.min()))
                self.high = max(self.high, float(finite.max()))
        self.stats[name].update(output)
        self.shapes.setdefault(name, tuple(output.shape[1:]))
        counted = count(output)
        previous = self.histograms.get(name)
        self.histograms[name] = counted if previous is None else previous.merged(counted)
        bounds = self.bounds[name]
        if bounds is not None:
            low, high = bounds
            margin = _NEAR * (high - low)
            flat = output.detach().transpose(0, 1).reshape(output.shape[1], -1)
            near = ((flat <= low + margin) | (flat >= high - margin)).sum(dim=1).cpu()
            self.near[name] = self.near.get(name, torch.zeros_like(near)) + near
            self.values[name] = self.values.get(name, torch.zeros_like(near)) + flat.shape[1]


def data_pass(
    model: nn.Module,
    views: dict[str, LayerView],
    data: object,
    k: int,
    *,
    progress: bool,
    group: Any,
) -> PassResult:
    """Run the one pass over ``data`` (this rank's shard) and merge it over ``group``."""
    tops = {name: RunningTop(name, k, None) for name in views}
    tally = _Tally(views)
    failure: BaseException | None = None
    found: dict[str, DataPass] = {}
    try:
        found = search(
            model, views, data, tops, progress, observe=tally.observe, desc="atlas: data"
        )
    except Exception as error:
        if group is None:
            raise
        failure = error  # raised after every rank has reported, so that none waits
    mine = {
        "failure": None if failure is None else f"{type(failure).__name__}: {failure}",
        "shards": {name: shard_of(top, failure) for name, top in tops.items()},
        "stats": tally.stats,
        "histograms": tally.histograms,
        "near": tally.near,
        "values": tally.values,
        "shapes": tally.shapes,
        "range": (tally.low, tally.high),
    }
    everyone = gather(mine, group)
    if failure is not None:
        raise failure
    for rank, part in enumerate(everyone):
        if part["failure"] is not None:
            raise NetlensValueError(
                "Expected every rank of the group to pass over its data, but rank "
                f"{rank} raised {part['failure']}"
            )
    return _merged(views, everyone, tops, k, found)


def _merged(
    views: dict[str, LayerView],
    everyone: list[dict[str, Any]],
    tops: dict[str, RunningTop],
    k: int,
    found: dict[str, DataPass],
) -> PassResult:
    """Every rank's part combined in rank order: the same result on every rank."""
    with_data = [part for part in everyone if part["shapes"]]
    if not with_data:
        raise NetlensValueError("Expected data to pass over, but got no batch.")
    first = with_data[0]
    layers: dict[str, LayerPass] = {}
    for name in views:
        stats = ActivationStats(channel_dim=1)
        histogram: Histogram | None = None
        near = values = None
        for part in with_data:
            stats.merge(part["stats"][name])
            piece: Histogram = part["histograms"][name]
            histogram = piece if histogram is None else histogram.merged(piece)
            if name in part["near"]:
                near = part["near"][name] + (0 if near is None else near)
                values = part["values"][name] + (0 if values is None else values)
        assert histogram is not None
        saturated = None
        if near is not None and values is not None:
            saturated = near.double() >= SATURATED_SHARE * values.clamp(min=1).double()
        layers[name] = LayerPass(
            stats=stats.compute(),
            histogram=histogram,
            saturated=saturated,
            winners=merge_shards([part["shards"][name] for part in everyone], k),
            found=found.get(name, DataPass()),  # this rank's: it projects its own winners
            output_shape=first["shapes"][name],
        )
    low = min(part["range"][0] for part in with_data)
    high = max(part["range"][1] for part in with_data)
    samples = sum(part["shards"][next(iter(views))].seen for part in everyone)
    input_shape = tuple(first["shards"][next(iter(views))].sample_shape)  # a rank with data
    return PassResult(layers, tops, samples, input_shape, (low, high))
