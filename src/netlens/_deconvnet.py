"""Deconvnet projections (Zeiler & Fergus 2014) and the strongest activations over a data set.

To project one activation of a layer back to the input, the paper sets every other activation of
that layer to zero and runs the signal down an attached deconvnet: max-unpooling with the
switches recorded in the forward pass, rectification of the signal, and the transposed filters.
Autograd already does two of these three: the backward of max pooling routes the signal to the
recorded argmax (unpooling with switches) and the backward of a convolution is the convolution
with the transposed filters. Only the ReLU needs another rule, so :func:`deconvnet` swaps every
ReLU call (``nn.ReLU``, ``F.relu``, ``torch.relu``, ``Tensor.relu`` and their in-place forms) for
a function whose backward rectifies the signal, through a torch function mode that is active
only during the forward pass, and otherwise backpropagates with autograd.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ._errors import NetlensTypeError, NetlensValueError, NotRecordedError, describe
from ._layers import LayerSpec, check_model, find_layer
from ._model import evaluating, frozen, model_dtype_device, progress_bar
from ._outputs import first_tensor as _first_tensor
from ._record import _mutated_tensors, record

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Projection", "TopActivations", "deconvnet", "top_activations"]

Rule = Literal["deconvnet", "guided", "gradient"]
Scale = Literal["activation", "unit"]
Position = Literal["max", "all"] | Sequence[int]

_RULES = ("deconvnet", "guided", "gradient")
_SCALES = ("activation", "unit")
_RELU_NAMES = frozenset({"relu", "relu_"})
# Element-wise nonlinearities other than ReLU (with their in-place forms): no deconvnet rule.
_ELEMENTWISE = frozenset(
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
# Everything that makes a projection through it something else than a deconvnet projection.
_NONLINEAR = _ELEMENTWISE | frozenset(
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
_MAX_POOLS = frozenset(
    f"{prefix}max_pool{dims}d{suffix}"
    for prefix in ("", "adaptive_")
    for dims in (1, 2, 3)
    for suffix in ("", "_with_indices")
)
# Inputs projected per forward/backward pass in top_activations.
_CHUNK = 256


# -- the backward rules ------------------------------------------------------------------------


class _RectifiedReLU(torch.autograd.Function):
    """A ReLU whose backward rectifies the signal (deconvnet), also masked if ``guided``.

    Guided backpropagation masks the rectified signal by the forward activation.
    """

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, guided: bool, inplace: bool) -> torch.Tensor:
        if inplace:
            output = input.relu_()
            ctx.mark_dirty(output)
        else:
            output = input.relu()
        ctx.guided = guided
        if guided:
            ctx.save_for_backward(output)
        return output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        signal = grad.clamp(min=0)
        if ctx.guided:
            (output,) = ctx.saved_tensors
            signal = signal * (output > 0)
        return signal, None, None


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__name__", "")


def _writes_first_argument(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bool:
    return bool(args) and any(target is args[0] for target in _mutated_tensors(func, args, kwargs))


class _Rectify(TorchFunctionMode):
    """Swap ReLU calls for :class:`_RectifiedReLU` and note every other nonlinearity.

    Active during the forward pass only. Other nonlinearities are noted by the autograd node of
    their output, to warn about those on the path to the layer.
    """

    def __init__(self, guided: bool) -> None:
        super().__init__()
        self._guided = guided
        self.nonlinear: list[tuple[str, Any]] = []

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = _name(func)
        if (
            name in _RELU_NAMES
            and args
            and isinstance(args[0], torch.Tensor)
            and args[0].requires_grad
            and torch.is_grad_enabled()
        ):
            inplace = _writes_first_argument(func, args, kwargs)
            return _RectifiedReLU.apply(args[0], self._guided, inplace)  # type: ignore[no-untyped-call]
        result = func(*args, **kwargs)
        if name in _NONLINEAR:
            tensor = _first_tensor(result)
            if tensor is not None and tensor.grad_fn is not None:
                self.nonlinear.append((name, tensor.grad_fn))
        return result


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
        name = _name(func)
        if args and isinstance(args[0], torch.Tensor):
            if name in _RELU_NAMES or name in _ELEMENTWISE:
                return args[0] if _writes_first_argument(func, args, kwargs) else args[0].clone()
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


# -- validation --------------------------------------------------------------------------------


def _check_choice(what: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise NetlensValueError(f"Expected {what} to be one of {choices}, but got {value!r}.")


def _check_index(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise NetlensTypeError(f"Expected {what} to be an int, but got {describe(value)}.")
    if value < 0:
        raise NetlensValueError(f"Expected {what} to be >= 0, but got {value}.")
    return int(value)


def _check_channels(channel: object, what: str = "channel") -> list[int]:
    if isinstance(channel, torch.Tensor) and channel.dim() <= 1 and not channel.is_floating_point():
        channel = channel.tolist()
    if isinstance(channel, (list, tuple, range)):
        if len(channel) == 0:
            raise NetlensValueError(f"Expected at least one {what}, but got an empty list.")
        return [_check_index(f"each {what}", item) for item in channel]
    return [_check_index(what, channel)]


def _check_position(position: object) -> str | tuple[int, ...]:
    if isinstance(position, str):
        _check_choice("position", position, ("max", "all"))
        return position
    if isinstance(position, (tuple, list, torch.Size)):
        return tuple(_check_index("each index of position", index) for index in position)
    raise NetlensTypeError(
        'Expected position to be "max", "all" or a tuple of indices into the channel\'s map, '
        f"but got {describe(position)}."
    )


def _check_inputs(inputs: object, model: nn.Module) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        raise NetlensTypeError(f"Expected inputs to be a torch.Tensor, but got {describe(inputs)}.")
    if not inputs.is_floating_point():
        raise NetlensTypeError(
            f"Expected floating-point inputs, but got dtype {inputs.dtype}: convert them (for "
            "images .float(), scaled as in training) before projecting."
        )
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise NetlensValueError(
            f"Expected a batch of at least one input, but got shape {tuple(inputs.shape)}."
        )
    dtype, device = model_dtype_device(model)
    return inputs.detach().to(device=device or inputs.device, dtype=dtype or inputs.dtype)


# -- the projection ----------------------------------------------------------------------------


def _leaf_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if name and next(module.children(), None) is None:
            yield name, module


def _ancestors(node: Any) -> set[Any]:
    seen: set[Any] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if current is None or current in seen:
            continue
        seen.add(current)
        stack.extend(parent for parent, _ in current.next_functions)
    return seen


def _nonlinear_on_path(
    nonlinear: list[tuple[str, Any]], module_outputs: dict[Any, str], output: torch.Tensor
) -> list[str]:
    if not nonlinear:
        return []
    path = _ancestors(output.grad_fn)
    labels: list[str] = []
    for name, node in nonlinear:
        if node in path:
            label = module_outputs.get(node, f"{name}()")
            if label not in labels:
                labels.append(label)
    return labels


def _layer_output(recorder: Any, name: str) -> torch.Tensor:
    try:
        output: torch.Tensor = recorder[name]
    except NotRecordedError:
        raise NetlensValueError(
            f"Expected layer {name!r} to run in the model's forward pass on these inputs, but it "
            "never ran: pick a layer that the model uses."
        ) from None
    return output


def _unravel(flat: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Flat indices into a map of ``shape`` as index tuples along a new last dimension."""
    if not shape:
        return flat.new_zeros((*flat.shape, 0))
    return torch.stack(torch.unravel_index(flat, tuple(shape)), dim=-1)


