"""Incremental inference for occlusion: recompute only what each window can change.

Nakandala, Kumar and Papakonstantinou (SIGMOD 2019) observed that an occluding window changes a
small box of the input, and that the box of each feature map it can reach grows only by the
receptive field of the layers in between. So instead of running every occluded copy through
the whole network, the network runs once on the unoccluded inputs and keeps its activations;
then, for each copy, every layer computes only the box its input's change can reach, reading
the unchanged surroundings from the kept activations. The result is exact, not an
approximation: each value is computed by the same operation on the same numbers.

How the model is taken apart, stage by stage (one module each): :func:`trace` traces it with
``torch.fx`` (``trace``: the tracer is ours, and the model is left as it was; ``graph``: every
operation called out of place), and :func:`build` runs the traced graph on the unoccluded
inputs (``store``: the kept activations) and sorts every operation into one of these kinds
(``classify``; ``local`` reads the window operations):

* **local**: convolutions (any kernel, stride, padding, dilation, groups; zero padding), max and
  average pooling, adaptive pooling that is an ordinary pooling. The changed box of the output
  is the set of outputs whose window meets the changed box of the input; each is computed by
  the operation itself, without padding, on a window gathered from the kept activation with the
  changed box pasted in (padding values where the window leaves the map).
* **pointwise**: activations, BatchNorm and Dropout in eval mode, additions, multiplications
  and other elementwise arithmetic of branches (the box of the result is the hull of the
  operands' boxes), and ``torch.cat`` along channels.
* **delta**: a ``Linear`` after a flatten (a large one: the loop over the map's positions
  costs a little per pass) takes the kept output plus the weight columns of the changed
  entries times their change; a global average pool takes the kept mean plus the mean change.
  Exact, and cheaper than the plain layer while the box is smaller than the map.
* **tail**: everything else (an operation that mixes all positions, a layer the engine does not
  know). It runs as in the plain forward pass, on the kept activation with the changed box
  pasted in, and so does every operation after it.

The box each position changes in each map follows from its operands' boxes (``boxes``).
Positions whose boxes have the same sizes in every layer run together, a batch of them per
pass; groups are merged (each box then grows to the group's size: the extra values are
recomputed, equal to the kept ones) when a cost model expects the merge to save more in
per-pass overhead and in new shapes for oneDNN than it costs in arithmetic. Only the
activations some pass reads are kept, for a chunk of inputs at a time (a sixteenth of the
memory budget), and a pass gets half of what they leave (``plan``). A pass (``passes``)
computes each patched map as a box pasted into its kept map (``patches``).

Nothing here guesses: a model that cannot be traced, a module with hooks (which would not run),
an in-place operation other than an elementwise one, a forward pass with Python side effects,
or a traced graph whose output on the unoccluded inputs differs from the model's makes
:func:`build` raise :class:`Unavailable`, saying which module or operation prevents it, and
occlusion runs every copy through the model instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.fx import Node

from .boxes import Boxes
from .classify import PATCHED, Classifier, Kind, Step
from .graph import TracedGraph, describe
from .passes import IncrementalPass
from .plan import Batch, CostModel, Group, plan_batches
from .store import KeptActivations
from .trace import Unavailable, trace_graph

if TYPE_CHECKING:
    from ..._core.outputs import LayerView

__all__ = ["Batch", "Engine", "build", "check_inputs", "trace"]

# The unoccluded activations kept at once take at most 1/KEPT_SHARE of the memory budget (but
# always those of one input): they stay alive through every pass, unlike a pass's own values.
KEPT_SHARE = 16


class Engine:
    """The kept activations, the kind of every operation, and the boxes of every position.

    Build it with :func:`build`; :meth:`batches` plans the passes and :meth:`evaluate` runs one.
    """

    def __init__(
        self,
        graph: TracedGraph,
        inputs: torch.Tensor,
        baseline: torch.Tensor,
        origins: torch.Tensor,
        window: tuple[int, ...],
        layer: LayerView | None,
    ) -> None:
        self.graph = graph
        self.nodes = graph.nodes
        self.inputs = inputs
        # The unoccluded activations a pass reads (and the constants), of the inputs from
        # ``store.loaded`` on: ``chunk`` of them at a time.
        self.store = KeptActivations(graph, inputs, self._needed)
        self.chunk = inputs.shape[0]
        self.shapes: dict[Node, tuple[int, ...]] = {}
        self.count = inputs.shape[0]
        self.device = inputs.device
        self.baseline = baseline
        self.origins = origins
        self.window = window
        self.layer = layer
        self.layer_node: Node | None = None
        self.layer_sums: torch.Tensor | None = None
        self.delta_sums = False
        self.steps: dict[Node, Step] = {}
        self.boxes = Boxes(origins, window)
        self.groups: list[Group] = []
        self.rows = 1
        self.costs: CostModel | None = None
        self.retained_bytes = 0
        self.plain_macs = 0
        self.incremental_macs = 0.0
        self.element_size = inputs.element_size()
        self._location_weights: dict[Node, torch.Tensor] = {}
        self.weight_allowance = 0  # bytes of linear weights that may be laid out by location
        self.weight_bytes = 0  # and those that are

    # -- kinds and boxes, on the first input ---------------------------------------------------

    def walk(self, inputs: torch.Tensor) -> None:
        """Run the graph on (some of) the unoccluded inputs, one operation at a time.

        Each operation gets its kind and each position its box in the operation's output; an
        activation is kept, once nothing later reads it, only if some pass will read it.
        """
        self._find_layer()
        store = self.store
        classifier = Classifier(
            self.graph, store.values, self.layer_node, self.weight_allowance, self.element_size
        )
        self.steps = classifier.steps
        for index, node in enumerate(self.nodes):
            value = store.compute(node, inputs)
            if node.op != "output":
                store.values[node] = value
                if isinstance(value, torch.Tensor):
                    self.shapes[node] = tuple(value.shape)
                classifier.classify(node, value)
                if node is self.layer_node:
                    self._layer_kind(value)
                if self.steps[node].kind in PATCHED:
                    self.boxes.propagate(self.steps[node], self.shapes[node][2:])
            store.drop_after(index)
        self.retained_bytes = sum(
            value.numel() * value.element_size()
            for node, value in store.values.items()
            if isinstance(value, torch.Tensor)
            and self.steps[node].kind not in (Kind.CONST, Kind.INPUT)
        )
        self.weight_bytes = sum(
            step.weight.numel() * step.weight.element_size()
            for step in self.steps.values()
            if step.kind == Kind.LINEAR and step.weight is not None
        )
        readers: dict[Node, list[Node]] = {}
        for node, step in self.steps.items():
            if step.kind == Kind.LINEAR and step.source is not None:
                readers.setdefault(step.source, []).append(node)
        store.pass_release = store.last_readers(readers)

    def load(self, first: int, stop: int) -> tuple[Any, torch.Tensor | None]:
        """Keep the activations of inputs ``first:stop`` instead of the chunk kept before.

        Returns:
            The model's output on those inputs and the layer's sums, ``(stop - first, C)``.
        """
        output = self.store.load(first, stop)
        sums = None
        if self.layer_node is not None:
            assert self.layer is not None
            value = self.store.values[self.layer_node]
            arranged = self.layer.arrange(self.layer.tensor(value), stop - first)
            sums = arranged.sum(tuple(range(2, arranged.dim())))
            if arranged.dim() == 2:
                sums = arranged
        return output, sums

    def _find_layer(self) -> None:
        if self.layer is None:
            return
        calls = [
            node
            for node in self.nodes
            if node.op == "call_module" and str(node.target) == self.layer.name
        ]
        if not calls:
            raise Unavailable(f"layer {self.layer.name!r} does not run in the traced graph")
        self.layer_node = calls[-1]  # the latest call counts

    def _layer_kind(self, value: Any) -> None:
        layer = self.layer
        assert layer is not None and self.layer_node is not None
        # On a patched map, the sums of a copy are the kept ones plus the change of its box.
        self.delta_sums = (
            self.steps[self.layer_node].kind in PATCHED
            and layer.select is None
            and isinstance(value, torch.Tensor)
            and layer.dims(value) == (0, 1)
        )

    def _needed(self, node: Node) -> bool:
        """Whether a pass reads the kept activation of ``node``."""
        step = self.steps[node]
        if step.kind in (Kind.CONST, Kind.INPUT, Kind.LINEAR, Kind.MEAN) or node is self.layer_node:
            return True
        if step.kind not in PATCHED:
            return False  # the passes compute it whole, from its inputs
        for user in node.users:
            if user.op == "output":
                return True
            user_step = self.steps[user]
            if user_step.kind in (Kind.LOCAL, Kind.FLATTEN, Kind.LINEAR, Kind.MEAN, Kind.TAIL):
                return True  # a window around the box, the change, or the whole map
            if user_step.kind in (Kind.POINTWISE, Kind.CAT) and not self.boxes.same(
                user, node, None
            ):
                return True
        return False

    # The boxes' sizes as the engine's tests read them (see Boxes).
    def _sizes_matrix(self) -> tuple[list[Node], torch.Tensor]:
        return self.boxes.sizes_matrix()

    def _split_sizes(self, patched: list[Node], flat: torch.Tensor) -> dict[Node, tuple[int, ...]]:
        return self.boxes.split_sizes(patched, flat)

    def whole(self, node: Node, sizes: dict[Node, tuple[int, ...]]) -> bool:
        """Whether a group's box of ``node`` is its whole map."""
        return sizes[node] == self.shapes[node][2:]

    # -- groups, memory, cost ------------------------------------------------------------------

    def plan(self, budget: int, batch_size: int | None) -> None:
        """Group positions, size the batches, decide what to keep, estimate the cost.

        Positions whose boxes have the same sizes in every layer form a group; the groups,
        ordered by their multiply-adds per row, are then cut into 1, 2, 4, ... runs of about
        equal numbers of positions (every group alone last), each run merged into one group
        (its boxes grown to the largest of its members), and the cut the cost model expects
        to be fastest wins. Every candidate is costed at once (vectorised), so planning takes
        time in proportion to the number of positions times log of it, not their cube.
        """
        patched, sizes = self.boxes.sizes_matrix()
        unique, inverse = torch.unique(sizes, dim=0, return_inverse=True)
        costs = self.costs = CostModel(self, patched, budget, batch_size)
        merged = costs.best_cut(unique, inverse)
        self.groups = []
        for group_sizes, positions in merged:
            sizes_of = self.boxes.split_sizes(patched, group_sizes)
            same = set()
            for node, step in self.steps.items():
                if step.kind in (Kind.POINTWISE, Kind.CAT):
                    for operand, how in step.operands.items():
                        if how == "box" and self.boxes.same(node, operand, positions):
                            same.add((node, operand))
            self.groups.append(Group(positions, sizes_of, same))
        self.rows = costs.rows(unique.amax(0, keepdim=True))[0] if unique.numel() else 1
        if not unique.numel() and batch_size is not None:
            self.rows = batch_size
        self.plain_macs = sum(step.macs for step in self.steps.values()) * self.origins.shape[0]
        flats = torch.stack([flat for flat, _ in merged]) if merged else unique
        counts = torch.tensor([len(positions) for _, positions in merged], dtype=torch.float64)
        self.incremental_macs = float((costs.macs(flats) * counts).sum())

    # -- passes ------------------------------------------------------------------------------

    def _chunks(self) -> list[tuple[int, int]]:
        """The ranges of inputs kept together: the one kept now first."""
        ranges = [
            (first, min(first + self.chunk, self.count))
            for first in range(0, self.count, self.chunk)
        ]
        return sorted(ranges, key=lambda chunk: chunk[0] != self.store.loaded)

    def first_batches(self, count: int, rows: int) -> list[Batch]:
        """Up to ``count`` batches of at most ``rows`` rows of the inputs kept now."""
        loaded = self.store.loaded
        stop = min(loaded + self.chunk, self.count)
        batches = []
        for batch in plan_batches(self.groups, loaded, stop, min(rows, self.rows)):
            batches.append(batch)
            if len(batches) == count:
                break
        return batches

    def skip(self, positions: torch.Tensor) -> None:
        """Leave out these positions (computed already): no batch holds them from now on."""
        kept = []
        for group in self.groups:
            group.positions = group.positions[~torch.isin(group.positions, positions)]
            if len(group.positions):
                kept.append(group)
        self.groups = kept

    def batch_count(self) -> int:
        """How many batches :meth:`batches` yields."""
        return sum(
            sum(1 for _ in plan_batches(self.groups, first, stop, self.rows))
            for first, stop in self._chunks()
        )

    def batches(self) -> Iterator[Batch]:
        """Every batch: a slice of one group's positions, over a range of inputs.

        The inputs go a chunk at a time, their activations kept (and the previous chunk's
        dropped) before their first batch.
        """
        for first, stop in self._chunks():
            if first != self.store.loaded:
                self.load(first, stop)
            yield from plan_batches(self.groups, first, stop, self.rows)

    def evaluate(self, batch: Batch) -> tuple[Any, torch.Tensor | None]:
        """The model's output for the batch's copies (rows position-major), and the layer sums."""
        loaded = self.store.loaded
        if not loaded <= batch.first < batch.stop <= loaded + self.chunk:
            first = batch.first // self.chunk * self.chunk  # the batch's chunk of inputs
            self.load(first, min(first + self.chunk, self.count))
        return IncrementalPass(self, batch).run()

    def location_weight(self, step: Step) -> torch.Tensor:
        """A linear layer's weight as ``(locations, channels, outputs)``, made once."""
        found = self._location_weights.get(step.node)
        if found is None:
            assert step.weight is not None and step.source is not None
            channels = self.shapes[step.source][1]
            weight = step.weight.detach()
            found = weight.reshape(weight.shape[0], channels, -1).permute(2, 1, 0).contiguous()
            self._location_weights[step.node] = found
        return found


