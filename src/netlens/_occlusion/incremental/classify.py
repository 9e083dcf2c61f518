"""The kinds of operations: how each traced operation of the model takes part in a pass.

Decided on the unoccluded activations, operation by operation in the graph's order (see
:class:`Classifier`): the input and the constants, window operations (``local``), elementwise
ones (``pointwise``, ``cat``), a flatten read only by large linear layers (``flatten``,
``linear``), a global mean (``mean``), and everything else (``tail``), which runs whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeGuard

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import Node

from ..._core.ops import (
    ADAPTIVE_AVG_POOLS,
    CONCATENATIONS,
    CONVOLUTIONS,
    INPLACE_FUNCTIONS,
    POINTWISE_FUNCTIONS,
    POINTWISE_METHODS,
    POINTWISE_MODULES,
    TRAINING_ARGUMENT,
    bind,
)
from .graph import Call, TracedGraph, computes_as_pytorch
from .local import Local, local_of_call, local_of_module

__all__ = ["DELTA_LINEAR_WEIGHTS", "PATCHED", "Classifier", "Kind", "Step"]

# A linear layer after a flatten takes the change of its input (a Python loop over the map's
# positions in every pass) when it has at least this many weights; a smaller one runs whole.
DELTA_LINEAR_WEIGHTS = 2**20


class Kind(str, Enum):
    """How an operation takes part in an incremental pass."""

    INPUT = "input"  # the occluded copies: a window's box pasted into the input
    CONST = "const"  # the same for every copy (a parameter, a value computed from them)
    LOCAL = "local"  # a window operation: computed in the box its input's box reaches
    POINTWISE = "pointwise"  # elementwise: computed in the hull of its operands' boxes
    CAT = "cat"  # a concatenation of channels: the boxes side by side
    FLATTEN = "flatten"  # a flatten read only by LINEAR steps: skipped
    LINEAR = "linear"  # a linear layer after a flatten: the kept output plus the change's share
    MEAN = "mean"  # a global mean: the kept mean plus the mean change
    TAIL = "tail"  # anything else: run as in the plain pass, on whole maps


# The kinds whose value in a pass is a box pasted into the kept map.
PATCHED = (Kind.INPUT, Kind.LOCAL, Kind.POINTWISE, Kind.CAT)


@dataclass
class Step:
    """One traced operation as a pass runs it: its kind and what that kind needs."""

    node: Node
    kind: Kind
    call: Call
    source: Node | None = None  # the changed input of local, flatten, linear and mean steps
    local: Local | None = None
    # pointwise: for each tensor operand, how it enters: "box" (a changed map, gathered at the
    # output's box), "row" (a changed tensor broadcast over the map), "const" (as it is) or
    # "window" (a constant map, gathered at the output's box).
    operands: dict[Node, str] = field(default_factory=dict)
    parts: list[Node] = field(default_factory=list)  # cat: the tensors, in order
    weight: torch.Tensor | None = None  # linear
    bias: torch.Tensor | None = None
    macs: int = 0  # multiply-adds per row in the plain forward pass
    delta_macs: int = 0  # linear: per changed entry


def no_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The call of a step that is no operation (the input, a constant): never made."""
    raise AssertionError("not an operation")


