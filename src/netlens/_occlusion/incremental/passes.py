"""One incremental pass: a batch of occluded copies through the traced graph.

Each patched map is computed only in its box (a :class:`Patch` over the kept map), a linear
layer after a flatten and a global mean take the change of their input, and every other
operation runs as in the plain forward pass, on whole maps with the boxes pasted in.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch.fx import Node
from torch.fx.node import map_arg

from ..._core.ops import SHAPE_ATTRIBUTES, SHAPE_METHODS
from .classify import PATCHED, Kind, Step
from .patches import Patch, Skipped, box_locations, gather, gather_kept, materialize

if TYPE_CHECKING:
    from .engine import Engine
    from .plan import Batch

__all__ = ["IncrementalPass"]


class IncrementalPass:
    """One batch of copies through the graph: boxes where they pay, whole maps elsewhere."""

    def __init__(self, engine: Engine, batch: Batch) -> None:
        self.engine = engine
        self.group = engine.groups[batch.group]
        self.positions = batch.positions
        self.first, self.stop = batch.first, batch.stop
        self.count = len(batch.positions)
        self.members = batch.stop - batch.first
        self.rows = self.count * self.members
        self.env: dict[Node, Any] = {}
        self.full_cache: dict[Node, torch.Tensor] = {}
        self.device = engine.device

    def clean(self, node: Node) -> torch.Tensor | None:
        """The kept activation of ``node`` for the batch's inputs (None if not kept)."""
        return self.engine.store.of(node, self.first, self.stop)

    def start(self, node: Node) -> torch.Tensor:
        """Where each position's box of ``node`` starts: its own, moved inside the map.

        A group's box can be larger than a position's own (merged groups): it then starts
        earlier where it would leave the map, and still covers the position's own box.
        """
        size = torch.tensor(self.group.sizes[node])
        spatial = torch.tensor(self.engine.shapes[node][2:])
        start = torch.minimum(self.engine.boxes.lo[node][self.positions], spatial - size)
        return start.clamp(min=0)

    def run(self) -> tuple[Any, torch.Tensor | None]:
        """The model's output on the batch's copies, and the layer's sums (or None)."""
        engine = self.engine
        sums: torch.Tensor | None = None
        output: Any = None
        for index, node in enumerate(engine.nodes):
            if node.op == "output":
                output = map_arg(node.args[0], self.full)
            elif engine.steps[node].kind != Kind.CONST:
                self.env[node] = self._step(engine.steps[node])
                if node is engine.layer_node:
                    sums = self._sums(node)
            for done in engine.store.pass_release[index]:  # free what nothing later reads
                self.env.pop(done, None)
                self.full_cache.pop(done, None)
        return output, sums

    def _step(self, step: Step) -> Any:
        kind, node = step.kind, step.node
        if kind == Kind.INPUT:
            return self._input(node)
        if kind in PATCHED and self.engine.whole(node, self.group.sizes):
            return self._generic(step)
        if kind == Kind.LOCAL:
            return self._local(step)
        if kind == Kind.POINTWISE:
            return self._pointwise(step)
        if kind == Kind.CAT:
            return self._cat(step)
        if kind == Kind.FLATTEN:
            assert step.source is not None
            if isinstance(self.env[step.source], Patch):
                return Skipped()
            return self._generic(step)
        if kind == Kind.LINEAR:
            assert step.source is not None
            if isinstance(self.env[step.source], Patch):
                return self._linear(step)
            return self._generic(step)
        if kind == Kind.MEAN:
            assert step.source is not None
            if isinstance(self.env[step.source], Patch):
                return self._mean(step)
            return self._generic(step)
        return self._generic(step)

    def full(self, node: Node) -> Any:
        """The value of a node as the plain forward pass would have it (whole maps)."""
        if self.engine.steps[node].kind == Kind.CONST:
            return self.engine.store.values[node]
        value = self.env[node]
        if isinstance(value, Patch):
            cached = self.full_cache.get(node)
            if cached is None:
                cached = materialize(value, self.engine.shapes[node][2:])
                self.full_cache[node] = cached
            return cached
        if isinstance(value, Skipped):
            raise AssertionError("a skipped flatten was read")
        return value

    def _shape_only(self, node: Node) -> Any:
        value = self.env.get(node)
        if isinstance(value, Patch):
            shape = (self.rows, *self.engine.shapes[node][1:])
            return torch.empty(shape, dtype=value.data.dtype, device="meta")
        return self.full(node)

    def _generic(self, step: Step) -> Any:
        node = step.node
        reader = self.full
        if (node.op == "call_method" and str(node.target) in SHAPE_METHODS) or (
            node.op == "call_function"
            and node.target is getattr
            and len(node.args) > 1
            and node.args[1] in SHAPE_ATTRIBUTES
        ):
            reader = self._shape_only
        args = map_arg(node.args, reader)
        kwargs = map_arg(node.kwargs, reader)
        return step.call(tuple(args), dict(kwargs))

    def _input(self, node: Node) -> Any:
        """The occluded copies, as boxes of the windows (or whole when there is no map)."""
        engine = self.engine
        inputs = self.clean(node)
        assert inputs is not None
        baseline = engine.baseline
        if baseline.shape[0] != 1:
            baseline = baseline[self.first : self.stop]
        bounds = tuple(inputs.shape[2:])
        whole = engine.whole(node, self.group.sizes)  # a window as large as the maps
        if whole:
            start = torch.zeros(self.count, len(bounds), dtype=torch.long)
            size = bounds
        else:
            start = self.start(node)
            size = self.group.sizes[node]
        hidden = gather_kept(baseline, start, size, 0.0)
        shape = (self.count, self.members, inputs.shape[1], *size)
        if len(engine.window) == inputs.dim() - 1:  # the window covers the channels too
            clean = gather_kept(inputs, start, size, 0.0)
            low = engine.origins[self.positions][:, 0, None]
            channels = torch.arange(inputs.shape[1])
            mask = ((channels >= low) & (channels < low + engine.window[0])).to(self.device)
            data = torch.where(mask.view(self.count, 1, -1, *([1] * len(size))), hidden, clean)
        else:
            data = hidden.expand(shape).contiguous()
        if whole:
            return data.reshape(self.rows, *inputs.shape[1:])
        return Patch(data, start, inputs)

    def _local(self, step: Step) -> Patch:
        assert step.local is not None and step.source is not None
        local = step.local
        node = step.node
        start = self.start(node)
        size = self.group.sizes[node]
        region = local.window.extent(size)  # the inputs the box of outputs reads
        source = self._source(step.source)
        window = gather(source, local.window.input_start(start), region, local.pad_value)
        channels = window.shape[2]
        result = local.apply(window.reshape(self.rows, channels, *region))
        data = result.view(self.count, self.members, *result.shape[1:])
        return Patch(data, start, self.clean(node))

    def _source(self, node: Node) -> Patch | torch.Tensor:
        """A changed map to gather from: its patch, or its full maps as ``(P, M, C, *S)``."""
        value = self.env[node]
        if isinstance(value, Patch):
            return value
        assert isinstance(value, torch.Tensor)
        return value.view(self.count, self.members, *value.shape[1:])

    def _box_operand(
        self, node: Node, operand: Node, start: torch.Tensor, size: tuple[int, ...]
    ) -> torch.Tensor:
        value = self.env[operand]
        if isinstance(value, Patch) and (node, operand) in self.group.same:
            data = value.data
        else:
            data = gather(self._source(operand), start, size, 0.0)
        return data.reshape(self.rows, *data.shape[2:])

    def _pointwise(self, step: Step) -> Patch:
        node = step.node
        start = self.start(node)
        size = self.group.sizes[node]
        values: dict[Node, Any] = {}
        for operand, how in step.operands.items():
            if how == "box":
                values[operand] = self._box_operand(node, operand, start, size)
            elif how == "row":
                values[operand] = self.full(operand)
            elif how == "window":
                constant = self.engine.store.values[operand]
                rank = len(self.engine.shapes[node])
                constant = constant.reshape((1,) * (rank - constant.dim()) + constant.shape)
                window = gather(
                    constant.unsqueeze(0).expand(self.count, *constant.shape), start, size, 0.0
                )
                values[operand] = window.reshape(self.count, *window.shape[2:]).repeat_interleave(
                    self.members, 0
                )
        for operand in node.all_input_nodes:
            if operand not in values:
                values[operand] = self.full(operand)
        args = map_arg(node.args, lambda n: values[n])
        kwargs = map_arg(node.kwargs, lambda n: values[n])
        result = step.call(tuple(args), dict(kwargs))
        data = result.view(self.count, self.members, *result.shape[1:])
        return Patch(data, start, self.clean(node))

    def _cat(self, step: Step) -> Patch:
        node = step.node
        start = self.start(node)
        size = self.group.sizes[node]
        parts = [self._box_operand(node, operand, start, size) for operand in step.parts]
        result = torch.cat(parts, dim=1)
        data = result.view(self.count, self.members, *result.shape[1:])
        return Patch(data, start, self.clean(node))

    def _change(self, node: Node) -> tuple[Patch, torch.Tensor]:
        """A patch and its change against the kept map, ``(P, M, C, prod(size))``."""
        patch = self.env[node]
        assert isinstance(patch, Patch) and patch.clean is not None
        count, members, channels = patch.data.shape[:3]
        size = tuple(patch.data.shape[3:])
        kept = gather_kept(patch.clean, patch.start, size, 0.0)
        return patch, (patch.data - kept).reshape(count, members, channels, -1)

    def _linear(self, step: Step) -> torch.Tensor:
        """``Linear(flatten(x))`` of the copies: the kept output plus the change's share."""
        assert step.source is not None and step.weight is not None
        patch, change = self._change(step.source)
        kept = self.clean(step.node)
        assert kept is not None
        count, members, channels = change.shape[:3]
        size = tuple(patch.data.shape[3:])
        bounds = self.engine.shapes[step.source][2:]
        weight = self.engine.location_weight(step)  # (L, C, out)
        flat = box_locations(patch.start, size, bounds)
        result = kept.unsqueeze(0).repeat(count, 1, 1)  # a copy: the kept output stays as it is
        # One product per location of the map: the change there of every position whose box
        # covers it, times that location's weights (laid out (location, channel, output) so
        # that each is one contiguous matrix).
        order = torch.argsort(flat.reshape(-1))
        locations = flat.reshape(-1)[order]
        unique, counts = torch.unique_consecutive(locations, return_counts=True)
        position_index = (order // flat.shape[1]).to(self.device)
        offset_index = (order % flat.shape[1]).to(self.device)
        first = 0
        for location, number in zip(unique.tolist(), counts.tolist(), strict=True):
            chosen = position_index[first : first + number]
            offsets = offset_index[first : first + number]
            first += number
            rows = change[chosen, :, :, offsets]  # (K, M, C)
            contribution = rows.reshape(-1, channels) @ weight[location]
            result.index_add_(0, chosen, contribution.view(number, members, -1))
        return result.reshape(count * members, -1)

    def _mean(self, step: Step) -> torch.Tensor:
        """A global average pool of the copies: the kept mean plus the mean change."""
        assert step.source is not None
        _, change = self._change(step.source)
        kept = self.clean(step.node)
        assert kept is not None
        bounds = self.engine.shapes[step.source][2:]
        count, members, channels = change.shape[:3]
        shift = change.reshape(count, members, channels, -1).sum(3) / math.prod(bounds)
        result = kept.unsqueeze(0) + shift.view(count, members, *kept.shape[1:])
        return result.reshape(count * members, *kept.shape[1:])

    def _sums(self, node: Node) -> torch.Tensor:
        """The layer's output summed over everything but its batch and channel axes."""
        engine = self.engine
        value = self.env[node]
        if engine.delta_sums and isinstance(value, Patch):
            _, change = self._change(node)
            assert engine.layer_sums is not None
            kept = engine.layer_sums[self.first : self.stop]
            count, members, channels = change.shape[:3]
            shift = change.reshape(count, members, channels, -1).sum(3)
            return (kept.unsqueeze(0) + shift).reshape(count * members, channels)
        assert engine.layer is not None
        layer = engine.layer
        arranged = layer.arrange(layer.tensor(self.full(node)), self.rows)
        if arranged.dim() > 2:
            return arranged.sum(tuple(range(2, arranged.dim())))
        return arranged
