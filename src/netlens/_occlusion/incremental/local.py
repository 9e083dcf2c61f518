"""Convolutions and poolings as the engine runs them: on a gathered window, without padding.

A :class:`Local` is a window operation (its geometry, a :class:`~netlens._core.windows.Window`)
with the value its padding stands for and the operation itself run on windows gathered with the
padding in them. It is read from a module (``nn.Conv2d``, ``nn.MaxPool1d``,
``nn.AdaptiveAvgPool2d`` where it is an ordinary pooling, ...) or a functional call
(``F.conv2d``, ``F.avg_pool3d``, ...); anything it cannot run exactly so (reflect padding,
returned indices, an average whose divisor is not its window's size, ...) is None, and the
operation runs whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from torch import nn
from torch.fx import Node
from torch.fx.node import map_arg

from ..._core.ops import (
    ADAPTIVE_AVG_POOLS,
    ADAPTIVE_MAX_POOLS,
    AVG_POOLS,
    CONVOLUTIONS,
    MAX_POOLS,
    bind,
    function_name,
)
from ..._core.windows import (
    AVG_POOL_PARAMETERS,
    CONVOLUTION_PARAMETERS,
    MAX_POOL_PARAMETERS,
    Window,
    window_of_call,
)

__all__ = ["Local", "local_of_call", "local_of_module"]

# The attributes of pooling modules that Window.pool takes, where a module has them (read here
# rather than by Window.of_module, which takes the rank from the class name: a subclass named
# otherwise computes the same).
_POOL_ATTRIBUTES = (
    "stride",
    "padding",
    "dilation",
    "ceil_mode",
    "count_include_pad",
    "divisor_override",
)


@dataclass(frozen=True)
class Local:
    """A window operation as a pass runs it.

    Attributes:
        window: Its geometry: kernel, stride, padding before each dim, dilation.
        pad_value: What its padding stands for (``-inf`` for max pooling, else 0).
        apply: The operation on gathered windows, without padding.
        macs_per_output: Multiply-adds per output element (0 for pooling).
    """

    window: Window
    pad_value: float
    apply: Callable[[torch.Tensor], torch.Tensor]
    macs_per_output: int


def local_of_module(
    module: nn.Module, in_size: tuple[int, ...], out_size: tuple[int, ...]
) -> Local | None:
    """A convolution or pooling module from maps of ``in_size`` to ``out_size``, or None."""
    rank = len(in_size)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if module.padding_mode != "zeros" or len(module.kernel_size) != rank:
            return None
        return _local(Window.of_module(module), in_size, out_size, module.weight, module.bias)
    window: Window | None = None
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        if not module.return_indices:
            window = _pool_window("max", module, rank)
    elif isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        window = _pool_window("avg", module, rank)
    elif isinstance(module, nn.modules.pooling._AdaptiveAvgPoolNd):
        window = Window.adaptive("avg", in_size, out_size)
    elif isinstance(module, nn.modules.pooling._AdaptiveMaxPoolNd) and not module.return_indices:
        window = Window.adaptive("max", in_size, out_size)
    return _local(window, in_size, out_size)


def local_of_call(
    node: Node,
    in_size: tuple[int, ...],
    out_size: tuple[int, ...],
    values: Mapping[Node, Any],
    is_constant: Callable[[object], bool],
) -> Local | None:
    """A functional convolution or pooling (a ``call_function`` node), or None.

    Args:
        node: The call.
        in_size: The spatial size of its input map.
        out_size: The spatial size of its output.
        values: The values of the traced nodes it reads.
        is_constant: Whether a node does not depend on the input: a convolution's weight and
            bias must not, nor may a pooling's arguments.
    """
    rank, target = len(in_size), node.target
    if target is ADAPTIVE_AVG_POOLS.get(rank):
        return _local(Window.adaptive("avg", in_size, out_size), in_size, out_size)
    if target is ADAPTIVE_MAX_POOLS.get(rank):
        bound = bind(node.args, node.kwargs, ("input", "output_size", "return_indices"))
        if bound.get("return_indices"):
            return None
        return _local(Window.adaptive("max", in_size, out_size), in_size, out_size)
    if target is CONVOLUTIONS.get(rank):
        bound = bind(node.args, node.kwargs, CONVOLUTION_PARAMETERS)
        weight, bias = bound["weight"], bound.get("bias")
        if not is_constant(weight) or not (bias is None or is_constant(bias)):
            return None
    elif target is MAX_POOLS.get(rank):
        bound = bind(node.args, node.kwargs, MAX_POOL_PARAMETERS)
        if bound.get("return_indices") or not _plain_values(bound, MAX_POOL_PARAMETERS[1:6]):
            return None
    elif target is AVG_POOLS.get(rank):
        bound = bind(node.args, node.kwargs, AVG_POOL_PARAMETERS)
        if not _plain_values(bound, AVG_POOL_PARAMETERS[1:]):
            return None
    else:
        return None
    # The arguments as values (a weight's tensor) for the geometry, read as a call of the
    # function is read anywhere else.
    args = map_arg(node.args, lambda n: values[n])
    kwargs = map_arg(node.kwargs, lambda n: values[n])
    window = window_of_call(function_name(target), tuple(args), dict(kwargs))
    if window is None or window.kind != "conv":
        return _local(window, in_size, out_size)
    weight_value = values[weight]
    return _local(window, in_size, out_size, weight_value, None if bias is None else values[bias])


def _local(
    window: Window | None,
    in_size: tuple[int, ...],
    out_size: tuple[int, ...],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> Local | None:
    """The window operation run without padding; None where its windows are not all alike.

    A convolution takes its weight and bias. An average pooling is refused where the divisor of
    some window is not its size (a ceil-mode window cut by the edge, padding not counted) and
    a one-dim one with a divisor override.
    """
    if window is None:
        return None
    rank = window.rank
    if window.kind == "conv":
        assert weight is not None
        apply = partial(
            CONVOLUTIONS[rank],
            weight=weight,
            bias=bias,
            stride=window.stride,
            padding=0,
            dilation=window.dilation,
            groups=window.groups,
        )
        return Local(window, 0.0, apply, weight[0].numel())
    if window.kind == "max":
        apply = partial(
            MAX_POOLS[rank],
            kernel_size=window.kernel,
            stride=window.stride,
            padding=0,
            dilation=window.dilation,
        )
        return Local(window, -math.inf, apply, 0)
    # average pooling: only where every window's divisor is its full size
    if window.ceil_mode and out_size != window.output_size(in_size, ceil_mode=False):
        return None
    if any(window.padding) and not window.count_include_pad:
        return None
    if rank == 1 and window.divisor_override is not None:
        return None
    extra: dict[str, Any] = {} if rank == 1 else {"divisor_override": window.divisor_override}
    apply = partial(
        AVG_POOLS[rank], kernel_size=window.kernel, stride=window.stride, padding=0, **extra
    )
    return Local(window, 0.0, apply, 0)


def _pool_window(kind: Literal["max", "avg"], module: nn.Module, rank: int) -> Window:
    options = {name: getattr(module, name) for name in _POOL_ATTRIBUTES if hasattr(module, name)}
    return Window.pool(kind, rank, module.kernel_size, **options)


def _plain_values(bound: dict[str, Any], names: Sequence[str]) -> bool:
    """True when the arguments are Python values (not something computed from the input)."""

    def plain(value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        return not isinstance(value, Node)

    return all(plain(bound.get(name)) for name in names)