@dataclass(frozen=True)
class _Seeds:
    """What to project: ``channels[k, n]`` of input ``n`` in seed set ``k``."""

    channels: torch.Tensor  # (K, N)
    position: str | torch.Tensor  # "max", "all" or (K, N, d) indices into the map


def _project(
    model: nn.Module,
    name: str,
    inputs: torch.Tensor,
    seeds: _Seeds,
    rule: str,
    scale: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[str]]:
    """Project one activation (or map) per input and seed set: one forward, one backward pass.

    Returns the projections ``(K, N, ...)``, the seeded activations, their positions (``None``
    for whole maps) and the labels of non-ReLU nonlinearities on the path.
    """
    leaf = inputs.detach().requires_grad_(True)
    module_outputs: dict[Any, str] = {}
    rectify = _Rectify(guided=rule == "guided") if rule != "gradient" else None
    with evaluating(model), frozen(model), ExitStack() as stack:
        if rectify is not None:
            stack.enter_context(rectify)
            for module_name, module in _leaf_modules(model):
                stack.callback(
                    module.register_forward_hook(_note_output(module_name, module_outputs)).remove
                )
        # The recorder's copy-on-write mode must sit above the rectifier: it has to see an
        # in-place ReLU call before the rectifier replaces it.
        recorder = stack.enter_context(record(model, name, detach=False))
        with torch.enable_grad():
            model(leaf.clone())  # a clone: the model may write into its input
        output = _layer_output(recorder, name)
        stack.close()
    if not output.requires_grad:
        raise NetlensValueError(
            f"Expected the output of layer {name!r} to depend on the inputs, but it does not (it "
            "has no autograd history from them): pick a layer between the inputs and the output."
        )
    seed, activations, positions = _seed(output, name, seeds, scale)
    images = _backward(output, leaf, seed)
    if images is None:
        raise NetlensValueError(
            f"Expected the output of layer {name!r} to depend on the inputs, but no gradient "
            "reaches them."
        )
    labels = _nonlinear_on_path(rectify.nonlinear, module_outputs, output) if rectify else []
    return images.detach(), activations, positions, labels


