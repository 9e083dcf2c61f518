"""Receptive fields: which input elements an activation depends on, without copying the model.

Both ways below run one input only up to the layer (:func:`run_to_layer`), never past it.

* **From the layer geometry**, where every operation on the path from the input to the layer is
  known: convolutions and pools (kernel, stride, padding, dilation, groups), adaptive pools,
  element-wise functions, batch norm, dropout, and sums or products of tensors of the same shape
  (skip connections). A torch function mode follows every tensor derived from the input and
  keeps, for each of its dims and each index along it, the interval of input indices that
  index depends on. Each known operation connects an output element to a product of per-dim
  index sets, so the bounding box of a receptive field is the product of these intervals:
  exact, and as cheap as one forward pass of one input.
* **A gradient probe** otherwise (recurrent layers, permutes, reshapes, attention, anything
  unknown). The network is made linear with positive coefficients while it runs: each weight is
  replaced, as it is used, by positive values equal per filter (the model's parameters stay
  untouched and are never copied as a whole), ReLU-like functions act as the identity and max
  pooling as average pooling. The gradient of an activation is then non-zero exactly on the
  input elements connected to it; the bounding box of that support is the receptive field.
  Padding, strides, pooling and skip connections are thus accounted for with no table of layer
  types.

Both give the same boxes: the geometry is what the probe's gradient support measures.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .._core.errors import NetlensValueError
from .._core.hooks import Hooks
from .._core.model import depends_on
from .._core.outputs import LayerView
from .._record import StopForward, _mutated_tensors
from .project import ELEMENTWISE, RELU_NAMES, function_name, writes_first_argument

__all__ = ["crop", "receptive_fields", "run_to_layer", "sweep"]

_MAX_POOLS = frozenset(
    f"{prefix}max_pool{dims}d{suffix}"
    for prefix in ("", "adaptive_")
    for dims in (1, 2, 3)
    for suffix in ("", "_with_indices")
)
# Distinct activations whose receptive fields one gradient probe finds (one row each).
_PROBE_ROWS = 64


def run_to_layer(model: nn.Module, module: nn.Module, calls: int, inputs: torch.Tensor) -> None:
    """Run ``model`` on ``inputs`` until ``module`` has been called ``calls`` times, then stop.

    Hooks registered on ``module`` before this call run before the stop (forward hooks run in
    registration order), so that a recorder still sees the last output.
    """
    seen = 0

    def stop(module: nn.Module, args: Any, output: Any) -> None:
        nonlocal seen
        seen += 1
        if seen >= calls:
            raise StopForward

    with Hooks() as hooks, suppress(StopForward):
        # this thread's passes only: another thread's pass of a shared model must not stop
        hooks.forward(module, stop)
        model(inputs)


def receptive_fields(
    model: nn.Module,
    view: LayerView,
    sample: torch.Tensor,
    keys: torch.Tensor,
    calls: int = 1,
    *,
    rows: int = _PROBE_ROWS,
) -> torch.Tensor:
    """The bounding box of the input elements that each activation ``keys[m]`` depends on.

    ``sample`` is one input ``(1, ...)`` on the model's device and in its dtype (its values
    hardly matter, but a model that normalises its input by statistics of it needs a real one).
    ``keys`` are ``(channel, *position)`` rows indexing the layer's arranged output
    ``(N, C, *map)``; ``calls`` is how many times the layer runs per forward pass (the last
    call is the one meant). The model must be in eval mode (its parameters may require
    gradients: the probe uses stand-ins for them and differentiates to the input only). ``rows``
    bounds the activations one gradient probe handles at once (its memory). Returned on
    the CPU as ``(M, sample.dim() - 1, 2)``, ``[start, stop)`` per input dimension after the
    batch one; an activation that depends on no input element gets the whole input.
    """
    keys = keys.cpu()
    fields = _geometry(model, view, sample, calls)
    if fields is not None:
        return _boxes_from_geometry(fields, keys, tuple(sample.shape[1:]))
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    boxes = torch.cat(
        [
            _probe(model, view, sample, unique[start : start + rows], calls)
            for start in range(0, unique.shape[0], rows)
        ]
    )
    return boxes[inverse]


# -- from the layer geometry -------------------------------------------------------------------
# A tensor's "fields": for each dim after the batch one, two int64 vectors over the indices of
# that dim: the first and one past the last index of the same input dim that it depends on.
# An index that depends on nothing has (_NOTHING, -1), neutral under min and max.

_NOTHING = torch.iinfo(torch.long).max
_Fields = list[tuple[torch.Tensor, torch.Tensor]]

# Element-wise on their first argument: the output element depends on the same input element.
_ELEMENTWISE = (
    RELU_NAMES
    | ELEMENTWISE
    | frozenset(
        {
            "dropout",
            "dropout_",
            "dropout1d",
            "dropout2d",
            "dropout3d",
            "alpha_dropout",
            "feature_alpha_dropout",
            "batch_norm",
            "clone",
            "contiguous",
            "detach",
            "to",
            "float",
            "double",
            "half",
            "bfloat16",
            "type_as",
            "abs",
            "neg",
            "__neg__",
            "__pos__",
            "square",
            "sqrt",
            "exp",
            "log",
        }
    )
)
# Element-wise on several tensors of the output's shape: the union of their dependencies.
_COMBINING = frozenset(
    f"{prefix}{name}{suffix}"
    for name in ("add", "sub", "mul", "div", "truediv")
    for prefix, suffix in (("", ""), ("", "_"), ("__", "__"), ("__r", "__"), ("__i", "__"))
) | frozenset({"true_divide", "maximum", "minimum"})
_CONVOLUTIONS = frozenset({"conv1d", "conv2d", "conv3d"})
_POOLS = frozenset(
    f"{kind}_pool{dims}d{suffix}"
    for kind in ("max", "avg")
    for dims in (1, 2, 3)
    for suffix in ("", "_with_indices")
    if not (kind == "avg" and suffix)
)
_ADAPTIVE_POOLS = frozenset(
    f"adaptive_{kind}_pool{dims}d{suffix}"
    for kind in ("max", "avg")
    for dims in (1, 2, 3)
    for suffix in ("", "_with_indices")
    if not (kind == "avg" and suffix)
)


def _tensors_in(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif type(value) in (list, tuple):
        for item in value:
            yield from _tensors_in(item)
    elif type(value) is dict:
        for item in value.values():
            yield from _tensors_in(item)


def _storage(tensor: torch.Tensor) -> int | None:
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):
        return None


class _Geometry(TorchFunctionMode):
    """Follow the fields of every tensor derived from one input through a forward pass.

    A tensor made by an unknown operation from a followed tensor is followed with fields
    ``None`` ("unknown"), and so is everything made from it; an in-place write into a followed
    tensor makes every other followed tensor on the same storage (its views) unknown.
    """

    def __init__(self, inputs: torch.Tensor) -> None:
        super().__init__()
        self._followed: dict[int, tuple[weakref.ref[torch.Tensor], _Fields | None]] = {}
        identity = [(torch.arange(size), torch.arange(1, size + 1)) for size in inputs.shape[1:]]
        self._follow(inputs, identity)

    def _follow(self, tensor: torch.Tensor, fields: _Fields | None) -> None:
        key = id(tensor)
        followed = self._followed

        def forget(_: weakref.ref[torch.Tensor]) -> None:
            entry = followed.get(key)
            if entry is not None and entry[0]() is None:
                del followed[key]

        self._followed[key] = (weakref.ref(tensor, forget), fields)

    def fields(self, tensor: torch.Tensor) -> tuple[bool, _Fields | None]:
        """Whether ``tensor`` is followed, and its fields (None: unknown)."""
        entry = self._followed.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            return False, None
        return True, entry[1]

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        followed = [t for t in _tensors_in((args, kwargs)) if self.fields(t)[0]]
        if not followed:
            return func(*args, **kwargs)
        mutated = [t for t in _mutated_tensors(func, args, kwargs) if isinstance(t, torch.Tensor)]
        result = func(*args, **kwargs)
        outputs = list(_tensors_in(result))
        try:
            fields = _rule(function_name(func), args, kwargs, outputs, followed, self)
        except (TypeError, ValueError, IndexError, RuntimeError):
            fields = None  # arguments in a form the rule does not know: no geometry
        for target in mutated:
            key = _storage(target)
            for other_key, (ref, _) in list(self._followed.items()):
                other = ref()
                if other is not None and other is not target and _storage(other) == key:
                    self._followed[other_key] = (ref, None)
        for index, output in enumerate(outputs):
            # A pool's indices, and every output of an unknown operation: unknown.
            self._follow(output, fields if index == 0 else None)
        for target in mutated:
            if not any(target is output for output in outputs):
                self._follow(target, None)
        return result


def _rule(
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    outputs: list[torch.Tensor],
    followed: list[torch.Tensor],
    geometry: _Geometry,
) -> _Fields | None:
    """The fields of an operation's (first) output, or None where no rule applies."""
    if not outputs:
        return None
    output = outputs[0]
    known = [geometry.fields(tensor)[1] for tensor in followed]
    if any(fields is None for fields in known):
        return None
    if name in _COMBINING:
        if any(tensor.shape != output.shape for tensor in followed):
            return None  # broadcasting a followed tensor mixes its indices
        return _union([fields for fields in known if fields is not None])
    first = args[0] if args else None
    if not isinstance(first, torch.Tensor) or any(tensor is not first for tensor in followed):
        return None  # a followed tensor as a weight, or several combined
    fields = known[0]
    assert fields is not None
    if name in _ELEMENTWISE:
        if output.shape != first.shape or (
            name == "batch_norm" and _batch_statistics(*args, **kwargs)
        ):
            return None
        return fields
    if name in _CONVOLUTIONS:
        return _convolution(fields, first, output, *args[1:], **kwargs)
    if name in _POOLS:
        return _pool(name, fields, output, *args[1:], **kwargs)
    if name in _ADAPTIVE_POOLS:
        return _adaptive(fields, first, output, int(name.split("pool")[1][0]))
    return None


