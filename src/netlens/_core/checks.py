"""Argument validation shared by every technique: one function per kind of argument.

Each check returns the value in the form the caller works with (an ``int``, a list of channels,
a tensor on the model's device) or raises: :class:`NetlensTypeError` for a value of the wrong
type, :class:`NetlensValueError` for a wrong value. Messages say what was expected and what was
received.
"""

from __future__ import annotations

import difflib
import math
import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, SupportsIndex, TypeVar, overload

import numpy as np
import torch
from torch import nn

from .errors import NetlensTypeError, NetlensValueError, describe
from .model import model_dtype_device

__all__ = [
    "InputInfo",
    "as_int",
    "as_number",
    "as_real",
    "batches",
    "check_bool",
    "check_callable",
    "check_channel_dim",
    "check_channels",
    "check_channels_fit",
    "check_choice",
    "check_cmap",
    "check_dim_in_range",
    "check_gradients_allowed",
    "check_index",
    "check_int",
    "check_not_meta",
    "check_position",
    "check_real",
    "check_sizes",
    "count_text",
    "non_finite",
    "prepare_inputs",
]

T = TypeVar("T")

# The most dims a tensor can have for torch's reductions and dim arguments ("only tensors with
# up to 64 dims are supported"; a 64-d tensor takes dims in [-64, 63]): no channel axis lies
# beyond, whatever the layer.
MAX_DIMS = 64


def as_int(value: object) -> int | None:
    """``value`` as an int when it is an integer (Python, numpy, 0-d int tensor), not a bool."""
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        return None
    try:
        return operator.index(value)
    except TypeError:  # a float tensor
        return None


def as_real(value: object) -> float | None:
    """``value`` as a float when it is a real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value)


def check_int(name: str, value: object, *, minimum: int = 1) -> int:
    """An int ``>= minimum`` (``minimum=1``: positive, ``0``: non-negative)."""
    number = as_int(value)
    if number is None:
        raise NetlensTypeError(f"Expected {name} to be an int, but got {describe(value)}.")
    if number < minimum:
        raise NetlensValueError(f"Expected {name} >= {minimum}, but got {number}.")
    return number


def check_bool(name: str, value: object) -> bool:
    """A flag: a bool or a numpy bool (an int, a string or a tensor is not taken for one)."""
    if not isinstance(value, (bool, np.bool_)):
        raise NetlensTypeError(f"Expected {name} to be a bool, but got {describe(value)}.")
    return bool(value)


@overload
def check_channel_dim(name: str, value: object) -> int: ...


@overload
def check_channel_dim(name: str, value: object, *, optional: Literal[True]) -> int | None: ...


def check_channel_dim(name: str, value: object, *, optional: bool = False) -> int | None:
    """A channel axis (None too when ``optional``): an int any tensor's dims can have.

    Negative ones count from the end. Only the bound every tensor shares is checked here, so
    that a nonsense axis fails at once; whether it fits a layer's output is checked where that
    output's rank is known.
    """
    if optional and value is None:
        return None
    number = as_int(value)
    if number is None:
        expected = "None or an int" if optional else "an int"
        raise NetlensTypeError(f"Expected {name} to be {expected}, but got {describe(value)}.")
    if not -MAX_DIMS <= number < MAX_DIMS:
        raise NetlensValueError(
            f"Expected {name} to be a dim index in [{-MAX_DIMS}, {MAX_DIMS}) (a tensor has at "
            f"most {MAX_DIMS} dims; negative ones count from the end), but got {number}."
        )
    return number


def check_cmap(name: str, value: object) -> Any:
    """None, the name of a registered matplotlib colormap, or a matplotlib ``Colormap``."""
    if value is None:
        return None
    # matplotlib only once a colormap is given: ``import netlens`` stays free of it.
    from matplotlib import colormaps
    from matplotlib.colors import Colormap

    if isinstance(value, Colormap):
        return value
    if not isinstance(value, str):
        raise NetlensTypeError(
            f"Expected {name} to be None, a matplotlib colormap name or a Colormap, but got "
            f"{describe(value)}."
        )
    if value not in colormaps:
        close = difflib.get_close_matches(value, list(colormaps), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
        raise NetlensValueError(
            f"Expected {name} to name a matplotlib colormap (such as 'viridis', 'gray' or "
            f"'RdBu_r'), but got {value!r}, which names none.{hint}"
        )
    return value


def check_index(name: str, value: object) -> int:
    """A non-negative int index."""
    return check_int(name, value, minimum=0)


def check_real(name: str, value: object, *, positive: bool = False) -> float:
    """A finite number ``>= 0`` (``> 0`` when ``positive``)."""
    number = as_real(value)
    if number is None:
        raise NetlensTypeError(f"Expected {name} to be a number, but got {describe(value)}.")
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        bound = "a finite number > 0" if positive else "a finite number >= 0"
        raise NetlensValueError(f"Expected {name} to be {bound}, but got {value}.")
    return number


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """One of the strings ``choices``."""
    if not isinstance(value, str):
        raise NetlensTypeError(
            f"Expected {name} to be one of {choices}, but got {describe(value)}."
        )
    if value not in choices:
        raise NetlensValueError(f"Expected {name} to be one of {choices}, but got {value!r}.")
    return value


def check_channels(name: str, value: object) -> tuple[list[int], bool]:
    """Channel indices and whether they were given as a list (``False`` for a single int).

    Accepts an int, a 0-d or 1-d integer tensor, or a list, tuple or range of ints. Whether they
    fit the layer is checked where the layer's channel count is known.
    """
    single = as_int(value)
    if single is not None:
        return [check_index(name, single)], False
    items: list[object] | None = None
    if isinstance(value, torch.Tensor) and not value.is_floating_point() and value.dim() == 1:
        items = list(value.tolist())
    elif isinstance(value, (list, tuple, range)):
        items = list(value)
    if items is None or any(as_int(item) is None for item in items):
        raise NetlensTypeError(
            f"Expected {name} to be an int or a list of ints, but got {describe(value)}."
        )
    if not items:
        raise NetlensValueError(f"Expected at least one {name}, but got an empty list.")
    return [check_index(f"each of {name}", item) for item in items], True


def check_channels_fit(name: str, channels: list[int], count: int, layer: str) -> None:
    """Every channel index in ``[0, count)`` of ``layer``."""
    bad = [channel for channel in channels if channel >= count]
    if bad:
        raise NetlensValueError(
            f"Expected {name} in [0, {count}) for layer {layer!r}, which has {count} channels, "
            f"but got {bad[0]}."
        )


def check_gradients_allowed(technique: str) -> None:
    """Refuse to run a technique that needs gradients inside ``torch.inference_mode()``."""
    if torch.is_inference_mode_enabled():
        raise NetlensValueError(
            f"Expected {technique} to run with autograd available, but torch.inference_mode() "
            f"is on: {technique} backpropagates to the input. Call it outside the "
            "inference mode block (torch.no_grad() around it is fine)."
        )


@dataclass(frozen=True)
class InputInfo:
    """Where a user's inputs came from, to hand results back in the same place and dtype."""

    device: torch.device
    dtype: torch.dtype

    def restore(self, tensor: torch.Tensor) -> torch.Tensor:
        """A result back on the inputs' device, floating results in the inputs' dtype."""
        dtype = self.dtype if self.dtype.is_floating_point and tensor.is_floating_point() else None
        return tensor.to(device=self.device, dtype=dtype)


