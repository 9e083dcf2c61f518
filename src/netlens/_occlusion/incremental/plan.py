"""Planning the incremental passes: groups of positions, batches, and the cost model.

Positions whose boxes have the same sizes in every map form a group; :class:`CostModel` costs
groups (multiply-adds, bytes per row, seconds) many at once and picks the cut of them into
merged groups that it expects to run fastest (:meth:`CostModel.best_cut`); the memory budget
sizes each group's batches. Beside it, what ``incremental="auto"`` decides before and after
building the engine (:func:`worth_trying`, :data:`AUTO_SHARE`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.fx import Node

from .classify import PATCHED, Kind
from .local import Local

if TYPE_CHECKING:
    from .engine import Engine

__all__ = [
    "AUTO_SHARE",
    "Batch",
    "CostModel",
    "Group",
    "plan_batches",
    "worth_trying",
]

# The cost model that merges groups of positions and decides whether the incremental path pays
# (seconds per multiply-add on the CPU, and per operation and batch): rough, measured on the
# benchmark models; only their ratio matters.
_SECONDS_PER_MAC = 1 / 20e9
_SECONDS_PER_STEP = 150e-6
_SECONDS_PER_SHAPE_WEIGHT = 2e-8
# Under incremental="auto", the incremental path is tried only where building it (tracing, two
# op-by-op passes over the unoccluded inputs, planning) is expected to cost at most TRY_SHARE of
# the plain path: the plain path's time is estimated from the unoccluded pass (per copy, with
# BATCH_GAIN for running copies in batches), the build's as two such passes plus
# SECONDS_PER_MODULE for each module (tracing, classifying and planning work per operation;
# measured on torchvision's models, where it ranges 0.3-1 ms). Then it is kept only where it
# needs at most AUTO_SHARE of the plain path's multiply-adds and its passes, timed, are faster.
TRY_SHARE = 0.08
BATCH_GAIN = 0.75
SECONDS_PER_MODULE = 6e-4
AUTO_SHARE = 0.8


def worth_trying(model: nn.Module, unoccluded_seconds: float, positions: int) -> bool:
    """Whether ``"auto"`` should build the engine, from the unoccluded pass's time."""
    plain = unoccluded_seconds * positions * BATCH_GAIN
    modules = sum(1 for _ in model.modules())
    build = 2 * unoccluded_seconds + modules * SECONDS_PER_MODULE
    return build <= TRY_SHARE * plain


@dataclass(frozen=True)
class Batch:
    """Occluder positions (indices into all positions) and a range of inputs, run together."""

    group: int
    positions: torch.Tensor
    first: int
    stop: int


@dataclass
class Group:
    """Positions that run together, and the box size of each patched map they share."""

    positions: torch.Tensor  # (P,) int64, on the CPU
    sizes: dict[Node, tuple[int, ...]]
    same: set[tuple[Node, Node]]  # (step, operand) pairs whose boxes coincide at every position


def plan_batches(groups: list[Group], first: int, stop: int, rows: int) -> Iterator[Batch]:
    """The batches of inputs ``first:stop``: each group's positions, ``rows`` rows at most."""
    members = stop - first
    for index, group in enumerate(groups):
        positions = group.positions
        if rows >= members:
            step = rows // members
            for start in range(0, len(positions), step):
                yield Batch(index, positions[start : start + step], first, stop)
        else:
            for position in range(len(positions)):
                for start in range(first, stop, rows):
                    yield Batch(
                        index,
                        positions[position : position + 1],
                        start,
                        min(start + rows, stop),
                    )


