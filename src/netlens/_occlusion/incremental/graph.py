"""The traced graph made ready to run: every operation called out of place, and node facts.

:class:`TracedGraph` holds the nodes of a traced model in order, which of them depend on the
input, and for each operation a call that never writes into its arguments (an in-place
operation becomes its out-of-place twin, and later readers of the tensor it changed read its
result instead). Beside it, what the other stages ask of a node: whether it is a view, whether
it does nothing (eval-mode dropout, identities), how to name it in a message, and whether a
module computes what PyTorch's own class computes.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.fx import Graph, Node
from torch.nn.utils import parametrize

from ..._core.ops import (
    DROPOUT_FUNCTIONS,
    INPLACE_FUNCTIONS,
    POINTWISE_FUNCTIONS,
    POINTWISE_METHODS,
    POINTWISE_MODULES,
    TRAINING_ARGUMENT,
    VIEW_FUNCTIONS,
    VIEW_METHODS,
)
from .trace import Unavailable

__all__ = [
    "Call",
    "TracedGraph",
    "computes_as_pytorch",
    "describe",
    "does_nothing",
    "is_view",
]

# How a traced operation is called: with its arguments' values, out of place.
Call = Callable[[tuple[Any, ...], dict[str, Any]], Any]


class TracedGraph:
    """A traced model's nodes in order, what depends on the input, and out-of-place calls."""

    def __init__(
        self, model: nn.Module, graph: Graph, attributes: dict[str, Any], count: int
    ) -> None:
        self.model = model
        self.graph = graph
        self.attributes = attributes
        self.count = count
        self.nodes: list[Node] = list(graph.nodes)
        self.order = {node: index for index, node in enumerate(self.nodes)}
        placeholders = [node for node in self.nodes if node.op == "placeholder"]
        self.input = placeholders[0]
        self.depends: set[Node] = set()
        self.calls: dict[Node, Call] = {}
        self.modules: dict[str, nn.Module] = dict(model.named_modules())  # get_submodule is slow

    def is_constant(self, node: Node) -> bool:
        """Whether ``node``'s value is the same for every copy (an attribute, a default)."""
        return node is not self.input and (
            node.op in ("placeholder", "get_attr") or node not in self.depends
        )

    # Structure first, before any value is known: what depends on the input, how each operation
    # is called out of place, and in-place operations turned into new values.
    def structure(self) -> None:
        for node in self.nodes:
            if node is self.input or any(arg in self.depends for arg in node.all_input_nodes):
                self.depends.add(node)
        for node in list(self.nodes):
            if node.op in ("call_function", "call_method", "call_module"):
                self.calls[node] = self._out_of_place(node)

    def _out_of_place(self, node: Node) -> Call:
        if "out" in node.kwargs:
            raise Unavailable(f"operation {describe(node)} writes into out=")
        if does_nothing(node, self.modules):
            # Eval-mode dropout and identities return their input: in place or not, on a view
            # or not, nothing changes, so nothing needs redirecting.
            return lambda args, kwargs: args[0]
        if node.op == "call_module":
            module = self.modules[str(node.target)]
            if getattr(module, "inplace", False) is True:
                if not isinstance(module, POINTWISE_MODULES):
                    raise Unavailable(f"module {node.target!r} works in place")
                self._redirect(node)
                return lambda args, kwargs: module(args[0].clone(), *args[1:], **kwargs)
            return lambda args, kwargs: module(*args, **kwargs)
        if node.op == "call_method":
            name = str(node.target)
            if name.endswith("_") and not name.endswith("__"):
                if name[:-1] not in POINTWISE_METHODS:
                    raise Unavailable(f"in-place operation Tensor.{name} in {describe(node)}")
                self._redirect(node)
                name = name[:-1]
            return lambda args, kwargs: getattr(args[0], name)(*args[1:], **kwargs)
        target = node.target
        if target is operator.setitem:
            raise Unavailable(f"in-place assignment to a tensor's items ({describe(node)})")
        if target in INPLACE_FUNCTIONS:
            twin = INPLACE_FUNCTIONS[target]
            if twin is None:
                raise Unavailable(f"in-place operation {describe(node)}")
            self._redirect(node)
            target = twin
        elif node.kwargs.get("inplace") is True:
            if target not in POINTWISE_FUNCTIONS:
                raise Unavailable(f"in-place operation {describe(node)}")
            self._redirect(node)
        function = target
        assert callable(function)

        def call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if kwargs.get("inplace") is True:
                kwargs = {**kwargs, "inplace": False}
            return function(*args, **kwargs)

        return call

    def _redirect(self, node: Node) -> None:
        """An in-place operation: later readers of its argument read its result instead."""
        mutated = node.args[0] if node.args else None
        if not isinstance(mutated, Node):
            raise Unavailable(f"in-place operation {describe(node)} on a non-tensor")
        if mutated not in self.depends or mutated.op == "get_attr":
            raise Unavailable(f"in-place operation {describe(node)} on a model attribute")
        if is_view(mutated):
            raise Unavailable(f"in-place operation {describe(node)} on a view")
        position = self.order[node]
        for user in list(mutated.users):
            if user is node:
                continue
            if self.order[user] < position:
                if is_view(user):
                    raise Unavailable(
                        f"in-place operation {describe(node)} changes a tensor that "
                        f"{describe(user)} viewed before"
                    )
            else:
                user.replace_input_with(mutated, node)