def _backward(output: torch.Tensor, leaf: torch.Tensor, seed: torch.Tensor) -> torch.Tensor | None:
    """Backpropagate each of the ``K`` seeds ``(K, *output.shape)``: ``(K, *leaf.shape)``.

    Several seeds go through one batched backward pass (autograd's ``is_grads_batched``), after
    a single forward pass: cheaper than repeating the batch once per seed, whose forward would
    cost ``K`` times as much.
    """
    if seed.shape[0] == 1:
        (grad,) = torch.autograd.grad(output, leaf, seed[0], allow_unused=True)
        return None if grad is None else grad.unsqueeze(0)
    try:
        (grad,) = torch.autograd.grad(
            output, leaf, seed, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
        return grad
    except RuntimeError:
        # Some operation on the path has no batched backward: one backward per seed instead.
        grads = [
            torch.autograd.grad(output, leaf, part, retain_graph=True, allow_unused=True)[0]
            for part in seed
        ]
        return None if grads[0] is None else torch.stack([g for g in grads if g is not None])


def _note_output(name: str, outputs: dict[Any, str]) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        tensor = _first_tensor(output)
        if tensor is not None and tensor.grad_fn is not None:
            outputs.setdefault(tensor.grad_fn, f"{name!r} ({type(module).__name__})")

    return hook


def _seed(
    output: torch.Tensor, name: str, seeds: _Seeds, scale: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The seeds ``(K, *output.shape)``: zero but for the chosen activations."""
    sets, count = seeds.channels.shape
    if output.dim() < 2 or output.shape[0] != count:
        raise NetlensValueError(
            f"Expected layer {name!r} to return a tensor shaped (batch, channels, ...) with batch "
            f"{count}, but got shape {tuple(output.shape)}."
        )
    channel_count, map_shape = output.shape[1], tuple(output.shape[2:])
    largest = int(seeds.channels.max())
    if largest >= channel_count:
        raise NetlensValueError(
            f"Expected channel indices in [0, {channel_count}) for layer {name!r} of output shape "
            f"{tuple(output.shape[1:])}, but got {largest}."
        )
    device = output.device
    which = torch.arange(sets, device=device)[:, None]
    rows = torch.arange(count, device=device)[None, :]
    channels = seeds.channels.to(device)
    maps = output.detach()[rows, channels]  # (sets, count, *map_shape)
    seed = output.new_zeros((sets, *output.shape))
    if isinstance(seeds.position, str) and seeds.position == "all":
        seed[which, rows, channels] = maps if scale == "activation" else torch.ones_like(maps)
        return seed, maps, None
    flat_maps = maps.reshape(sets, count, -1)
    if isinstance(seeds.position, torch.Tensor):
        positions = seeds.position.to(device)
        _check_position_fits(positions[0, 0], map_shape, name)
        flat = torch.zeros((sets, count), dtype=torch.long, device=device)
        for index, size in zip(positions.unbind(-1), map_shape, strict=True):
            flat = flat * size + index
    else:  # "max": the strongest location, per input
        flat = flat_maps.argmax(dim=-1)
    values = flat_maps.gather(-1, flat[..., None])
    ones = torch.ones_like(values)
    flat_seed = torch.zeros_like(flat_maps).scatter_(
        -1, flat[..., None], values if scale == "activation" else ones
    )
    seed[which, rows, channels] = flat_seed.reshape(maps.shape)
    return seed, values.squeeze(-1), _unravel(flat, map_shape)


def _check_position_fits(position: torch.Tensor, map_shape: tuple[int, ...], name: str) -> None:
    index = tuple(int(i) for i in position)
    if len(index) != len(map_shape) or any(
        i >= size for i, size in zip(index, map_shape, strict=True)
    ):
        raise NetlensValueError(
            f"Expected position to index the {len(map_shape)}-d map of layer {name!r}, of shape "
            f"{map_shape}, but got {index}."
        )


def _warn_nonlinear(labels: list[str], name: str, rule: str) -> None:
    if labels:
        warnings.warn(
            f"The path from the inputs to layer {name!r} passes through nonlinearities other than "
            f"ReLU: {', '.join(labels)}. The {rule} rule covers only ReLU; these are "
            "backpropagated as plain gradients, so the projection is not a true "
            f"{rule} projection.",
            UserWarning,
            stacklevel=3,
        )


# -- receptive fields --------------------------------------------------------------------------


def _uniform(param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if not param.is_floating_point():
        return param.detach()
    fan_in = param[0].numel() if param.dim() > 1 else 1
    return torch.full(param.shape, 1.0 / fan_in, dtype=dtype, device=param.device)


def _receptive_fields(
    model: nn.Module,
    name: str,
    samples: torch.Tensor,
    channels: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """The bounding box of the input elements that each ``(channel, position)`` depends on.

    ``samples[m]`` is an input on which activation ``m`` was seen (the values hardly matter,
    but a model that normalises its input by statistics of it needs a real one). Returned as
    ``(M, samples.dim() - 1, 2)``, ``[start, stop)`` per input dimension.

    Computed from the network itself: a copy of it with every weight positive and equal per
    filter (through ``torch.func.functional_call``; the model's own parameters stay untouched),
    ReLU-like functions as the identity and max pooling as average pooling is linear with
    positive coefficients, so the gradient of an activation is non-zero exactly on the input
    elements connected to it. Float64 keeps long products of small weights from underflowing.
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
                model, name, inputs[start : start + _CHUNK], unique[start : start + _CHUNK]
            )
            for start in range(0, count, _CHUNK)
        ]
    )
    return boxes[inverse.cpu()]


