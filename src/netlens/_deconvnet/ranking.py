"""The running top-k of channels over a data set, and the merge of several ranks' candidates.

Candidates are ordered by value, then by the input's index in the data (:func:`ranked`, the one
order of every top-k here), so that results over shards of the data (``torch.distributed``
ranks) merge into exactly the result of one pass over all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._core.checks import check_channels_fit, count_text
from .._core.errors import NetlensValueError

__all__ = ["RunningTop", "Shard", "Winners", "merge_shards", "ranked", "shard_of"]


class RunningTop:
    """Per channel, the k inputs with the largest activation seen so far: O(channels x k).

    Fed with each batch of inputs and the layer's output arranged ``(N, C, *map)``. Each kept
    input is stored once (a copy, so that its batch can go), however many channels keep it.
    """

    def __init__(self, name: str, k: int, wanted: list[int] | None) -> None:
        self.name, self.k, self.wanted = name, k, wanted
        self.seen = 0
        self.channels: torch.Tensor | None = None
        self.sample_shape: tuple[int, ...] = ()
        self.map_shape: tuple[int, ...] = ()
        self.values = torch.empty(0)
        self.indices = torch.empty(0, dtype=torch.long)
        self.flat = torch.empty(0, dtype=torch.long)
        self.kept: dict[int, torch.Tensor] = {}  # index in the data -> input

    def _start(self, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        channel_count = output.shape[1]
        wanted = self.wanted if self.wanted is not None else list(range(channel_count))
        check_channels_fit("channels", wanted, channel_count, self.name)
        channels = torch.tensor(wanted, device=output.device)
        self.sample_shape, self.map_shape = tuple(inputs.shape[1:]), tuple(output.shape[2:])
        empty = (len(wanted), 0)
        self.values = output.new_empty(empty)
        self.indices = torch.empty(empty, dtype=torch.long, device=output.device)
        self.flat = torch.empty(empty, dtype=torch.long, device=output.device)
        return channels

    def update(self, inputs: torch.Tensor, output: torch.Tensor) -> None:
        """Take in a batch of inputs and the layer's arranged output ``(N, C, *map)`` for it."""
        batch = inputs.shape[0]
        if self.channels is None:
            self.channels = self._start(inputs, output)
        elif tuple(inputs.shape[1:]) != self.sample_shape:
            raise NetlensValueError(
                f"Expected every batch to hold inputs of shape {self.sample_shape}, but got a "
                f"batch of shape {tuple(inputs.shape)}."
            )
        count = self.channels.shape[0]
        maps = output[:, self.channels].reshape(batch, count, -1)
        if maps.is_floating_point() and not bool(torch.isfinite(maps).all()):
            raise NetlensValueError(_non_finite_message(self.name, maps, self.channels, self.seen))
        values, flat = maps.max(dim=2)  # the strongest location of each input, (batch, count)
        numbers = torch.arange(self.seen, self.seen + batch, device=values.device)
        candidates = torch.cat([self.values, values.T], dim=1)
        indices = torch.cat([self.indices, numbers.expand(count, batch)], dim=1)
        order = ranked(candidates, indices, self.k)
        self.values = candidates.gather(1, order)
        self.indices = indices.gather(1, order)
        self.flat = torch.cat([self.flat, flat.T], dim=1).gather(1, order)
        wanted = set(self.indices.flatten().tolist())
        self.kept = {index: image for index, image in self.kept.items() if index in wanted}
        for index in sorted(wanted - self.kept.keys()):
            self.kept[index] = inputs[index - self.seen].clone()
        self.seen += batch

    def images_of(self, indices: torch.Tensor) -> torch.Tensor:
        """The kept inputs of ``indices`` (indices in the data), stacked like them."""
        flat = indices.reshape(-1).tolist()
        if not flat:
            return torch.empty((*indices.shape, *self.sample_shape))
        return torch.stack([self.kept[index] for index in flat]).reshape(
            *indices.shape, *self.sample_shape
        )

    @property
    def images(self) -> torch.Tensor:
        """The kept inputs of each channel, ``(C, k, *sample)``."""
        return self.images_of(self.indices)