def prepare_inputs(
    inputs: object,
    model: nn.Module,
    *,
    name: str = "inputs",
    floating: bool = True,
) -> tuple[torch.Tensor, InputInfo]:
    """Check a batch of inputs and move it to the model's device (and floating dtype).

    Args:
        inputs: What the user passed.
        model: The model; its first floating parameter or buffer gives device and dtype.
        name: The argument's name, for messages.
        floating: Require floating-point inputs (techniques that need gradients).

    Returns:
        The inputs, detached, on the model's device (floating inputs in the model's floating
        dtype, so that its layers accept them) and how to hand results back.
    """
    if not isinstance(inputs, torch.Tensor):
        raise NetlensTypeError(f"Expected {name} to be a torch.Tensor, but got {describe(inputs)}.")
    if floating and not inputs.is_floating_point():
        raise NetlensTypeError(
            f"Expected floating-point {name}, because this technique follows gradients to the "
            f"input, but got dtype {inputs.dtype}: convert them (for images .float(), scaled as "
            "in training). Integer inputs such as token ids have no gradient."
        )
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise NetlensValueError(
            f"Expected {name} to be a batch (N, ...) of at least one input, but got shape "
            f"{tuple(inputs.shape)}."
        )
    check_not_meta(inputs, name)
    info = InputInfo(inputs.device, inputs.dtype)
    dtype, device = model_dtype_device(model)
    check_not_meta(model)
    target_dtype = dtype if (dtype is not None and inputs.is_floating_point()) else inputs.dtype
    moved = inputs.detach().to(device=device or inputs.device, dtype=target_dtype)
    return moved, info


def check_not_meta(value: torch.Tensor | nn.Module, name: str = "model") -> None:
    """Refuse tensors, or a model with parameters or buffers, on the ``meta`` device.

    Meta tensors have shapes but no data: a technique run on them would fail deep inside torch
    ("Tensor.item() cannot be called on meta tensors") or return pictures that hold nothing.
    """
    if isinstance(value, torch.Tensor):
        on_meta = value.is_meta
    else:
        on_meta = any(t.is_meta for t in (*value.parameters(), *value.buffers()))
    if on_meta:
        raise NetlensValueError(
            f"Expected {name} with data, on a real device (cpu, cuda, ...), but got {name} on "
            "the 'meta' device, which holds shapes only: load the weights first (for example "
            "model.to_empty(device='cpu') then load_state_dict)."
        )


