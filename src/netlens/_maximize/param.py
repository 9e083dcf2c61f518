"""The synthesised inputs as functions of parameters: parametrisation, colours, squash, normalise.

An input is made as ``parameter -> spatial image (pixel or Fourier) -> colours (decorrelate) ->
value range (a tanh squash) -> normalize``. :func:`input_pipeline` returns lucent's pair: the
parametrisation, whose tensor ``raw`` the optimiser changes, and the function from it to the
batch of inputs the model takes. Each input starts from its own noise, drawn from its own
generator (:func:`input_generators`), so that an input is the same alone or in a batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import torch

from .._color import to_colors
from .transforms import gaussian_blur

__all__ = [
    "Fourier",
    "Parametrization",
    "Pixel",
    "input_generators",
    "input_pipeline",
    "spatial_dims",
]

#: Standard deviation of the initial noise, in pixel units (pixel) or spectrum units (fourier).
_INIT_STD = 0.01


def spatial_dims(rank: int) -> int:
    """How many trailing dims are space (or time).

    All of a vector or a (T, F) plane, else all but the leading channel dim.
    """
    return rank if rank <= 2 else rank - 1


def _channel_seed(seed: int, channel: int, copy: int | None = None) -> int:
    """A well-mixed 64-bit seed per (seed, channel) or (seed, channel, copy).

    A channel's run is thus the same alone or in a batch of others.
    """
    entropy = [seed, channel] if copy is None else [seed, channel, copy]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def input_generators(seed: int, labels: Sequence[int], batch: int | None) -> list[torch.Generator]:
    """One generator per input, channel (or objective) major, ``batch`` copies each.

    They draw each input's starting noise, then its transforms at every step.
    """
    copies = 1 if batch is None else batch
    return [
        torch.Generator().manual_seed(_channel_seed(seed, label, None if batch is None else copy))
        for label in labels
        for copy in range(copies)
    ]


class Pixel:
    """The input itself (before the value-range squash) is the parameter."""

    def __init__(self, noise: torch.Tensor) -> None:
        self.raw = noise.clone().requires_grad_(True)

    def image(self) -> torch.Tensor:
        """The spatial image: the parameter itself."""
        return self.raw

    @torch.no_grad()
    def blur_(self, sigma: float, spatial: int) -> None:
        """Blur the parameter in place by a Gaussian of ``sigma`` pixels."""
        self.raw.copy_(gaussian_blur(self.raw, sigma, spatial))


class Fourier:
    """A spectrum scaled by 1/frequency (Olah et al. 2017).

    Steps of equal size then change every frequency alike, so the optimiser is not dominated by
    high-frequency patterns.

    This decorrelates space; colours are decorrelated after it, by ``decorrelate=``.
    """

    def __init__(self, noise: torch.Tensor, shape: tuple[int, ...], spatial: int) -> None:
        self.shape = shape
        self.dims = tuple(range(-spatial, 0))
        frequency = _frequencies(shape[-spatial:]).to(noise.device, noise.dtype)
        self.frequency = frequency
        # 1/f, floored at the lowest frequency so that the mean is not infinitely amplified;
        # "ortho" keeps the scale independent of the size; /4 as in lucid's fft_image.
        self.scale = 1.0 / frequency.clamp_min(1.0 / max(shape[-spatial:])) / 4.0
        self.raw = noise.clone().requires_grad_(True)

    def image(self) -> torch.Tensor:
        """The spatial image: the inverse real FFT of the scaled spectrum."""
        spectrum = torch.view_as_complex(self.raw) * self.scale
        return torch.fft.irfftn(  # type: ignore[no-any-return]
            spectrum, s=self.shape[-len(self.dims) :], dim=self.dims, norm="ortho"
        )

    @torch.no_grad()
    def blur_(self, sigma: float, spatial: int) -> None:
        """Blur in place: the spectrum times that of a Gaussian of ``sigma`` pixels."""
        # The Fourier transform of a Gaussian of std sigma pixels: an exact (circular) blur.
        self.raw.mul_(torch.exp(-2.0 * math.pi**2 * sigma**2 * self.frequency**2)[..., None])


#: A parametrisation: ``raw``, the tensor optimised; ``image()``; ``blur_(sigma, spatial)``.
Parametrization = Pixel | Fourier


def _frequencies(size: Sequence[int]) -> torch.Tensor:
    """|f| in cycles per sample on the grid of an n-D real FFT of ``size``."""
    axes = [torch.fft.fftfreq(n, dtype=torch.float64) for n in size[:-1]]
    axes.append(torch.fft.rfftfreq(size[-1], dtype=torch.float64))
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grids).pow(2).sum(0).sqrt()


def _spectrum_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The real view ``(..., 2)`` of the spectrum of a real FFT over the trailing dims."""
    return (*shape[:-1], shape[-1] // 2 + 1, 2)


def input_pipeline(
    param: str,
    generators: Sequence[torch.Generator],
    shape: tuple[int, ...],
    *,
    colors: torch.Tensor | None,
    bounds: tuple[float, float] | None,
    normalization: tuple[torch.Tensor, torch.Tensor] | None,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Parametrization, Callable[[], torch.Tensor]]:
    """The parametrisation of a batch of inputs, and the function from it to the inputs.

    Args:
        param: ``"pixel"`` or ``"fourier"``.
        generators: One per input (:func:`input_generators`): each draws its starting noise.
        shape: The shape of one input.
        colors: The 3x3 colour basis (``decorrelate=``), or None.
        bounds: The value range the squash keeps the pictures in, or None.
        normalization: ``(mean, std)`` as float64 tensors (scalars or one per channel), or None.
        dtype: The dtype the parameters and inputs are computed in.
        device: Where they live.

    Returns:
        ``(parametrisation, image)``: ``image()`` is the batch of inputs before transforms.
    """
    spatial = spatial_dims(len(shape))
    raw_shape = shape if param == "pixel" else _spectrum_shape(shape)
    noise = torch.stack(
        [_INIT_STD * torch.randn(raw_shape, generator=g, dtype=dtype) for g in generators]
    ).to(device)
    parametrization: Parametrization = (
        Pixel(noise) if param == "pixel" else Fourier(noise, shape, spatial)
    )
    mean_std = _broadcast_normalization(normalization, shape, dtype, device)
    matrix = None if colors is None else colors.to(device, dtype)

    def image() -> torch.Tensor:
        raw = parametrization.image()
        if matrix is not None:
            raw = to_colors(raw, matrix)
        if bounds is not None:
            low, high = bounds
            raw = low + (high - low) * (torch.tanh(raw) + 1) / 2
        if mean_std is not None:
            mean, std = mean_std
            raw = (raw - mean) / std
        return raw

    return parametrization, image


def _broadcast_normalization(
    normalization: tuple[torch.Tensor, torch.Tensor] | None,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(mean, std)`` shaped to broadcast over a batch of inputs of ``shape``."""
    if normalization is None:
        return None
    view = (-1,) + (1,) * (len(shape) - 1)
    return cast(
        "tuple[torch.Tensor, torch.Tensor]",
        tuple(
            (value.view(view) if value.dim() else value).to(device, dtype)
            for value in normalization
        ),
    )
