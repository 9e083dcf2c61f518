"""The occlusion request, checked: every argument of ``occlusion`` in the form the run needs.

:func:`check_job` makes one frozen :class:`OcclusionJob` of them.

Each argument is checked on its own first, in the order of the signature, so that a wrong one
is named as such; then the arguments that depend on each other (a channel without a layer, a
model whose batch statistics forbid some batchings).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, cast

import torch
from torch import nn

from .._core.checks import (
    InputInfo,
    as_int,
    as_real,
    check_bool,
    check_callable,
    check_channel_dim,
    check_channels,
    check_choice,
    check_int,
    prepare_inputs,
)
from .._core.errors import NetlensTypeError, NetlensValueError, describe
from .._core.layers import LayerSpec, check_model
from .._core.outputs import LayerView, Select, check_select, layer_view
from .geometry import OccluderGrid, check_grid

__all__ = ["Baseline", "Mode", "OcclusionJob", "Scores", "Target", "check_job"]

# Default memory budgets of one forward pass (see ``memory_budget`` of :func:`occlusion`). Small
# on the CPU on purpose: passes whose activations stay near the caches run faster than bigger
# ones; on GPUs bigger batches pay.
_CPU_BUDGET = 48 * 2**20
_ACCELERATOR_BUDGET = 1024 * 2**20

Scores: TypeAlias = Literal["softmax", "logits"] | Callable[[Any], torch.Tensor]
Target: TypeAlias = Literal["pred"] | int | Sequence[int] | torch.Tensor
Baseline: TypeAlias = float | Literal["mean"] | torch.Tensor
# How the occluded copies are computed: incremental inference (True), every copy through the
# whole model (False), or whichever pays ("auto").
Mode: TypeAlias = bool | Literal["auto"]


@dataclass(frozen=True, eq=False)
class OcclusionJob:
    """An occlusion request after every argument is checked.

    Attributes:
        model: The model.
        given_inputs: The inputs as the user passed them (the result holds them).
        inputs: The inputs on the model's device (floating ones in its floating dtype).
        restore: How to hand results back on the inputs' device and in their dtype.
        grid: Where the occluder goes.
        baseline: The occluder's values, ``(N or 1, lead or 1, plane or 1)``: a value per input
            (or one for all), per leading dim before the occluded ones, per occluded element.
        scores: From the model's output to ``(rows, classes)`` scores.
        custom_scores: Whether ``scores`` is the user's (which takes any output).
        target: The requested class of each input, ``(N,)``; None for the predicted one.
        channels: The requested channels, or None for the strongest one of each input.
        listed: Whether the channels were given as a list (a channel dim in the result).
        layer: The recorded layer, or None.
        mode: Incremental inference: True, False or ``"auto"``.
        batch_size: Copies per forward pass, or None to follow ``budget``.
        budget: Bytes one forward pass may take.
        progress: Whether to show a progress bar.
    """

    model: nn.Module
    given_inputs: torch.Tensor
    inputs: torch.Tensor
    restore: InputInfo
    grid: OccluderGrid
    baseline: torch.Tensor
    scores: Callable[[Any], torch.Tensor]
    custom_scores: bool
    target: torch.Tensor | None
    channels: list[int] | None
    listed: bool
    layer: LayerView | None
    mode: Mode
    batch_size: int | None
    budget: int
    progress: bool

    def full_baseline(self) -> torch.Tensor:
        """The baseline as whole samples, ``(N or 1, *sample_shape)``."""
        grid, planes = self.grid, self.baseline
        lead = self.inputs[0].numel() // grid.plane_size
        return planes.expand(planes.shape[0], lead, grid.plane_size).reshape(-1, *grid.sample_shape)


def check_job(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    window: int | Sequence[int],
    stride: int | Sequence[int] | None,
    baseline: Baseline,
    target: Target,
    scores: Scores,
    layer: LayerSpec | None,
    channel: int | Sequence[int] | torch.Tensor | None,
    batch_size: int | None,
    memory_budget: int | None,
    incremental: Mode,
    progress: bool,
    select: Select | None,
    channel_dim: int | None,
) -> OcclusionJob:
    """Check the arguments of :func:`~netlens.occlusion` (see there) and make the job.

    Raises:
        NetlensValueError: A wrong value (see :func:`~netlens.occlusion`).
        NetlensTypeError: A value of the wrong type.
    """
    check_model(model)
    progress = check_bool("progress", progress)
    prepared, info = prepare_inputs(inputs, model, floating=False)
    _check_occludable(prepared)
    count, device = prepared.shape[0], prepared.device
    grid = check_grid(prepared, window, stride)
    baseline_planes = _baseline(baseline, prepared, grid.plane_size)
    if not prepared.is_floating_point():
        _check_token_baseline(model, baseline_planes)
    score_function, custom_scores = _scores_function(scores)
    requested_target = None
    if isinstance(target, str):
        check_choice("target", target, ("pred",))
    else:
        requested_target = _per_input(target, "target", count, device)
    checked_batch_size = None if batch_size is None else check_int("batch_size", batch_size)
    budget = (
        _default_budget(device)
        if memory_budget is None
        else check_int("memory_budget", memory_budget)
    )
    # each argument checked on its own first, so that a wrong one is named as such
    channels, listed = (None, False) if channel is None else check_channels("channel", channel)
    check_select(select)
    check_channel_dim("channel_dim", channel_dim, optional=True)
    view = None
    if layer is not None:
        view = layer_view(model, layer, select=select, channel_dim=channel_dim)
    elif channel is not None or select is not None or channel_dim is not None:
        raise NetlensValueError(
            "Expected layer= together with channel=, select= or channel_dim=, but got no layer."
        )
    mode = _check_mode(model, _check_incremental(incremental), checked_batch_size)
    return OcclusionJob(
        model=model,
        given_inputs=inputs,
        inputs=prepared,
        restore=info,
        grid=grid,
        baseline=baseline_planes,
        scores=score_function,
        custom_scores=custom_scores,
        target=requested_target,
        channels=channels,
        listed=listed,
        layer=view,
        mode=mode,
        batch_size=checked_batch_size,
        budget=budget,
        progress=progress,
    )


def _check_occludable(inputs: torch.Tensor) -> None:
    """What occlusion asks of inputs beyond :func:`prepare_inputs`' checks.

    A dtype it can hide part of (floating point, or integer token ids), at least one dim to
    occlude after the batch dim, and finite values.
    """
    if inputs.is_complex() or inputs.dtype == torch.bool:
        raise NetlensTypeError(
            "Expected floating-point inputs, or integer inputs (token ids) with an integer "
            f"baseline, but got dtype {inputs.dtype}."
        )
    if inputs.dim() < 2:
        raise NetlensValueError(
            "Expected inputs of shape (N, ...) with at least one dim to occlude after the batch "
            f"dim, but got shape {tuple(inputs.shape)}."
        )
    if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
        raise NetlensValueError("Expected finite inputs, but they hold NaN or inf values.")


def _check_mode(model: nn.Module, mode: Mode, batch_size: int | None) -> Mode:
    """The mode, where the model normalises with each batch's statistics: never incremental.

    Such a model's maps would depend on how the copies are batched, so the user must choose the
    batching, and incremental inference (whose batches differ) cannot run.
    """
    batch_statistics = _batch_statistics(model)
    if batch_statistics is None:
        return mode
    if batch_size is None:
        raise NetlensValueError(
            "Expected a model whose output on one input does not depend on the other inputs "
            f"of its batch, but module {batch_statistics} normalises with the statistics of "
            "each batch (track_running_stats=False), so the maps would depend on how the "
            "occluded copies are batched (on memory_budget). Pass batch_size=1 to run each "
            "copy on its own, or another batch_size to choose the batching yourself."
        )
    if mode is True:
        raise NetlensValueError(
            "Expected a model that incremental inference can run on (incremental=True), but "
            f"module {batch_statistics} normalises with the statistics of each batch. Pass "
            "incremental=False."
        )
    return False


def _baseline(baseline: object, inputs: torch.Tensor, plane_size: int) -> torch.Tensor:
    """The baseline as ``(N or 1, lead or 1, plane or 1)``, in the inputs' dtype and device.

    Integer inputs (token ids) take an integer baseline only (a [MASK] id): a fractional value
    has no meaning there, and rounding it silently would occlude with another token.
    """
    count = inputs.shape[0]
    integer = not inputs.is_floating_point()
    wanted = (
        "an integer (a token id) or an integer tensor"
        if integer
        else "a number, 'mean' or a tensor"
    )
    if isinstance(baseline, str):
        check_choice("baseline", baseline, ("mean",))
        if integer:
            raise NetlensTypeError(
                f"Expected baseline to be {wanted} for integer inputs of dtype {inputs.dtype}, "
                "but got 'mean'."
            )
        return inputs.reshape(count, -1).mean(1).reshape(count, 1, 1)
    if isinstance(baseline, torch.Tensor):
        if (
            baseline.is_complex()
            or baseline.dtype == torch.bool
            or (integer and baseline.is_floating_point())
        ):
            raise NetlensTypeError(
                f"Expected baseline to be {wanted} for inputs of dtype {inputs.dtype}, but got "
                f"{describe(baseline)}."
            )
        aligned = zip(reversed(baseline.shape), reversed(inputs.shape), strict=False)
        if baseline.dim() > inputs.dim() or any(b not in (1, i) for b, i in aligned):
            raise NetlensValueError(
                "Expected a baseline tensor broadcastable to the inputs' shape "
                f"{tuple(inputs.shape)}, but got shape {tuple(baseline.shape)}."
            )
        values = baseline.detach().to(dtype=inputs.dtype, device=inputs.device)
        if not integer and not bool(torch.isfinite(values).all()):
            raise NetlensValueError("Expected a finite baseline, but it holds NaN or inf values.")
        return values.expand(inputs.shape).reshape(count, -1, plane_size)
    number = as_int(baseline) if integer else as_real(baseline)
    if number is None:
        raise NetlensTypeError(
            f"Expected baseline to be {wanted} for inputs of dtype {inputs.dtype}, but got "
            f"{describe(baseline)}."
        )
    if not math.isfinite(number):
        raise NetlensValueError(f"Expected a finite baseline, but got {number}.")
    return torch.full((1, 1, 1), number, dtype=inputs.dtype, device=inputs.device)


def _check_token_baseline(model: nn.Module, baseline: torch.Tensor) -> None:
    """A token-id baseline must be in the vocabulary of the model's first embedding."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            vocabulary = module.num_embeddings
            outside = (baseline < 0) | (baseline >= vocabulary)
            if bool(outside.any()):
                raise NetlensValueError(
                    f"Expected baseline token ids in [0, {vocabulary}) (the vocabulary of "
                    f"embedding {name!r}), but got {int(baseline[outside][0])}."
                )
            return