class Classifier:
    """Gives each traced operation its kind, in the graph's order, from its unoccluded value.

    Args:
        graph: The traced graph.
        values: The unoccluded values of the nodes computed so far (those still kept).
        layer_node: The recorded layer's call, which must stay whole-valued, or None.
        weight_allowance: Bytes of linear weights that may be laid out by location (see
            :data:`DELTA_LINEAR_WEIGHTS`).
        element_size: Bytes per element of the activations.
    """

    def __init__(
        self,
        graph: TracedGraph,
        values: dict[Node, Any],
        layer_node: Node | None,
        weight_allowance: int,
        element_size: int,
    ) -> None:
        self.graph = graph
        self.values = values
        self.layer_node = layer_node
        self.weight_allowance = weight_allowance
        self.element_size = element_size
        self.steps: dict[Node, Step] = {}

    def classify(self, node: Node, value: Any) -> None:
        """Give ``node``, whose unoccluded value is ``value``, its step in :attr:`steps`."""
        graph = self.graph
        if node is graph.input or graph.is_constant(node):
            kind = Kind.INPUT if node is graph.input else Kind.CONST
            self.steps[node] = Step(node, kind, no_call)
            return
        step = Step(node, Kind.TAIL, graph.calls[node])
        step.macs = self._plain_macs(node, value)
        self.steps[node] = step
        flat = node.args[0] if node.args else None
        if isinstance(flat, Node) and self.steps[flat].kind == Kind.FLATTEN:
            linear = self._linear(node, flat)
            assert linear is not None  # the flatten was marked knowing its users
            step.kind, step.source = Kind.LINEAR, self.steps[flat].source
            step.weight, step.bias = linear
            step.delta_macs = int(linear[0].shape[0])
            return
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            self._refine(step, value)
        if step.kind == Kind.TAIL and node is not self.layer_node and self._is_flatten(node):
            # A flatten read only by linear layers: they take the change of its input.
            source = node.args[0]
            users = list(node.users)
            if (
                self.patched(source)
                and users
                and all(self._linear_shape(u, node) for u in users)
                and all(self._weight_count(u) >= DELTA_LINEAR_WEIGHTS for u in users)
                and sum(self._weight_count(u) for u in users) * self.element_size
                <= self.weight_allowance
            ):
                step.kind, step.source = Kind.FLATTEN, source

    def _module(self, node: Node) -> nn.Module | None:
        """The module a node calls, where box arithmetic may stand in for it; else None."""
        if node.op != "call_module":
            return None
        module = self.graph.modules[str(node.target)]
        return module if computes_as_pytorch(module) else None

    def patched(self, node: object) -> TypeGuard[Node]:
        """Whether ``node`` is a map that passes hold as a box pasted into its kept value."""
        return isinstance(node, Node) and (
            self.steps.get(node, Step(node, Kind.TAIL, no_call)).kind in PATCHED
        )

    def constant(self, node: object) -> TypeGuard[Node]:
        """Whether ``node`` is a traced value that does not depend on the input."""
        return isinstance(node, Node) and self.steps[node].kind == Kind.CONST

    def _refine(self, step: Step, value: torch.Tensor) -> None:
        node = step.node
        mean = self._mean_source(node, value)
        if mean is not None:
            step.kind, step.source = Kind.MEAN, mean
            return
        local = self._local(node, value)
        if local is not None:
            step.kind, step.local, step.source = Kind.LOCAL, local[1], local[0]
            return
        if self._pointwise(node):
            operands = self._operands(node, value)
            if operands is not None:
                step.kind, step.operands = Kind.POINTWISE, operands
            return
        if node.op == "call_function" and node.target in CONCATENATIONS:
            bound = bind(node.args, node.kwargs, ("tensors", "dim"))
            dim = bound.get("dim", bound.get("axis", 0))
            tensors = bound["tensors"]
            if (
                isinstance(dim, int)
                and dim % value.dim() == 1
                and isinstance(tensors, (list, tuple))
                and tensors
                and all(self.patched(t) for t in tensors)
                and all(self.values[t].shape[2:] == value.shape[2:] for t in tensors)
            ):
                step.kind = Kind.CAT
                step.operands = {t: "box" for t in tensors}
                step.parts = list(tensors)

    def _local(self, node: Node, value: torch.Tensor) -> tuple[Node, Local] | None:
        """A convolution or pooling of a changed map, as a window operation, or None."""
        module = self._module(node)
        args, kwargs = node.args, node.kwargs
        source = args[0] if args else kwargs.get("input")
        if not self.patched(source):
            return None
        rank = value.dim() - 2
        if rank < 1 or self.values[source].dim() != value.dim():
            return None
        in_size, out_size = tuple(self.values[source].shape[2:]), tuple(value.shape[2:])
        if module is not None:
            if len(args) != 1 or kwargs:
                return None
            local = local_of_module(module, in_size, out_size)
        elif node.op == "call_function":
            local = local_of_call(node, in_size, out_size, self.values, self.constant)
        else:
            return None
        return None if local is None else (source, local)

    def _pointwise(self, node: Node) -> bool:
        if node.op == "call_module":
            module = self._module(node)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                return not module.training and module.running_mean is not None
            return isinstance(module, POINTWISE_MODULES)
        if node.op == "call_method":
            return str(node.target).rstrip("_") in POINTWISE_METHODS
        if node.op != "call_function":
            return False
        target = INPLACE_FUNCTIONS.get(node.target, node.target)
        if target not in POINTWISE_FUNCTIONS:
            return False
        if target in TRAINING_ARGUMENT:
            position = TRAINING_ARGUMENT[target]
            training = node.kwargs.get(
                "training", node.args[position] if len(node.args) > position else None
            )
            default = target is not F.batch_norm and target is not F.alpha_dropout
            return (default if training is None else training) is False
        return True

    def _operands(self, node: Node, value: torch.Tensor) -> dict[Node, str] | None:
        """How each tensor operand of an elementwise operation enters it, or None."""
        shape = tuple(value.shape)
        spatial = shape[2:]
        operands: dict[Node, str] = {}
        any_patched = False
        for operand in node.all_input_nodes:
            operand_value = self.values[operand]
            if not isinstance(operand_value, torch.Tensor):
                if operand in self.graph.depends:
                    return None  # a changed non-tensor (a size): leave it to the plain pass
                continue
            if self.patched(operand):
                if tuple(operand_value.shape) != shape:
                    return None
                operands[operand] = "box"
                any_patched = True
                continue
            operand_shape = tuple(operand_value.shape)
            if len(operand_shape) > len(shape):
                return None
            padded = (1,) * (len(shape) - len(operand_shape)) + operand_shape
            changed = operand in self.graph.depends
            if changed and (len(operand_shape) != len(shape) or operand_shape[0] != shape[0]):
                return None
            if not changed and padded[0] != 1:
                return None
            if all(size == 1 for size in padded[2:]):
                operands[operand] = "row" if changed else "const"
            elif not changed and padded[2:] == spatial:
                operands[operand] = "window"
            else:
                return None
        return operands if any_patched else None

    def _mean_source(self, node: Node, value: torch.Tensor) -> Node | None:
        """The changed map a global average pool (or a mean over every position) reads."""
        module = self._module(node)
        source = node.args[0] if node.args else node.kwargs.get("input")
        if not self.patched(source):
            return None
        assert isinstance(source, Node)
        rank = self.values[source].dim()
        spatial = tuple(range(2, rank))
        if not spatial:
            return None
        if module is not None:
            if isinstance(module, nn.modules.pooling._AdaptiveAvgPoolNd) and all(
                size == 1 for size in value.shape[2:]
            ):
                return source if value.dim() == rank else None
            return None
        if node.op == "call_function" and node.target in ADAPTIVE_AVG_POOLS.values():
            if value.dim() == rank and all(size == 1 for size in value.shape[2:]):
                return source
            return None
        is_mean = (node.op == "call_method" and node.target == "mean") or (
            node.op == "call_function" and node.target is torch.mean
        )
        if not is_mean:
            return None
        bound = bind(node.args, node.kwargs, ("input", "dim", "keepdim"))
        dims = bound.get("dim")
        if dims is None or bound.get("dtype") is not None:
            return None
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        if not all(isinstance(d, int) for d in dims):
            return None
        if sorted(d % rank for d in dims) != list(spatial):
            return None
        return source

    def _is_flatten(self, node: Node) -> bool:
        value = self.values[node]
        source = node.args[0] if node.args else None
        if not isinstance(value, torch.Tensor) or not isinstance(source, Node):
            return False
        before = self.values[source]
        if not isinstance(before, torch.Tensor) or before.dim() < 3:
            return False
        if tuple(value.shape) != (before.shape[0], math.prod(before.shape[1:])):
            return False
        module = self._module(node)
        if module is not None:
            return isinstance(module, nn.Flatten)
        if node.op == "call_method":
            return str(node.target) in ("view", "reshape", "flatten")
        return node.op == "call_function" and node.target in (torch.flatten, torch.reshape)

    def _linear_shape(self, node: Node, flat: Node) -> bool:
        """Whether ``node`` is a linear layer on ``flat`` with a constant weight."""
        module = self._module(node)
        if module is not None:
            return isinstance(module, nn.Linear) and node.args == (flat,) and not node.kwargs
        if node.op == "call_function" and node.target is F.linear:
            bound = bind(node.args, node.kwargs, ("input", "weight", "bias"))
            weight, bias = bound.get("weight"), bound.get("bias")
            depends = self.graph.depends
            return (
                bound.get("input") is flat
                and isinstance(weight, Node)
                and weight not in depends
                and (bias is None or (isinstance(bias, Node) and bias not in depends))
            )
        return False

    def _weight_count(self, node: Node) -> int:
        """The number of weights of a linear layer (its values may not have run yet)."""
        module = self._module(node)
        if isinstance(module, nn.Linear):
            return module.weight.numel()
        weight = bind(node.args, node.kwargs, ("input", "weight", "bias")).get("weight")
        if isinstance(weight, Node) and weight.op == "get_attr":
            return int(self.graph.attributes[str(weight.target)].numel())
        return 0

    def _linear(self, node: Node, flat: Node) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The weight and bias of a linear layer on ``flat``, or None."""
        if not self._linear_shape(node, flat):
            return None
        module = self._module(node)
        if module is not None:
            assert isinstance(module, nn.Linear)
            return module.weight, module.bias
        bound = bind(node.args, node.kwargs, ("input", "weight", "bias"))
        bias = bound.get("bias")
        return self.values[bound["weight"]], None if bias is None else self.values[bias]

    def _plain_macs(self, node: Node, value: Any) -> int:
        """Multiply-adds per row of a convolution or linear layer in the plain forward pass."""
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            return 0
        module = self.graph.modules.get(str(node.target)) if node.op == "call_module" else None
        per_row = value[0].numel()
        if isinstance(module, nn.modules.conv._ConvNd):
            return int(per_row * module.weight[0].numel())
        if isinstance(module, nn.Linear):
            return int(per_row * module.in_features)
        if node.op == "call_function" and node.target in (*CONVOLUTIONS.values(), F.linear):
            weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            if isinstance(weight, Node) and isinstance(self.values.get(weight), torch.Tensor):
                shape = self.values[weight].shape
                return int(per_row * (math.prod(shape[1:])))
        return 0
