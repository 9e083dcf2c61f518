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

from ._core.checks import (
    batches,
    check_channel_dim,
    check_dim_in_range,
    check_not_meta,
    non_finite,
)
from ._core.errors import NetlensTypeError, NetlensValueError, describe

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

        Raises:
            NetlensTypeError: For a covariance that is not a real tensor.
            NetlensValueError: For a covariance that is not 3x3 or holds NaN or infinite values.
        """
        covariance = _check_covariance(self.covariance)
        # Decomposed at unit scale: a finite covariance near float64's limit (1e300) would
        # overflow inside the eigendecomposition, which then fails to converge.
        scale = float(covariance.abs().max()) or 1.0
        try:
            values, vectors = torch.linalg.eigh(covariance / scale)
        except RuntimeError as error:  # torch.linalg.LinAlgError
            raise NetlensValueError(
                f"Expected a colour covariance that can be decomposed, but got "
                f"{covariance.tolist()}: {error}"
            ) from error
        order = torch.argsort(values, descending=True)
        values, vectors = values[order].clamp_min(0.0), vectors[:, order]
        largest = vectors.abs().argmax(0)
        signs = torch.sign(vectors[largest, torch.arange(3)])
        basis: torch.Tensor = vectors * signs * (values.sqrt() * math.sqrt(scale))
        return basis

    def __repr__(self) -> str:
        mean = ", ".join(f"{value:.4f}" for value in self.mean.tolist())
        std = ", ".join(f"{value:.4f}" for value in self.std.tolist())
        return f"ColorStats(mean=({mean}), std=({std}), count={self.count})"


def _check_covariance(covariance: object) -> torch.Tensor:
    """A ColorStats' covariance as a finite float64 3x3 tensor on the CPU."""
    if not isinstance(covariance, torch.Tensor) or covariance.is_complex():
        raise NetlensTypeError(
            f"Expected a ColorStats whose covariance is a real 3x3 tensor, but got "
            f"{describe(covariance)}."
        )
    check_not_meta(covariance, "a ColorStats' covariance")
    if covariance.shape != (3, 3):
        raise NetlensValueError(
            f"Expected a ColorStats whose covariance is 3x3, but got {describe(covariance)}."
        )
    values = covariance.detach().to("cpu", torch.float64)
    bad = non_finite(values)
    if bad is not None:
        raise NetlensValueError(
            f"Expected a ColorStats with a finite covariance, but its covariance holds {bad} "
            f"values: {values.tolist()}. Were there NaN or infinite pixels in its data?"
        )
    return values