def computes_as_pytorch(module: nn.Module) -> bool:
    """Whether ``module`` computes exactly what PyTorch's own class of it computes.

    The engine's box arithmetic stands in for a module only then. A subclass that overrides
    ``forward`` or ``_conv_forward`` (weight standardisation as in BiT's ``StdConv2d``,
    ``torch.ao.nn.qat``'s fake quantisation), a ``forward`` set on the instance, or a
    parametrized weight computes something else: such a module runs as an opaque call, on the
    whole map, and so does everything after it.
    """
    if parametrize.is_parametrized(module) or "forward" in vars(module):
        return False
    cls = type(module)
    base = next((c for c in cls.__mro__ if c.__module__.startswith("torch.nn.modules.")), None)
    if base is None:
        return False
    return all(getattr(cls, name, None) is getattr(base, name, None) for name in _OVERRIDABLE)


_OVERRIDABLE = ("forward", "_conv_forward")


def does_nothing(node: Node, modules: dict[str, nn.Module]) -> bool:
    """An eval-mode dropout or an identity: its output is its input."""
    if node.op == "call_module":
        module = modules[str(node.target)]
        if not computes_as_pytorch(module) or len(node.args) != 1 or node.kwargs:
            return False
        return isinstance(module, nn.Identity) or (
            isinstance(module, nn.modules.dropout._DropoutNd) and not module.training
        )
    if node.op == "call_function" and node.target in DROPOUT_FUNCTIONS:
        position = TRAINING_ARGUMENT[node.target]
        training = node.kwargs.get(
            "training", node.args[position] if len(node.args) > position else True
        )
        return training is False
    return False


def is_view(node: Node) -> bool:
    if node.op == "call_method":
        return str(node.target) in VIEW_METHODS
    if node.op == "call_function":
        return node.target in VIEW_FUNCTIONS
    return False


def describe(node: Node) -> str:
    if node.op == "call_module":
        return f"module {node.target!r}"
    if node.op == "call_method":
        return f"Tensor.{node.target} ({node.name})"
    target = node.target
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or target
    module = getattr(target, "__module__", None)
    if module in ("torch.nn.functional", "torch._C._nn"):
        name = f"F.{name}"
    elif module == "_operator":
        name = f"operator.{name}"
    elif isinstance(module, str) and module.startswith("torch"):
        name = f"torch.{name}"
    return f"{name} ({node.name})"