def check_inputs(inputs: torch.Tensor) -> None:
    """Refuse inputs that have no maps to keep boxes on, before anything runs.

    Raises:
        Unavailable: Saying why.
    """
    if not inputs.is_floating_point():
        raise Unavailable(
            f"the inputs are integers (dtype {inputs.dtype}, token ids): their first layer, an "
            "embedding, has no map whose boxes could be kept"
        )
    if inputs.dim() < 3:
        raise Unavailable(
            f"inputs of shape {tuple(inputs.shape)} have no dims after (N, C) to keep boxes on"
        )


def trace(model: nn.Module, inputs: torch.Tensor, layer: LayerView | None) -> TracedGraph:
    """Check the inputs and trace the model, keeping ``layer`` as one call.

    Raises:
        Unavailable: Saying which module or operation prevents incremental inference.
    """
    check_inputs(inputs)
    fx_graph, attributes = trace_graph(model, None if layer is None else layer.module)
    graph = TracedGraph(model, fx_graph, attributes, inputs.shape[0])
    graph.structure()
    return graph


def build(
    graph: TracedGraph,
    inputs: torch.Tensor,
    baseline: torch.Tensor,
    origins: torch.Tensor,
    window: tuple[int, ...],
    layer: LayerView | None,
    budget: int,
    batch_size: int | None,
    check: Callable[[int, int, Any, torch.Tensor | None], None],
) -> Engine:
    """Run the traced graph on the unoccluded inputs and plan the incremental passes.

    Args:
        graph: What :func:`trace` made of the model.
        inputs: The unoccluded inputs ``(N, C, *S)`` on the model's device and dtype.
        baseline: The occluder's values, ``(N or 1, C, *S)``.
        origins: ``(positions, len(window))`` (int64, on the CPU): where each window starts in
            the last ``len(window)`` dims of a sample.
        window: The window's size.
        layer: The layer whose channel sums are recorded, or None.
        budget: Bytes one pass may take, with the kept activations.
        batch_size: Copies per pass, overriding the budget.
        check: Called with ``first, stop``, the traced graph's output on inputs
            ``first:stop`` and the layer's sums on them; raises :class:`Unavailable` if they
            are not the model's.

    Raises:
        Unavailable: Saying which module or operation prevents incremental inference.
    """
    engine = Engine(graph, inputs, baseline, origins, window, layer)
    # A linear layer that takes its input's change needs its weight laid out by location (a
    # copy, counted in the budget): only where the copies take at most a quarter of the budget
    # (VGG's 25088 x 4096 classifier would need 392 MiB); a larger one runs whole, which costs
    # little beside the convolutions.
    engine.weight_allowance = budget // 4
    engine.walk(inputs[:1])  # the kinds, the boxes, and what one input keeps
    users = [user for user in graph.input.users if user.op != "output"]
    useful = (*PATCHED, Kind.FLATTEN, Kind.MEAN)
    if not users or all(engine.steps[user].kind not in useful for user in users):
        blocking = next((user for user in users if engine.steps[user].kind == Kind.TAIL), None)
        if blocking is None:
            raise Unavailable("the model does not read its input")
        raise Unavailable(
            f"the input goes first through {describe(blocking)}, an operation incremental "
            "inference does not know or that mixes every position"
        )
    # Keep the activations of as many inputs as take a small share of the budget: the passes
    # of those inputs run, then the next ones'.
    per_input = max(1, engine.retained_bytes)
    engine.chunk = max(1, min(inputs.shape[0], budget // KEPT_SHARE // per_input))
    engine.retained_bytes = per_input * engine.chunk
    sums = []
    for first in range(0, inputs.shape[0], engine.chunk):
        stop = min(first + engine.chunk, inputs.shape[0])
        output, chunk_sums = engine.load(first, stop)
        check(first, stop, output, chunk_sums)
        if chunk_sums is not None:
            sums.append(chunk_sums)
    engine.layer_sums = torch.cat(sums) if sums else None
    engine.plan(budget, batch_size)
    return engine