def _bounding_boxes(
    model: nn.Module, name: str, inputs: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """Receptive field boxes ``(M, inputs.dim() - 1, 2)`` of ``keys``, ``(channel, *position)``."""
    try:
        output, leaf = _linear_forward(model, name, inputs, torch.float64)
    except (RuntimeError, TypeError):
        # Tensors of the model's own dtype that are no parameters or buffers, or a device
        # without float64: run in the inputs' dtype.
        output, leaf = _linear_forward(model, name, inputs, inputs.dtype)
    seed = torch.zeros_like(output)
    seed[(torch.arange(keys.shape[0], device=output.device), *keys.to(output.device).unbind(1))] = 1
    (grad,) = torch.autograd.grad(output, leaf, seed)
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
    model: nn.Module, name: str, inputs: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output in the linearised copy of the network, and its input leaf."""
    parameters = {key: _uniform(param, dtype) for key, param in model.named_parameters()}
    buffers = {
        key: buffer.to(dtype) if buffer.is_floating_point() else buffer
        for key, buffer in model.named_buffers()
    }
    leaf = inputs.detach().to(dtype).requires_grad_(True)
    with evaluating(model), frozen(model), _Linearize(), record(model, name, detach=False) as rec:
        with torch.enable_grad():
            torch.func.functional_call(model, (parameters, buffers), (leaf.clone(),))
        output = _layer_output(rec, name)
    return output, leaf


def _sweep(map_shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Positions running along each dimension of the map through its centre, ``(P, d)``."""
    centre = [size // 2 for size in map_shape]
    rows = [centre]
    for dim, size in enumerate(map_shape):
        for index in range(size):
            rows.append([*centre[:dim], index, *centre[dim + 1 :]])
    return torch.tensor(rows, dtype=torch.long, device=device).reshape(len(rows), len(map_shape))


def _crop(
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


# -- the running top-k -------------------------------------------------------------------------


class _RunningTop:
    """Per channel, the k inputs with the largest activation seen so far: O(channels x k)."""

    def __init__(self, name: str, k: int, wanted: list[int] | None) -> None:
        self.name, self.k, self.wanted = name, k, wanted
        self.seen = 0
        self.channels: torch.Tensor | None = None
        self.sample_shape: tuple[int, ...] = ()
        self.map_shape: tuple[int, ...] = ()
        self.values = torch.empty(0)
        self.indices = torch.empty(0, dtype=torch.long)
        self.flat = torch.empty(0, dtype=torch.long)
        self.images = torch.empty(0)

    def _start(self, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        channel_count = output.shape[1]
        wanted = self.wanted if self.wanted is not None else list(range(channel_count))
        if max(wanted) >= channel_count:
            raise NetlensValueError(
                f"Expected channels in [0, {channel_count}) for layer {self.name!r} of output "
                f"shape {tuple(output.shape[1:])}, but got {max(wanted)}."
            )
        channels = torch.tensor(wanted, device=output.device)
        self.sample_shape, self.map_shape = tuple(inputs.shape[1:]), tuple(output.shape[2:])
        empty = (len(wanted), 0)
        self.values = output.new_empty(empty)
        self.indices = torch.empty(empty, dtype=torch.long, device=output.device)
        self.flat = torch.empty(empty, dtype=torch.long, device=output.device)
        self.images = inputs.new_empty((*empty, *self.sample_shape))
        return channels

    def update(self, inputs: torch.Tensor, output: torch.Tensor) -> None:
        batch = inputs.shape[0]
        if output.dim() < 2 or output.shape[0] != batch:
            raise NetlensValueError(
                f"Expected layer {self.name!r} to return a tensor shaped (batch, channels, ...) "
                f"with batch {batch}, but got shape {tuple(output.shape)}."
            )
        if self.channels is None:
            self.channels = self._start(inputs, output)
        elif tuple(inputs.shape[1:]) != self.sample_shape:
            raise NetlensValueError(
                f"Expected every batch to hold inputs of shape {self.sample_shape}, but got a "
                f"batch of shape {tuple(inputs.shape)}."
            )
        count = self.channels.shape[0]
        maps = output[:, self.channels].reshape(batch, count, -1)
        values, flat = maps.max(dim=2)  # the strongest location of each input, (batch, count)
        kept = self.values.shape[1]
        candidates = torch.cat([self.values, values.T], dim=1)
        # A stable sort keeps the earlier input first among equal activations.
        order = torch.sort(candidates, dim=1, descending=True, stable=True).indices[:, : self.k]
        numbers = torch.arange(self.seen, self.seen + batch, device=order.device)
        self.values = candidates.gather(1, order)
        self.indices = torch.cat([self.indices, numbers.expand(count, batch)], dim=1).gather(
            1, order
        )
        self.flat = torch.cat([self.flat, flat.T], dim=1).gather(1, order)
        images = inputs[(order - kept).clamp(min=0)]  # (count, k, *sample)
        if kept:
            rows = torch.arange(count, device=order.device)[:, None]
            previous = self.images[rows, order.clamp(max=kept - 1)]
            from_batch = (order >= kept).reshape(*order.shape, *[1] * len(self.sample_shape))
            images = torch.where(from_batch, images, previous)
        self.images = images
        self.seen += batch


def _batches(data: object) -> Iterator[object]:
    if isinstance(data, torch.Tensor):
        yield data
        return
    if not isinstance(data, Iterable):
        raise NetlensTypeError(
            "Expected data to be a tensor of inputs or an iterable of batches (a DataLoader), "
            f"but got {describe(data)}."
        )
    for item in data:
        if isinstance(item, (tuple, list)) and item:
            item = item[0]
        yield item


# -- public functions --------------------------------------------------------------------------


def deconvnet(
    model: nn.Module,
    inputs: torch.Tensor,
    layer: LayerSpec,
    channel: int | Sequence[int] | torch.Tensor,
    *,
    position: Position = "max",
    scale: Scale = "activation",
    rule: Rule = "deconvnet",
) -> Projection:
    """Project an activation of a layer back to input space with a deconvnet.

    As in Zeiler & Fergus (2014): every activation of ``layer`` but the chosen one(s) is set to
    zero, and the signal goes down through the network with max-pool switches (unpooling to
    the location of each forward maximum), rectification of the signal at every ReLU, and the
    transposed filters of each convolution. Batch normalisation (in eval mode), linear layers,
    flattening and residual additions are passed through as autograd differentiates them.

    Every ReLU call is covered: ``nn.ReLU`` (also in place), ``F.relu``, ``torch.relu``,
    ``Tensor.relu`` and ``relu_``, intercepted during the forward pass, so a model written with
    ``F.relu`` gets the deconvnet rule too, not the plain gradient. Another nonlinearity on the
    path (tanh, sigmoid, GELU, ELU, softplus, SiLU, a recurrent layer, ...) has no deconvnet
    rule; it is backpropagated as a gradient and a warning names it, once per call.

    The model runs in eval mode with its parameters frozen; its training flags and
    ``requires_grad`` are restored afterwards and no ``.grad`` is touched, neither the
    parameters' nor that of ``inputs``. A layer that runs several times in one forward pass is
    projected from its last call.

    Args:
        model: The network.
        inputs: A batch ``(N, ...)`` of floating-point inputs; moved to the model's device and
            dtype.
        layer: One layer, as for :func:`find_layers`; its output is ``(N, C, ...)``, a channel
            is an index along dimension 1 (a conv channel, a linear unit).
        channel: A channel index, or a list of them: one projection per channel, all from one
            forward pass and one batched backward pass (memory grows with the number of
            channels).
        position: ``"max"``: the channel's strongest location, per input. ``"all"``: the whole
            map of the channel. A tuple of indices into the map (``(i, j)`` for a conv layer,
            ``()`` for a linear one): that location, for every input.
        scale: ``"activation"`` seeds the projection with the activation values (the paper);
            ``"unit"`` with ones (what gradient-style libraries compute).
        rule: ``"deconvnet"`` rectifies the backward signal at each ReLU; ``"guided"`` also
            masks it by the forward activation (guided backpropagation); ``"gradient"`` is the
            plain gradient (saliency).

    Returns:
        The :class:`Projection`.

    Raises:
        LayerNotFoundError: ``layer`` names no module.
        NetlensValueError: A layer spec matching several layers, a layer that does not run or
            does not depend on the inputs, a channel or position outside the layer's output, an
            unknown ``position``, ``scale`` or ``rule``, or an empty batch.
        NetlensTypeError: Inputs that are not a floating-point tensor, or a channel or position
            that is not made of ints.

    Example:
        >>> import torch
        >>> import netlens as nl
        >>> from netlens.models import LeNet5
        >>> model = LeNet5().eval()
        >>> images = torch.randn(4, 1, 28, 28)
        >>> projection = nl.deconvnet(model, images, "conv2", 7)
        >>> projection.images.shape, projection.positions.shape
        (torch.Size([4, 1, 28, 28]), torch.Size([4, 2]))
        >>> nl.deconvnet(model, images, "conv2", [0, 1, 2], position="all").images.shape
        torch.Size([4, 3, 1, 28, 28])
    """
    check_model(model)
    name, _ = find_layer(model, layer)
    listed = not isinstance(channel, (int, np.integer)) and not (
        isinstance(channel, torch.Tensor) and channel.dim() == 0
    )
    channels = _check_channels(channel)
    where = _check_position(position)
    _check_choice("scale", scale, _SCALES)
    _check_choice("rule", rule, _RULES)
    inputs = _check_inputs(inputs, model)
    batch, count = inputs.shape[0], len(channels)
    channel_index = torch.tensor(channels, device=inputs.device)[:, None].expand(count, batch)
    seeds = _Seeds(
        channel_index,
        where
        if isinstance(where, str)
        else torch.tensor(where, dtype=torch.long).reshape(1, 1, -1).expand(count, batch, -1),
    )
    images, activations, positions, labels = _project(model, name, inputs, seeds, rule, scale)
    _warn_nonlinear(labels, name, rule)

    def per_input(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.transpose(0, 1) if listed else tensor[0]

    return Projection(
        images=per_input(images),
        activations=per_input(activations),
        positions=None if positions is None else per_input(positions),
        channels=torch.tensor(channels if listed else channels[0]),
        layer=name,
        rule=rule,
        scale=scale,
    )


def top_activations(
    model: nn.Module,
    data: torch.Tensor | Iterable[Any],
    layer: LayerSpec,
    *,
    channels: int | Sequence[int] | None = None,
    k: int = 9,
    progress: bool = False,
) -> TopActivations:
    """Find the k strongest activations of each channel over a data set and project them.

    One pass over ``data`` keeps, per channel, the ``k`` inputs with the largest value of the
    channel's map (one entry per input, at its strongest location) in a running top-k; memory
    grows with ``channels x k``, not with the data. Then the receptive field of each of those
    activations is computed from the network (the input elements the activation depends on)
    and both the input patch under it and the deconvnet projection of the activation are cut
    out: the paper's Figure 2, drawn by :meth:`TopActivations.plot`.

    The model runs in eval mode with its parameters frozen, as in :func:`deconvnet`.

    Args:
        model: The network.
        data: A tensor of inputs, or an iterable of batches (a ``DataLoader``): tensors or
            ``(inputs, targets, ...)`` tuples.
        layer: One layer, as for :func:`deconvnet`.
        channels: The channels to look at; by default all channels of the layer.
        k: How many activations to keep per channel.
        progress: Show a progress bar over the batches (needs tqdm).

    Returns:
        The :class:`TopActivations`.

    Raises:
        NetlensValueError: Fewer than ``k`` inputs in ``data``, inputs of varying shapes, and
            the errors of :func:`deconvnet`.
        NetlensTypeError: ``data`` that is neither a tensor nor an iterable of batches.

    Example:
        >>> import torch
        >>> import netlens as nl
        >>> from netlens.models import LeNet5
        >>> model = LeNet5().eval()
        >>> loader = torch.utils.data.DataLoader(torch.randn(40, 1, 28, 28), batch_size=16)
        >>> top = nl.top_activations(model, loader, "conv2", channels=[3, 5], k=4)
        >>> top.activations.shape, top.patches.shape  # 14x14 receptive fields
        (torch.Size([2, 4]), torch.Size([2, 4, 1, 14, 14]))
    """
    check_model(model)
    name, _ = find_layer(model, layer)
    wanted = None if channels is None else _check_channels(channels, "channels")
    k = _check_index("k", k)
    if k == 0:
        raise NetlensValueError("Expected k >= 1, but got 0.")
    top = _RunningTop(name, k, wanted)
    with evaluating(model), frozen(model), torch.no_grad(), record(model, name) as recorder:
        for batch in progress_bar(_batches(data), enabled=progress, desc="top activations"):
            inputs = _check_inputs(batch, model)
            model(inputs)
            top.update(inputs, _layer_output(recorder, name))
    if top.channels is None or top.seen < k:
        raise NetlensValueError(f"Expected at least k={k} inputs in data, but got {top.seen}.")
    count = top.channels.shape[0]
    images = top.images.reshape(count * k, *top.sample_shape)
    channel_index = top.channels.repeat_interleave(k)
    positions = _unravel(top.flat.reshape(-1), top.map_shape)
    projected = []
    labels: list[str] = []
    for start in range(0, count * k, _CHUNK):
        part = slice(start, start + _CHUNK)
        seeds = _Seeds(channel_index[None, part], positions[None, part])
        chunk, _, _, found = _project(model, name, images[part], seeds, "deconvnet", "activation")
        projected.append(chunk[0])
        labels += [label for label in found if label not in labels]
    _warn_nonlinear(labels, name, "deconvnet")
    # Sweeping each map dimension through the centre finds the largest receptive field inside
    # the input (the patch size), even when every top activation sits at a border.
    sweep = _sweep(top.map_shape, positions.device)
    boxes = _receptive_fields(
        model,
        name,
        torch.cat([images, images[:1].expand(sweep.shape[0], *top.sample_shape)]),
        torch.cat([channel_index, channel_index[:1].expand(sweep.shape[0])]),
        torch.cat([positions, sweep]),
    )
    size = tuple(int(s) for s in (boxes[:, :, 1] - boxes[:, :, 0]).amax(dim=0))
    boxes = boxes[: count * k]
    box_list = boxes.tolist()
    shape = (count, k, *size)
    return TopActivations(
        layer=name,
        channels=top.channels,
        activations=top.values,
        indices=top.indices,
        positions=positions.reshape(count, k, -1),
        boxes=boxes.reshape(count, k, *boxes.shape[1:]),
        patches=_crop(images, box_list, size).reshape(shape),
        projections=_crop(torch.cat(projected), box_list, size).reshape(shape),
    )


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Projection:
    """Deconvnet projections of activations back to input space, from :func:`deconvnet`.

    Attributes:
        images: The projections, shaped like the inputs ``(N, ...)`` for one channel and
            ``(N, K, ...)`` for a list of ``K`` channels.
        activations: The projected activation values, ``(N,)`` or ``(N, K)``; for
            ``position="all"`` the channel's whole map, ``(N, *map)`` or ``(N, K, *map)``.
        positions: Where in the channel's map each projected activation sits, ``(N, d)`` or
            ``(N, K, d)`` for a ``d``-dimensional map; ``None`` for ``position="all"``.
        channels: The projected channel, a 0-d tensor, or for a list of channels ``(K,)``.
        layer: The layer's name.
        rule: ``"deconvnet"``, ``"guided"`` or ``"gradient"``.
        scale: ``"activation"`` or ``"unit"``.
    """

    images: torch.Tensor
    activations: torch.Tensor
    positions: torch.Tensor | None
    channels: torch.Tensor
    layer: str
    rule: str
    scale: str

    def __repr__(self) -> str:
        return (
            f"Projection(layer={self.layer!r}, channels={self.channels.tolist()}, "
            f"rule={self.rule!r}, scale={self.scale!r}, images={tuple(self.images.shape)})"
        )

    def plot(self, ax: Axes | None = None) -> tuple[Figure, Axes]:
        """Draw the projections, one row per input and one column per channel.

        Each projection is scaled on its own and centred, so that zero is mid-grey, positive
        values light and negative ones dark; three-channel inputs are drawn in colour.

        Args:
            ax: Draw on this ``Axes``; by default on a new ``Figure``.

        Returns:
            The ``(Figure, Axes)`` drawn on.
        """
        images = self.images if self.channels.dim() else self.images.unsqueeze(1)
        rows, columns = images.shape[:2]
        tiles = [
            [_display(images[r, c], centred=True) for c in range(columns)] for r in range(rows)
        ]
        canvas, centres_x, centres_y = _montage(tiles)
        fig, ax = _axes(ax, width=1.2 * columns + 1.0, height=1.2 * rows + 0.6)
        ax.imshow(canvas, interpolation="nearest")
        ax.set_xticks(centres_x, [f"ch {c}" for c in self.channels.reshape(-1).tolist()])
        ax.set_yticks(centres_y, [f"input {r}" for r in range(rows)])
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title(f"{self.rule} projections, layer {self.layer!r}", fontsize="medium")
        return fig, ax


@dataclass(frozen=True, eq=False)
class TopActivations:
    """The strongest activations of channels over a data set, from :func:`top_activations`.

    For each channel, the ``k`` inputs on which it responded most (its largest value over the
    map, one entry per input), strongest first, with the input patch under the receptive field
    of that activation and the deconvnet projection of the activation, cut out the same way.

    Attributes:
        layer: The layer's name.
        channels: The channels, ``(C,)``.
        activations: The activation values, ``(C, k)``, strongest first.
        indices: Each input's index in the data, counted in iteration order, ``(C, k)``.
        positions: Each activation's position in the channel's map, ``(C, k, d)``.
        boxes: The receptive field of each activation in its input, ``[start, stop)`` for each
            input dimension after the batch one, clipped to the input, ``(C, k, n, 2)``.
        patches: The inputs under the receptive fields, ``(C, k, *patch)``, ``patch`` being
            the extent of the largest receptive field inside the input; where a receptive
            field reaches past the input's border the patch is zero (as zero padding is).
        projections: The deconvnet projections, cut out and padded like ``patches``.
    """

    layer: str
    channels: torch.Tensor
    activations: torch.Tensor
    indices: torch.Tensor
    positions: torch.Tensor
    boxes: torch.Tensor
    patches: torch.Tensor
    projections: torch.Tensor

    def __repr__(self) -> str:
        return (
            f"TopActivations(layer={self.layer!r}, channels={self.channels.tolist()}, "
            f"k={self.activations.shape[1]}, patches={tuple(self.patches.shape)})"
        )

    def plot(self, ax: Axes | None = None, *, ncols: int | None = None) -> tuple[Figure, Axes]:
        """Draw the paper's Figure 2: per channel, the projections beside the input patches.

        Each channel is a block: a square grid of its ``k`` projections (strongest first, row
        by row; each scaled on its own and centred, zero mid-grey) on the left and the grid of
        the matching input patches on the right, all patches on one common value range.

        Args:
            ax: Draw on this ``Axes``; by default on a new ``Figure``.
            ncols: Channel blocks per row; by default about the square root of half the
                number of channels (blocks are twice as wide as high).

        Returns:
            The ``(Figure, Axes)`` drawn on.
        """
        count, k = self.activations.shape
        side = math.ceil(math.sqrt(k))
        ncols = max(1, min(count, ncols or round(math.sqrt(count / 2)) or 1))
        # Patches are inputs: one range for all, so that they compare as the inputs do.
        span = (float(self.patches.min()), float(self.patches.max()))
        tile_height, tile_width = _display(self.patches[0, 0], centred=False).shape[:2]
        band, gap = max(3, tile_height // 2), max(2, tile_width // 2)
        blocks = []
        for channel in range(count):
            projections = _grid(
                [_display(p, centred=True) for p in self.projections[channel]], side
            )
            patches = _grid(
                [_display(p, centred=False, value_range=span) for p in self.patches[channel]], side
            )
            spacer = np.ones((projections.shape[0], max(2, tile_width // 3), 3))
            label = np.ones((band, 2 * projections.shape[1] + spacer.shape[1], 3))
            side_by_side = np.concatenate([projections, spacer, patches], axis=1)
            blocks.append(np.concatenate([label, side_by_side], axis=0))
        block_height, block_width = blocks[0].shape[:2]
        fig, ax = _axes(
            ax,
            width=0.45 * ncols * (2 * side + 1) + 0.5,
            height=0.5 * math.ceil(count / ncols) * (side + 0.6) + 0.6,
        )
        ax.imshow(_grid(blocks, ncols, gap=gap), interpolation="nearest")
        for channel in range(count):
            row, column = divmod(channel, ncols)
            x, y = column * (block_width + gap), row * (block_height + gap) + band - 1
            ax.text(x, y, f"channel {int(self.channels[channel])}", fontsize="small", va="bottom")
        ax.set_axis_off()
        ax.set_title(f"top-{k} activations of layer {self.layer!r}", fontsize="medium")
        return fig, ax


# -- drawing helpers ---------------------------------------------------------------------------


def _axes(ax: Axes | None, *, width: float, height: float) -> tuple[Figure, Axes]:
    if ax is not None:
        return cast("Figure", ax.figure), ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=(min(width, 16.0), min(height, 16.0)), layout="constrained")
    return fig, fig.add_subplot()


def _display(
    sample: torch.Tensor, *, centred: bool, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """An input-shaped tensor as an RGB image in [0, 1].

    Scaled on its own (centred: zero at 0.5) unless ``value_range`` gives a common range.
    """
    values = sample.detach().to("cpu", torch.float64)
    if values.dim() == 1:
        values = values.unsqueeze(0)
    if values.dim() >= 3:
        values = values.reshape(-1, *values.shape[-2:])
        values = values.permute(1, 2, 0) if values.shape[0] == 3 else values.mean(dim=0)
    if centred:
        extent = float(values.abs().max())
        values = values / (2 * extent) + 0.5 if extent > 0 else torch.full_like(values, 0.5)
    else:
        low, high = value_range or (float(values.min()), float(values.max()))
        values = (values - low) / (high - low) if high > low else torch.full_like(values, 0.5)
    array = values.numpy()
    return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array


def _montage(
    rows: list[list[np.ndarray]], gap: int = 1
) -> tuple[np.ndarray, list[float], list[float]]:
    """Tile equally shaped RGB images on a white canvas; also the tile centres."""
    height, width = rows[0][0].shape[:2]
    columns = max(len(row) for row in rows)
    canvas = np.ones((len(rows) * (height + gap) - gap, columns * (width + gap) - gap, 3))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            top, left = r * (height + gap), c * (width + gap)
            canvas[top : top + height, left : left + width] = tile
    centres_x = [c * (width + gap) + (width - 1) / 2 for c in range(columns)]
    centres_y = [r * (height + gap) + (height - 1) / 2 for r in range(len(rows))]
    return canvas, centres_x, centres_y


def _grid(tiles: list[np.ndarray], ncols: int, gap: int = 1) -> np.ndarray:
    rows = [tiles[start : start + ncols] for start in range(0, len(tiles), ncols)]
    return _montage(rows, gap)[0]
