"""What a layer's output is, where its batch and channel axes are: the one rule of netlens.

Every technique that takes a layer reads the layer's output through :class:`LayerView`:

- **Output selection** (:meth:`LayerView.tensor`). A tensor is used as is; a tuple or list gives
  its first tensor; a mapping (``dict``, a Hugging Face ``ModelOutput``) its first tensor value;
  a ``PackedSequence`` its padded tensor, batch-first or time-first as the module says.
  ``select=`` (an index, a key or a callable) picks another part first.
- **Batch axis**: dim 0, or dim 1 for a module with ``batch_first=False`` (recurrent layers,
  attention, transformer layers) and for the state of a recurrent layer (``select=1``). It is
  never inferred by comparing sizes.
- **Channel (unit) axis**: by the module's kind (:func:`default_channel_dim`), or what the user
  says with ``channel_dim=``. A module of no kind of its own (an activation, dropout, a block)
  takes the axis of the module whose output it consumes (a block: that produced its output),
  found on the data's path: :class:`_Reader` reads the parent's ``forward`` to see which
  module's output is passed to which module. Registration order stands in only where that code
  cannot be read.

Techniques work on the output *arranged* as ``(N, C, *rest)`` (:meth:`LayerView.arrange`) and
map back with :meth:`LayerView.unarrange`, so no technique keeps a rule of its own.
"""

from __future__ import annotations

import ast
import enum
import inspect
import textwrap
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from .checks import as_int, check_channel_dim
from .errors import NetlensTypeError, NetlensValueError, describe
from .layers import LayerSpec, find_layer, select_layers, unwrap_parallel

__all__ = [
    "LayerView",
    "Select",
    "check_select",
    "default_channel_dim",
    "first_tensor",
    "layer_view",
    "layer_views",
]

#: What ``select=`` accepts: an index into a tuple or list output, a key of a mapping output (or
#: an attribute name), or a function from the output to the tensor wanted.
Select: TypeAlias = int | str | Callable[[Any], Any]

# Modules whose units are on the last dim of their output: features of tokens, time steps or
# rows. By class, and for libraries netlens does not import (Hugging Face), by class name.
_LAST_DIM_KINDS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.LayerNorm,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.MultiheadAttention,
    nn.RNNBase,
    nn.RNNCellBase,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.Transformer,
)
_LAST_DIM_NAMES = ("Conv1D",)  # exact class names; LayerNorm, RMSNorm, ... match by suffix
_LAST_DIM_SUFFIXES = ("Attention", "Embeddings", "Embedding", "LayerNorm", "RMSNorm")
# Modules on (N, C, ...) tensors: the convolution family and what follows it.
_FIRST_DIM_KINDS: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd,
    nn.modules.pooling._MaxUnpoolNd,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.ChannelShuffle,
    nn.Fold,
)


