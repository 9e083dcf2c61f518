"""The atlas' optional pages of chosen inputs: occlusion maps and predicted classes.

The occluder covers a quarter of each occluded dimension and moves by half of itself (for a
sequence of rows, a quarter of the rows across all features), the grid that Zeiler & Fergus'
Figure 7 uses on a small image; every chosen input is occluded in one call of
:func:`~netlens.occlusion`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._core.errors import NetlensTypeError, NetlensValueError, describe
from .._occlusion.api import occlusion
from .._occlusion.result import OcclusionMap

__all__ = ["Occluded", "check_inputs", "occlude"]

#: Classes listed per input.
TOP = 5


@dataclass(frozen=True, eq=False)
class Occluded:
    """The chosen inputs' occlusion maps and their most probable classes."""

    occlusion: OcclusionMap
    classes: torch.Tensor  # (n, TOP) int64, most probable first; (n, 0) for a non-classifier
    probabilities: torch.Tensor  # (n, TOP) their softmax probabilities


def check_inputs(inputs: object, input_shape: tuple[int, ...]) -> torch.Tensor:
    """``inputs`` as a batch of inputs shaped like the data's."""
    if not isinstance(inputs, torch.Tensor):
        raise NetlensTypeError(
            f"Expected inputs_for_occlusion to be a tensor of inputs, but got {describe(inputs)}."
        )
    if inputs.dim() == len(input_shape):
        inputs = inputs.unsqueeze(0)  # one input
    if tuple(inputs.shape[1:]) != input_shape or inputs.shape[0] == 0:
        raise NetlensValueError(
            f"Expected inputs_for_occlusion of shape (n, {', '.join(map(str, input_shape))}) "
            f"like the data's inputs, but got shape {tuple(inputs.shape)}."
        )
    return inputs


def _window(input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A quarter of each occluded dim, moved by half of itself; rows whole for sequences."""
    if len(input_shape) >= 3:  # (C, H, W): the last two dims
        window = tuple(max(1, size // 4) for size in input_shape[-2:])
    elif len(input_shape) == 2:  # (T, F): a quarter of the rows, every feature
        window = (max(1, input_shape[0] // 4), input_shape[1])
    else:
        window = (max(1, input_shape[0] // 4),)
    stride = tuple(max(1, size // 2) for size in window)
    if len(input_shape) == 2:
        stride = (stride[0], input_shape[1])
    return window, stride


def occlude(model: nn.Module, inputs: torch.Tensor) -> Occluded:
    """Occlusion maps of ``inputs`` and their ``TOP`` most probable classes."""
    window, stride = _window(tuple(inputs.shape[1:]))
    maps = occlusion(model, inputs, window=window, stride=stride)
    with torch.no_grad():
        output = model(inputs.to(maps.inputs.device))
    if isinstance(output, torch.Tensor) and output.dim() == 2 and output.is_floating_point():
        probabilities, classes = output.softmax(dim=1).topk(min(TOP, output.shape[1]), dim=1)
    else:
        classes = torch.empty(inputs.shape[0], 0, dtype=torch.long)
        probabilities = torch.empty(inputs.shape[0], 0)
    return Occluded(maps, classes.cpu(), probabilities.cpu())