def batches(data: object, *, name: str = "data") -> Iterator[torch.Tensor]:
    """The input tensors of a data set: a tensor (one batch) or an iterable of batches.

    Each batch is a tensor or an ``(inputs, targets, ...)`` tuple or list whose first item is
    the inputs.
    """
    if isinstance(data, torch.Tensor):
        yield data
        return
    if not isinstance(data, Iterable):
        raise NetlensTypeError(
            f"Expected {name} to be a tensor of inputs or an iterable of batches (a DataLoader), "
            f"but got {describe(data)}."
        )
    for item in data:
        if isinstance(item, (tuple, list)) and item:
            item = item[0]
        if not isinstance(item, torch.Tensor):
            raise NetlensTypeError(
                f"Expected each item of {name} to be a tensor or a tuple (inputs, targets, ...) "
                f"whose first item is a tensor, but got {describe(item)}."
            )
        yield item


def check_callable(name: str, value: object) -> Callable[..., Any]:
    """A callable."""
    if not callable(value):
        raise NetlensTypeError(f"Expected {name} to be callable, but got {describe(value)}.")
    return value


def as_number(value: object) -> float | None:
    """``value`` as a float when it is a real number: as :func:`as_real`, or a 0-d real tensor.

    A 0-d tensor (``x.max()``) stands for its number; a bool, complex or meta tensor does not.
    """
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.is_complex() or value.dtype == torch.bool or value.is_meta:
            return None
        return float(value.item())
    return as_real(value)


def non_finite(values: torch.Tensor) -> str | None:
    """How many NaN and infinite values ``values`` holds ("2 NaN and 1 infinite"), or None."""
    if not (values.is_floating_point() or values.is_complex()):
        return None
    nan = int(torch.isnan(values).sum())
    infinite = int(torch.isinf(values).sum())
    return count_text(nan, infinite) or None


def count_text(nan: int, infinite: int) -> str:
    """``"2 NaN and 1 infinite"``, ``"3 NaN"``, or ``""`` when both are 0."""
    parts = ([f"{nan} NaN"] if nan else []) + ([f"{infinite} infinite"] if infinite else [])
    return " and ".join(parts)


def check_position(name: str, value: object) -> tuple[int, ...]:
    """A position in a channel's map: non-negative int indices, one per map dimension.

    One rule for every technique that takes a position (``deconvnet``, ``objectives.neuron``):
    an int (a 1-d map, such as a time step) or a tuple, list or ``torch.Size`` of ints (numpy
    and 0-d integer tensors count as ints; bools do not). Indices count from the start of each
    dimension: negative ones are refused rather than read from the end. Whether the position
    fits a map is checked where the map's shape is known.
    """
    single = as_int(value)
    items: list[object]
    if single is not None:
        items = [single]
    elif isinstance(value, (tuple, list, torch.Size)):
        items = list(value)
    else:
        raise NetlensTypeError(
            f"Expected {name} to be an int or a tuple of ints (one index per dimension of the "
            f"channel's map), but got {describe(value)}."
        )
    indices = [as_int(item) for item in items]
    if any(index is None for index in indices):
        raise NetlensTypeError(
            f"Expected {name} to be an int or a tuple of ints (one index per dimension of the "
            f"channel's map), but got {describe(value)}."
        )
    position = tuple(index for index in indices if index is not None)
    if any(index < 0 for index in position):
        shown = position[0] if single is not None else position
        raise NetlensValueError(
            f"Expected {name} to hold non-negative indices into the channel's map, counted from "
            f"its start (the last of T steps is T - 1), but got {shown}."
        )
    return position


def check_dim_in_range(dim: int, rank: int, message: str) -> int:
    """A dim (a channel axis) that a tensor of ``rank`` dims has, as a non-negative index.

    The one range rule for an axis met with a tensor whose rank is known: ``dim`` lies in
    ``[-rank, rank)``, negative ones counting from the end. What the axis is for differs, so the
    caller gives the whole message of the error.

    Args:
        dim: The axis, as :func:`check_channel_dim` returns it.
        rank: The tensor's number of dims.
        message: The message of the error for a ``dim`` outside the range.

    Returns:
        ``dim % rank``.

    Raises:
        NetlensValueError: With ``message``, for a ``dim`` outside ``[-rank, rank)``.
    """
    if not -rank <= dim < rank:
        raise NetlensValueError(message)
    return dim % rank


def check_sizes(name: str, value: object, rank: int) -> tuple[int, ...]:
    """Positive sizes, one per dim: an int (the same along ``rank`` dims) or a list or tuple.

    The one rule for an argument that takes "an int or a list of ints" of sizes (occlusion's
    ``window`` and ``stride``, ...). How many sizes a list must hold depends on what they
    measure, so the caller checks its length.

    Args:
        name: The argument's name, for messages.
        value: What the user passed.
        rank: How many times an int is repeated.

    Returns:
        The sizes, as a tuple of positive ints.

    Raises:
        NetlensTypeError: Neither an int nor a non-empty list or tuple of ints.
        NetlensValueError: A size below 1.
    """
    single = as_int(value)
    if single is not None:
        return (check_int(name, single),) * rank
    if not isinstance(value, (list, tuple)) or not value:
        raise NetlensTypeError(
            f"Expected {name} to be an int or a non-empty sequence of ints, but got "
            f"{describe(value)}."
        )
    return tuple(check_int(f"each size of {name}", size) for size in value)
