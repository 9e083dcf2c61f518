"""Incremental inference for occlusion: recompute only what each window can change.

Nakandala, Kumar and Papakonstantinou (SIGMOD 2019) observed that an occluding window changes a
small box of the input, and that the box of each feature map it can reach grows only by the
receptive field of the layers in between. So instead of running every occluded copy through
the whole network, the network runs once on the unoccluded inputs and keeps its activations;
then, for each copy, every layer computes only the box its input's change can reach, reading
the unchanged surroundings from the kept activations. The result is exact, not an
approximation: each value is computed by the same operation on the same numbers.

How the model is taken apart: :func:`trace` traces it with ``torch.fx`` (the tracer and the
interpreter are ours; the model is left as it was), and :func:`build` runs the traced graph on
the unoccluded inputs and sorts every operation into one of these kinds:

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

Positions whose boxes have the same sizes in every layer run together, a batch of them per
pass; groups are merged (each box then grows to the group's size: the extra values are
recomputed, equal to the kept ones) when a cost model expects the merge to save more in
per-pass overhead and in new shapes for oneDNN than it costs in arithmetic. Only the
activations some pass reads are kept, for a chunk of inputs at a time (a sixteenth of the
memory budget), and a pass gets half of what they leave.

Nothing here guesses: a model that cannot be traced, a module with hooks (which would not run),
an in-place operation other than an elementwise one, a forward pass with Python side effects,
or a traced graph whose output on the unoccluded inputs differs from the model's makes
:func:`build` raise :class:`Unavailable`, saying which module or operation prevents it, and
occlusion runs every copy through the model instead.
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import Graph, Node, Tracer
from torch.fx.node import map_arg
from torch.nn.utils import parametrize

from ..._core.hooks import global_user_hooks, user_hooks

if TYPE_CHECKING:
    from ..._core.outputs import LayerView

__all__ = [
    "AUTO_SHARE",
    "Batch",
    "Engine",
    "Unavailable",
    "build",
    "check_inputs",
    "trace",
    "worth_trying",
]


class Unavailable(Exception):
    """Incremental inference cannot run on this model; the message says what prevents it."""


# -- what the engine knows ----------------------------------------------------------------------

_POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Threshold,
    nn.LogSigmoid,
    nn.Hardshrink,
    nn.Softshrink,
    nn.PReLU,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)

_DROPOUT_FUNCTIONS: set[Any] = {
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
}
_POINTWISE_FUNCTIONS: set[Any] = {
    F.relu,
    torch.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardtanh,
    F.hardswish,
    F.hardsigmoid,
    F.softplus,
    F.softsign,
    F.logsigmoid,
    F.tanhshrink,
    F.sigmoid,
    torch.sigmoid,
    F.tanh,
    torch.tanh,
    torch.abs,
    torch.neg,
    torch.exp,
    torch.square,
    torch.clamp,
    torch.clip,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.maximum,
    torch.minimum,
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.neg,
    *_DROPOUT_FUNCTIONS,
    F.batch_norm,
}
# Functions whose ``training`` argument must be False for them to act elementwise (dropout is
# random in training, batch norm then uses the batch's statistics), with its position.
_TRAINING_ARGUMENT: dict[Any, int] = {
    F.dropout: 2,
    F.dropout1d: 2,
    F.dropout2d: 2,
    F.dropout3d: 2,
    F.alpha_dropout: 2,
    F.feature_alpha_dropout: 2,
    F.batch_norm: 5,
}
# In-place functions and their out-of-place twins.
_INPLACE_FUNCTIONS: dict[Any, Any] = {
    torch.relu_: torch.relu,
    F.relu_: F.relu,
    F.leaky_relu_: F.leaky_relu,
    F.elu_: F.elu,
    F.hardtanh_: F.hardtanh,
    F.rrelu_: None,
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}
_POINTWISE_METHODS = {
    "relu",
    "sigmoid",
    "tanh",
    "abs",
    "neg",
    "exp",
    "square",
    "clamp",
    "clip",
    "clamp_min",
    "clamp_max",
    "add",
    "sub",
    "mul",
    "div",
    "maximum",
    "minimum",
    "contiguous",
    "clone",
}
# Methods and attributes that read a tensor's shape (never its values): they take a stand-in of
# the right shape on the meta device, so that a changed tensor need not be built for them.
_SHAPE_METHODS = {"size", "dim", "ndimension", "numel", "nelement"}
_SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda", "layout"}
_VIEW_METHODS = {
    "view",
    "view_as",
    "reshape",
    "reshape_as",
    "flatten",
    "unflatten",
    "transpose",
    "permute",
    "squeeze",
    "unsqueeze",
    "expand",
    "expand_as",
    "narrow",
    "select",
    "chunk",
    "split",
    "unbind",
    "t",
    "as_strided",
    "__getitem__",
    "detach",
}
_VIEW_FUNCTIONS: set[Any] = {
    torch.flatten,
    torch.reshape,
    torch.transpose,
    torch.permute,
    torch.squeeze,
    torch.unsqueeze,
    torch.narrow,
    torch.chunk,
    torch.split,
    torch.unbind,
    torch.t,
    operator.getitem,
    torch.detach,
}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_ADAPTIVE_AVG = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
_ADAPTIVE_MAX = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}
_CAT = {torch.cat, torch.concat, torch.concatenate}

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


# A linear layer after a flatten takes the change of its input (a Python loop over the map's
# positions in every pass) when it has at least this many weights; a smaller one runs whole.
DELTA_LINEAR_WEIGHTS = 2**20
# The unoccluded activations kept at once take at most 1/KEPT_SHARE of the memory budget (but
# always those of one input): they stay alive through every pass, unlike a pass's own values.
KEPT_SHARE = 16


# -- tracing --------------------------------------------------------------------------------------


def _hooked(model: nn.Module) -> str | None:
    """The first module with forward hooks of the user's, which the engine would bypass, or None.

    netlens' own hooks act only for the thread that installed them (see ``_hooks``): another
    thread's, found here, do nothing in this thread's passes and do not count.
    """
    if global_user_hooks():
        return "global forward hooks (torch.nn.modules.module.register_module_forward_hook)"
    for name, module in model.named_modules():
        if user_hooks(module):
            return f"module {name or 'model'!r} ({type(module).__name__}) has forward hooks"
    return None


@dataclass
class _Snapshot:
    """The attributes of every module, to see and undo what a traced forward pass changed."""

    entries: list[tuple[nn.Module, dict[str, Any], dict[str, Any]]]

    @staticmethod
    def take(model: nn.Module) -> _Snapshot:
        entries = []
        for module in model.modules():
            attributes = dict(vars(module))
            contents = {
                key: copy.copy(value)
                for key, value in attributes.items()
                if type(value) in (list, dict, set)
            }
            entries.append((module, attributes, contents))
        return _Snapshot(entries)

    def restore(self, names: dict[nn.Module, str]) -> list[str]:
        """Put every attribute back; say which ones the forward pass changed itself."""
        changed = []
        for module, attributes, contents in self.entries:
            now = vars(module)
            where = names.get(module, "?") or "model"
            for key in list(now):
                if key not in attributes:
                    if not key.startswith("_tensor_constant"):  # the tracer's own, not the model's
                        changed.append(f"{where}.{key}")
                    del now[key]
            for key, value in attributes.items():
                if now.get(key, _MISSING) is not value:
                    changed.append(f"{where}.{key}")
                    now[key] = value
                if key in contents and not _same_contents(value, contents[key]):
                    changed.append(f"{where}.{key}")
                    _put_back(value, contents[key])
        return changed


_MISSING = object()


def _same_contents(value: Any, saved: Any) -> bool:
    if isinstance(value, list):
        return len(value) == len(saved) and all(a is b for a, b in zip(value, saved, strict=True))
    if isinstance(value, dict):
        return value.keys() == saved.keys() and all(value[k] is saved[k] for k in value)
    return bool(value == saved)


def _put_back(value: Any, saved: Any) -> None:
    if isinstance(value, list):
        value[:] = saved
    else:
        value.clear()
        value.update(saved)


class _PrivateTracer(Tracer):
    """torch.fx's tracer without its process-wide patches.

    ``Tracer.trace`` replaces ``nn.Module.__call__`` and ``__getattr__`` for the whole process
    while it runs, so that a plain forward pass in another thread meanwhile gets a ``Proxy``
    back. This tracer instead runs the model's forward on a *shadow* of its module tree: a copy
    of every module object (sharing its parameters and buffers, with copies of its lists and
    dicts) whose class is a subclass that routes its calls to this tracer. Nothing the user's
    model, another thread or torch can see is changed: the shadow is this call's alone.
    Parameters reach the graph as ``get_attr`` nodes where an operation meets them
    (``Tracer.create_arg``), not through a patched ``__getattr__``; ``torch.fx.wrap``'ed and
    ``math`` functions are not wrapped (a model that needs them is refused: its tracing fails).
    """

    def __init__(self, leaf: nn.Module | None) -> None:
        super().__init__(autowrap_modules=cast(Any, ()), autowrap_functions=())
        self.leaf = leaf
        self.originals: dict[int, nn.Module] = {}  # id(shadow) -> the user's module

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        original = self.originals.get(id(m), m)
        return original is self.leaf or super().is_leaf_module(original, module_qualified_name)

    def shadow(self, model: nn.Module) -> nn.Module:
        """The shadow of ``model``'s tree (a module under two names stays one module)."""
        made: dict[int, nn.Module] = {}
        classes: dict[type, type] = {}

        def copy_of(module: nn.Module) -> nn.Module:
            found = made.get(id(module))
            if found is not None:
                return found
            cls = type(module)
            if cls not in classes:
                classes[cls] = type(
                    cls.__name__,
                    (cls,),
                    {"__call__": _shadow_call, "__module__": cls.__module__},
                )
            shadow: nn.Module = object.__new__(classes[cls])
            made[id(module)] = shadow
            state = {
                key: copy.copy(value) if type(value) in _CONTAINERS else value
                for key, value in vars(module).items()
            }
            state["_modules"] = {
                name: None if child is None else copy_of(child)
                for name, child in module._modules.items()
            }
            state[_TRACER] = self
            vars(shadow).update(state)
            self.originals[id(shadow)] = module
            return shadow

        try:
            return copy_of(model)
        except Exception as error:  # a class that cannot be subclassed or copied
            raise Unavailable(
                f"the model's modules cannot be traced privately ({type(error).__name__}: {error})"
            ) from error

    def trace_shadow(self, root: nn.Module, concrete: dict[str, Any]) -> Graph:
        """The graph of ``root`` (a shadow): what ``Tracer.trace`` does, minus its patches."""
        self.root = root
        self.root_module_name = type(root).__name__
        self.submodule_paths = {module: name for name, module in root.named_modules()}
        self.graph = Graph(tracer_cls=type(self))
        self.tensor_attrs = {}
        forward = type(self.originals[id(root)]).forward
        function, args = self.create_args_for_root(forward, True, concrete or None)
        self.create_node("output", "output", (self.create_arg(function(*args)),), {})
        self.submodule_paths = None
        return self.graph


