"""The gradient probe of receptive fields, for paths whose geometry is not known.

The network is made linear with positive coefficients while it runs: each weight is replaced,
as it is used, by positive values equal per filter (the model's parameters stay untouched and
are never copied as a whole), ReLU-like functions act as the identity and max pooling as
average pooling. The gradient of an activation is then non-zero exactly on the input elements
connected to it; the bounding box of that support is the receptive field. Padding, strides,
pooling and skip connections are thus accounted for with no table of layer types; recurrent
layers, permutes, reshapes and attention too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._core.errors import NetlensValueError
from .._core.hooks import Hooks
from .._core.model import depends_on
from .._core.ops import (
    ADAPTIVE_AVG_POOLS,
    AVG_POOLS,
    CONVOLUTIONS,
    MAX_POOL_NAMES,
    NONLINEAR_ELEMENTWISE_NAMES,
    RELU_NAMES,
    CallMode,
    bind,
    function_name,
    writes_first_argument,
)
from .._core.outputs import LayerView
from .._core.stop import run_until
from .._core.windows import MAX_POOL_PARAMETERS, Window, window_of_call

__all__ = ["gradient_probe"]


class _Linearize(CallMode):
    """Make the network linear with positive coefficients while it runs, for the probe.

    Each parameter is replaced, where an operation uses it, by positive values equal per
    filter in ``dtype`` (made for that operation and dropped after it: nothing like a copy of
    the model is ever held); other floating tensors (buffers, constants) are cast to ``dtype``.
    Element-wise nonlinearities become the identity and max pooling becomes average pooling, so
    that every input element in a unit's receptive field gets a non-zero gradient, not only
    those on the argmax path.
    """

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self._dtype = dtype

    def _linear(self, value: Any) -> Any:
        if isinstance(value, nn.Parameter):
            return _uniform(value, self._dtype)
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and value.dtype != self._dtype:
                return value.to(self._dtype)
            return value
        if type(value) in (list, tuple):  # not namedtuples such as PackedSequence
            return type(value)(self._linear(item) for item in value)
        return value

    def handle(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        name = function_name(func)
        args = self._linear(args)
        kwargs = {key: self._linear(value) for key, value in kwargs.items()}
        if args and isinstance(args[0], torch.Tensor):
            if name in RELU_NAMES or name in NONLINEAR_ELEMENTWISE_NAMES:
                return args[0] if writes_first_argument(func, args, kwargs) else args[0].clone()
            if name in MAX_POOL_NAMES:
                return _average_pool(func, name, args, kwargs)
        return func(*args, **kwargs)


def _average_pool(
    func: Callable[..., Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    dims = int(name.split("max_pool")[1][0])
    with_indices = name.endswith("_with_indices")
    if name.startswith("adaptive_"):
        bound = bind(args, kwargs, ("input", "output_size", "return_indices"))
        return_indices = bound.get("return_indices", False)
        pooled = ADAPTIVE_AVG_POOLS[dims](args[0], bound["output_size"])
    else:
        window = window_of_call(name, args, kwargs)
        assert window is not None
        return_indices = bind(args, kwargs, MAX_POOL_PARAMETERS).get("return_indices", False)
        if window.dilation != (1,) * dims:
            pooled = _dilated_mean(func(*args, **kwargs), args[0], window)
        else:
            average = AVG_POOLS[dims]
            pooled = average(
                args[0], window.kernel, window.stride, window.padding, window.ceil_mode
            )
    if with_indices or return_indices:
        return pooled, func(*args, **kwargs)[1]
    return pooled


def _dilated_mean(pooled: Any, input: torch.Tensor, window: Window) -> torch.Tensor:
    """A dilated max pool's windows averaged: a depthwise convolution with a dilated kernel.

    torch has no dilated average pooling. The max pool's own output gives the output size
    (``ceil_mode`` included), which sets the padding after the input.
    """
    values: torch.Tensor = pooled[0] if isinstance(pooled, tuple) else pooled
    dims = window.rank
    if input.dim() != dims + 2:
        return values  # unbatched: keep the switches
    needed = window.extent(values.shape[2:])
    widths: list[int] = []
    for dim in reversed(range(dims)):  # F.pad takes the last dim first
        pad = window.padding[dim]
        widths += [pad, max(pad, needed[dim] - input.shape[2 + dim] - pad)]
    channels = input.shape[1]
    weight = input.new_full((channels, 1, *window.kernel), 1.0 / math.prod(window.kernel))
    convolution = CONVOLUTIONS[dims]
    padded = F.pad(input, widths)
    averaged: torch.Tensor = convolution(
        padded, weight, None, window.stride, 0, window.dilation, channels
    )
    for dim, size in enumerate(values.shape[2:]):
        averaged = averaged.narrow(2 + dim, 0, size)
    return averaged


def _uniform(param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if not param.is_floating_point():
        return param.detach()
    fan_in = param[0].numel() if param.dim() > 1 else 1
    return torch.full(param.shape, 1.0 / fan_in, dtype=dtype, device=param.device)


def gradient_probe(
    model: nn.Module, view: LayerView, sample: torch.Tensor, keys: torch.Tensor, calls: int
) -> torch.Tensor:
    """Receptive field boxes ``(M, sample.dim() - 1, 2)`` of ``keys`` by the gradient probe.

    One row per key, each a copy of ``sample``, in float64 where the device has it: long
    products of small weights would underflow in float32.
    """
    inputs = sample[:1].expand(keys.shape[0], *sample.shape[1:])
    try:
        output, leaf = _linear_forward(model, view, inputs, calls, torch.float64)
    except (RuntimeError, TypeError):
        # a device without float64: run in the inputs' dtype
        output, leaf = _linear_forward(model, view, inputs, calls, inputs.dtype)
    if not depends_on(output, leaf):
        raise NetlensValueError(
            f"Expected the output of layer {view.name!r} to depend on the inputs, but it does "
            "not (it has no autograd history from them): pick a layer between the inputs and "
            "the output."
        )
    arranged = view.arrange(output, inputs.shape[0])
    seed = torch.zeros_like(arranged)
    rows = torch.arange(keys.shape[0], device=output.device)
    seed[(rows, *keys.to(output.device).unbind(1))] = 1
    # to the input only: parameters that require gradients (the model's own, left as they
    # are) get none, and their .grad is never touched
    (grad,) = torch.autograd.grad(output, leaf, view.unarrange(seed, output))
    support = (grad != 0).to(torch.uint8)
    boxes = []
    for dim in range(1, support.dim()):
        others = [d for d in range(1, support.dim()) if d != dim]
        hit = support.amax(dim=others) if others else support  # (M, size)
        size = hit.shape[1]
        start = hit.argmax(dim=1)
        stop = size - hit.flip(1).argmax(dim=1)
        boxes.append(torch.stack([start, stop], dim=1))
    result = torch.stack(boxes, dim=1).cpu()
    # An activation that depends on no input element: the whole input.
    empty = support.flatten(1).amax(dim=1).cpu() == 0
    result[empty, :, 0] = 0
    result[empty, :, 1] = torch.tensor(sample.shape[1:])
    return result


def _linear_forward(
    model: nn.Module, view: LayerView, inputs: torch.Tensor, calls: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's selected output in the linearised network, and its input leaf."""
    leaf = inputs.detach().to(dtype).requires_grad_(True)
    captured: list[torch.Tensor] = []

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        captured.append(view.tensor(output))

    with Hooks() as hooks, torch.enable_grad(), _Linearize(dtype):
        hooks.forward(view.module, keep)
        run_until(model, {view.module: calls}, leaf.clone())
    if not captured:
        raise NetlensValueError(
            f"Expected layer {view.name!r} to run in the model's forward pass, but it never ran."
        )
    return captured[-1], leaf
