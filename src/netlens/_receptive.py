"""Receptive fields: which input elements an activation depends on, computed from the network.

A copy of the network with every weight positive and equal per filter (through
``torch.func.functional_call``; the model's own parameters stay untouched), ReLU-like functions
as the identity and max pooling as average pooling is linear with positive coefficients, so the
gradient of an activation is non-zero exactly on the input elements connected to it. The
bounding box of that support is the activation's receptive field; padding, strides, pooling and
skip connections are thus all accounted for, with no table of layer types.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ._deconvnet import ELEMENTWISE, RELU_NAMES, function_name, recorded, writes_first_argument
from ._model import evaluating, frozen
from ._outputs import LayerView
from ._record import Recorder

__all__ = ["crop", "receptive_fields", "sweep"]

_MAX_POOLS = frozenset(
    f"{prefix}max_pool{dims}d{suffix}"
    for prefix in ("", "adaptive_")
    for dims in (1, 2, 3)
    for suffix in ("", "_with_indices")
)
# Distinct activations whose receptive fields are found per forward/backward pass.
_CHUNK = 256


class _Linearize(TorchFunctionMode):
    """Make the network linear, for receptive fields.

    Element-wise nonlinearities become the identity and max pooling becomes average pooling, so
    that with positive weights every input element in a unit's receptive field gets a non-zero
    gradient, not only those on the argmax path.
    """

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = function_name(func)
        if args and isinstance(args[0], torch.Tensor):
            if name in RELU_NAMES or name in ELEMENTWISE:
                return args[0] if writes_first_argument(func, args, kwargs) else args[0].clone()
            if name in _MAX_POOLS:
                return _average_pool(func, name, args, kwargs)
        return func(*args, **kwargs)


def _pool_arguments(
    input: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> tuple[Any, Any, Any, Any, bool, bool]:
    return kernel_size, stride, padding, dilation, ceil_mode, return_indices


def _adaptive_arguments(
    input: torch.Tensor, output_size: Any, return_indices: bool = False
) -> tuple[Any, bool]:
    return output_size, return_indices


def _average_pool(
    func: Callable[..., Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    dims = int(name.split("max_pool")[1][0])
    with_indices = name.endswith("_with_indices")
    if name.startswith("adaptive_"):
        output_size, return_indices = _adaptive_arguments(*args, **kwargs)
        adaptive = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[dims - 1]
        pooled = adaptive(args[0], output_size)
    else:
        kernel, stride, padding, dilation, ceil_mode, return_indices = _pool_arguments(
            *args, **kwargs
        )
        if any(d != 1 for d in ((dilation,) if isinstance(dilation, int) else dilation)):
            return func(*args, **kwargs)  # no dilated average pooling: keep the switches
        average = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1]
        pooled = average(args[0], kernel, stride or kernel, padding, ceil_mode)
    if with_indices or return_indices:
        return pooled, func(*args, **kwargs)[1]
    return pooled


def _uniform(param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if not param.is_floating_point():
        return param.detach()
    fan_in = param[0].numel() if param.dim() > 1 else 1
    return torch.full(param.shape, 1.0 / fan_in, dtype=dtype, device=param.device)


def receptive_fields(
    model: nn.Module,
    view: LayerView,
    samples: torch.Tensor,
    channels: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """The bounding box of the input elements that each ``(channel, position)`` depends on.

    ``samples[m]`` is an input on which activation ``m`` was seen (the values hardly matter,
    but a model that normalises its input by statistics of it needs a real one). Channels and
    positions index the layer's arranged output ``(N, C, *map)``. Returned on the CPU as
    ``(M, samples.dim() - 1, 2)``, ``[start, stop)`` per input dimension after the batch one.
    Float64 keeps long products of small weights from underflowing.
    """
    keys = torch.cat([channels[:, None], positions], dim=1)
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    count = unique.shape[0]
    numbers = torch.arange(keys.shape[0], device=keys.device)
    first_seen = torch.full((count,), keys.shape[0], device=keys.device).scatter_reduce(
        0, inverse, numbers, reduce="amin"
    )
    inputs = samples[first_seen.to(samples.device)]
    boxes = torch.cat(
        [
            _bounding_boxes(
                model, view, inputs[start : start + _CHUNK], unique[start : start + _CHUNK]
            )
            for start in range(0, count, _CHUNK)
        ]
    )
    return boxes[inverse.cpu()]


def _bounding_boxes(
    model: nn.Module, view: LayerView, inputs: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """Receptive field boxes ``(M, inputs.dim() - 1, 2)`` of ``keys``, ``(channel, *position)``."""
    try:
        output, leaf = _linear_forward(model, view, inputs, torch.float64)
    except (RuntimeError, TypeError):
        # Tensors of the model's own dtype that are no parameters or buffers, or a device
        # without float64: run in the inputs' dtype.
        output, leaf = _linear_forward(model, view, inputs, inputs.dtype)
    arranged = view.arrange(output, inputs.shape[0])
    seed = torch.zeros_like(arranged)
    rows = torch.arange(keys.shape[0], device=output.device)
    seed[(rows, *keys.to(output.device).unbind(1))] = 1
    (grad,) = torch.autograd.grad(output, leaf, view.unarrange(seed, output))
    support = (grad != 0).to(torch.uint8)
    boxes = []
    for dim in range(1, support.dim()):
        others = [d for d in range(1, support.dim()) if d != dim]
        hit = support.amax(dim=others) if others else support  # (M, size)
        size = hit.shape[1]
        start = hit.argmax(dim=1)
        stop = size - hit.flip(1).argmax(dim=1)
        empty = hit.amax(dim=1) == 0  # an activation independent of the input: all of it
        start[empty], stop[empty] = 0, size
        boxes.append(torch.stack([start, stop], dim=1))
    return torch.stack(boxes, dim=1).cpu()


def _linear_forward(
    model: nn.Module, view: LayerView, inputs: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's selected output in the linearised copy of the network, and its input leaf."""
    parameters = {key: _uniform(param, dtype) for key, param in model.named_parameters()}
    buffers = {
        key: buffer.to(dtype) if buffer.is_floating_point() else buffer
        for key, buffer in model.named_buffers()
    }
    leaf = inputs.detach().to(dtype).requires_grad_(True)
    recorder = Recorder(model, {view.name: view}, detach=False, device=None)
    with evaluating(model), frozen(model), _Linearize(), recorder:
        with torch.enable_grad():
            torch.func.functional_call(model, (parameters, buffers), (leaf.clone(),))
        output = recorded(recorder, view.name)
    return output, leaf