def first_tensor(value: Any, module: nn.Module | None = None) -> torch.Tensor | None:
    """The tensor the default rule takes from a layer's output, or None if it holds none."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, PackedSequence):  # before tuple: a PackedSequence is a namedtuple
        batch_first = bool(getattr(module, "batch_first", False))
        padded, _ = pad_packed_sequence(value, batch_first=batch_first)
        return padded
    if isinstance(value, Mapping):
        items: Any = value.values()
    elif isinstance(value, (tuple, list)):
        items = value
    else:
        return None
    for item in items:
        found = first_tensor(item, module)
        if found is not None:
            return found
    return None


def check_select(select: object) -> Select | None:
    """``select`` if it is None, an int, a str or a callable, else raise."""
    if select is None or isinstance(select, str) or callable(select):
        return select
    index = as_int(select)
    if index is None:
        raise NetlensTypeError(
            "Expected select to be None, an index (int), a key (str) or a callable on the "
            f"layer's output, but got {describe(select)}."
        )
    return index


def _computes_its_own_way(module: nn.Module) -> bool:
    """A ``LayerNorm`` subclass with a forward of its own: what it normalises is its business.

    torchvision's ``LayerNorm2d`` (ConvNeXt) subclasses ``nn.LayerNorm`` to normalise the
    channels of ``(N, C, H, W)`` maps: dim 1, not the last. Such a norm has no axis of its own
    kind; it keeps that of what it normalises (the data's path, see :func:`_input_kind`).
    """
    return isinstance(module, nn.LayerNorm) and type(module).forward is not nn.LayerNorm.forward


def _kind(module: nn.Module) -> int | None:
    """The channel dim a module's kind implies: 1, -1, or None for kind-neutral modules.

    A block (a module with children) named like a kind (``ConvNextEmbeddings``) is read by what
    produced its output first: the name is a guess about a library netlens does not import.
    """
    data_format = getattr(module, "data_format", None)  # Hugging Face's ConvNextLayerNorm, ...
    if data_format == "channels_first":
        return 1
    if data_format == "channels_last":
        return -1
    if _computes_its_own_way(module):
        return None
    if isinstance(module, _LAST_DIM_KINDS):
        return -1
    if isinstance(module, _FIRST_DIM_KINDS):
        return 1
    if type(module).__name__ in _LAST_DIM_NAMES:
        return -1
    if not module._modules:
        return _named_kind(module)
    return None  # a block named like a kind: by its data first (see _output_kind)


def _named_kind(module: nn.Module) -> int | None:
    """-1 for a class named like attention, an embedding or a norm (``BertSelfAttention``)."""
    return -1 if type(module).__name__.endswith(_LAST_DIM_SUFFIXES) else None


def _permutation(module: nn.Module) -> tuple[int, ...] | None:
    """The dims of a parameter-free permute module (torchvision's ``Permute``), else None."""
    dims = getattr(module, "dims", None)
    if (
        isinstance(dims, (list, tuple))
        and dims
        and all(isinstance(d, int) for d in dims)
        and sorted(dims) == list(range(len(dims)))
        and next(module.parameters(), None) is None
    ):
        return tuple(dims)
    return None


def _through(dim: int, permutations: list[tuple[int, ...]]) -> int:
    """Where dim ``dim`` of a tensor ends up after the permutations, applied in order."""
    for dims in permutations:
        dim = dims.index(dim % len(dims))
    return dim


def _width(module: nn.Module) -> int | None:
    """How many channels the output of a module of definite kind has, where it says."""
    if isinstance(module, nn.RNNBase):
        size = module.proj_size or module.hidden_size
        return int(size * (2 if module.bidirectional else 1))
    for attribute in ("out_features", "out_channels", "num_features", "embedding_dim"):
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return value
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    if isinstance(module, nn.GroupNorm):
        return int(module.num_channels)
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[1])
    return None


# (channel dim, width of the module the kind came from); the width is None when unknown.
_Kind: TypeAlias = tuple[int, int | None]


# -- the data's path -----------------------------------------------------------------------------
#
# Which module's output a module consumes, and which module produced a block's output, read from
# the code of the forward that calls them: in ``h = self.c_fc(x); h = self.act(h)`` the
# activation consumes c_fc's output wherever the two are registered. The reader follows plain
# assignments, calls of submodules (``self.fc``, ``self.layers[0]``, a local alias of one) and of
# the class's own methods, elementwise arithmetic, layout-keeping functions, ``torch.cat`` and
# ``permute``/``transpose`` with constant dims; anything else (a reshape, a matmul, a loop over a
# ModuleList, code without source) is "unknown", and there registration order stands in for
# the data's path. Nothing is run: no hook, no trace, nothing process-wide; what is read is
# cached per class.


class _Path(enum.Enum):
    """The data's path is not known here (code that cannot be read, or too dynamic)."""

    UNKNOWN = "unknown"


_UNKNOWN = _Path.UNKNOWN

# A value in a forward, as the reader knows it:
#   ("input", i)                  the forward's i-th argument (after self)
#   ("call", path, value)         what submodule ``self.<path>`` returned when called on ``value``
#   ("permute", dims, value)      ``value.permute(*dims)``
#   ("transpose", a, b, value)    ``value.transpose(a, b)``
#   ("ref", path)                 the attribute ``self.<path>`` itself (a submodule, a parameter)
#   None                          anything else
_Value: TypeAlias = tuple[Any, ...] | None

# Functions and tensor methods that keep a tensor's layout: their result is read as their
# (first) operand's.
_SAME_LAYOUT = frozenset(
    {
        "relu",
        "relu_",
        "gelu",
        "silu",
        "mish",
        "elu",
        "selu",
        "celu",
        "leaky_relu",
        "hardswish",
        "hardsigmoid",
        "hardtanh",
        "relu6",
        "softplus",
        "sigmoid",
        "tanh",
        "dropout",
        "contiguous",
        "clone",
        "detach",
        "float",
        "half",
        "double",
        "bfloat16",
        "to",
        "type_as",
    }
)
_ELEMENTWISE = (ast.Add, ast.Sub, ast.Mult, ast.Div)
_MAX_INLINE_DEPTH = 4


@dataclass(frozen=True)
class _Flow:
    """What a module's forward passes where (paths relative to the module).

    Attributes:
        consumes: For each submodule path it calls, the value passed to it, per call in the
            order of the code.
        returns: The value of each ``return`` in the order of the code (for a tuple or a
            mapping: its first item, as the output rule reads it).
    """

    consumes: Mapping[str, tuple[_Value, ...]]
    returns: tuple[_Value, ...]


class _Reader:
    """Reads the data's path out of one class's ``forward`` (and the methods it calls)."""

    def __init__(self, owner: type[nn.Module]) -> None:
        self.owner = owner
        self.consumes: dict[str, list[_Value]] = {}
        self.active: list[Any] = []  # the functions being read, against recursion
        self.passed: set[Any] = set()  # the methods read because they were passed along

    def read(self) -> _Flow | None:
        returns = self.function(self.owner.forward, None)
        if returns is None:
            return None
        return _Flow({k: tuple(v) for k, v in self.consumes.items()}, tuple(returns))

    def function(self, function: Any, arguments: list[_Value] | None) -> list[_Value] | None:
        """The values a function returns; None if its code cannot be read.

        ``arguments`` are the values passed after ``self`` (None: the forward itself, whose
        arguments are its inputs).
        """
        definition = _definition(function)
        if definition is None or function in self.active or len(self.active) > _MAX_INLINE_DEPTH:
            return None
        parameters = [*definition.args.posonlyargs, *definition.args.args]
        if not parameters:
            return None
        env: dict[str, _Value] = {}
        for index, parameter in enumerate(parameters[1:]):
            if arguments is None:
                env[parameter.arg] = ("input", index)
            else:
                env[parameter.arg] = arguments[index] if index < len(arguments) else None
        returns: list[_Value] = []
        self.active.append(function)
        try:
            self.block(definition.body, env, parameters[0].arg, returns)
        finally:
            self.active.pop()
        return returns

    # -- statements ----------------------------------------------------------------------------

    def block(
        self, body: list[ast.stmt], env: dict[str, _Value], me: str, returns: list[_Value]
    ) -> None:
        for statement in body:
            self.statement(statement, env, me, returns)

    def statement(
        self, node: ast.stmt, env: dict[str, _Value], me: str, returns: list[_Value]
    ) -> None:
        if isinstance(node, ast.Assign):
            value = self.expr(node.value, env, me)
            for target in node.targets:
                self.assign(target, value, env)
        elif isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self.assign(node.target, self.expr(node.value, env, me), env)
        elif isinstance(node, ast.AugAssign):
            value = self.expr(node.value, env, me)
            if isinstance(node.target, ast.Name):
                current = env.get(node.target.id)
                elementwise = isinstance(node.op, _ELEMENTWISE)
                env[node.target.id] = _either(current, value) if elementwise else None
        elif isinstance(node, ast.Return):
            returns.append(None if node.value is None else self.first(node.value, env, me))
        elif isinstance(node, ast.Expr):
            self.expr(node.value, env, me)
        elif isinstance(node, ast.If):
            self.expr(node.test, env, me)
            branches = [dict(env), dict(env)]
            self.block(node.body, branches[0], me, returns)
            self.block(node.orelse, branches[1], me, returns)
            _merge(env, branches)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
            # run zero or more times: what the body changes is unknown after the loop
            if isinstance(node, ast.While):
                self.expr(node.test, env, me)
            else:
                self.expr(node.iter, env, me)
            inside = dict(env)
            if not isinstance(node, ast.While):
                self.assign(node.target, None, inside)
            self.block(node.body, inside, me, returns)
            self.block(node.orelse, inside, me, returns)
            _merge(env, [dict(env), inside])
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                self.expr(item.context_expr, env, me)
                if item.optional_vars is not None:
                    self.assign(item.optional_vars, None, env)
            self.block(node.body, env, me, returns)
        elif isinstance(node, ast.Try):
            self.block(node.body, env, me, returns)
            branches = [dict(env)]
            for handler in node.handlers:
                branch = dict(env)
                self.block(handler.body, branch, me, returns)
                branches.append(branch)
            otherwise = dict(env)
            self.block(node.orelse, otherwise, me, returns)
            branches.append(otherwise)
            _merge(env, branches)
            self.block(node.finalbody, env, me, returns)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            env[node.name] = None
        else:  # assert, raise, del, ...: only their calls matter
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    self.expr(child, env, me)

    def assign(self, target: ast.expr, value: _Value, env: dict[str, _Value]) -> None:
        if isinstance(target, ast.Name):
            env[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            # ``out, state = self.lstm(x)``: the first item is what the output rule reads
            first = value if value is not None and value[0] == "call" else None
            for index, item in enumerate(target.elts):
                self.assign(item, first if index == 0 else None, env)
        elif isinstance(target, ast.Starred):
            self.assign(target.value, None, env)

    # -- expressions ---------------------------------------------------------------------------

    def first(self, node: ast.expr, env: dict[str, _Value], me: str) -> _Value:
        """A returned value as the output rule reads it: a tuple's or a dict's first item."""
        if isinstance(node, (ast.Tuple, ast.List)) and node.elts:
            values = [self.expr(item, env, me) for item in node.elts]
            return values[0]
        if isinstance(node, ast.Dict) and node.values:
            values = [self.expr(item, env, me) for item in node.values]
            for key in node.keys:
                if key is not None:
                    self.expr(key, env, me)
            return values[0] if node.keys[0] is not None else None
        return self.expr(node, env, me)

    def expr(self, node: ast.expr, env: dict[str, _Value], me: str) -> _Value:
        if isinstance(node, ast.Name):
            return env.get(node.id)
        path = _path_on(node, me)
        if path is not None:
            own = _method(self.owner, path)
            if own is not None and own not in self.passed:
                # a method handed to a function (chunking, checkpointing: ``f(self.ff, x)``):
                # what it calls counts, on arguments the reader does not know
                self.passed.add(own)
                self.function(own, [])
            return ("ref", path)
        if isinstance(node, ast.Call):
            return self.call(node, env, me)
        if isinstance(node, ast.BinOp):
            left = self.expr(node.left, env, me)
            right = self.expr(node.right, env, me)
            return _either(left, right) if isinstance(node.op, _ELEMENTWISE) else None
        if isinstance(node, ast.IfExp):
            self.expr(node.test, env, me)
            body, orelse = self.expr(node.body, env, me), self.expr(node.orelse, env, me)
            return body if body == orelse else None
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.expr(child, env, me)
        return None

    def call(self, node: ast.Call, env: dict[str, _Value], me: str) -> _Value:
        callee = node.func
        receiver: _Value = None
        function: _Value = None
        called = _path_on(callee, me)
        if called is not None:
            function = ("ref", called)
        elif isinstance(callee, ast.Attribute):
            receiver = self.expr(callee.value, env, me)
        else:
            function = self.expr(callee, env, me)
        arguments: list[_Value] = []
        parts: list[_Value] = []  # the items of a first argument that is a list or tuple
        for index, argument in enumerate(node.args):
            if index == 0 and isinstance(argument, (ast.List, ast.Tuple)):
                parts = [self.expr(item, env, me) for item in argument.elts]
                arguments.append(None)
            else:
                arguments.append(self.expr(argument, env, me))
        keywords = [self.expr(keyword.value, env, me) for keyword in node.keywords]
        if function is not None and function[0] == "ref":
            path = function[1]
            own = _method(self.owner, path)
            if own is not None:
                returns = self.function(own, arguments)
                known = [value for value in returns or () if value is not None]
                return known[-1] if known and all(v == known[0] for v in known) else None
            given = arguments[0] if arguments else keywords[0] if keywords else None
            self.consumes.setdefault(path, []).append(given)
            return ("call", path, given)
        name = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", None)
        if name in ("cat", "concat", "concatenate"):
            # joined along some dim, the layout stays: read as its first part the reader knows
            return next((value for value in parts if _is_tensor(value)), None)
        method = _is_tensor(receiver)  # x.relu(), rather than F.relu(x)
        operand = receiver if method else arguments[0] if arguments else None
        if not _is_tensor(operand):
            return None
        if name in _SAME_LAYOUT:
            return operand
        rest = node.args if method else node.args[1:]
        if name == "permute":
            dims = _ints(rest)
            if dims is not None and sorted(d % len(dims) for d in dims) == list(range(len(dims))):
                return ("permute", dims, operand)
        if name in ("transpose", "swapaxes", "swapdims"):
            pair = _ints(rest)
            if pair is not None and len(pair) == 2:
                return ("transpose", pair[0], pair[1], operand)
        return None


def _is_tensor(value: _Value) -> bool:
    """Whether a value is a tensor the reader follows (not an attribute, not unknown)."""
    return value is not None and value[0] != "ref"


def _ints(nodes: list[ast.expr]) -> tuple[int, ...] | None:
    """Constant ints written as arguments (``1, 2`` or ``(0, 2, 3, 1)``), else None."""
    if len(nodes) == 1 and isinstance(nodes[0], (ast.Tuple, ast.List)):
        nodes = nodes[0].elts
    numbers = []
    for node in nodes:
        sign = 1
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            sign, node = -1, node.operand
        if not isinstance(node, ast.Constant) or type(node.value) is not int:
            return None
        numbers.append(sign * node.value)
    return tuple(numbers) if numbers else None


def _path_on(node: ast.expr, me: str) -> str | None:
    """``"a.b.0"`` for ``self.a.b[0]`` (``me`` is the name of ``self``), else None."""
    parts: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            key = node.slice.value
            if not isinstance(key, (int, str)) or isinstance(key, bool):
                return None
            parts.append(str(key))
            node = node.value
        elif isinstance(node, ast.Name) and node.id == me and parts:
            return ".".join(reversed(parts))
        else:
            return None


def _either(left: _Value, right: _Value) -> _Value:
    """The operand whose layout an elementwise result has: a submodule's output first.

    In ``x + self.mlp(x)`` both have the same layout; the branch's module says more about it
    than the block's input.
    """
    tensors = [value for value in (left, right) if _is_tensor(value)]
    made = [value for value in tensors if value is not None and value[0] != "input"]
    return (made or tensors or [None])[0]


def _merge(env: dict[str, _Value], branches: list[dict[str, _Value]]) -> None:
    """After branches: a name keeps its value only where every branch agrees on it."""
    for key in {key for branch in branches for key in branch}:
        values = [branch.get(key) for branch in branches]
        env[key] = values[0] if all(value == values[0] for value in values) else None


def _method(owner: type[nn.Module], path: str) -> Any:
    """The plain function behind ``self.<path>(...)`` when it is a method of the class."""
    if "." in path:
        return None
    function = inspect.getattr_static(owner, path, None)
    return function if inspect.isfunction(function) else None


# Caches of pure functions of a class's code; weak, so that classes made on the fly can go.
_DEFINITIONS: weakref.WeakKeyDictionary[Any, ast.FunctionDef | ast.AsyncFunctionDef | None] = (
    weakref.WeakKeyDictionary()
)


def _definition(function: Any) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The parsed code of a function, or None where there is no source to read."""
    if not inspect.isfunction(function):
        return None  # a builtin, a partial, ...: no code of the kind the reader reads
    if function in _DEFINITIONS:
        return _DEFINITIONS[function]
    definition = None
    try:
        source = textwrap.dedent(inspect.getsource(inspect.unwrap(function)))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, ValueError):
        tree = None
    if tree is not None and tree.body:
        node = tree.body[0]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            definition = node
    _DEFINITIONS[function] = definition
    return definition


# per class: the forward that was read (a class whose forward is replaced later is read again)
# and what it passes where
_FLOWS: weakref.WeakKeyDictionary[type[nn.Module], tuple[Any, _Flow | None]] = (
    weakref.WeakKeyDictionary()
)


def _flow(module: nn.Module) -> _Flow | None:
    """What ``module``'s forward passes where, or None where it cannot be read."""
    owner = type(module)
    if isinstance(module, nn.Sequential) and owner.forward is nn.Sequential.forward:
        # Sequential's forward is the chain of its children, in order
        names = [name for name, child in module._modules.items() if child is not None]
        consumes: dict[str, tuple[_Value, ...]] = {}
        value: _Value = ("input", 0)
        for name in names:
            consumes[name] = (value,)
            value = ("call", name, value)
        return _Flow(consumes, (value,))
    if owner.forward is nn.Module.forward:  # ModuleList, ModuleDict: no forward of their own
        return None
    cached = _FLOWS.get(owner)
    if cached is not None and cached[0] is owner.forward:
        return cached[1]
    try:
        flow = _Reader(owner).read()
    except Exception:  # code the reader does not expect: the path is unknown, never an error
        flow = None
    # a race between threads parses the same code twice, to the same result
    _FLOWS[owner] = (owner.forward, flow)
    return flow


def _child(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        return None


def _join(owner: str, path: str) -> str:
    return f"{owner}.{path}" if owner else path


def _resolve(
    model: nn.Module, owner: str, value: _Value, visiting: set[tuple[str, str]]
) -> _Kind | _Path | None:
    """The kind of a value of the forward of module ``owner``."""
    if value is None or value[0] == "ref":
        return _UNKNOWN
    if value[0] == "input":
        return _input_kind(model, owner, visiting) if value[1] == 0 else _UNKNOWN
    if value[0] in ("permute", "transpose"):
        inner = _resolve(model, owner, value[-1], visiting)
        if inner is None or inner is _UNKNOWN:
            return inner
        dim, width = inner
        moved = _moved(dim, value)
        return _UNKNOWN if moved is None else (moved, width)
    name = _join(owner, value[1])
    if _child(model, name) is None:
        # a function kept on the module (``self.act_fn = F.gelu``): read as layout-keeping
        return _resolve(model, owner, value[2], visiting)
    return _output_kind(model, name, visiting)


def _moved(dim: int, value: tuple[Any, ...]) -> int | None:
    """Where dim ``dim`` goes through a permute or transpose value; None if that is unknown."""
    if value[0] == "permute":
        dims: tuple[int, ...] = value[1]
        return _through(dim, [dims]) if -len(dims) <= dim < len(dims) else None
    first, second = value[1], value[2]
    if not (dim >= 0) == (first >= 0) == (second >= 0):
        return None  # -1 and 2 may or may not be the same dim: the rank is not known here
    return second if dim == first else first if dim == second else dim


def _consumed(model: nn.Module, name: str, visiting: set[tuple[str, str]]) -> _Kind | _Path | None:
    """The kind of what layer ``name`` consumes, on the data's path: _UNKNOWN if not known."""
    parts = name.split(".")
    # The forward that calls the layer: its parent's, or above a ModuleList or ModuleDict
    for level in range(len(parts) - 1, -1, -1):
        owner = ".".join(parts[:level])
        module = _child(model, owner)
        if module is None:
            return _UNKNOWN
        flow = _flow(module)
        if flow is None:
            if type(module).forward is nn.Module.forward:
                continue
            return _UNKNOWN
        for value in flow.consumes.get(".".join(parts[level:]), ()):
            found = _resolve(model, owner, value, visiting)
            if found is not _UNKNOWN:
                return found
        return _UNKNOWN
    return _UNKNOWN


def _produced(model: nn.Module, name: str, visiting: set[tuple[str, str]]) -> _Kind | _Path | None:
    """The kind of block ``name``'s output: that of the module that produced it."""
    module = _child(model, name)
    flow = None if module is None else _flow(module)
    if flow is None:
        return _UNKNOWN
    known = [value for value in flow.returns if value is not None]
    if not known:
        return _UNKNOWN
    return _resolve(model, name, known[-1], visiting)  # the last return: the main path


def _input_kind(model: nn.Module, name: str, visiting: set[tuple[str, str]]) -> _Kind | None:
    """The kind of what layer ``name`` consumes (None: the model's input, or nothing known).

    On the data's path where the code that calls the layer can be read; else what the module
    registered before it in its parent outputs (for the first child: what its parent consumes).
    """
    if not name:
        return None  # the model's own input
    key = ("input", name)
    if key in visiting:
        return None
    visiting.add(key)
    try:
        found = _consumed(model, name, visiting)
        if found is not _UNKNOWN:
            return found
        parent, _, own = name.rpartition(".")
        siblings = _children(model, parent)
        before = siblings[: siblings.index(own)] if own in siblings else []
        return _registered_last(model, parent, before, visiting)
    finally:
        visiting.discard(key)


def _children(model: nn.Module, name: str) -> list[str]:
    """The names of a module's children, in registration order."""
    module = _child(model, name)
    return [] if module is None else [k for k, v in module._modules.items() if v is not None]


def _registered_last(
    model: nn.Module, parent: str, children: list[str], visiting: set[tuple[str, str]]
) -> _Kind | None:
    """The stand-in for the data's path: the kind of the last of ``children`` that has one.

    Registration order taken for the order of the forward: walking back from the last child,
    permute modules are noted, modules without a kind skipped, and a block gives the kind of
    its output; with none left, the kind of what ``parent`` consumes.
    """
    after: list[tuple[int, ...]] = []
    for child in reversed(children):
        name = _join(parent, child)
        module = _child(model, name)
        if module is None:
            continue
        permutation = _permutation(module)
        if permutation is not None:
            after.insert(0, permutation)
            continue
        found: _Kind | None = None
        own = _kind(module)
        if own is not None:
            found = own, _width(module)
        elif module._modules:
            found = _output_kind(model, name, visiting)
        if found is not None:
            return _through(found[0], after), found[1]
    inner = _input_kind(model, parent, visiting) if parent else None
    if inner is None:
        return (_through(1, after), None) if after else None
    return _through(inner[0], after), inner[1]


def _output_kind(model: nn.Module, name: str, visiting: set[tuple[str, str]]) -> _Kind | None:
    """The channel dim (and width) of layer ``name``'s output, by kind or inherited."""
    module = _child(model, name)
    key = ("output", name)
    if module is None or key in visiting:
        return None
    own = _kind(module)
    if own is not None:
        return own, _width(module)
    visiting.add(key)
    try:
        permutation = _permutation(module)
        if permutation is not None:
            inner = _input_kind(model, name, visiting)
            return None if inner is None else (_through(inner[0], [permutation]), inner[1])
        if _computes_its_own_way(module):
            inner = _input_kind(model, name, visiting)
            return None if inner is None else (inner[0], _width(module))
        named = _named_kind(module)
        children = _children(model, name)
        if children:
            # a block: the module that produced its output; where that cannot be read, its
            # last module of a kind (registration order)
            produced = _produced(model, name, visiting)
            if produced is not _UNKNOWN and produced is not None:
                return produced
            if named is not None:
                return named, None
            if produced is None:
                return None
            return _registered_last(model, name, children, visiting)
        if named is not None:
            return named, _width(module)
        return _input_kind(model, name, visiting)
    finally:
        visiting.discard(key)


def _inherited_kind(model: nn.Module, name: str) -> _Kind | None:
    """The kind of layer ``name`` when it has none of its own (see default_channel_dim)."""
    return _output_kind(model, name, set())


def default_channel_dim(model: nn.Module, name: str) -> int:
    """The channel dim of layer ``name`` by its kind, before seeing its output.

    A module of a definite kind gives it (convolution family: 1; Linear, Conv1D, LayerNorm,
    Embedding, attention, recurrent: -1; a ``data_format`` attribute of ``"channels_first"`` or
    ``"channels_last"``: 1 or -1). A module of no kind of its own takes it from the data's
    path: an activation, dropout, a module of unknown kind or a ``LayerNorm`` subclass with a
    forward of its own (torchvision's ``LayerNorm2d``) that of the module whose output it
    consumes; a block that of the module that produced its output (a block whose class name
    says attention, embedding or norm: by the name where the path says nothing); a permute
    module that of its input, permuted. The path is read from the forward of the module that
    calls them; where it cannot be read, registration order stands in for it (the module
    registered before, a block's last module). With nothing to go by: 1.
    :meth:`LayerView.dims` also checks an inherited kind against the output.
    """
    module = model.get_submodule(name) if name else model
    own = _kind(module)
    if own is not None:
        return own
    inherited = _inherited_kind(model, name)
    return 1 if inherited is None else inherited[0]


def _batch_first(module: nn.Module) -> bool | None:
    """The module's ``batch_first``, also where it sits on its attention or its layers."""
    value = getattr(module, "batch_first", None)
    if isinstance(value, bool):
        return value
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return bool(module.self_attn.batch_first)
    if isinstance(module, (nn.TransformerEncoder, nn.TransformerDecoder)):
        # no batch_first of its own: its layers (all alike) say it
        layers = list(module.layers)
        return _batch_first(layers[0]) if layers else None
    return None


def _batch_dim(module: nn.Module, select: Select | None) -> int:
    if isinstance(module, nn.RNNBase) and select == 1:
        return 1  # the state (h_n or (h_n, c_n)): (layers * directions, N, H)
    return 1 if _batch_first(module) is False else 0


@dataclass(frozen=True)
class LayerView:
    """How to read one layer's output: which part, which axis is the batch, which the channel.

    Attributes:
        name: The layer's name in the model.
        module: The layer.
        select: What the user passed as ``select=`` (None: the default rule).
        channel_dim: The channel axis as the user gave it or the module's kind implies.
        batch_dim: The batch axis of the selected output.
        inherited_width: For a channel axis inherited from another module (the module that
            produced a block's output, the one whose output an activation consumes), that
            module's channel count: an output whose size on that axis differs is not explained
            by the inherited kind, and is read with its channels on dim 1 instead. None when
            the axis is the module's own or the user's. Not an argument: set by
            :func:`layer_view` only, so that a view made from another with a ``channel_dim`` of
            the user's (``dataclasses.replace(view, channel_dim=-1)``) reads that axis as given.
    """

    name: str
    module: nn.Module
    select: Select | None
    channel_dim: int
    batch_dim: int
    inherited_width: int | None = field(default=None, init=False)

    def tensor(self, output: Any) -> torch.Tensor:
        """The tensor of a raw output that the technique looks at."""
        part = output
        if self.select is not None:
            part = self._apply_select(output)
            if isinstance(part, torch.Tensor):
                return part
        found = first_tensor(part, self.module)
        if found is None:
            raise NetlensTypeError(self._no_tensor_message(part))
        return found

    def _apply_select(self, output: Any) -> Any:
        select = self.select
        try:
            if isinstance(select, int):
                if isinstance(output, (tuple, list)) and not isinstance(output, PackedSequence):
                    return output[select]
                raise NetlensTypeError(
                    f"Expected layer {self.name!r} to return a tuple or list for select={select},"
                    f" but it returned {describe(output)}."
                )
            if isinstance(select, str):
                if isinstance(output, Mapping):
                    return output[select]
                if hasattr(output, select):
                    return getattr(output, select)
                raise NetlensTypeError(
                    f"Expected layer {self.name!r} to return a mapping or an object with "
                    f"{select!r} for select={select!r}, but it returned {describe(output)}."
                )
            assert select is not None
            return select(output)
        except (IndexError, KeyError) as error:
            keys = list(output) if isinstance(output, Mapping) else f"{len(output)} items"
            raise NetlensValueError(
                f"Expected select={select!r} to pick a part of the output of layer "
                f"{self.name!r}, but it has none such (it has {keys})."
            ) from error

    def _no_tensor_message(self, value: Any) -> str:
        if self.select is not None:
            return (
                f"Expected select={self.select!r} to pick a tensor from the output of layer "
                f"{self.name!r}, but it picked {describe(value)}."
            )
        return (
            f"Expected layer {self.name!r} to return a tensor, a tuple or list holding one, a "
            f"mapping of tensors or a PackedSequence, but it returned {describe(value)}; pass "
            "select= (an index, a key or a callable) to pick a tensor from it."
        )

    def dims(self, tensor: torch.Tensor) -> tuple[int, int]:
        """The batch and channel axes of the selected tensor, as non-negative dims."""
        rank = tensor.dim()
        if rank < 2:
            raise NetlensValueError(
                f"Expected layer {self.name!r} to output a batch of at least 2 dims (batch, "
                f"channels, ...), but it output {describe(tensor)}."
            )
        batch = self.batch_dim
        dim = self.channel_dim
        if self.inherited_width is not None and (
            not -rank <= dim < rank or tensor.shape[dim] != self.inherited_width
        ):
            # The inherited kind does not explain this output (a block that returns something
            # else than its last module's output): no kind to go by, channels on dim 1.
            dim = 1 if batch != 1 else 2 % rank
        if not -rank <= dim < rank:
            raise NetlensValueError(
                f"Expected channel_dim in [{-rank}, {rank}) for the {rank}-d output of layer "
                f"{self.name!r} (shape {tuple(tensor.shape)}), but got {self.channel_dim}."
            )
        channel = dim % rank
        if channel == batch:
            raise NetlensValueError(
                f"Expected the channel axis of layer {self.name!r} to differ from its batch axis "
                f"(dim {batch}), but channel_dim={self.channel_dim} names it too "
                f"(output shape {tuple(tensor.shape)})."
            )
        return batch, channel

    def order(self, tensor: torch.Tensor) -> list[int]:
        """The permutation that arranges the tensor as ``(N, C, *rest)``."""
        batch, channel = self.dims(tensor)
        return [batch, channel, *(d for d in range(tensor.dim()) if d not in (batch, channel))]

    def arrange(self, tensor: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """The selected tensor as ``(N, C, *rest)`` (a view), checking the batch size."""
        arranged = tensor.permute(self.order(tensor))
        if batch is not None and arranged.shape[0] != batch:
            raise NetlensValueError(
                f"Expected the output of layer {self.name!r} to hold the batch of {batch} inputs "
                f"on dim {self.batch_dim}, but its shape is {tuple(tensor.shape)}. A module with "
                "batch_first=False has its batch on dim 1; pass select= when the layer returns "
                "several tensors."
            )
        return arranged

    def unarrange(self, arranged: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`arrange`: ``(N, C, *rest)`` back to the layout of ``like``."""
        order = self.order(like)
        inverse = [order.index(d) for d in range(len(order))]
        return arranged.permute(inverse)

    def channels(self, tensor: torch.Tensor) -> int:
        """How many channels the selected tensor has."""
        return int(tensor.shape[self.dims(tensor)[1]])


def _enclosing_batch_first(model: nn.Module, name: str) -> bool | None:
    """The ``batch_first`` of the nearest enclosing module that has one, or None.

    A module with no batch axis of its own (a ``Linear``, a dropout, a norm) inside a time-first
    transformer layer receives ``(T, N, D)``: its batch is where its layer's is.
    """
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        parent = _child(model, ".".join(parts[:end]))
        if parent is None:
            return None
        found = _batch_first(parent)
        if found is not None:
            return found
    return None


def _view(
    model: nn.Module, name: str, module: nn.Module, select: Select | None, channel_dim: int | None
) -> LayerView:
    batch_dim = _batch_dim(module, select)
    if _batch_first(module) is None and _enclosing_batch_first(model, name) is False:
        batch_dim = 1
    if channel_dim is not None:
        return LayerView(name, module, select, channel_dim, batch_dim)
    own = _kind(module)
    if own is not None:
        return LayerView(name, module, select, own, batch_dim)
    inherited = _inherited_kind(model, name)
    if inherited is None:
        return LayerView(name, module, select, 1, batch_dim)
    view = LayerView(name, module, select, inherited[0], batch_dim)
    object.__setattr__(view, "inherited_width", inherited[1])  # frozen: set once, here
    return view


def _reading(
    model: nn.Module, select: object, channel_dim: object
) -> tuple[nn.Module, Select | None, int | None]:
    """The model whose names the user gave, and the checked ``select`` and ``channel_dim``."""
    checked_select = check_select(select)
    checked_dim = check_channel_dim("channel_dim", channel_dim, optional=True)
    return unwrap_parallel(model), checked_select, checked_dim  # names of a DDP-wrapped model


def layer_view(
    model: nn.Module,
    layer: LayerSpec,
    *,
    select: object = None,
    channel_dim: object = None,
    name: str = "layer",
) -> LayerView:
    """Resolve one layer (see :func:`~netlens.find_layers`) with its reading rule.

    ``name`` is the argument the user passed ``layer`` as, for messages.
    """
    model, checked_select, checked_dim = _reading(model, select, channel_dim)
    key, module = find_layer(model, layer, name=name)
    return _view(model, key, module, checked_select, checked_dim)


def layer_views(
    model: nn.Module,
    layers: LayerSpec,
    *,
    select: object = None,
    channel_dim: object = None,
    name: str = "layers",
) -> dict[str, LayerView]:
    """Resolve several layers, each with its reading rule (``name`` as for :func:`layer_view`)."""
    model, checked_select, checked_dim = _reading(model, select, channel_dim)
    return {
        key: _view(model, key, module, checked_select, checked_dim)
        for key, module in select_layers(model, layers, name=name).items()
    }
