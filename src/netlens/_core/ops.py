"""Facts about torch operations: which are element-wise, in place, ReLU-like, window ops, ...

The one table of operations that the techniques consult. An operation is seen in one of two
ways, and the facts come in both forms:

* **by name**, as a torch function mode sees a call (``func.__name__``: ``"relu"``,
  ``"relu_"``, ``"__iadd__"``, ``"max_pool2d_with_indices"``): the ``*_NAMES`` sets, for the
  modes of the deconvnet and of receptive fields, and :func:`mutated_tensors`;
* **by object**, as a ``torch.fx`` graph holds it (``node.target``: ``F.relu``,
  ``operator.add``, a method name, a module class): the ``*_FUNCTIONS``, ``*_METHODS`` and
  ``*_MODULES`` tables, for the incremental occlusion engine.

Nothing here runs an operation; the tables only say what an operation is.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "ADAPTIVE_AVG_POOLS",
    "ADAPTIVE_MAX_POOLS",
    "ADAPTIVE_POOL_NAMES",
    "AVG_POOLS",
    "COMBINING_NAMES",
    "CONCATENATIONS",
    "CONVOLUTIONS",
    "CONVOLUTION_NAMES",
    "COPY_NAMES",
    "DROPOUT_FUNCTIONS",
    "DROPOUT_NAMES",
    "ELEMENTWISE_MATH_NAMES",
    "INPLACE_DUNDERS",
    "INPLACE_FUNCTIONS",
    "MAX_POOLS",
    "MAX_POOL_NAMES",
    "NONLINEAR_ELEMENTWISE_NAMES",
    "NONLINEAR_NAMES",
    "POINTWISE_FUNCTIONS",
    "POINTWISE_METHODS",
    "POINTWISE_MODULES",
    "POOL_NAMES",
    "RELU_NAMES",
    "SHAPE_ATTRIBUTES",
    "SHAPE_METHODS",
    "TRAINING_ARGUMENT",
    "VIEW_FUNCTIONS",
    "VIEW_METHODS",
    "CallMode",
    "bind",
    "function_name",
    "mutated_tensors",
    "writes_first_argument",
]

# -- by name: what a torch function mode sees ---------------------------------------------------

RELU_NAMES = frozenset({"relu", "relu_"})
# Element-wise nonlinearities other than ReLU, with their in-place forms.
NONLINEAR_ELEMENTWISE_NAMES = frozenset(
    name + suffix
    for name in [
        "tanh",
        "sigmoid",
        "elu",
        "selu",
        "celu",
        "leaky_relu",
        "hardtanh",
        "rrelu",
        "threshold",
    ]
    for suffix in ("", "_")
) | frozenset(
    [
        "gelu",
        "softplus",
        "silu",
        "mish",
        "relu6",
        "hardswish",
        "hardsigmoid",
        "softsign",
        "tanhshrink",
        "logsigmoid",
        "log_sigmoid",
        "prelu",
    ]
)
# Every nonlinear operation other than ReLU: element-wise ones, and those that mix elements
# (softmax, normalisations, recurrent cells, attention).
NONLINEAR_NAMES = NONLINEAR_ELEMENTWISE_NAMES | frozenset(
    [
        "glu",
        "softmax",
        "log_softmax",
        "softmin",
        "exp",
        "log",
        "sin",
        "cos",
        "erf",
        "lstm",
        "gru",
        "rnn_tanh",
        "rnn_relu",
        "lstm_cell",
        "gru_cell",
        "rnn_tanh_cell",
        "rnn_relu_cell",
        "layer_norm",
        "group_norm",
        "instance_norm",
        "local_response_norm",
        "normalize",
        "scaled_dot_product_attention",
        "multi_head_attention_forward",
    ]
)
DROPOUT_NAMES = frozenset(
    {
        "dropout",
        "dropout_",
        "dropout1d",
        "dropout2d",
        "dropout3d",
        "alpha_dropout",
        "feature_alpha_dropout",
    }
)
# Copies, casts and memory-layout changes: the same values at the same indices.
COPY_NAMES = frozenset(
    {
        "clone",
        "contiguous",
        "detach",
        "to",
        "float",
        "double",
        "half",
        "bfloat16",
        "type_as",
    }
)
# Element-wise arithmetic of one tensor.
ELEMENTWISE_MATH_NAMES = frozenset(
    {"abs", "neg", "__neg__", "__pos__", "square", "sqrt", "exp", "log"}
)
# Element-wise on several tensors (in every form: function, in place, operator, reflected).
COMBINING_NAMES = frozenset(
    f"{prefix}{name}{suffix}"
    for name in ("add", "sub", "mul", "div", "truediv")
    for prefix, suffix in (("", ""), ("", "_"), ("__", "__"), ("__r", "__"), ("__i", "__"))
) | frozenset({"true_divide", "maximum", "minimum"})
CONVOLUTION_NAMES = frozenset({"conv1d", "conv2d", "conv3d"})
# Max and average pooling with a kernel (not adaptive), as a mode sees them.
POOL_NAMES = frozenset(
    f"{kind}_pool{dims}d{suffix}"
    for kind in ("max", "avg")
    for dims in (1, 2, 3)
    for suffix in ("", "_with_indices")
    if not (kind == "avg" and suffix)
)
ADAPTIVE_POOL_NAMES = frozenset(f"adaptive_{name}" for name in POOL_NAMES)
# Every max pooling, adaptive or not.
MAX_POOL_NAMES = frozenset(
    name for name in POOL_NAMES | ADAPTIVE_POOL_NAMES if name.removeprefix("adaptive_")[:3] == "max"
)
INPLACE_DUNDERS = frozenset(
    f"__i{op}__"
    for op in (
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "pow",
        "and",
        "or",
        "xor",
        "lshift",
        "rshift",
        "matmul",
    )
)


def function_name(func: Callable[..., Any]) -> str:
    """The name of a torch function as a torch function mode sees it (``"relu"``, ...)."""
    return getattr(func, "__name__", "")


def _inplace_flag_position(func: Callable[..., Any]) -> int | None:
    """Position of an ``inplace`` parameter (F.relu(x, True)), or None; cached per function."""
    try:
        return _INPLACE_POSITION_CACHE[func]
    except KeyError:
        pass
    except TypeError:  # unhashable callables
        return None
    position: int | None = None
    try:
        parameters = list(inspect.signature(func).parameters)
        if "inplace" in parameters:
            position = parameters.index("inplace")
    except (TypeError, ValueError):  # builtins without a signature
        pass
    _INPLACE_POSITION_CACHE[func] = position
    return position


_INPLACE_POSITION_CACHE: dict[Any, int | None] = {}


def mutated_tensors(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[Any]:
    """The tensors a torch function call is about to write into (conservatively).

    Args:
        func: The function as a torch function mode receives it.
        args: Its positional arguments.
        kwargs: Its keyword arguments.

    Returns:
        What ``out=`` names, and the first argument of an in-place form (a trailing ``_``, an
        in-place operator, ``__setitem__``, ``inplace=True`` by keyword or by position).
    """
    name = function_name(func)
    targets: list[Any] = []
    out = kwargs.get("out")
    if out is not None:
        targets.extend(out if isinstance(out, (tuple, list)) else [out])
    inplace = (name.endswith("_") and not name.startswith("__")) or name in INPLACE_DUNDERS
    inplace = inplace or name == "__setitem__" or kwargs.get("inplace") is True
    if not inplace:
        position = _inplace_flag_position(func)
        inplace = position is not None and len(args) > position and args[position] is True
    if inplace and args:
        targets.append(args[0])
    return targets


def writes_first_argument(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bool:
    """Whether a torch function call writes into its first argument (an in-place form)."""
    return bool(args) and any(target is args[0] for target in mutated_tensors(func, args, kwargs))


class CallMode(TorchFunctionMode):
    """A torch function mode that sees each call as :meth:`handle` ``(func, args, kwargs)``.

    The base of every mode of netlens: a subclass overrides :meth:`handle`, which by default
    runs the call as it is. Inside it the mode is off, so the calls it makes are not seen again.
    """

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        return self.handle(func, args, kwargs or {})

    def handle(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """The result of the call ``func(*args, **kwargs)``, or what the mode puts instead."""
        return func(*args, **kwargs)


def bind(args: Sequence[Any], kwargs: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """A call's arguments by parameter name: ``args`` take ``names`` in order, then ``kwargs``."""
    bound = dict(zip(names, args, strict=False))
    bound.update(kwargs)
    return bound