_CONTAINERS = (list, dict, set, OrderedDict)
_TRACER = "_netlens_tracer"


def _shadow_call(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """A shadow module's call: the tracer records it as one call or traces its forward."""
    tracer: _PrivateTracer = vars(self)[_TRACER]
    return tracer.call_module(self, self.forward, args, kwargs)


def _trace(model: nn.Module, leaf: nn.Module | None) -> tuple[Graph, dict[str, Any]]:
    """The model's graph (``leaf`` kept as one call) and the values of its attributes."""
    hooked = _hooked(model)
    if hooked is not None:
        raise Unavailable(f"{hooked}, which incremental inference would not run")
    parameters = list(inspect.signature(model.forward).parameters.values())
    if not parameters or parameters[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise Unavailable("the model's forward takes no single positional input")
    concrete = {}
    for parameter in parameters[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.default is parameter.empty:
            raise Unavailable(
                f"the model's forward takes more than one required argument ({parameter.name!r})"
            )
        concrete[parameter.name] = parameter.default
    tracer = _PrivateTracer(leaf)
    root = tracer.shadow(model)
    names = {module: name for name, module in root.named_modules()}
    snapshot = _Snapshot.take(root)
    try:
        graph = tracer.trace_shadow(root, concrete)
        attributes = {
            str(node.target): _attribute(root, str(node.target))
            for node in graph.nodes
            if node.op == "get_attr"
        }
    except Unavailable:
        raise
    except Exception as error:  # any failure of the tracer: the model is not traceable
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise Unavailable(
            f"torch.fx cannot trace the model ({type(error).__name__}: {text[:200]})"
        ) from error
    # The shadow is thrown away; what its forward changed on it tells of side effects that a
    # traced graph would not repeat.
    changed = [name for name in snapshot.restore(names) if not name.endswith(f".{_TRACER}")]
    if changed:
        raise Unavailable(
            f"the model's forward changes {', '.join(sorted(set(changed)))} as it runs, which a "
            "traced graph would not do"
        )
    return graph, attributes


def _attribute(model: nn.Module, target: str) -> Any:
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part)
    return value


# -- the static analysis --------------------------------------------------------------------------

INPUT, LOCAL, POINTWISE, CAT, FLATTEN, LINEAR, MEAN, TAIL, CONST = (
    "input",
    "local",
    "pointwise",
    "cat",
    "flatten",
    "linear",
    "mean",
    "tail",
    "const",
)
_PATCHED = (INPUT, LOCAL, POINTWISE, CAT)  # kinds whose value is a box pasted into a kept map


@dataclass
class _Local:
    """A window operation: kernel, stride, left padding and dilation per dim, and the op."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    pad_value: float
    apply: Callable[[torch.Tensor], torch.Tensor]
    macs_per_output: int  # multiply-adds per output element (0 for pooling)


@dataclass
class _Step:
    node: Node
    kind: str
    call: Callable[[tuple[Any, ...], dict[str, Any]], Any]
    source: Node | None = None  # the changed input of local, flatten, linear and mean steps
    local: _Local | None = None
    # pointwise: for each tensor operand, how it enters: "box" (a changed map, gathered at the
    # output's box), "row" (a changed tensor broadcast over the map), "const" (as it is) or
    # "window" (a constant map, gathered at the output's box).
    operands: dict[Node, str] = field(default_factory=dict)
    parts: list[Node] = field(default_factory=list)  # cat: the tensors, in order
    weight: torch.Tensor | None = None  # linear
    bias: torch.Tensor | None = None
    macs: int = 0  # multiply-adds per row in the plain forward pass
    delta_macs: int = 0  # linear: per changed entry


@dataclass(frozen=True)
class Batch:
    """Occluder positions (indices into all positions) and a range of inputs, run together."""

    group: int
    positions: torch.Tensor
    first: int
    stop: int


@dataclass
class _Group:
    positions: torch.Tensor  # (P,) int64, on the CPU
    sizes: dict[Node, tuple[int, ...]]
    same: set[tuple[Node, Node]]  # (step, operand) pairs whose boxes coincide at every position


@dataclass
class _Patch:
    """A changed map of one batch: ``data`` is the box at ``start`` of each copy.

    ``data`` is ``(P, M, C, *size)`` for P positions and M inputs, ``start`` ``(P, d)``;
    ``clean`` the kept activation of the M inputs ``(M, C, *S)`` (None where never needed).
    """

    data: torch.Tensor
    start: torch.Tensor
    clean: torch.Tensor | None


@dataclass
class _Skipped:
    """A flatten whose only users take the change of its input (``delta`` steps)."""


def _bind(args: tuple[Any, ...], kwargs: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    bound = dict(zip(names, args, strict=False))
    bound.update(kwargs)
    return bound


def _tuple(value: Any, rank: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * rank
    values = tuple(int(v) for v in value)
    return values * rank if len(values) == 1 else values


class _Analysis:
    """Sorts the traced operations into kinds, from the graph and the unoccluded activations."""

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
        self.calls: dict[Node, Callable[[tuple[Any, ...], dict[str, Any]], Any]] = {}
        self.modules: dict[str, nn.Module] = dict(model.named_modules())  # get_submodule is slow

    # Structure first, before any value is known: what depends on the input, how each operation
    # is called out of place, and in-place operations turned into new values.
    def structure(self) -> None:
        for node in self.nodes:
            if node is self.input or any(arg in self.depends for arg in node.all_input_nodes):
                self.depends.add(node)
        for node in list(self.nodes):
            if node.op in ("call_function", "call_method", "call_module"):
                self.calls[node] = self._out_of_place(node)

    def _out_of_place(self, node: Node) -> Callable[[tuple[Any, ...], dict[str, Any]], Any]:
        if "out" in node.kwargs:
            raise Unavailable(f"operation {_describe(node)} writes into out=")
        if _does_nothing(node, self.modules):
            # Eval-mode dropout and identities return their input: in place or not, on a view
            # or not, nothing changes, so nothing needs redirecting.
            return lambda args, kwargs: args[0]
        if node.op == "call_module":
            module = self.modules[str(node.target)]
            if getattr(module, "inplace", False) is True:
                if not isinstance(module, _POINTWISE_MODULES):
                    raise Unavailable(f"module {node.target!r} works in place")
                self._redirect(node)
                return lambda args, kwargs: module(args[0].clone(), *args[1:], **kwargs)
            return lambda args, kwargs: module(*args, **kwargs)
        if node.op == "call_method":
            name = str(node.target)
            if name.endswith("_") and not name.endswith("__"):
                if name[:-1] not in _POINTWISE_METHODS:
                    raise Unavailable(f"in-place operation Tensor.{name} in {_describe(node)}")
                self._redirect(node)
                name = name[:-1]
            return lambda args, kwargs: getattr(args[0], name)(*args[1:], **kwargs)
        target = node.target
        if target is operator.setitem:
            raise Unavailable(f"in-place assignment to a tensor's items ({_describe(node)})")
        if target in _INPLACE_FUNCTIONS:
            twin = _INPLACE_FUNCTIONS[target]
            if twin is None:
                raise Unavailable(f"in-place operation {_describe(node)}")
            self._redirect(node)
            target = twin
        elif node.kwargs.get("inplace") is True:
            if target not in _POINTWISE_FUNCTIONS:
                raise Unavailable(f"in-place operation {_describe(node)}")
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
            raise Unavailable(f"in-place operation {_describe(node)} on a non-tensor")
        if mutated not in self.depends or mutated.op == "get_attr":
            raise Unavailable(f"in-place operation {_describe(node)} on a model attribute")
        if _is_view(mutated):
            raise Unavailable(f"in-place operation {_describe(node)} on a view")
        position = self.order[node]
        for user in list(mutated.users):
            if user is node:
                continue
            if self.order[user] < position:
                if _is_view(user):
                    raise Unavailable(
                        f"in-place operation {_describe(node)} changes a tensor that "
                        f"{_describe(user)} viewed before"
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


def _does_nothing(node: Node, modules: dict[str, nn.Module]) -> bool:
    """An eval-mode dropout or an identity: its output is its input."""
    if node.op == "call_module":
        module = modules[str(node.target)]
        if not computes_as_pytorch(module) or len(node.args) != 1 or node.kwargs:
            return False
        return isinstance(module, nn.Identity) or (
            isinstance(module, nn.modules.dropout._DropoutNd) and not module.training
        )
    if node.op == "call_function" and node.target in _DROPOUT_FUNCTIONS:
        position = _TRAINING_ARGUMENT[node.target]
        training = node.kwargs.get(
            "training", node.args[position] if len(node.args) > position else True
        )
        return training is False
    return False


def _is_view(node: Node) -> bool:
    if node.op == "call_method":
        return str(node.target) in _VIEW_METHODS
    if node.op == "call_function":
        return node.target in _VIEW_FUNCTIONS
    return False


def _describe(node: Node) -> str:
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


# -- the engine ---------------------------------------------------------------------------------


class Engine:
    """The kept activations, the kind of every operation, and the boxes of every position.

    Build it with :func:`build`; :meth:`batches` plans the passes and :meth:`evaluate` runs one.
    """

    def __init__(
        self,
        analysis: _Analysis,
        inputs: torch.Tensor,
        baseline: torch.Tensor,
        origins: torch.Tensor,
        window: tuple[int, ...],
        layer: LayerView | None,
    ) -> None:
        self.analysis = analysis
        self.nodes = analysis.nodes
        self.inputs = inputs
        # The unoccluded activations a pass reads (and the constants), of the inputs from
        # ``loaded`` on: ``chunk`` of them at a time.
        self.clean: dict[Node, Any] = {}
        self.loaded = 0
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
        self.steps: dict[Node, _Step] = {}
        self.lo: dict[Node, torch.Tensor] = {}
        self.hi: dict[Node, torch.Tensor] = {}
        self.groups: list[_Group] = []
        self.rows = 1
        self.costs: _CostModel | None = None
        self.retained_bytes = 0
        self.plain_macs = 0
        self.incremental_macs = 0.0
        self.element_size = inputs.element_size()
        # After the operation at index i, the values nothing later reads: release[i] (in the
        # passes: pass_release[i], where a linear layer after a flatten reads the flatten's input).
        self.release = self._releases({})
        self.pass_release = self.release
        self._location_weights: dict[Node, torch.Tensor] = {}
        self.weight_allowance = 0  # bytes of linear weights that may be laid out by location
        self.weight_bytes = 0  # and those that are

    def _releases(self, readers: dict[Node, list[Node]]) -> list[list[Node]]:
        """For each operation, the values it is the last to read (its users', or ``readers``)."""
        order = self.analysis.order
        release: list[list[Node]] = [[] for _ in self.nodes]
        for node in self.nodes:
            users = [*node.users, *readers.get(node, [])]
            release[max((order[user] for user in users), default=order[node])].append(node)
        return release

    # -- kinds ------------------------------------------------------------------------------

    def walk(self, inputs: torch.Tensor) -> None:
        """Run the graph on (some of) the unoccluded inputs, one operation at a time.

        Each operation gets its kind and each position its box in the operation's output; an
        activation is kept, once nothing later reads it, only if some pass will read it.
        """
        self._find_layer()
        for index, node in enumerate(self.nodes):
            value = self._value(node, inputs)
            if node.op != "output":
                self.clean[node] = value
                if isinstance(value, torch.Tensor):
                    self.shapes[node] = tuple(value.shape)
                self._classify(node, value)
                if node is self.layer_node:
                    self._layer_kind(value)
                if self.steps[node].kind in _PATCHED:
                    self._propagate(node)
            self._release(index)
        self.retained_bytes = sum(
            value.numel() * value.element_size()
            for node, value in self.clean.items()
            if isinstance(value, torch.Tensor) and self.steps[node].kind not in (CONST, INPUT)
        )
        self.weight_bytes = sum(
            step.weight.numel() * step.weight.element_size()
            for step in self.steps.values()
            if step.kind == LINEAR and step.weight is not None
        )
        readers: dict[Node, list[Node]] = {}
        for node, step in self.steps.items():
            if step.kind == LINEAR and step.source is not None:
                readers.setdefault(step.source, []).append(node)
        self.pass_release = self._releases(readers)

    def load(self, first: int, stop: int) -> tuple[Any, torch.Tensor | None]:
        """Keep the activations of inputs ``first:stop`` instead of the chunk kept before.

        Returns:
            The model's output on those inputs and the layer's sums, ``(stop - first, C)``.
        """
        self.clean = {node: v for node, v in self.clean.items() if self.steps[node].kind == CONST}
        inputs = self.inputs[first:stop]
        output: Any = None
        sums = None
        for index, node in enumerate(self.nodes):
            value = self._value(node, inputs)
            if node.op == "output":
                output = value
            else:
                self.clean[node] = value
                if node is self.layer_node:
                    assert self.layer is not None
                    arranged = self.layer.arrange(self.layer.tensor(value), stop - first)
                    sums = arranged.sum(tuple(range(2, arranged.dim())))
                    if arranged.dim() == 2:
                        sums = arranged
            self._release(index)
        self.loaded = first
        return output, sums

    def _release(self, index: int) -> None:
        for done in self.release[index]:
            if done in self.clean and not self._needed(done):
                del self.clean[done]

    def _value(self, node: Node, inputs: torch.Tensor) -> Any:
        analysis = self.analysis
        if node.op == "placeholder":
            if node is analysis.input:
                return inputs
            if node.args:
                return node.args[0]  # a default value of the forward pass
            raise Unavailable(f"the model's forward takes an argument {node.name!r} too")
        if node.op == "get_attr":
            return analysis.attributes[str(node.target)]
        if node.op == "output":
            return map_arg(node.args[0], lambda n: self.clean[n])
        args = map_arg(node.args, lambda n: self.clean[n])
        kwargs = map_arg(node.kwargs, lambda n: self.clean[n])
        return analysis.calls[node](tuple(args), dict(kwargs))

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
            self.steps[self.layer_node].kind in _PATCHED
            and layer.select is None
            and isinstance(value, torch.Tensor)
            and layer.dims(value) == (0, 1)
        )

    def _classify(self, node: Node, value: Any) -> None:
        analysis = self.analysis
        if node.op in ("placeholder", "get_attr") or node not in analysis.depends:
            kind = INPUT if node is analysis.input else CONST
            self.steps[node] = _Step(node, kind, _no_call)
            return
        step = _Step(node, TAIL, analysis.calls[node])
        step.macs = self._plain_macs(node, value)
        self.steps[node] = step
        flat = node.args[0] if node.args else None
        if isinstance(flat, Node) and self.steps[flat].kind == FLATTEN:
            linear = self._linear(node, flat)
            assert linear is not None  # the flatten was marked knowing its users
            step.kind, step.source = LINEAR, self.steps[flat].source
            step.weight, step.bias = linear
            step.delta_macs = int(linear[0].shape[0])
            return
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            self._refine(step, value)
        if step.kind == TAIL and node is not self.layer_node and self._is_flatten(node):
            # A flatten read only by linear layers: they take the change of its input.
            source = node.args[0]
            users = list(node.users)
            if (
                self._patched(source)
                and users
                and all(self._linear_shape(u, node) for u in users)
                and all(self._weight_count(u) >= DELTA_LINEAR_WEIGHTS for u in users)
                and sum(self._weight_count(u) for u in users) * self.element_size
                <= self.weight_allowance
            ):
                step.kind, step.source = FLATTEN, source

    def _needed(self, node: Node) -> bool:
        """Whether a pass reads the kept activation of ``node``."""
        step = self.steps[node]
        if step.kind in (CONST, INPUT, LINEAR, MEAN) or node is self.layer_node:
            return True
        if step.kind not in _PATCHED:
            return False  # the passes compute it whole, from its inputs
        for user in node.users:
            if user.op == "output":
                return True
            user_step = self.steps[user]
            if user_step.kind in (LOCAL, FLATTEN, LINEAR, MEAN, TAIL):
                return True  # a window around the box, the change, or the whole map
            if user_step.kind in (POINTWISE, CAT) and not _same_boxes(self, user, node, None):
                return True
        return False

    def _module(self, node: Node) -> nn.Module | None:
        """The module a node calls, where box arithmetic may stand in for it; else None."""
        if node.op != "call_module":
            return None
        module = self.analysis.modules[str(node.target)]
        return module if computes_as_pytorch(module) else None

    def _patched(self, node: object) -> TypeGuard[Node]:
        return isinstance(node, Node) and (
            self.steps.get(node, _Step(node, TAIL, _no_call)).kind in _PATCHED
        )

    def _const(self, node: object) -> TypeGuard[Node]:
        return isinstance(node, Node) and self.steps[node].kind == CONST

    def _refine(self, step: _Step, value: torch.Tensor) -> None:
        node = step.node
        mean = self._mean_source(node, value)
        if mean is not None:
            step.kind, step.source = MEAN, mean
            return
        local = self._local(node, value)
        if local is not None:
            step.kind, step.local, step.source = LOCAL, local[1], local[0]
            return
        if self._pointwise(node):
            operands = self._operands(node, value)
            if operands is not None:
                step.kind, step.operands = POINTWISE, operands
            return
        if node.op == "call_function" and node.target in _CAT:
            bound = _bind(node.args, node.kwargs, ("tensors", "dim"))
            dim = bound.get("dim", bound.get("axis", 0))
            tensors = bound["tensors"]
            if (
                isinstance(dim, int)
                and dim % value.dim() == 1
                and isinstance(tensors, (list, tuple))
                and tensors
                and all(self._patched(t) for t in tensors)
                and all(self.clean[t].shape[2:] == value.shape[2:] for t in tensors)
            ):
                step.kind = CAT
                step.operands = {t: "box" for t in tensors}
                step.parts = list(tensors)

    def _local(self, node: Node, value: torch.Tensor) -> tuple[Node, _Local] | None:
        """A convolution or pooling of a changed map, as a window operation, or None."""
        module = self._module(node)
        args, kwargs = node.args, node.kwargs
        source = args[0] if args else kwargs.get("input")
        if not self._patched(source):
            return None
        assert isinstance(source, Node)
        rank = value.dim() - 2
        if rank < 1 or self.clean[source].dim() != value.dim():
            return None
        in_size = tuple(self.clean[source].shape[2:])
        spec: dict[str, Any]
        if module is not None:
            if len(args) != 1 or kwargs:
                return None
            spec = self._module_spec(module, rank)
        elif node.op == "call_function":
            spec = self._function_spec(node, rank)
        else:
            return None
        if not spec:
            return None
        if spec["op"] == "adaptive":
            out_size = tuple(value.shape[2:])
            if any(i % o for i, o in zip(in_size, out_size, strict=True)):
                return None
            kernel = tuple(i // o for i, o in zip(in_size, out_size, strict=True))
            spec = {"op": spec["kind"], "kernel": kernel, "stride": kernel, "padding": 0}
        kernel = _tuple(spec["kernel"], rank)
        stride = _tuple(spec.get("stride") or kernel, rank)
        dilation = _tuple(spec.get("dilation", 1), rank)
        padding = spec.get("padding", 0)
        if padding == "valid":
            padding = 0
        if padding == "same":
            padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel, strict=True))
        pad = _tuple(padding, rank)
        op = spec["op"]
        if op == "conv":
            weight = spec["weight"]
            apply = partial(
                _CONV[rank],
                weight=weight,
                bias=spec["bias"],
                stride=stride,
                padding=0,
                dilation=dilation,
                groups=spec["groups"],
            )
            return source, _Local(kernel, stride, pad, dilation, 0.0, apply, weight[0].numel())
        if op == "max":
            apply = partial(
                _MAX_POOL[rank], kernel_size=kernel, stride=stride, padding=0, dilation=dilation
            )
            return source, _Local(kernel, stride, pad, dilation, -math.inf, apply, 0)
        # average pooling: only where every window's divisor is its full size
        floor = _floor_size(in_size, kernel, stride, pad)
        if spec.get("ceil_mode") and tuple(value.shape[2:]) != floor:
            return None
        if any(pad) and not spec.get("count_include_pad", True):
            return None
        extra: dict[str, Any] = (
            {} if rank == 1 else {"divisor_override": spec.get("divisor_override")}
        )
        if rank == 1 and spec.get("divisor_override") is not None:
            return None
        apply = partial(_AVG_POOL[rank], kernel_size=kernel, stride=stride, padding=0, **extra)
        return source, _Local(kernel, stride, pad, (1,) * rank, 0.0, apply, 0)

    def _module_spec(self, module: nn.Module, rank: int) -> dict[str, Any]:
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if module.padding_mode != "zeros" or len(module.kernel_size) != rank:
                return {}
            return {
                "op": "conv",
                "weight": module.weight,
                "bias": module.bias,
                "kernel": module.kernel_size,
                "stride": module.stride,
                "padding": module.padding,
                "dilation": module.dilation,
                "groups": module.groups,
            }
        if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            if module.return_indices:
                return {}
            return {
                "op": "max",
                "kernel": module.kernel_size,
                "stride": module.stride,
                "padding": module.padding,
                "dilation": module.dilation,
            }
        if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
            return {
                "op": "avg",
                "kernel": module.kernel_size,
                "stride": module.stride,
                "padding": module.padding,
                "ceil_mode": module.ceil_mode,
                "count_include_pad": module.count_include_pad,
                "divisor_override": getattr(module, "divisor_override", None),
            }
        if isinstance(module, nn.modules.pooling._AdaptiveAvgPoolNd):
            return {"op": "adaptive", "kind": "avg"}
        if isinstance(module, nn.modules.pooling._AdaptiveMaxPoolNd):
            return {} if module.return_indices else {"op": "adaptive", "kind": "max"}
        return {}

    def _function_spec(self, node: Node, rank: int) -> dict[str, Any]:
        target = node.target
        if target is _CONV.get(rank):
            bound = _bind(
                node.args,
                node.kwargs,
                ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
            )
            weight, bias = bound["weight"], bound.get("bias")
            if not self._const(weight) or not (bias is None or self._const(bias)):
                return {}
            return {
                "op": "conv",
                "weight": self.clean[weight],
                "bias": None if bias is None else self.clean[bias],
                "kernel": tuple(self.clean[weight].shape[2:]),
                "stride": bound.get("stride", 1),
                "padding": bound.get("padding", 0),
                "dilation": bound.get("dilation", 1),
                "groups": bound.get("groups", 1),
            }
        names: tuple[str, ...]
        if target is _MAX_POOL.get(rank):
            names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
            bound = _bind(node.args, node.kwargs, (*names, "return_indices"))
            if bound.get("return_indices") or not _plain_values(bound, names[1:]):
                return {}
            return {
                "op": "max",
                "kernel": bound["kernel_size"],
                "stride": bound.get("stride"),
                "padding": bound.get("padding", 0),
                "dilation": bound.get("dilation", 1),
            }
        if target is _AVG_POOL.get(rank):
            names = (
                "input",
                "kernel_size",
                "stride",
                "padding",
                "ceil_mode",
                "count_include_pad",
                "divisor_override",
            )
            bound = _bind(node.args, node.kwargs, names)
            if not _plain_values(bound, names[1:]):
                return {}
            return {
                "op": "avg",
                "kernel": bound["kernel_size"],
                "stride": bound.get("stride"),
                "padding": bound.get("padding", 0),
                "ceil_mode": bound.get("ceil_mode", False),
                "count_include_pad": bound.get("count_include_pad", True),
                "divisor_override": bound.get("divisor_override"),
            }
        if target is _ADAPTIVE_AVG.get(rank):
            return {"op": "adaptive", "kind": "avg"}
        if target is _ADAPTIVE_MAX.get(rank):
            bound = _bind(node.args, node.kwargs, ("input", "output_size", "return_indices"))
            return {} if bound.get("return_indices") else {"op": "adaptive", "kind": "max"}
        return {}

    def _pointwise(self, node: Node) -> bool:
        if node.op == "call_module":
            module = self._module(node)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                return not module.training and module.running_mean is not None
            return isinstance(module, _POINTWISE_MODULES)
        if node.op == "call_method":
            return str(node.target).rstrip("_") in _POINTWISE_METHODS
        if node.op != "call_function":
            return False
        target = _INPLACE_FUNCTIONS.get(node.target, node.target)
        if target not in _POINTWISE_FUNCTIONS:
            return False
        if target in _TRAINING_ARGUMENT:
            position = _TRAINING_ARGUMENT[target]
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
            operand_value = self.clean[operand]
            if not isinstance(operand_value, torch.Tensor):
                if operand in self.analysis.depends:
                    return None  # a changed non-tensor (a size): leave it to the plain pass
                continue
            if self._patched(operand):
                if tuple(operand_value.shape) != shape:
                    return None
                operands[operand] = "box"
                any_patched = True
                continue
            operand_shape = tuple(operand_value.shape)
            if len(operand_shape) > len(shape):
                return None
            padded = (1,) * (len(shape) - len(operand_shape)) + operand_shape
            changed = operand in self.analysis.depends
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
        if not self._patched(source):
            return None
        assert isinstance(source, Node)
        rank = self.clean[source].dim()
        spatial = tuple(range(2, rank))
        if not spatial:
            return None
        if module is not None:
            if isinstance(module, nn.modules.pooling._AdaptiveAvgPoolNd) and all(
                size == 1 for size in value.shape[2:]
            ):
                return source if value.dim() == rank else None
            return None
        if node.op == "call_function" and node.target in _ADAPTIVE_AVG.values():
            if value.dim() == rank and all(size == 1 for size in value.shape[2:]):
                return source
            return None
        is_mean = (node.op == "call_method" and node.target == "mean") or (
            node.op == "call_function" and node.target is torch.mean
        )
        if not is_mean:
            return None
        bound = _bind(node.args, node.kwargs, ("input", "dim", "keepdim"))
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
        value = self.clean[node]
        source = node.args[0] if node.args else None
        if not isinstance(value, torch.Tensor) or not isinstance(source, Node):
            return False
        before = self.clean[source]
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
            bound = _bind(node.args, node.kwargs, ("input", "weight", "bias"))
            weight, bias = bound.get("weight"), bound.get("bias")
            depends = self.analysis.depends
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
        weight = _bind(node.args, node.kwargs, ("input", "weight", "bias")).get("weight")
        if isinstance(weight, Node) and weight.op == "get_attr":
            return int(self.analysis.attributes[str(weight.target)].numel())
        return 0

    def _linear(self, node: Node, flat: Node) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The weight and bias of a linear layer on ``flat``, or None."""
        if not self._linear_shape(node, flat):
            return None
        module = self._module(node)
        if module is not None:
            assert isinstance(module, nn.Linear)
            return module.weight, module.bias
        bound = _bind(node.args, node.kwargs, ("input", "weight", "bias"))
        bias = bound.get("bias")
        return self.clean[bound["weight"]], None if bias is None else self.clean[bias]

    def _plain_macs(self, node: Node, value: Any) -> int:
        """Multiply-adds per row of a convolution or linear layer in the plain forward pass."""
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            return 0
        module = self.analysis.modules.get(str(node.target)) if node.op == "call_module" else None
        per_row = value[0].numel()
        if isinstance(module, nn.modules.conv._ConvNd):
            return int(per_row * module.weight[0].numel())
        if isinstance(module, nn.Linear):
            return int(per_row * module.in_features)
        if node.op == "call_function" and node.target in (*_CONV.values(), F.linear):
            weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            if isinstance(weight, Node) and isinstance(self.clean.get(weight), torch.Tensor):
                shape = self.clean[weight].shape
                return int(per_row * (math.prod(shape[1:])))
        return 0

    # -- boxes ------------------------------------------------------------------------------

    def _propagate(self, node: Node) -> None:
        """The box each position changes in a patched map (exact, before grouping)."""
        step = self.steps[node]
        positions = self.origins.shape[0]
        spatial = self.shapes[node][2:]
        if step.kind == INPUT:
            lo = torch.zeros(positions, len(spatial), dtype=torch.long)
            hi = torch.tensor(spatial, dtype=torch.long).expand(positions, -1).clone()
            first = len(spatial) + 1 - len(self.window)  # the sample dim of the window's first
            for index, size in enumerate(self.window):
                dim = first + index - 1  # sample dim -> spatial dim (-1: the channels)
                if dim >= 0:
                    lo[:, dim] = self.origins[:, index]
                    hi[:, dim] = self.origins[:, index] + size
        elif step.kind == LOCAL:
            assert step.local is not None and step.source is not None
            local = step.local
            source_lo, source_hi = self.lo[step.source], self.hi[step.source]
            reach = torch.tensor(
                [d * (k - 1) for d, k in zip(local.dilation, local.kernel, strict=True)]
            )
            stride = torch.tensor(local.stride)
            pad = torch.tensor(local.padding)
            out = torch.tensor(spatial)
            # The outputs whose window [o * stride - pad, o * stride - pad + reach] meets the box.
            lo = -torch.div(-(source_lo + pad - reach), stride, rounding_mode="floor")
            hi = torch.div(source_hi - 1 + pad, stride, rounding_mode="floor") + 1
            # A box no window meets (a stride skipping it) still gets one output: recomputed.
            lo = torch.minimum(lo.clamp(min=0), out - 1)
            hi = torch.maximum(torch.minimum(hi, out), lo + 1)
        elif any(how == "row" for how in step.operands.values()):
            # A changed operand broadcast over the map (a channel gate) changes all of it.
            lo = torch.zeros(positions, len(spatial), dtype=torch.long)
            hi = torch.tensor(spatial, dtype=torch.long).expand(positions, -1).clone()
        else:
            boxes = [n for n, how in step.operands.items() if how == "box"]
            lo = torch.stack([self.lo[n] for n in boxes]).amin(0)
            hi = torch.stack([self.hi[n] for n in boxes]).amax(0)
        self.lo[node], self.hi[node] = lo, hi

    def _sizes_matrix(self) -> tuple[list[Node], torch.Tensor]:
        patched = [n for n in self.lo]
        if not patched:
            return patched, torch.zeros(self.origins.shape[0], 0, dtype=torch.long)
        return patched, torch.cat([self.hi[n] - self.lo[n] for n in patched], dim=1)

    # -- groups, memory, cost ------------------------------------------------------------

    def plan(self, budget: int, batch_size: int | None) -> None:
        """Group positions, size the batches, decide what to keep, estimate the cost.

        Positions whose boxes have the same sizes in every layer form a group; the groups,
        ordered by their multiply-adds per row, are then cut into 1, 2, 4, ... runs of about
        equal numbers of positions (every group alone last), each run merged into one group
        (its boxes grown to the largest of its members), and the cut the cost model expects
        to be fastest wins. Every candidate is costed at once (vectorised), so planning takes
        time in proportion to the number of positions times log of it, not their cube.
        """
        patched, sizes = self._sizes_matrix()
        unique, inverse = torch.unique(sizes, dim=0, return_inverse=True)
        costs = self.costs = _CostModel(self, patched, budget, batch_size)
        merged = costs.best_cut(unique, inverse)
        self.groups = []
        for group_sizes, positions in merged:
            sizes_of = self._split_sizes(patched, group_sizes)
            same = set()
            for node, step in self.steps.items():
                if step.kind in (POINTWISE, CAT):
                    for operand, how in step.operands.items():
                        if how == "box" and _same_boxes(self, node, operand, positions):
                            same.add((node, operand))
            self.groups.append(_Group(positions, sizes_of, same))
        self.rows = costs.rows(unique.amax(0, keepdim=True))[0] if unique.numel() else 1
        if not unique.numel() and batch_size is not None:
            self.rows = batch_size
        self.plain_macs = sum(step.macs for step in self.steps.values()) * self.origins.shape[0]
        flats = torch.stack([flat for flat, _ in merged]) if merged else unique
        counts = torch.tensor([len(positions) for _, positions in merged], dtype=torch.float64)
        self.incremental_macs = float((costs.macs(flats) * counts).sum())

    def _split_sizes(self, patched: list[Node], flat: torch.Tensor) -> dict[Node, tuple[int, ...]]:
        sizes: dict[Node, tuple[int, ...]] = {}
        offset = 0
        values = [int(v) for v in flat.tolist()]
        for node in patched:
            rank = self.lo[node].shape[1]
            sizes[node] = tuple(values[offset : offset + rank])
            offset += rank
        return sizes

    def _full(self, node: Node, sizes: dict[Node, tuple[int, ...]]) -> bool:
        return sizes[node] == self.shapes[node][2:]

    # -- passes ------------------------------------------------------------------------------

    def _chunks(self) -> list[tuple[int, int]]:
        """The ranges of inputs kept together: the one kept now first."""
        ranges = [
            (first, min(first + self.chunk, self.count))
            for first in range(0, self.count, self.chunk)
        ]
        return sorted(ranges, key=lambda chunk: chunk[0] != self.loaded)

    def _plan_batches(self, first: int, stop: int, rows: int | None = None) -> Iterator[Batch]:
        members = stop - first
        rows = self.rows if rows is None else rows
        for index, group in enumerate(self.groups):
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

    def first_batches(self, count: int, rows: int) -> list[Batch]:
        """Up to ``count`` batches of at most ``rows`` rows of the inputs kept now."""
        stop = min(self.loaded + self.chunk, self.count)
        batches = []
        for batch in self._plan_batches(self.loaded, stop, min(rows, self.rows)):
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
            sum(1 for _ in self._plan_batches(first, stop)) for first, stop in self._chunks()
        )

    def batches(self) -> Iterator[Batch]:
        """Every batch: a slice of one group's positions, over a range of inputs.

        The inputs go a chunk at a time, their activations kept (and the previous chunk's
        dropped) before their first batch.
        """
        for first, stop in self._chunks():
            if first != self.loaded:
                self.load(first, stop)
            yield from self._plan_batches(first, stop)

    def evaluate(self, batch: Batch) -> tuple[Any, torch.Tensor | None]:
        """The model's output for the batch's copies (rows position-major), and the layer sums."""
        if not self.loaded <= batch.first < batch.stop <= self.loaded + self.chunk:
            first = batch.first // self.chunk * self.chunk  # the batch's chunk of inputs
            self.load(first, min(first + self.chunk, self.count))
        return _Pass(self, batch).run()

    def location_weight(self, step: _Step) -> torch.Tensor:
        """A linear layer's weight as ``(locations, channels, outputs)``, made once."""
        found = self._location_weights.get(step.node)
        if found is None:
            assert step.weight is not None and step.source is not None
            channels = self.shapes[step.source][1]
            weight = step.weight.detach()
            found = weight.reshape(weight.shape[0], channels, -1).permute(2, 1, 0).contiguous()
            self._location_weights[step.node] = found
        return found


class _CostModel:
    """Multiply-adds, bytes per row and seconds of groups of positions, many groups at once.

    A group is given by its flat box sizes (the columns of :meth:`Engine._sizes_matrix`); every
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
            rank = engine.lo[node].shape[1]
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
        self.input_bytes = 3 * math.prod(engine.shapes[engine.analysis.input][1:])
        self.walk: list[tuple[Node, int, int, _Local | None, int, bool]] = []
        self.freed: list[list[Node]] = []
        for node, step in engine.steps.items():
            if step.kind == LOCAL and node in columns:
                assert step.local is not None
                channels = engine.shapes[node][1]
                self.box_macs.append((node, float(channels * step.local.macs_per_output)))
            elif step.kind == LINEAR:
                assert step.source is not None
                per_entry = step.delta_macs * engine.shapes[step.source][1]
                self.delta_macs.append((step.source, float(step.macs), float(per_entry)))
            elif step.kind not in _PATCHED:
                self.fixed_macs += step.macs
        for index, node in enumerate(engine.nodes):
            found = engine.steps.get(node)
            shape = engine.shapes.get(node)
            self.freed.append(engine.pass_release[index])
            if found is None or shape is None or found.kind in (CONST, FLATTEN):
                self.walk.append((node, 0, 0, None, 0, False))
                continue
            whole = math.prod(shape[1:])
            source = 0
            if found.kind == LOCAL and node in columns:
                assert found.source is not None
                source = 3 * engine.shapes[found.source][1]
            read_whole = node in columns and any(
                user.op == "output" or engine.steps[user].kind == TAIL for user in node.users
            )
            self.walk.append((node, shape[1], whole, found.local, source, read_whole))
        self.steps = sum(1 for step in engine.steps.values() if step.kind != CONST)
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
                stride.append(list(local.stride) + [1] * pad)
                reach.append(
                    [d * (k - 1) for d, k in zip(local.dilation, local.kernel, strict=True)]
                    + [0] * pad
                )
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


def trace(model: nn.Module, inputs: torch.Tensor, layer: LayerView | None) -> _Analysis:
    """Check the inputs and trace the model, keeping ``layer`` as one call.

    Raises:
        Unavailable: Saying which module or operation prevents incremental inference.
    """
    check_inputs(inputs)
    graph, attributes = _trace(model, None if layer is None else layer.module)
    analysis = _Analysis(model, graph, attributes, inputs.shape[0])
    analysis.structure()
    return analysis


def build(
    analysis: _Analysis,
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
        analysis: What :func:`trace` found.
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
    engine = Engine(analysis, inputs, baseline, origins, window, layer)
    # A linear layer that takes its input's change needs its weight laid out by location (a
    # copy, counted in the budget): only where the copies take at most a quarter of the budget
    # (VGG's 25088 x 4096 classifier would need 392 MiB); a larger one runs whole, which costs
    # little beside the convolutions.
    engine.weight_allowance = budget // 4
    engine.walk(inputs[:1])  # the kinds, the boxes, and what one input keeps
    users = [user for user in analysis.input.users if user.op != "output"]
    useful = (*_PATCHED, FLATTEN, MEAN)
    if not users or all(engine.steps[user].kind not in useful for user in users):
        blocking = next((user for user in users if engine.steps[user].kind == TAIL), None)
        if blocking is None:
            raise Unavailable("the model does not read its input")
        raise Unavailable(
            f"the input goes first through {_describe(blocking)}, an operation incremental "
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


def _same_boxes(engine: Engine, node: Node, operand: Node, positions: torch.Tensor | None) -> bool:
    lo, hi = engine.lo[node], engine.hi[node]
    lo_op, hi_op = engine.lo[operand], engine.hi[operand]
    if positions is not None:
        lo, hi, lo_op, hi_op = lo[positions], hi[positions], lo_op[positions], hi_op[positions]
    return bool(torch.equal(lo, lo_op) and torch.equal(hi, hi_op))


def _no_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    raise AssertionError("not an operation")


def _plain_values(bound: dict[str, Any], names: Sequence[str]) -> bool:
    """True when the arguments are Python values (not something computed from the input)."""

    def plain(value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        return not isinstance(value, Node)

    return all(plain(bound.get(name)) for name in names)


def _floor_size(
    size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...], pad: tuple[int, ...]
) -> tuple[int, ...]:
    return tuple(
        (s + 2 * p - k) // t + 1 for s, k, t, p in zip(size, kernel, stride, pad, strict=True)
    )


# -- index arithmetic -----------------------------------------------------------------------------


def _locations(
    origin: torch.Tensor, size: tuple[int, ...], bounds: tuple[int, ...]
) -> torch.Tensor:
    """``(P, prod(size))``: the flat index in a map of ``bounds`` of each element of a box.

    ``origin`` (``(P, d)``, on the CPU) is each box's first corner; the boxes lie in the map.
    """
    count = origin.shape[0]
    flat = torch.zeros((count,) + (1,) * len(size), dtype=torch.long)
    step = 1
    for dim in reversed(range(len(size))):
        shape = [count] + [1] * len(size)
        shape[dim + 1] = size[dim]
        flat = flat + (origin[:, dim, None] + torch.arange(size[dim])).view(shape) * step
        step *= bounds[dim]
    return flat.expand((count, *size)).reshape(count, -1)


def _overlap(
    origin: Sequence[int], size: Sequence[int], other: Sequence[int], other_size: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Where the box ``origin, size`` meets the box ``other, other_size``: slices into each."""
    mine, theirs = [], []
    for low_a, size_a, low_b, size_b in zip(origin, size, other, other_size, strict=True):
        low, high = max(low_a, low_b), min(low_a + size_a, low_b + size_b)
        if low >= high:
            return None
        mine.append(slice(low - low_a, high - low_a))
        theirs.append(slice(low - low_b, high - low_b))
    return tuple(mine), tuple(theirs)


# Boxes are copied position by position with slices: contiguous copies, several times faster
# than gathering the same elements by index, for the few dozen positions of a pass.
_ALL = (slice(None), slice(None))


def _gather_kept(
    kept: torch.Tensor, start: torch.Tensor, size: tuple[int, ...], pad: float
) -> torch.Tensor:
    """The box of ``size`` at each ``start`` (``(P, d)``) of maps ``(M, C, *S)``.

    Returns ``(P, M, C, *size)``; elements outside the maps take ``pad``.
    """
    bounds = tuple(kept.shape[2:])
    origins = start.tolist()
    inside = all(
        low >= 0 and low + extent <= bound
        for origin in origins
        for low, extent, bound in zip(origin, size, bounds, strict=True)
    )
    shape = (len(origins), *kept.shape[:2], *size)
    out = kept.new_empty(shape) if inside else kept.new_full(shape, pad)
    zeros = [0] * len(bounds)
    for index, origin in enumerate(origins):
        found = _overlap(origin, size, zeros, bounds)
        if found is not None:
            out[index][(*_ALL, *found[0])] = kept[(*_ALL, *found[1])]
    return out


def _gather(
    source: _Patch | torch.Tensor, start: torch.Tensor, size: tuple[int, ...], pad: float
) -> torch.Tensor:
    """The box of ``size`` at ``start`` of each copy's map: ``(P, M, C, *size)``.

    ``source`` is a patch (its box pasted into the kept map) or full maps ``(P, M, C, *S)``.
    Elements outside the map take ``pad`` (the operation's padding value).
    """
    if isinstance(source, torch.Tensor):
        bounds = tuple(source.shape[3:])
        origins = start.tolist()
        shape = (*source.shape[:3], *size)
        out = source.new_full(shape, pad)
        zeros = [0] * len(bounds)
        for index, origin in enumerate(origins):
            found = _overlap(origin, size, zeros, bounds)
            if found is not None:
                out[index][(*_ALL, *found[0])] = source[index][(*_ALL, *found[1])]
        return out
    data = source.data
    patch_size = tuple(data.shape[3:])
    origins, patches = start.tolist(), source.start.tolist()
    within = all(
        low_p <= low and low + extent <= low_p + extent_p
        for origin, patch in zip(origins, patches, strict=True)
        for low, extent, low_p, extent_p in zip(origin, size, patch, patch_size, strict=True)
    )
    if within:
        out = data.new_empty((*data.shape[:3], *size))
    else:  # the box reaches past the patch: the kept map around it
        assert source.clean is not None
        out = _gather_kept(source.clean, start, size, pad)
    for index, (origin, patch) in enumerate(zip(origins, patches, strict=True)):
        found = _overlap(origin, size, patch, patch_size)
        if found is not None:
            out[index][(*_ALL, *found[0])] = data[index][(*_ALL, *found[1])]
    return out


def _materialize(patch: _Patch, bounds: tuple[int, ...]) -> torch.Tensor:
    """The full maps of a patch, ``(P * M, C, *S)``: the kept map with the box pasted in."""
    data = patch.data
    count, members, channels = data.shape[:3]
    size = tuple(data.shape[3:])
    if size == bounds:
        return data.reshape(count * members, channels, *bounds)
    assert patch.clean is not None
    # A copy even for one position: the kept map itself must not be written into.
    full = (
        patch.clean.unsqueeze(0)
        .expand(count, members, channels, *bounds)
        .clone(memory_format=torch.contiguous_format)
    )
    for index, origin in enumerate(patch.start.tolist()):
        box = tuple(slice(low, low + extent) for low, extent in zip(origin, size, strict=True))
        full[index][(*_ALL, *box)] = data[index]
    return full.view(count * members, channels, *bounds)


# -- one pass -------------------------------------------------------------------------------------


class _Pass:
    """One batch through the graph: boxes where they pay, the plain forward pass elsewhere."""

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
        value = self.engine.clean.get(node)
        loaded = self.engine.loaded
        return None if value is None else value[self.first - loaded : self.stop - loaded]

    def start(self, node: Node) -> torch.Tensor:
        """Where each position's box of ``node`` starts: its own, moved inside the map.

        A group's box can be larger than a position's own (merged groups): it then starts
        earlier where it would leave the map, and still covers the position's own box.
        """
        size = torch.tensor(self.group.sizes[node])
        spatial = torch.tensor(self.engine.shapes[node][2:])
        start = torch.minimum(self.engine.lo[node][self.positions], spatial - size)
        return start.clamp(min=0)

    def run(self) -> tuple[Any, torch.Tensor | None]:
        """The model's output on the batch's copies, and the layer's sums (or None)."""
        engine = self.engine
        sums: torch.Tensor | None = None
        output: Any = None
        for index, node in enumerate(engine.nodes):
            if node.op == "output":
                output = map_arg(node.args[0], self.full)
            elif engine.steps[node].kind != CONST:
                self.env[node] = self._step(engine.steps[node])
                if node is engine.layer_node:
                    sums = self._sums(node)
            for done in engine.pass_release[index]:  # free what nothing later reads
                self.env.pop(done, None)
                self.full_cache.pop(done, None)
        return output, sums

    def _step(self, step: _Step) -> Any:
        kind, node = step.kind, step.node
        if kind == INPUT:
            return self._input(node)
        if kind in _PATCHED and self.engine._full(node, self.group.sizes):
            return self._generic(step)
        if kind == LOCAL:
            return self._local(step)
        if kind == POINTWISE:
            return self._pointwise(step)
        if kind == CAT:
            return self._cat(step)
        if kind == FLATTEN:
            assert step.source is not None
            if isinstance(self.env[step.source], _Patch):
                return _Skipped()
            return self._generic(step)
        if kind == LINEAR:
            assert step.source is not None
            if isinstance(self.env[step.source], _Patch):
                return self._linear(step)
            return self._generic(step)
        if kind == MEAN:
            assert step.source is not None
            if isinstance(self.env[step.source], _Patch):
                return self._mean(step)
            return self._generic(step)
        return self._generic(step)

    # the value of a node as the plain forward pass would have it
    def full(self, node: Node) -> Any:
        if self.engine.steps[node].kind == CONST:
            return self.engine.clean[node]
        value = self.env[node]
        if isinstance(value, _Patch):
            cached = self.full_cache.get(node)
            if cached is None:
                cached = _materialize(value, self.engine.shapes[node][2:])
                self.full_cache[node] = cached
            return cached
        if isinstance(value, _Skipped):
            raise AssertionError("a skipped flatten was read")
        return value

    def _shape_only(self, node: Node) -> Any:
        value = self.env.get(node)
        if isinstance(value, _Patch):
            shape = (self.rows, *self.engine.shapes[node][1:])
            return torch.empty(shape, dtype=value.data.dtype, device="meta")
        return self.full(node)

    def _generic(self, step: _Step) -> Any:

        node = step.node
        reader = self.full
        if (node.op == "call_method" and str(node.target) in _SHAPE_METHODS) or (
            node.op == "call_function"
            and node.target is getattr
            and len(node.args) > 1
            and node.args[1] in _SHAPE_ATTRIBUTES
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
        whole = engine._full(node, self.group.sizes)  # a window as large as the maps
        if whole:
            start = torch.zeros(self.count, len(bounds), dtype=torch.long)
            size = bounds
        else:
            start = self.start(node)
            size = self.group.sizes[node]
        hidden = _gather_kept(baseline, start, size, 0.0)
        shape = (self.count, self.members, inputs.shape[1], *size)
        if len(engine.window) == inputs.dim() - 1:  # the window covers the channels too
            clean = _gather_kept(inputs, start, size, 0.0)
            low = engine.origins[self.positions][:, 0, None]
            channels = torch.arange(inputs.shape[1])
            mask = ((channels >= low) & (channels < low + engine.window[0])).to(self.device)
            data = torch.where(mask.view(self.count, 1, -1, *([1] * len(size))), hidden, clean)
        else:
            data = hidden.expand(shape).contiguous()
        if whole:
            return data.reshape(self.rows, *inputs.shape[1:])
        return _Patch(data, start, inputs)

    def _local(self, step: _Step) -> _Patch:
        assert step.local is not None and step.source is not None
        local = step.local
        node = step.node
        start = self.start(node)
        size = self.group.sizes[node]
        stride = torch.tensor(local.stride)
        pad = torch.tensor(local.padding)
        region = tuple(
            (z - 1) * s + d * (k - 1) + 1
            for z, s, d, k in zip(size, local.stride, local.dilation, local.kernel, strict=True)
        )
        source = self._source(step.source)
        window = _gather(source, start * stride - pad, region, local.pad_value)
        channels = window.shape[2]
        result = local.apply(window.reshape(self.rows, channels, *region))
        data = result.view(self.count, self.members, *result.shape[1:])
        return _Patch(data, start, self.clean(node))

    def _source(self, node: Node) -> _Patch | torch.Tensor:
        """A changed map to gather from: its patch, or its full maps as ``(P, M, C, *S)``."""
        value = self.env[node]
        if isinstance(value, _Patch):
            return value
        assert isinstance(value, torch.Tensor)
        return value.view(self.count, self.members, *value.shape[1:])

    def _box_operand(
        self, node: Node, operand: Node, start: torch.Tensor, size: tuple[int, ...]
    ) -> torch.Tensor:
        value = self.env[operand]
        if isinstance(value, _Patch) and (node, operand) in self.group.same:
            data = value.data
        else:
            data = _gather(self._source(operand), start, size, 0.0)
        return data.reshape(self.rows, *data.shape[2:])

    def _pointwise(self, step: _Step) -> _Patch:

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
                constant = self.engine.clean[operand]
                rank = len(self.engine.shapes[node])
                constant = constant.reshape((1,) * (rank - constant.dim()) + constant.shape)
                window = _gather(
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
        return _Patch(data, start, self.clean(node))

    def _cat(self, step: _Step) -> _Patch:
        node = step.node
        start = self.start(node)
        size = self.group.sizes[node]
        parts = [self._box_operand(node, operand, start, size) for operand in step.parts]
        result = torch.cat(parts, dim=1)
        data = result.view(self.count, self.members, *result.shape[1:])
        return _Patch(data, start, self.clean(node))

    def _change(self, node: Node) -> tuple[_Patch, torch.Tensor]:
        """A patch and its change against the kept map, ``(P, M, C, prod(size))``."""
        patch = self.env[node]
        assert isinstance(patch, _Patch) and patch.clean is not None
        count, members, channels = patch.data.shape[:3]
        size = tuple(patch.data.shape[3:])
        kept = _gather_kept(patch.clean, patch.start, size, 0.0)
        return patch, (patch.data - kept).reshape(count, members, channels, -1)

    def _linear(self, step: _Step) -> torch.Tensor:
        """``Linear(flatten(x))`` of the copies: the kept output plus the change's share."""
        assert step.source is not None and step.weight is not None
        patch, change = self._change(step.source)
        kept = self.clean(step.node)
        assert kept is not None
        count, members, channels = change.shape[:3]
        size = tuple(patch.data.shape[3:])
        bounds = self.engine.shapes[step.source][2:]
        weight = self.engine.location_weight(step)  # (L, C, out)
        flat = _locations(patch.start, size, bounds)
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

    def _mean(self, step: _Step) -> torch.Tensor:
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
        if engine.delta_sums and isinstance(value, _Patch):
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