def _batch_statistics(model: nn.Module) -> str | None:
    """The first normalisation that uses each batch's statistics in eval mode, named; or None."""
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.modules.batchnorm._NormBase)
            and not isinstance(module, nn.modules.instancenorm._InstanceNorm)
            and module.running_mean is None
        ):
            return f"{name!r} ({type(module).__name__})"
    return None


def _softmax(output: torch.Tensor) -> torch.Tensor:
    return torch.softmax(output, dim=1)


def _identity(output: torch.Tensor) -> torch.Tensor:
    return output


def _scores_function(scores: object) -> tuple[Callable[[Any], torch.Tensor], bool]:
    """The function from the model's output to scores, and whether the user gave it."""
    if isinstance(scores, str):
        check_choice("scores", scores, ("softmax", "logits"))
        return (_softmax if scores == "softmax" else _identity), False
    return cast(Callable[[Any], torch.Tensor], check_callable("scores", scores)), True


def _per_input(value: object, name: str, count: int, device: torch.device) -> torch.Tensor:
    """A non-negative int, or one per input (sequence or tensor), as ``(count,)`` int64."""
    single = as_int(value)
    if single is not None:
        values = torch.full((count,), single, dtype=torch.long, device=device)
    elif isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise NetlensTypeError(f"Expected {name} to hold integers, but got {describe(value)}.")
        values = value.detach().to(device=device, dtype=torch.long)
    elif isinstance(value, (list, tuple)) and all(as_int(v) is not None for v in value):
        values = torch.tensor([as_int(v) for v in value], dtype=torch.long, device=device)
    else:
        raise NetlensTypeError(
            f"Expected {name} to be an int or one int per input, but got {describe(value)}."
        )
    if values.dim() == 0:
        values = values.expand(count).clone()
    if values.dim() != 1 or values.shape[0] != count:
        raise NetlensValueError(
            f"Expected one {name} per input ({count}), but got shape {tuple(values.shape)}."
        )
    if bool((values < 0).any()):
        raise NetlensValueError(f"Expected {name} >= 0, but got {values[values < 0].tolist()}.")
    return values


def _check_incremental(value: object) -> bool | Literal["auto"]:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        check_choice("incremental", value, ("auto",))
        return "auto"
    raise NetlensTypeError(
        f"Expected incremental to be 'auto', True or False, but got {describe(value)}."
    )


def _default_budget(device: torch.device) -> int:
    return _CPU_BUDGET if device.type == "cpu" else _ACCELERATOR_BUDGET