def _batch_statistics(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: Any = None,
    bias: Any = None,
    training: bool = False,
    *rest: Any,
    **options: Any,
) -> bool:
    """Whether a batch norm call normalises by statistics of its input (which mixes indices)."""
    return training or running_mean is None or running_var is None


def _union(all_fields: list[_Fields]) -> _Fields:
    union = all_fields[0]
    for fields in all_fields[1:]:
        union = [
            (torch.minimum(low, other_low), torch.maximum(high, other_high))
            for (low, high), (other_low, other_high) in zip(union, fields, strict=True)
        ]
    return union


def _windows(
    field: tuple[torch.Tensor, torch.Tensor],
    starts: torch.Tensor,
    length: int,
    step: int = 1,
    stops: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The field of each output index ``p``, which reads input indices ``starts[p] + step * t``.

    ``t`` runs over ``range(length)``; indices outside the input (padding) or at or past
    ``stops[p]`` connect to nothing.
    """
    low, high = field
    size = low.shape[0]
    index = starts[:, None] + step * torch.arange(length)[None, :]
    valid = (index >= 0) & (index < size)
    if stops is not None:
        valid &= index < stops[:, None]
    safe = index.clamp(0, size - 1)
    nothing = torch.full_like(index, _NOTHING)
    return (
        torch.where(valid, low[safe], nothing).amin(dim=1),
        torch.where(valid, high[safe], -1).amax(dim=1),
    )


def _spatial(value: Any, count: int) -> list[int]:
    """An int or a sequence of ints for each of ``count`` spatial dims."""
    if isinstance(value, int):
        return [value] * count
    values = [int(v) for v in value]
    return values * count if len(values) == 1 else values


def _convolution(
    fields: _Fields,
    input: torch.Tensor,
    output: torch.Tensor,
    weight: torch.Tensor,
    bias: Any = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> _Fields:
    if input.dim() != weight.dim() or output.dim() != weight.dim():
        raise ValueError("an unbatched convolution")
    count = weight.dim() - 2
    kernel = list(weight.shape[2:])
    strides, dilations = _spatial(stride, count), _spatial(dilation, count)
    if padding == "valid":
        pads = [0] * count
    elif padding == "same":
        # torch pads (dilation * (kernel - 1)) // 2 before, the rest after
        pads = [d * (k - 1) // 2 for d, k in zip(dilations, kernel, strict=True)]
    else:
        pads = _spatial(padding, count)
    out_channels, group_width = output.shape[1], weight.shape[1]
    groups_of = torch.arange(out_channels) // (out_channels // groups)
    result = [_windows(fields[0], groups_of * group_width, group_width)]
    for dim in range(count):
        starts = torch.arange(output.shape[2 + dim]) * strides[dim] - pads[dim]
        result.append(_windows(fields[1 + dim], starts, kernel[dim], dilations[dim]))
    return result


def _pool(
    name: str,
    fields: _Fields,
    output: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    *rest: Any,
    **options: Any,
) -> _Fields:
    count = int(name.split("pool")[1][0])
    kernel = _spatial(kernel_size, count)
    strides = kernel if stride is None or stride == [] or stride == () else _spatial(stride, count)
    pads = _spatial(padding, count)
    # max pools: (input, kernel, stride, padding, dilation, ...); average pools have no dilation
    dilation = options.get("dilation", rest[0] if rest else 1) if name.startswith("max") else 1
    dilations = _spatial(dilation, count)
    batched = output.dim() - count - 1  # the first spatial dim among the fields
    result = list(fields[:batched])
    for dim in range(count):
        starts = torch.arange(output.shape[1 + batched + dim]) * strides[dim] - pads[dim]
        result.append(_windows(fields[batched + dim], starts, kernel[dim], dilations[dim]))
    return result


def _adaptive(fields: _Fields, input: torch.Tensor, output: torch.Tensor, count: int) -> _Fields:
    batched = output.dim() - count - 1
    result = list(fields[:batched])
    for dim in range(count):
        size, out = input.shape[1 + batched + dim], output.shape[1 + batched + dim]
        positions = torch.arange(out)
        starts = (positions * size) // out
        stops = ((positions + 1) * size + out - 1) // out
        length = int((stops - starts).max()) if out else 0
        result.append(_windows(fields[batched + dim], starts, length, 1, stops))
    return result


def _geometry(
    model: nn.Module, view: LayerView, sample: torch.Tensor, calls: int
) -> list[tuple[torch.Tensor, torch.Tensor, int]] | None:
    """The layer's geometry: for each input dim after the batch one, a field and a key column.

    The field is that of the same dim of the layer's output; the column of a
    ``(channel, *position)`` key indexes it. None where the geometry is not known.
    """
    captured: list[Any] = []
    leaf = sample.detach()[:1].clone()

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        captured.append(output)

    geometry = _Geometry(leaf)
    try:
        with Hooks() as hooks, torch.no_grad(), geometry:
            hooks.forward(view.module, keep)
            run_to_layer(model, view.module, calls, leaf)
    except Exception:  # whatever stops the trace, the probe can still try
        return None
    if not captured:
        return None
    try:
        tensor = view.tensor(captured[-1])
        order = view.order(tensor)
    except Exception:  # the probe reports such errors in its own words
        return None
    found, fields = geometry.fields(tensor)
    if not found or fields is None or order[0] != 0 or tensor.dim() != leaf.dim():
        return None
    # Every known operation keeps each dim in place: dim d of the layer's output depends on
    # dim d of the input only. A key indexes the arranged output (N, C, *map): its column
    # order.index(d) - 1 is the index along dim d.
    return [(*fields[dim - 1], order.index(dim) - 1) for dim in range(1, tensor.dim())]


def _boxes_from_geometry(
    fields: list[tuple[torch.Tensor, torch.Tensor, int]],
    keys: torch.Tensor,
    input_shape: tuple[int, ...],
) -> torch.Tensor:
    """Boxes ``(M, n, 2)`` of ``keys`` ``(channel, *position)`` from :func:`_geometry`."""
    boxes = torch.stack(
        [
            torch.stack([low[keys[:, column]], high[keys[:, column]]], dim=1)
            for low, high, column in fields
        ],
        dim=1,
    )
    # An activation that depends on no input element: the whole input, as the probe gives.
    empty = (boxes[:, :, 0] >= boxes[:, :, 1]).any(dim=1)
    sizes = torch.tensor(input_shape)
    boxes[empty, :, 0] = 0
    boxes[empty, :, 1] = sizes
    return boxes


# -- the gradient probe ------------------------------------------------------------------------


class _Linearize(TorchFunctionMode):
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

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = function_name(func)
        args = self._linear(args)
        kwargs = {key: self._linear(value) for key, value in kwargs.items()}
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
        if _spatial(dilation, dims) != [1] * dims:
            pooled = _dilated_mean(
                func(*args, **kwargs), args[0], kernel, stride, padding, dilation, dims
            )
        else:
            average = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1]
            pooled = average(args[0], kernel, stride or kernel, padding, ceil_mode)
    if with_indices or return_indices:
        return pooled, func(*args, **kwargs)[1]
    return pooled


def _dilated_mean(
    pooled: Any,
    input: torch.Tensor,
    kernel: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    dims: int,
) -> torch.Tensor:
    """A dilated max pool's windows averaged: a depthwise convolution with a dilated kernel.

    torch has no dilated average pooling. The max pool's own output gives the output size
    (``ceil_mode`` included), which sets the padding after the input.
    """
    values: torch.Tensor = pooled[0] if isinstance(pooled, tuple) else pooled
    if input.dim() != dims + 2:
        return values  # unbatched: keep the switches
    kernels = _spatial(kernel, dims)
    strides = kernels if stride is None or stride == [] or stride == () else _spatial(stride, dims)
    pads, dilations = _spatial(padding, dims), _spatial(dilation, dims)
    widths: list[int] = []
    for dim in reversed(range(dims)):  # F.pad takes the last dim first
        size, out = input.shape[2 + dim], values.shape[2 + dim]
        needed = (out - 1) * strides[dim] + dilations[dim] * (kernels[dim] - 1) + 1
        widths += [pads[dim], max(pads[dim], needed - size - pads[dim])]
    channels = input.shape[1]
    weight = input.new_full((channels, 1, *kernels), 1.0 / math.prod(kernels))
    convolution = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    averaged = convolution(F.pad(input, widths), weight, None, strides, 0, dilations, channels)
    for dim, size in enumerate(values.shape[2:]):
        averaged = averaged.narrow(2 + dim, 0, size)
    return averaged


def _uniform(param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if not param.is_floating_point():
        return param.detach()
    fan_in = param[0].numel() if param.dim() > 1 else 1
    return torch.full(param.shape, 1.0 / fan_in, dtype=dtype, device=param.device)


def _probe(
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
        run_to_layer(model, view.module, calls, leaf.clone())
    if not captured:
        raise NetlensValueError(
            f"Expected layer {view.name!r} to run in the model's forward pass, but it never ran."
        )
    return captured[-1], leaf


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