def _non_finite_message(name: str, maps: torch.Tensor, channels: torch.Tensor, first: int) -> str:
    """What NaN and infinite values the maps ``(batch, C, positions)`` of a batch hold.

    ``first`` is the index in the data of the batch's first input.
    """
    nan = torch.isnan(maps).sum(dim=(0, 2)).tolist()
    infinite = torch.isinf(maps).sum(dim=(0, 2)).tolist()
    parts = []
    for channel, nans, infs in zip(channels.tolist(), nan, infinite, strict=True):
        counts = count_text(nans, infs)
        if counts:
            parts.append(f"channel {channel} holds {counts} values")
    inputs = (first + (~torch.isfinite(maps)).flatten(1).any(dim=1).nonzero()[:, 0]).tolist()
    shown = ", ".join(str(index) for index in inputs[:10]) + (", ..." if len(inputs) > 10 else "")
    return (
        f"Expected finite activations of layer {name!r} to rank, but "
        + "; ".join(parts)
        + f" on input{'s' if len(inputs) > 1 else ''} {shown} of the data (counted from 0 in "
        "iteration order): a NaN would rank above every number. Check the model on these "
        "inputs, or leave those channels out."
    )


def ranked(values: torch.Tensor, indices: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, where the ``k`` best candidates are: largest value first, then smallest index.

    The one order of every top-k here, so that merged shards equal one pass.
    """
    by_index = torch.sort(indices, dim=-1, stable=True).indices
    by_value = torch.sort(values.gather(-1, by_index), dim=-1, descending=True, stable=True)
    return by_index.gather(-1, by_value.indices)[..., :k]


# -- merging the candidates of several ranks ----------------------------------------------------


@dataclass
class Shard:
    """One rank's candidates as they travel to the other ranks (tensors on the CPU)."""

    seen: int
    channels: list[int] | None  # None: no data on this rank
    sample_shape: tuple[int, ...]
    map_shape: tuple[int, ...]
    values: torch.Tensor  # (C, kept), strongest first
    indices: torch.Tensor  # (C, kept): the inputs' indices in this rank's data
    flat: torch.Tensor  # (C, kept): flat positions in the channel's map
    failure: str | None = None  # what the pass raised on this rank


def shard_of(top: RunningTop, failure: BaseException | None) -> Shard:
    if failure is not None or top.channels is None:
        empty = torch.empty(0, 0, dtype=torch.long)
        message = None if failure is None else f"{type(failure).__name__}: {failure}"
        return Shard(top.seen, None, (), (), empty.float(), empty, empty, message)
    return Shard(
        top.seen,
        top.channels.tolist(),
        top.sample_shape,
        top.map_shape,
        top.values.cpu(),
        top.indices.cpu(),
        top.flat.cpu(),
    )


@dataclass
class Winners:
    """The top-k over every rank, ``(C, k)`` each, and where each winner's input is."""

    channels: list[int]
    sample_shape: tuple[int, ...]
    map_shape: tuple[int, ...]
    values: torch.Tensor
    indices: torch.Tensor  # in the data of all ranks concatenated in rank order
    flat: torch.Tensor
    owner: torch.Tensor  # the rank that holds the input
    slot: torch.Tensor  # the input's place in the owner's running top
    samples: int  # inputs in all ranks' data


def merge_shards(shards: list[Shard], k: int) -> Winners:
    """The best ``k`` of every rank's candidates."""
    filled = [(rank, shard) for rank, shard in enumerate(shards) if shard.channels is not None]
    total = sum(shard.seen for shard in shards)
    if not filled or total < k:
        where = f" (over the {len(shards)} ranks of the group)" if len(shards) > 1 else ""
        raise NetlensValueError(f"Expected at least k={k} inputs in data{where}, but got {total}.")
    reference_rank, reference = filled[0]
    for rank, shard in filled[1:]:
        for what in ("channels", "sample_shape", "map_shape"):
            if getattr(shard, what) != getattr(reference, what):
                raise NetlensValueError(
                    f"Expected every rank to have the same {what.replace('_', ' ')}, but rank "
                    f"{reference_rank} has {getattr(reference, what)} and rank {rank} has "
                    f"{getattr(shard, what)}."
                )
    offsets = np.cumsum([0] + [shard.seen for shard in shards]).tolist()
    values = torch.cat([shard.values for _, shard in filled], dim=1)
    indices = torch.cat([shard.indices + offsets[rank] for rank, shard in filled], dim=1)
    flat = torch.cat([shard.flat for _, shard in filled], dim=1)
    owner = torch.cat([torch.full_like(shard.indices, rank) for rank, shard in filled], dim=1)
    slot = torch.cat(
        [torch.arange(shard.indices.shape[1]).expand_as(shard.indices) for _, shard in filled],
        dim=1,
    )
    order = ranked(values, indices, k)
    assert reference.channels is not None
    return Winners(
        reference.channels,
        reference.sample_shape,
        reference.map_shape,
        values.gather(1, order),
        indices.gather(1, order),
        flat.gather(1, order),
        owner.gather(1, order),
        slot.gather(1, order),
        total,
    )
