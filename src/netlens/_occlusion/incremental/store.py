"""The store of kept activations: the unoccluded values passes read, a chunk of inputs at a time.

The traced graph runs here on the unoccluded inputs, one operation at a time; a value is
dropped once the last operation that reads it has run, unless a pass will read it (the engine
says which: a window around a box, the change of a map, the whole map of an operation that
runs whole, the constants).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.fx import Node
from torch.fx.node import map_arg

from .graph import TracedGraph
from .trace import Unavailable

__all__ = ["KeptActivations"]


class KeptActivations:
    """The unoccluded activations of inputs ``loaded`` on, and the constants, by node.

    Args:
        graph: The traced graph.
        inputs: All the unoccluded inputs, ``(N, C, *S)``.
        needed: Whether a pass reads the kept value of a node (asked once nothing later in the
            graph reads it).
    """

    def __init__(
        self, graph: TracedGraph, inputs: torch.Tensor, needed: Callable[[Node], bool]
    ) -> None:
        self.graph = graph
        self.inputs = inputs
        self.needed = needed
        self.values: dict[Node, Any] = {}
        self.loaded = 0  # the first of the inputs kept
        # After the operation at index i, the values nothing later reads: release[i] (in the
        # passes: pass_release[i], where a linear layer after a flatten reads the flatten's input).
        self.release = self.last_readers({})
        self.pass_release = self.release

    def last_readers(self, readers: dict[Node, list[Node]]) -> list[list[Node]]:
        """For each operation, the values it is the last to read (its users', or ``readers``)."""
        order = self.graph.order
        release: list[list[Node]] = [[] for _ in self.graph.nodes]
        for node in self.graph.nodes:
            users = [*node.users, *readers.get(node, [])]
            release[max((order[user] for user in users), default=order[node])].append(node)
        return release

    def compute(self, node: Node, inputs: torch.Tensor) -> Any:
        """The value of ``node`` on these unoccluded inputs, from the kept values it reads."""
        graph = self.graph
        if node.op == "placeholder":
            if node is graph.input:
                return inputs
            if node.args:
                return node.args[0]  # a default value of the forward pass
            raise Unavailable(f"the model's forward takes an argument {node.name!r} too")
        if node.op == "get_attr":
            return graph.attributes[str(node.target)]
        if node.op == "output":
            return map_arg(node.args[0], lambda n: self.values[n])
        args = map_arg(node.args, lambda n: self.values[n])
        kwargs = map_arg(node.kwargs, lambda n: self.values[n])
        return graph.calls[node](tuple(args), dict(kwargs))

    def drop_after(self, index: int) -> None:
        """Drop what the operation at ``index`` was the last to read, unless a pass reads it."""
        for done in self.release[index]:
            if done in self.values and not self.needed(done):
                del self.values[done]

    def load(self, first: int, stop: int) -> Any:
        """Keep the activations of inputs ``first:stop`` instead of those kept before.

        Returns:
            The model's output on those inputs.
        """
        graph = self.graph
        self.values = {node: v for node, v in self.values.items() if graph.is_constant(node)}
        inputs = self.inputs[first:stop]
        output: Any = None
        for index, node in enumerate(graph.nodes):
            value = self.compute(node, inputs)
            if node.op == "output":
                output = value
            else:
                self.values[node] = value
            self.drop_after(index)
        self.loaded = first
        return output

    def of(self, node: Node, first: int, stop: int) -> torch.Tensor | None:
        """The kept activation of ``node`` for inputs ``first:stop`` (None if not kept)."""
        value = self.values.get(node)
        return None if value is None else value[first - self.loaded : stop - self.loaded]
