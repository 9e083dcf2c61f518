"""Colour statistics of a data set, and the decorrelated colour basis of activation maximisation.

Neighbouring pixels and the three colour channels of natural images are strongly correlated:
most of the variance lies along the luminance direction. Optimising an image in a basis where
its colours are decorrelated (Olah, Mordvintsev & Schubert 2017, "Feature Visualization";
Lucid's ``to_valid_rgb(decorrelate=True)``) makes equal steps change every colour component
alike, so the optimiser is not drawn to saturated, high-contrast colours first. The basis is
the square root of the colours' covariance: if ``z`` has uncorrelated unit components,
``M @ z`` has the data's colour covariance (up to scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import as_int, batches
from ._errors import NetlensTypeError, NetlensValueError, describe

__all__ = ["IMAGENET_COLOR_SQRT", "ColorStats", "color_matrix", "color_stats", "to_colors"]

#: The square root of ImageNet's colour covariance (pixels in [0, 1]; columns: the principal
#: colour directions scaled by the root of their variance), Lucid's and lucent's
#: ``color_correlation_svd_sqrt``. The default basis of ``decorrelate=True``.
IMAGENET_COLOR_SQRT = (
    (0.26, 0.09, 0.02),
    (0.27, 0.00, -0.05),
    (0.27, -0.09, 0.03),
)


@dataclass(frozen=True, eq=False)
class ColorStats:
    """The colour statistics of a set of images, from :func:`color_stats`.

    All float64 on the CPU, in the units of the images given (pixels in [0, 1] for torchvision's
    ``ToTensor()``).

    Attributes:
        mean: The mean of each colour channel, ``(3,)``.
        std: The standard deviation of each colour channel, ``(3,)``: with ``mean``, the
            ``normalize=(mean, std)`` of a model trained on these images normalised by them.
        covariance: The ``(3, 3)`` covariance of the channels over all pixels.
        count: How many pixels were counted.
    """

    mean: torch.Tensor
    std: torch.Tensor
    covariance: torch.Tensor
    count: int

    @property
    def basis(self) -> torch.Tensor:
        """The colour basis: the square root ``U sqrt(S)`` of the covariance ``U S U^T``.

        Each column is a principal colour direction (sign chosen so that its largest entry is
        positive) scaled by the root of the variance along it, strongest first, as Lucid's
        ``color_correlation_svd_sqrt``; ``basis @ basis.T`` is the covariance.
        """
        values, vectors = torch.linalg.eigh(self.covariance)
        order = torch.argsort(values, descending=True)
        values, vectors = values[order].clamp_min(0.0), vectors[:, order]
        largest = vectors.abs().argmax(0)
        signs = torch.sign(vectors[largest, torch.arange(3)])
        basis: torch.Tensor = vectors * signs * values.sqrt()
        return basis

    def __repr__(self) -> str:
        mean = ", ".join(f"{value:.4f}" for value in self.mean.tolist())
        std = ", ".join(f"{value:.4f}" for value in self.std.tolist())
        return f"ColorStats(mean=({mean}), std=({std}), count={self.count})"


def color_stats(data: object, *, channel_dim: int = 1) -> ColorStats:
    """Estimate the colour statistics of a data set: per-channel mean and std, and covariance.

    For ``decorrelate=`` and ``normalize=`` of :func:`maximize_activation`: give it the images
    as the model sees them *before* normalisation (pixels in [0, 1] for torchvision's
    ``ToTensor()``); ``(stats.mean, stats.std)`` is then the ``Normalize`` of a model trained on
    the images standardised by their own statistics, and ``decorrelate=stats`` optimises in the
    data's own colour basis. A few thousand images are plenty. Streaming, in float64.

    Args:
        data: A tensor of RGB images ``(N, 3, H, W)``, or any iterable of such batches or of
            ``(images, targets, ...)`` tuples (a ``DataLoader``, a list).
        channel_dim: The colour axis of each batch (``-1`` for ``(N, H, W, 3)`` images).

    Returns:
        A :class:`ColorStats`.

    Raises:
        NetlensTypeError: For data that is not a tensor or an iterable of tensors.
        NetlensValueError: For batches without 3 colour channels on ``channel_dim``, or no data.

    Example:
        >>> import torch
        >>> import netlens as nl
        >>> grey = torch.rand(64, 1, 8, 8).expand(64, 3, 8, 8)  # R = G = B
        >>> stats = nl.color_stats(grey)
        >>> stats.covariance.shape, stats.basis.shape
        (torch.Size([3, 3]), torch.Size([3, 3]))
        >>> bool(stats.basis[:, 1:].abs().max() < 1e-7)  # one colour direction only
        True
    """
    dim = as_int(channel_dim)
    if dim is None:
        raise NetlensTypeError(
            f"Expected channel_dim to be an int, but got {describe(channel_dim)}."
        )
    count = 0
    shift: torch.Tensor | None = None
    total = torch.zeros(3, dtype=torch.float64)
    outer = torch.zeros(3, 3, dtype=torch.float64)
    for images in batches(data):
        if images.dim() < 2 or not -images.dim() <= dim < images.dim():
            raise NetlensValueError(
                f"Expected batches of images with their colours on dim {dim}, such as (N, 3, H, "
                f"W), but got a batch of shape {tuple(images.shape)}."
            )
        if images.shape[dim] != 3:
            raise NetlensValueError(
                f"Expected images with 3 colour channels on dim {dim}, but got a batch of shape "
                f"{tuple(images.shape)}."
            )
        pixels = images.detach().movedim(dim, -1).reshape(-1, 3).to("cpu", torch.float64)
        if shift is None:
            # Sums about a value near the mean keep the covariance exact in float64.
            shift = pixels.mean(0)
        centred = pixels - shift
        total += centred.sum(0)
        outer += centred.T @ centred
        count += pixels.shape[0]
    if shift is None or count < 2:
        raise NetlensValueError(
            f"Expected data with at least 2 pixels, but got {count} from {describe(data)}."
        )
    mean_offset = total / count
    covariance = (outer - count * torch.outer(mean_offset, mean_offset)) / (count - 1)
    return ColorStats(
        mean=shift + mean_offset,
        std=covariance.diagonal().clamp_min(0.0).sqrt(),
        covariance=covariance,
        count=count,
    )


def color_matrix(decorrelate: object) -> torch.Tensor | None:
    """The float64 colour basis for ``decorrelate=``, scaled so its largest column has norm 1.

    ``False``: None; ``True``: :data:`IMAGENET_COLOR_SQRT`; a :class:`ColorStats`: its
    ``basis``; a 3x3 matrix: the square root of a colour covariance, taken as it is. The scaling
    is Lucid's: only the shape of the colour distribution matters, not its units.
    """
    if decorrelate is False or decorrelate is None:
        return None
    if decorrelate is True:
        matrix = torch.tensor(IMAGENET_COLOR_SQRT, dtype=torch.float64)
    elif isinstance(decorrelate, ColorStats):
        matrix = decorrelate.basis
    elif isinstance(decorrelate, (torch.Tensor, np.ndarray, list, tuple)):
        try:
            matrix = torch.as_tensor(np.asarray(decorrelate, dtype=np.float64))
        except (TypeError, ValueError) as error:
            raise NetlensTypeError(
                "Expected decorrelate to be a bool, a ColorStats or a 3x3 matrix of numbers, but "
                f"got {describe(decorrelate)}."
            ) from error
        if matrix.shape != (3, 3):
            raise NetlensValueError(
                "Expected decorrelate to be a 3x3 matrix (the square root of a colour "
                f"covariance), but got one of shape {tuple(matrix.shape)}."
            )
    else:
        raise NetlensTypeError(
            "Expected decorrelate to be a bool, a ColorStats or a 3x3 matrix, but got "
            f"{describe(decorrelate)}."
        )
    largest = float(matrix.norm(dim=0).max())
    if not math.isfinite(largest) or largest == 0.0 or not bool(torch.isfinite(matrix).all()):
        raise NetlensValueError(
            f"Expected decorrelate's matrix to be finite and not zero, but got {matrix.tolist()}."
        )
    return matrix / largest


def to_colors(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``matrix @ colour`` at every pixel of ``(n, 3, *space)`` images."""
    return torch.einsum("ij,nj...->ni...", matrix.to(images.device, images.dtype), images)
