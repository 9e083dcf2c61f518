"""Image operations of activation maximisation: the random transforms of each step, and blur.

The transforms (a random jitter, scale and rotation, Olah et al. 2017) are applied afresh to
every input at every step, so that the inputs found do not depend on one exact pixel grid. They
are one callable, :class:`RandomTransform`, built once per run: each input draws its own random
numbers from its own generator, and all three are done in one resampling (composing three
resamplings would blur the inputs three times).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._core.errors import NetlensTypeError, NetlensValueError, describe

__all__ = ["TRANSFORMS", "RandomTransform", "check_transform_names", "gaussian_blur", "resample"]

#: The transforms ``transforms=`` may name, in the order they are listed in messages.
TRANSFORMS = ("jitter", "scale", "rotate")
# Random scale range and largest rotation (degrees) of the default transforms.
_SCALE_RANGE = (0.9, 1.1)
_MAX_DEGREES = 10.0
# How many uniform numbers each input draws per step: shift x, shift y, scale, angle (always all
# four, whichever transforms are on, so that an input's draws do not depend on the others).
_DRAWS = 4


def check_transform_names(transforms: object, input_shape: tuple[int, ...]) -> tuple[str, ...]:
    """The transforms ``transforms=`` asks for, in the order of :data:`TRANSFORMS`.

    ``"default"``: all three for images ``(C, H, W)``, the jitter for sequences ``(T, F)``,
    none otherwise; None: none; or a name or a list of names.
    """
    rank = len(input_shape)
    if transforms is None:
        return ()
    if isinstance(transforms, str):
        if transforms == "default":
            return TRANSFORMS if rank == 3 else ("jitter",) if rank == 2 else ()
        transforms = (transforms,)
    if not isinstance(transforms, (tuple, list)) or not all(isinstance(t, str) for t in transforms):
        raise NetlensTypeError(
            'Expected transforms to be "default", None or a list of names from '
            f"{list(TRANSFORMS)}, but got {describe(transforms)}."
        )
    unknown = [name for name in transforms if name not in TRANSFORMS]
    if unknown:
        raise NetlensValueError(
            f'Expected transforms to be "default", None or names from {list(TRANSFORMS)}, but '
            f"got {unknown[0]!r}."
        )
    if transforms and rank not in (2, 3):
        raise NetlensValueError(
            "Expected an input_shape of an image (C, H, W) or a sequence (T, F) for transforms, "
            f"but got {input_shape}; pass transforms=None."
        )
    return tuple(name for name in TRANSFORMS if name in transforms)


class RandomTransform:
    """``images -> transformed images``: each input moved by its own random draws.

    Args:
        names: The transforms, from :func:`check_transform_names` (not empty).
        generators: One generator per input, in the order of the batch.
        sequence: Whether the inputs are ``(T, F)`` sequences (jittered along time only).
    """

    def __init__(
        self, names: tuple[str, ...], generators: Sequence[torch.Generator], sequence: bool
    ) -> None:
        self.names = names
        self.generators = generators
        self.sequence = sequence

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The batch ``images`` transformed, each input by fresh draws of its generator."""
        draws = torch.stack(
            [torch.rand(_DRAWS, generator=g, dtype=torch.float64) for g in self.generators]
        )
        return resample(images, draws, self.names, self.sequence)


def resample(
    images: torch.Tensor, draws: torch.Tensor, names: tuple[str, ...], sequence: bool
) -> torch.Tensor:
    """Jitter, scale and rotate each input by its own random draws, in one resampling.

    ``draws`` is ``(n, 4)`` uniform in [0, 1): shift x, shift y, scale, angle. Shifts are whole
    pixels; edges are reflected so that values stay inside the input's range. For a ``(T, F)``
    sequence the jitter shifts along time only.
    """
    planes = images.unsqueeze(1) if sequence else images  # (n, C, H, W)
    height, width = planes.shape[-2:]
    count = planes.shape[0]
    draws = draws.to(torch.float64)
    shift_x = torch.zeros(count, dtype=torch.float64)
    shift_y = torch.zeros(count, dtype=torch.float64)
    if "jitter" in names:
        reach_y = max(1, round(height / 14))
        shift_y = torch.floor(draws[:, 1] * (2 * reach_y + 1)) - reach_y
        if not sequence:
            reach_x = max(1, round(width / 14))
            shift_x = torch.floor(draws[:, 0] * (2 * reach_x + 1)) - reach_x
    scale = torch.ones(count, dtype=torch.float64)
    if "scale" in names:
        low, high = _SCALE_RANGE
        scale = low + (high - low) * draws[:, 2]
    angle = torch.zeros(count, dtype=torch.float64)
    if "rotate" in names:
        angle = torch.deg2rad((2 * draws[:, 3] - 1) * _MAX_DEGREES)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    # A rotation in pixel space, written in grid_sample's normalised [-1, 1] coordinates.
    theta = torch.stack(
        [
            torch.stack([cos, -sin * height / width, 2 * shift_x / width], dim=1),
            torch.stack([sin * width / height, cos, 2 * shift_y / height], dim=1),
        ],
        dim=1,
    ).to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(planes.shape), align_corners=False)
    moved = F.grid_sample(
        planes, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    return moved.squeeze(1) if sequence else moved


def gaussian_blur(images: torch.Tensor, sigma: float, spatial: int) -> torch.Tensor:
    """Separable Gaussian blur of the last ``spatial`` dims, edges reflected (or replicated)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(images.device, images.dtype).view(1, 1, -1)
    out = images
    for dim in range(images.dim() - spatial, images.dim()):
        moved = out.movedim(dim, -1)
        flat = moved.reshape(-1, 1, moved.shape[-1])
        mode = "reflect" if moved.shape[-1] > radius else "replicate"
        flat = F.conv1d(F.pad(flat, (radius, radius), mode=mode), kernel)
        out = flat.reshape(moved.shape).movedim(-1, dim)
    return out