class CostModel:
    """Multiply-adds, bytes per row and seconds of groups of positions, many groups at once.

    A group is given by its flat box sizes (the columns of :meth:`Boxes.sizes_matrix`); every
    method takes a ``(K, columns)`` matrix of K groups and answers for each.
    """

    def __init__(
        self, engine: Engine, patched: list[Node], budget: int, batch_size: int | None
    ) -> None:
        self.batch_size = batch_size
        # Half of what the kept activations leave: a pass's gathered windows and oneDNN's
        # buffers add to what it counts (measured: the peak stays below the plain path's).
        self.free = (budget - engine.retained_bytes - engine.weight_bytes) // 2
        self.element_size = engine.element_size
        self.count = engine.chunk
        columns: dict[Node, slice] = {}
        offset = 0
        for node in patched:
            rank = engine.boxes.rank(node)
            columns[node] = slice(offset, offset + rank)
            offset += rank
        self.columns = columns
        self.full = {node: torch.tensor(engine.shapes[node][2:]) for node in patched}
        # Multiply-adds: a constant, per-box terms (coefficient x box volume of a node), and
        # linear layers that take their source's change unless its box is the whole map.
        self.fixed_macs = 0.0
        self.box_macs: list[tuple[Node, float]] = []
        self.delta_macs: list[tuple[Node, float, float]] = []
        # Bytes per row, walked in the order of a pass: each value from its operation to the
        # last one that reads it (the pass frees it then), its box (or whole map, or both where
        # a tail step reads it whole) and a window operation's gathered windows while it runs.
        self.input_bytes = 3 * math.prod(engine.shapes[engine.graph.input][1:])
        self.walk: list[tuple[Node, int, int, Local | None, int, bool]] = []
        self.freed: list[list[Node]] = []
        for node, step in engine.steps.items():
            if step.kind == Kind.LOCAL and node in columns:
                assert step.local is not None
                channels = engine.shapes[node][1]
                self.box_macs.append((node, float(channels * step.local.macs_per_output)))
            elif step.kind == Kind.LINEAR:
                assert step.source is not None
                per_entry = step.delta_macs * engine.shapes[step.source][1]
                self.delta_macs.append((step.source, float(step.macs), float(per_entry)))
            elif step.kind not in PATCHED:
                self.fixed_macs += step.macs
        for index, node in enumerate(engine.nodes):
            found = engine.steps.get(node)
            shape = engine.shapes.get(node)
            self.freed.append(engine.store.pass_release[index])
            if found is None or shape is None or found.kind in (Kind.CONST, Kind.FLATTEN):
                self.walk.append((node, 0, 0, None, 0, False))
                continue
            whole = math.prod(shape[1:])
            source = 0
            if found.kind == Kind.LOCAL and node in columns:
                assert found.source is not None
                source = 3 * engine.shapes[found.source][1]
            read_whole = node in columns and any(
                user.op == "output" or engine.steps[user].kind == Kind.TAIL for user in node.users
            )
            self.walk.append((node, shape[1], whole, found.local, source, read_whole))
        self.steps = sum(1 for step in engine.steps.values() if step.kind != Kind.CONST)
        self.weights = sum(channels for _, channels in self.box_macs)
        self._prepare_walk()

    def _volume(self, flats: torch.Tensor, node: Node) -> torch.Tensor:
        return flats[:, self.columns[node]].prod(1).double()

    def _is_full(self, flats: torch.Tensor, node: Node) -> torch.Tensor:
        return (flats[:, self.columns[node]] == self.full[node]).all(1)

    def macs(self, flats: torch.Tensor) -> torch.Tensor:
        """Multiply-adds per row of each group."""
        total = torch.full((flats.shape[0],), self.fixed_macs, dtype=torch.float64)
        for node, coefficient in self.box_macs:
            total += coefficient * self._volume(flats, node)
        for source, whole, per_entry in self.delta_macs:
            delta = per_entry * self._volume(flats, source)
            total += torch.where(self._is_full(flats, source), whole, delta)
        return total

    def row_bytes(self, flats: torch.Tensor) -> torch.Tensor:
        """The largest bytes of one row (a position of an input) alive at once in a pass."""
        groups = flats.shape[0]
        padded = torch.cat([flats, torch.ones(groups, 1, dtype=flats.dtype)], 1).double()
        sizes = padded[:, self._gather]  # (K, values, rank): the box of each value
        full = (sizes == self._full_sizes).all(-1)
        box = self._channels * sizes.prod(-1) + self._read_whole
        values = torch.where(full | ~self._patched, self._whole, box)  # (K, values)
        regions = ((sizes - 1) * self._stride + self._reach + 1).prod(-1)
        windows = torch.where(full, 0.0, self._source * regions)
        live = values @ self._alive  # (K, steps): bytes alive after each step of the pass
        during = live.clone()
        during[:, self._made_at] += windows  # a window operation's gathered windows
        return (self.input_bytes + during.amax(1)) * self.element_size

    def _prepare_walk(self) -> None:
        """The tables :meth:`row_bytes` reads: per value, its box columns and when it lives."""
        entries = [(index, entry) for index, entry in enumerate(self.walk) if entry[1]]
        rank = max((len(self.full.get(e[0], ())) for _, e in entries), default=0) or 1
        none = sum(s.stop - s.start for s in self.columns.values())  # the column of ones
        gather, full_sizes, stride, reach = [], [], [], []
        for _, (node, _channels, _whole, local, _source, _read) in entries:
            columns = list(range(*self.columns[node].indices(none))) if node in self.columns else []
            sizes = self.full[node].tolist() if node in self.columns else []
            pad = rank - len(columns)
            gather.append(columns + [none] * pad)
            full_sizes.append(sizes + [1] * pad)
            if local is not None and node in self.columns:
                stride.append(list(local.window.stride) + [1] * pad)
                reach.append(list(local.window.reach) + [0] * pad)
            else:
                stride.append([1] * rank)
                reach.append([0] * rank)
        self._gather = torch.tensor(gather, dtype=torch.long).reshape(len(entries), rank)
        self._full_sizes = torch.tensor(full_sizes, dtype=torch.float64).reshape(-1, rank)
        self._stride = torch.tensor(stride, dtype=torch.float64).reshape(-1, rank)
        self._reach = torch.tensor(reach, dtype=torch.float64).reshape(-1, rank)
        self._patched = torch.tensor([e[0] in self.columns for _, e in entries], dtype=torch.bool)
        self._channels = torch.tensor([float(e[1]) for _, e in entries], dtype=torch.float64)
        self._whole = torch.tensor([float(e[2]) for _, e in entries], dtype=torch.float64)
        self._read_whole = torch.tensor(
            [float(e[2]) if e[5] else 0.0 for _, e in entries], dtype=torch.float64
        )
        self._source = torch.tensor([float(e[4]) for _, e in entries], dtype=torch.float64)
        # alive[v, t]: value v exists after step t (made at its step, freed after its last reader)
        steps = len(self.walk)
        freed_at = {node: index for index, done in enumerate(self.freed) for node in done}
        alive = torch.zeros(len(entries), steps, dtype=torch.float64)
        for row, (index, entry) in enumerate(entries):
            alive[row, index : freed_at.get(entry[0], steps - 1) + 1] = 1.0
        self._alive = alive
        self._made_at = torch.tensor([index for index, _ in entries], dtype=torch.long)

    def rows(self, flats: torch.Tensor) -> list[int]:
        """Rows (positions x inputs) per pass of each group within the memory budget."""
        if self.batch_size is not None:
            return [self.batch_size] * flats.shape[0]
        per_row = self.row_bytes(flats).clamp(min=1)
        return [max(1, int(self.free // b)) for b in per_row.tolist()]

    def seconds(self, flats: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The expected time of each group over ``positions`` positions of every input."""
        rows = positions.double() * self.count
        per_pass = torch.tensor(self.rows(flats), dtype=torch.float64)
        passes = torch.ceil(rows / per_pass)
        # Each group brings new shapes (a full pass and a last one) to every convolution, for
        # which oneDNN reorders the weights and keeps them (time and memory).
        shapes = self.weights * passes.clamp(max=2) * _SECONDS_PER_SHAPE_WEIGHT
        arithmetic = rows * self.macs(flats) * _SECONDS_PER_MAC
        return shapes + passes * self.steps * _SECONDS_PER_STEP + arithmetic

    def best_cut(
        self, unique: torch.Tensor, inverse: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The groups of the fastest cut of the signature groups (see :meth:`Engine.plan`)."""
        count = unique.shape[0]
        if count <= 1:
            return [(unique[g], torch.nonzero(inverse == g)[:, 0]) for g in range(count)]
        members = torch.bincount(inverse, minlength=count)
        order = torch.argsort(self.macs(unique), stable=True)
        cumulative = torch.cumsum(members[order], 0)
        total = int(cumulative[-1])
        cuts = [[(index, index + 1) for index in range(count)]]  # every group alone
        runs = 1
        while runs < count:
            # Cut where the running count of positions passes each k/runs of them.
            bounds = torch.searchsorted(
                cumulative, torch.arange(1, runs + 1, dtype=torch.long) * total / runs
            )
            ends = sorted({min(int(b), count - 1) + 1 for b in bounds} | {count})
            cuts.append(list(zip([0, *ends[:-1]], ends, strict=True)))
            runs *= 2
        best: tuple[float, list[tuple[int, int]]] | None = None
        for cut in cuts:
            flats = torch.stack([unique[order[a:b]].amax(0) for a, b in cut])
            sizes = torch.stack([members[order[a:b]].sum() for a, b in cut])
            seconds = float(self.seconds(flats, sizes).sum())
            if best is None or seconds < best[0]:
                best = (seconds, cut)
        assert best is not None
        group_of = torch.empty(count, dtype=torch.long)
        for index, (a, b) in enumerate(best[1]):
            group_of[order[a:b]] = index
        position_group = group_of[inverse]
        return [
            (unique[order[a:b]].amax(0), torch.nonzero(position_group == index)[:, 0])
            for index, (a, b) in enumerate(best[1])
        ]
