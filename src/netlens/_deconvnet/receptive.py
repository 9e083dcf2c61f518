"""Receptive fields: which input elements an activation depends on, without copying the model.

Both ways below run one input only up to the layer (:func:`netlens._core.stop.run_until`),
never past it.

* **From the layer geometry**, where every operation on the path from the input to the layer is
  known: convolutions and pools (kernel, stride, padding, dilation, groups: a
  :class:`~netlens._core.windows.Window`), adaptive pools, element-wise functions, batch norm,
  dropout, and sums or products of tensors of the same shape (skip connections). A torch
  function mode follows every tensor derived from the input and keeps, for each of its dims and
  each index along it, the interval of input indices that index depends on. Each known
  operation connects an output element to a product of per-dim index sets, so the bounding box
  of a receptive field is the product of these intervals: exact, and as cheap as one forward
  pass of one input.
* **A gradient probe** otherwise (recurrent layers, permutes, reshapes, attention, anything
  unknown): :mod:`netlens._deconvnet.probe`.

Both give the same boxes: the geometry is what the probe's gradient support measures.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .._core.hooks import Hooks
from .._core.ops import (
    ADAPTIVE_POOL_NAMES,
    COMBINING_NAMES,
    CONVOLUTION_NAMES,
    COPY_NAMES,
    DROPOUT_NAMES,
    ELEMENTWISE_MATH_NAMES,
    NONLINEAR_ELEMENTWISE_NAMES,
    POOL_NAMES,
    RELU_NAMES,
    CallMode,
    function_name,
    mutated_tensors,
)
from .._core.outputs import LayerView
from .._core.stop import run_until
from .._core.windows import Window, adaptive_bounds, window_of_call
from .probe import gradient_probe

__all__ = ["crop", "receptive_fields", "sweep"]

# Distinct activations whose receptive fields one gradient probe finds (one row each).
_PROBE_ROWS = 64


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
            gradient_probe(model, view, sample, unique[start : start + rows], calls)
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

# Element-wise on their first argument: the output element depends on the same input element
# (batch norm only where it normalises by its running statistics).
_ELEMENTWISE = (
    RELU_NAMES
    | NONLINEAR_ELEMENTWISE_NAMES
    | DROPOUT_NAMES
    | COPY_NAMES
    | ELEMENTWISE_MATH_NAMES
    | frozenset({"batch_norm"})
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


class _FieldTrace(CallMode):
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

    def handle(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        followed = [t for t in _tensors_in((args, kwargs)) if self.fields(t)[0]]
        if not followed:
            return func(*args, **kwargs)
        mutated = [t for t in mutated_tensors(func, args, kwargs) if isinstance(t, torch.Tensor)]
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
    trace: _FieldTrace,
) -> _Fields | None:
    """The fields of an operation's (first) output, or None where no rule applies."""
    if not outputs:
        return None
    output = outputs[0]
    known = [trace.fields(tensor)[1] for tensor in followed]
    if any(fields is None for fields in known):
        return None
    if name in COMBINING_NAMES:
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
    if name in CONVOLUTION_NAMES or name in POOL_NAMES:
        window = window_of_call(name, args, kwargs)
        assert window is not None
        if window.kind == "conv":
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            return _convolution(fields, first, output, weight, window)
        first_spatial = output.dim() - window.rank - 1
        return [*fields[:first_spatial], *_through_window(fields, output, window)]
    if name in ADAPTIVE_POOL_NAMES:
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


def _convolution(
    fields: _Fields,
    input: torch.Tensor,
    output: torch.Tensor,
    weight: torch.Tensor,
    window: Window,
) -> _Fields:
    if input.dim() != weight.dim() or output.dim() != weight.dim():
        raise ValueError("an unbatched convolution")
    out_channels, group_width = output.shape[1], weight.shape[1]
    groups_of = torch.arange(out_channels) // (out_channels // window.groups)
    channels = _windows(fields[0], groups_of * group_width, group_width)
    return [channels, *_through_window(fields, output, window)]


def _through_window(fields: _Fields, output: torch.Tensor, window: Window) -> _Fields:
    """The fields of the output's last ``window.rank`` dims: each index reads a window."""
    first = output.dim() - window.rank - 1  # the first spatial dim among the fields
    spatial = []
    for dim in range(window.rank):
        positions = torch.arange(output.shape[1 + first + dim])
        starts = positions * window.stride[dim] - window.padding[dim]
        field = fields[first + dim]
        spatial.append(_windows(field, starts, window.kernel[dim], window.dilation[dim]))
    return spatial


def _adaptive(fields: _Fields, input: torch.Tensor, output: torch.Tensor, count: int) -> _Fields:
    batched = output.dim() - count - 1
    result = list(fields[:batched])
    for dim in range(count):
        size, out = input.shape[1 + batched + dim], output.shape[1 + batched + dim]
        starts, stops = adaptive_bounds(size, out)
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

    trace = _FieldTrace(leaf)
    try:
        with Hooks() as hooks, torch.no_grad(), trace:
            hooks.forward(view.module, keep)
            run_until(model, {view.module: calls}, leaf)
    except Exception:  # whatever stops the trace, the probe can still try
        return None
    if not captured:
        return None
    try:
        tensor = view.tensor(captured[-1])
        order = view.order(tensor)
    except Exception:  # the probe reports such errors in its own words
        return None
    found, fields = trace.fields(tensor)
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


# -- patches ------------------------------------------------------------------------------------


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