def color_stats(data: object, *, channel_dim: int = 1) -> ColorStats:
    """Estimate the colour statistics of a data set: per-channel mean and std, and covariance.

    For ``decorrelate=`` and ``normalize=`` of :func:`maximize_activation`: give it the images
    as the model sees them *before* normalisation (pixels in [0, 1] for torchvision's
    ``ToTensor()``); ``(stats.mean, stats.std)`` is then the ``Normalize`` of a model trained on
    the images standardised by their own statistics, and ``decorrelate=stats`` optimises in the
    data's own colour basis. A few thousand images are plenty. Streaming, in float64. Empty
    batches are skipped; a NaN or infinite pixel is an error that names its batch, never a NaN
    statistic.

    Args:
        data: A tensor of RGB images ``(N, 3, H, W)``, or any iterable of such batches or of
            ``(images, targets, ...)`` tuples (a ``DataLoader``, a list).
        channel_dim: The colour axis of each batch (``-1`` for ``(N, H, W, 3)`` images).

    Returns:
        A :class:`ColorStats`.

    Raises:
        NetlensTypeError: For data that is not a tensor or an iterable of tensors, or complex
            images.
        NetlensValueError: For batches without 3 colour channels on ``channel_dim``, fewer than
            2 pixels in all, a batch with NaN or infinite pixels (named by its index, counting
            from 0), images on the meta device, or statistics beyond what float64 holds.

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
    dim = check_channel_dim("channel_dim", channel_dim)
    count = 0
    shift: torch.Tensor | None = None
    total = torch.zeros(3, dtype=torch.float64)
    outer = torch.zeros(3, 3, dtype=torch.float64)
    largest = 0.0
    for index, images in enumerate(batches(data)):
        if images.is_complex():
            raise NetlensTypeError(
                f"Expected real images, but batch {index} (counting from 0) of data is "
                f"{describe(images)}: its imaginary part would be lost."
            )
        check_not_meta(images, f"batch {index} of data")
        wrong = (
            f"Expected batches of images with their colours on dim {dim}, such as (N, 3, H, W), "
            f"but got a batch of shape {tuple(images.shape)}."
        )
        if images.dim() < 2:
            raise NetlensValueError(wrong)
        check_dim_in_range(dim, images.dim(), wrong)
        if images.shape[dim] != 3:
            raise NetlensValueError(
                f"Expected images with 3 colour channels on dim {dim}, but got a batch of shape "
                f"{tuple(images.shape)}."
            )
        if images.numel() == 0:
            continue  # no pixels; its mean, a NaN, would poison the shift below
        pixels = images.detach().movedim(dim, -1).reshape(-1, 3).to("cpu", torch.float64)
        bad = non_finite(pixels)
        if bad is not None:
            raise NetlensValueError(
                f"Expected finite pixel values, but batch {index} (counting from 0) of data "
                f"holds {bad} values, of {pixels.numel()}: find and drop the broken images "
                "(torch.isfinite(images).flatten(1).all(1) tells them apart)."
            )
        largest = max(largest, float(pixels.abs().max()))
        if shift is None:
            # Sums about a value near the mean keep the covariance exact in float64.
            shift = pixels.mean(0)
        centred = pixels - shift
        total += centred.sum(0)
        outer += centred.T @ centred
        count += pixels.shape[0]
    if shift is None or count < 2:
        raise NetlensValueError(
            f"Expected data with at least 2 pixels (empty batches are skipped), but got {count} "
            f"from {describe(data)}."
        )
    mean_offset = total / count
    covariance = (outer - count * torch.outer(mean_offset, mean_offset)) / (count - 1)
    mean = shift + mean_offset
    if non_finite(covariance) is not None or non_finite(mean) is not None:
        raise NetlensValueError(
            "Expected colour statistics that float64 can hold, but the covariance of pixel "
            f"values up to {largest:g} in magnitude overflows float64: rescale the images "
            "(to [0, 1], as the model sees them before normalisation)."
        )
    return ColorStats(
        mean=mean,
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
    elif isinstance(decorrelate, torch.Tensor) and not decorrelate.is_complex():
        check_not_meta(decorrelate, "decorrelate")
        matrix = decorrelate.detach().to("cpu", torch.float64)
    elif isinstance(decorrelate, (torch.Tensor, np.ndarray, list, tuple)):
        if (isinstance(decorrelate, torch.Tensor) and decorrelate.is_complex()) or (
            np.iscomplexobj(decorrelate)
        ):
            raise NetlensTypeError(
                "Expected decorrelate to be a real 3x3 matrix, but got complex values "
                f"({describe(decorrelate)}), whose imaginary part would be lost."
            )
        try:
            matrix = torch.as_tensor(np.asarray(decorrelate, dtype=np.float64))
        except (TypeError, ValueError) as error:
            raise NetlensTypeError(
                "Expected decorrelate to be a bool, a ColorStats or a 3x3 matrix of numbers, but "
                f"got {describe(decorrelate)}."
            ) from error
    else:
        raise NetlensTypeError(
            "Expected decorrelate to be a bool, a ColorStats or a 3x3 matrix, but got "
            f"{describe(decorrelate)}."
        )
    if matrix.shape != (3, 3):
        raise NetlensValueError(
            "Expected decorrelate to be a 3x3 matrix (the square root of a colour "
            f"covariance), but got one of shape {tuple(matrix.shape)}."
        )
    bad = non_finite(matrix)
    if bad is not None:
        raise NetlensValueError(
            f"Expected decorrelate's matrix to be finite, but it holds {bad} values: "
            f"{matrix.tolist()}."
        )
    # Scaled to unit entries first, so that the column norms of a huge matrix do not overflow.
    entries = float(matrix.abs().max())
    if entries == 0.0:
        raise NetlensValueError(
            f"Expected decorrelate's matrix to be finite and not zero, but got {matrix.tolist()}."
        )
    matrix = matrix / entries
    scaled: torch.Tensor = matrix / matrix.norm(dim=0).max()
    return scaled


def to_colors(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``matrix @ colour`` at every pixel of ``(n, 3, *space)`` images."""
    return torch.einsum("ij,nj...->ni...", matrix.to(images.device, images.dtype), images)
