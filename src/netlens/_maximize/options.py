"""The checked options of :func:`~netlens.maximize_activation`: one check per argument.

:func:`check_goal` reads what is maximised (the ``layer``/``channels`` form, or objectives of
:mod:`netlens.objectives`), :func:`check_options` everything else, into an :class:`Options`.
Each check raises :class:`~netlens.NetlensTypeError` or :class:`~netlens.NetlensValueError`
with a message saying what was expected and what was received; the checks run in the order of
the arguments, so that the first wrong argument is the one reported.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from .._color import ColorStats, color_matrix
from .._core.checks import (
    as_int,
    as_real,
    check_channels,
    check_choice,
    check_int,
    check_real,
    non_finite,
)
from .._core.errors import NetlensTypeError, NetlensValueError, describe
from .._core.layers import LayerSpec
from .._core.outputs import LayerView, Select, layer_view
from .objectives import Objective, _Diversity
from .transforms import check_transform_names

__all__ = [
    "Decorrelate",
    "Goal",
    "Normalization",
    "ObjectiveSpec",
    "Options",
    "check_diversity",
    "check_goal",
    "check_normalization_fits",
    "check_options",
]

#: ``objective``: ``"mean"``, ``"center"``, a function from the selected maps ``(n, *map)`` to
#: one value per input ``(n,)``, or objectives of :mod:`netlens.objectives` (one or a list).
ObjectiveSpec = str | Callable[[torch.Tensor], torch.Tensor] | Objective | Sequence[Objective]

#: ``decorrelate``: off, on (ImageNet's colours), a data set's :class:`ColorStats`, or a 3x3
#: square root of a colour covariance.
Decorrelate = bool | ColorStats | torch.Tensor | Sequence[Sequence[float]]

#: ``normalize``: ``(mean, std)``, each a number or one number per input channel.
Normalization = tuple[
    float | Sequence[float] | torch.Tensor, float | Sequence[float] | torch.Tensor
]

_PARAMS = ("pixel", "fourier")
_REDUCTIONS = ("mean", "center")


@dataclass(frozen=True)
class Goal:
    """What is maximised, checked: a layer's channels, or objectives of netlens.objectives.

    Attributes:
        view: The layer of the ``layer``/``channels`` form; None for objectives.
        channels: The channels asked for in that form (None: all of the layer's).
        reduction: How a channel's map gives a value in that form: ``"mean"``, ``"center"``
            or a function of the maps.
        objectives: The objectives of the other form; None for the ``layer`` form.
        listed: Whether the results keep the channel (objective) dimension: channels or
            objectives given as a list (or all channels).
    """

    view: LayerView | None
    channels: list[int] | None
    reduction: str | Callable[[torch.Tensor], torch.Tensor]
    objectives: tuple[Objective, ...] | None
    listed: bool


@dataclass(frozen=True)
class Options:
    """Every option but what is maximised, checked (see :func:`~netlens.maximize_activation`).

    ``note`` says how ``shape`` was completed from the model's first layer ("" when it was
    not), for messages; ``colors`` is the 3x3 colour basis of ``decorrelate``;
    ``normalization`` is ``(mean, std)`` as float64 tensors; ``bounds`` the value range (the
    pictures' when ``normalize`` is given: (0, 1) by default).
    """

    shape: tuple[int, ...]
    note: str
    steps: int
    lr: float
    l2: float
    tv: float
    param: str
    transforms: tuple[str, ...]
    seed: int
    batch: int | None
    blur_every: int
    blur_sigma: float
    colors: torch.Tensor | None
    normalization: tuple[torch.Tensor, torch.Tensor] | None
    bounds: tuple[float, float] | None
    progress: bool

    @property
    def copies(self) -> int:
        """Inputs per channel or objective."""
        return 1 if self.batch is None else self.batch


def check_goal(
    model: nn.Module,
    layer: LayerSpec | None,
    channels: object,
    objective: object,
    select: Select | None,
    channel_dim: int | None,
) -> Goal:
    """What is maximised: the ``layer``/``channels`` form, or objectives without them."""
    expressions = _check_expressions(objective)
    if expressions is None:
        if layer is None:
            raise NetlensValueError(
                "Expected a layer (and channels), or an objective of netlens.objectives as "
                f"objective=, but got layer=None and objective={describe(objective)}."
            )
        view = layer_view(model, layer, select=select, channel_dim=channel_dim)
        requested, listed = (
            (None, True) if channels is None else check_channels("channels", channels)
        )
        return Goal(view, requested, _check_reduction(objective), None, listed)
    given = {
        name: value
        for name, value in (
            ("layer", layer),
            ("channels", channels),
            ("select", select),
            ("channel_dim", channel_dim),
        )
        if value is not None
    }
    if given:
        name = next(iter(given))
        raise NetlensValueError(
            f"Expected no {name} with an objective of netlens.objectives (the objective "
            f"names its layers and channels; select= and channel_dim= go to its terms), "
            f"but got {name}={describe(given[name])}."
        )
    objectives, listed = expressions
    return Goal(None, None, "mean", objectives, listed)


def check_options(
    model: nn.Module,
    *,
    input_shape: object,
    steps: object,
    lr: object,
    l2: object,
    tv: object,
    param: object,
    transforms: object,
    seed: object,
    batch: object,
    blur_every: object,
    blur_sigma: object,
    decorrelate: object,
    normalize: object,
    value_range: object,
    progress: bool,
) -> Options:
    """The options, checked in this order; see :func:`~netlens.maximize_activation`."""
    shape, note = _check_input_shape(model, input_shape)
    steps = check_int("steps", steps)
    lr = check_real("lr", lr, positive=True)
    l2 = check_real("l2", l2)
    tv = check_real("tv", tv)
    param = check_choice("param", param, _PARAMS)
    names = check_transform_names(transforms, shape)
    seed = check_int("seed", secrets.randbits(63) if seed is None else seed, minimum=0)
    batch = None if batch is None else check_int("batch", batch)
    blur_every = check_int("blur_every", blur_every, minimum=0)
    blur_sigma = check_real("blur_sigma", blur_sigma, positive=True)
    colors = color_matrix(decorrelate)
    if colors is not None and (len(shape) != 3 or shape[0] != 3):
        raise NetlensValueError(
            f"Expected an input_shape of RGB images (3, H, W) for decorrelate, but got {shape}."
        )
    normalization = _check_input_normalization(normalize, shape)
    bounds = _check_value_range(value_range)
    if bounds is None and normalization is not None:
        bounds = (0.0, 1.0)
    return Options(
        shape=shape,
        note=note,
        steps=steps,
        lr=lr,
        l2=l2,
        tv=tv,
        param=param,
        transforms=names,
        seed=seed,
        batch=batch,
        blur_every=blur_every,
        blur_sigma=blur_sigma,
        colors=colors,
        normalization=normalization,
        bounds=bounds,
        progress=progress,
    )


def check_diversity(goal: Goal, batch: int | None) -> None:
    """Refuse a diversity term with fewer than 2 inputs per objective to push apart."""
    if goal.objectives is None or (batch is not None and batch >= 2):
        return
    diverse = [
        term
        for objective in goal.objectives
        for _, term in objective.terms
        if isinstance(term, _Diversity)
    ]
    if diverse:
        raise NetlensValueError(
            f"Expected batch >= 2 for {diverse[0]!r}, which pushes the inputs of an "
            f"objective apart, but got batch={batch}."
        )


def _first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first module (in registration order) with parameters of its own, if any."""
    for name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is not None:
            return name, module
    return None


def _check_input_shape(model: nn.Module, input_shape: object) -> tuple[tuple[int, ...], str]:
    """The input shape, completed from the model's first layer where it says what is missing.

    A convolution first layer given only its spatial sizes (``(H, W)`` for ``Conv2d``) adds its
    ``in_channels`` in front; a linear first layer given nothing gives ``(in_features,)``.
    Nothing else is guessed: a recurrent layer's ``(8,)`` could mean 8 steps or 8 features.
    Also returns a note for messages, saying how the shape was completed ("" when it was not).
    """
    first = _first_layer(model)
    name, module = first if first is not None else ("", None)
    if input_shape is None and isinstance(module, nn.Linear):
        return (module.in_features,), f" (from the in_features of the first layer {name!r})"
    if isinstance(input_shape, torch.Size):
        input_shape = tuple(input_shape)
    if not isinstance(input_shape, (tuple, list)) or not input_shape:
        hint = ""
        if isinstance(module, nn.modules.conv._ConvNd):
            hint = (
                f"; the first layer {name!r} takes {module.in_channels} channels, so the "
                f"spatial size alone will do, such as {(32,) * len(module.kernel_size)}"
            )
        raise NetlensTypeError(
            "Expected input_shape to be a non-empty tuple of ints, the shape of one input "
            f"without the batch dimension such as (1, 28, 28), but got {describe(input_shape)}"
            f"{hint}."
        )
    sizes = [as_int(size) for size in input_shape]
    if any(size is None or size <= 0 for size in sizes):
        raise NetlensValueError(
            f"Expected input_shape to hold positive ints, but got {tuple(input_shape)}."
        )
    shape = tuple(size for size in sizes if size is not None)
    if isinstance(module, nn.modules.conv._ConvNd) and len(shape) == len(module.kernel_size):
        note = f" (completed from {shape} by the in_channels of the first layer {name!r})"
        return (module.in_channels, *shape), note
    return shape, ""


def _check_pair(name: str, value: object, pair: str, note: str = "") -> Sequence[object] | None:
    """None, or a tuple or list of two items (``pair`` names them, for messages)."""
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise NetlensTypeError(
            f"Expected {name} to be None or a pair {pair}{note}, but got {describe(value)}."
        )
    return value


def _check_value_range(value_range: object) -> tuple[float, float] | None:
    """``(low, high)`` as finite floats with ``low < high``, or None."""
    value_range = _check_pair("value_range", value_range, "(low, high)")
    if value_range is None:
        return None
    bounds = [as_real(bound) for bound in value_range]
    if any(bound is None for bound in bounds):
        raise NetlensTypeError(
            f"Expected value_range bounds to be numbers, but got {describe(value_range)}."
        )
    low, high = (cast(float, bound) for bound in bounds)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise NetlensValueError(
            f"Expected value_range bounds to be finite numbers, but got {tuple(value_range)}."
        )
    if not low < high:
        raise NetlensValueError(
            f"Expected value_range (low, high) with low < high, but got {tuple(value_range)}."
        )
    return low, high


def _check_reduction(objective: object) -> str | Callable[[torch.Tensor], torch.Tensor]:
    """The ``objective=`` of the ``layer`` form: ``"mean"``, ``"center"`` or a callable."""
    if callable(objective) and not isinstance(objective, Objective):
        return cast(Callable[[torch.Tensor], torch.Tensor], objective)
    if not isinstance(objective, str):
        raise NetlensTypeError(
            f"Expected objective to be one of {_REDUCTIONS}, a callable or objectives of "
            f"netlens.objectives, but got {describe(objective)}."
        )
    return check_choice("objective", objective, _REDUCTIONS)


def _check_expressions(objective: object) -> tuple[tuple[Objective, ...], bool] | None:
    """The objective expressions and whether they came as a list; None for the other forms."""
    if isinstance(objective, Objective):
        return (objective,), False
    if isinstance(objective, (list, tuple)):
        if not objective or not all(isinstance(item, Objective) for item in objective):
            raise NetlensTypeError(
                "Expected objective to be a string, a callable, an objective of "
                "netlens.objectives or a non-empty list of them, but got "
                f"{describe(objective)}."
            )
        return tuple(objective), True
    return None


def _check_input_normalization(
    normalize: object, shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(mean, std)`` as float64 tensors: scalars, or one entry per channel of an image."""
    normalize = _check_pair(
        "normalize", normalize, "(mean, std)", ", as torchvision's Normalize takes them"
    )
    if normalize is None:
        return None
    pair = []
    for name, value in zip(("mean", "std"), normalize, strict=True):
        if (isinstance(value, torch.Tensor) and value.is_complex()) or (
            isinstance(value, (np.ndarray, np.generic)) and np.iscomplexobj(value)
        ):
            raise NetlensTypeError(
                f"Expected normalize's {name} to hold real numbers, but got complex values "
                f"({describe(value)}), whose imaginary part would be lost."
            )
        try:
            tensor = torch.as_tensor(
                value.detach().cpu() if isinstance(value, torch.Tensor) else value,
                dtype=torch.float64,
            )
        except (TypeError, ValueError, RuntimeError) as error:
            raise NetlensTypeError(
                f"Expected normalize's {name} to be a number or a sequence of numbers, but got "
                f"{describe(value)}."
            ) from error
        if tensor.dim() > 1 or (tensor.dim() == 1 and (len(shape) != 3 or len(tensor) != shape[0])):
            raise NetlensValueError(
                f"Expected normalize's {name} to be a number or one number per channel of an "
                f"image input (C, H, W), but got {describe(value)} for input_shape {shape}."
            )
        if not bool(torch.isfinite(tensor).all()):
            raise NetlensValueError(
                f"Expected normalize's {name} to be finite, but got {tensor.tolist()}."
            )
        pair.append(tensor)
    mean, std = pair
    if not bool((std > 0).all()):
        raise NetlensValueError(f"Expected normalize's std to be > 0, but got {std.tolist()}.")
    return mean, std


def check_normalization_fits(
    normalization: tuple[torch.Tensor, torch.Tensor] | None,
    bounds: tuple[float, float] | None,
    work: torch.dtype,
    dtype: torch.dtype,
) -> None:
    """Refuse a ``normalize`` that is finite in float64 but not where it is used.

    ``(x - mean) / std`` is computed in ``work`` (float32 at least) and handed to the model in
    ``dtype``: a std of 1e-50 is 0 in float32, 1e-40 has an infinite reciprocal there, and a
    std of 1e-6 maps pixels in (0, 1) beyond what float16 holds.
    """
    if normalization is None:
        return
    mean, std = normalization
    for name, value in (("mean", mean), ("std", std)):
        bad = non_finite(value.to(work))
        if bad is not None:
            raise NetlensValueError(
                f"Expected normalize's {name} to be finite in {work}, the dtype the inputs are "
                f"computed in, but got {value.tolist()}, with {bad} values there."
            )
    cast = std.to(work)
    if not bool((cast > 0).all()) or non_finite(1 / cast) is not None:
        raise NetlensValueError(
            f"Expected normalize's std to be at least {torch.finfo(work).tiny:g} in {work}, the "
            f"dtype the inputs are computed in (so that 1 / std is finite there), but got "
            f"{std.tolist()}, which is {cast.tolist()} in {work}."
        )
    if bounds is None:
        return
    low, high = bounds
    extremes = torch.stack([(low - mean) / std, (high - mean) / std])
    if non_finite(extremes.to(work)) is not None or non_finite(extremes.to(dtype)) is not None:
        limit = torch.finfo(dtype).max
        raise NetlensValueError(
            f"Expected normalize to map the value range ({low:g}, {high:g}) to inputs that the "
            f"model's dtype {dtype} holds (up to {limit:g}), but (x - mean) / std reaches "
            f"{float(extremes.abs().max()):g}: check normalize's mean and std, and the value "
            "range (the pictures' units)."
        )