def sweep(map_shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Positions running along each dimension of the map through its centre, ``(P, d)``.

    Their receptive fields include the largest one inside the input (the patch size), even when
    every activation of interest sits at a border.
    """
    centre = [size // 2 for size in map_shape]
    rows = [centre]
    for dim, size in enumerate(map_shape):
        for index in range(size):
            rows.append([*centre[:dim], index, *centre[dim + 1 :]])
    return torch.tensor(rows, dtype=torch.long, device=device).reshape(len(rows), len(map_shape))


def crop(
    samples: torch.Tensor, boxes: list[list[list[int]]], size: tuple[int, ...]
) -> torch.Tensor:
    """Cut each box out of its sample into a zero tensor of ``size``.

    A box clipped at the start of a dimension is aligned to the end of the patch, so that the
    padding is where the receptive field leaves the input.
    """
    patches = samples.new_zeros((samples.shape[0], *size))
    full = samples.shape[1:]
    for index, box in enumerate(boxes):
        source, target = [], []
        for (start, stop), length, extent in zip(box, size, full, strict=True):
            offset = length - (stop - start) if start == 0 and stop < extent else 0
            source.append(slice(start, stop))
            target.append(slice(offset, offset + stop - start))
        patches[index][tuple(target)] = samples[index][tuple(source)]
    return patches