# -- by object: what a torch.fx graph holds -----------------------------------------------------

# Modules that act element-wise (in eval mode, for dropout).
POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
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
DROPOUT_FUNCTIONS: frozenset[Any] = frozenset(
    {
        F.dropout,
        F.dropout1d,
        F.dropout2d,
        F.dropout3d,
        F.alpha_dropout,
        F.feature_alpha_dropout,
    }
)
# Functions that act element-wise on tensors of one shape (dropout and batch norm only when
# their training argument is False: see TRAINING_ARGUMENT).
POINTWISE_FUNCTIONS: frozenset[Any] = frozenset(
    {
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
        *DROPOUT_FUNCTIONS,
        F.batch_norm,
    }
)
# Functions whose ``training`` argument must be False for them to act element-wise (dropout is
# random in training, batch norm then uses the batch's statistics), with its position.
TRAINING_ARGUMENT: dict[Any, int] = {
    F.dropout: 2,
    F.dropout1d: 2,
    F.dropout2d: 2,
    F.dropout3d: 2,
    F.alpha_dropout: 2,
    F.feature_alpha_dropout: 2,
    F.batch_norm: 5,
}
# In-place functions and their out-of-place twins (None: no twin).
INPLACE_FUNCTIONS: dict[Any, Any] = {
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
# Tensor methods that act element-wise (their in-place forms too, with a trailing "_").
POINTWISE_METHODS = frozenset(
    {
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
)
# Methods and attributes that read a tensor's shape (never its values).
SHAPE_METHODS = frozenset({"size", "dim", "ndimension", "numel", "nelement"})
SHAPE_ATTRIBUTES = frozenset({"shape", "ndim", "dtype", "device", "is_cuda", "layout"})
# Tensor methods and functions that return a view of (or a different index set into) a tensor.
VIEW_METHODS = frozenset(
    {
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
)
VIEW_FUNCTIONS: frozenset[Any] = frozenset(
    {
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
)
# Window operations by the number of spatial dims.
CONVOLUTIONS: dict[int, Callable[..., Any]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
MAX_POOLS: dict[int, Callable[..., Any]] = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AVG_POOLS: dict[int, Callable[..., Any]] = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
ADAPTIVE_AVG_POOLS: dict[int, Callable[..., Any]] = {
    1: F.adaptive_avg_pool1d,
    2: F.adaptive_avg_pool2d,
    3: F.adaptive_avg_pool3d,
}
ADAPTIVE_MAX_POOLS: dict[int, Callable[..., Any]] = {
    1: F.adaptive_max_pool1d,
    2: F.adaptive_max_pool2d,
    3: F.adaptive_max_pool3d,
}
CONCATENATIONS: frozenset[Any] = frozenset({torch.cat, torch.concat, torch.concatenate})
