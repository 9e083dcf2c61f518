"""The result of activation maximisation, :class:`Maximization`, and its pictures.

The pictures are drawn as a grid of tiles by :class:`~netlens._grid.ActivationGrid`, the one
picture grid of netlens: it and its ``normalize`` type are all that is taken from
:mod:`netlens._grid`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._core.render import Plottable, figure_axes, integer_ticks, set_title
from .._grid import ActivationGrid, Normalize
from .objectives import Objective

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Maximization"]

# The longer side of a new figure of the synthesised inputs, in inches.
_LONGEST_SIDE = 7.0


@dataclass(frozen=True, eq=False)
class Maximization(Plottable):
    """The synthesised inputs, with the objective they reach and its history.

    Activation maximisation has no inputs of the user's: every tensor here is in the dtype and
    on the device of the model's first layer, as the model takes its inputs (``channels``
    excepted: int64 on the CPU).

    Shapes, for ``K`` channels (or objectives) and ``input_shape`` ``S``:

    ================================  ===============  ===============  ===============
    call                              ``images``       ``activations``  ``history``
    ================================  ===============  ===============  ===============
    ``channels`` a list or None       ``(K, *S)``      ``(K,)``         ``(steps, K)``
    ``channels`` an int               ``S``            ``()``           ``(steps,)``
    ``objective=[o1, ..., oK]``       ``(K, *S)``      ``(K,)``         ``(steps, K)``
    ``objective=o``                   ``S``            ``()``           ``(steps,)``
    the same with ``batch=n``         ``n`` after K    ``n`` after K    ``n`` after K
    ================================  ===============  ===============  ===============

    so ``batch=n`` with a list of channels gives images ``(K, n, *S)``, with an int channel
    ``(n, *S)``. ``batch=None`` (the default) adds no dimension; ``batch=1`` adds one of size 1.

    Attributes:
        images: The synthesised inputs as the model takes them (after ``normalize``), inside
            ``value_range`` when one applies.
        activations: The objective each input reaches at the end, computed without transforms.
        history: The objective at every step, on the transformed inputs that the step optimised.
        channels: The channel (or unit) each input was optimised for, a 1-D int64 tensor (one
            entry for an int channel); for objective expressions, the index of each objective
            in the list (``tensor([0])`` for one objective).
        layer: The target layer's name; for objective expressions, the layers they read, in
            the model's order, comma-separated (``"output"`` for the model's output).
        objectives: The objective expressions, one per ``K``; None for ``layer``/``channels``
            calls.
        batch: ``batch`` as given: None, or the number of inputs per channel or objective.
        normalize: ``(mean, std)`` as tensors (scalars, or one entry per input channel) when
            the call had ``normalize=``, else None.
        value_range: The bounds the inputs were kept in: of :attr:`pixels` when ``normalize``
            was given, of :attr:`images` otherwise; None when unbounded.
    """

    images: torch.Tensor
    activations: torch.Tensor
    history: torch.Tensor
    channels: torch.Tensor
    layer: str
    objectives: tuple[Objective, ...] | None = None
    batch: int | None = None
    normalize: tuple[torch.Tensor, torch.Tensor] | None = None
    value_range: tuple[float, float] | None = None

    def __repr__(self) -> str:
        what = (
            f"objectives={[str(o) for o in self.objectives]}"
            if self.objectives is not None
            else f"channels={self.channels.tolist()}"
        )
        batch = "" if self.batch is None else f", batch={self.batch}"
        return (
            f"Maximization(layer={self.layer!r}, {what}{batch}, "
            f"images={tuple(self.images.shape)}, steps={self.history.shape[0]})"
        )

    @property
    def _single(self) -> bool:
        """Whether the result is of one channel or objective (its dimension dropped)."""
        return self.activations.dim() == (0 if self.batch is None else 1)

    @property
    def _lead(self) -> int:
        """How many leading dims of ``images`` are not the input's own."""
        return (0 if self._single else 1) + (0 if self.batch is None else 1)

    @property
    def pixels(self) -> torch.Tensor:
        """The inputs before ``normalize``: ``images * std + mean`` (``images`` without it).

        These are the pictures as a person sees them, in ``value_range`` ((0, 1) by default
        with ``normalize``), shaped like ``images``.
        """
        if self.normalize is None:
            return self.images
        mean, std = self.normalize
        rank = self.images.dim() - self._lead
        shape = (-1,) + (1,) * (rank - 1)
        mean = mean.to(self.images.device, self.images.dtype)
        std = std.to(self.images.device, self.images.dtype)
        if mean.dim():
            mean, std = mean.view(shape), std.view(shape)
        return self.images * std + mean

    def _labels(self) -> list[str]:
        if self.objectives is not None:
            return [str(objective) for objective in self.objectives]
        return [str(channel) for channel in self.channels.tolist()]

    def plot(
        self,
        ax: Any = None,
        *,
        ncols: int | None = None,
        normalize: Normalize | None = None,
    ) -> tuple[Figure, Axes]:
        """Show the inputs as a grid of pictures titled by channel or objective, on one ``Axes``.

        Images with 1 or 3 channels are drawn grey or RGB, ``(T, F)`` sequences as grey
        pictures (time downwards), vectors as strips, other channel counts as their mean over
        channels. With ``batch=n`` each channel or objective gets a row of ``n`` pictures, the
        first one titled. The objective per step is :meth:`plot_curves`.

        Args:
            ax: A matplotlib ``Axes`` to draw on; by default a new ``Figure``.
            ncols: Tiles per row (``batch`` for a batch of several channels, else
                near-square, by default).
            normalize: As for :class:`ActivationGrid`: ``"filter"`` (each picture on its own
                range), ``"global"``, ``"symmetric"`` or a fixed ``(low, high)``. By default
                the :attr:`pixels` of a call with ``normalize=`` are shown as they are, on
                ``value_range``; other inputs ``"filter"``.

        Returns:
            ``(figure, axes)``.
        """
        pixels = self.pixels.detach().cpu()
        rank = pixels.dim() - self._lead
        images = pixels.reshape(-1, *pixels.shape[pixels.dim() - rank :])
        tiles = _as_tiles(images)
        copies = 1 if self.batch is None else self.batch
        titles = [label if copy == 0 else "" for label in self._labels() for copy in range(copies)]
        if normalize is None:
            fixed = self.normalize is not None and self.value_range is not None
            normalize = self.value_range if fixed and self.value_range else "filter"
        if ncols is None and copies > 1 and not self._single:
            ncols = copies
        grid = ActivationGrid(tiles, normalize=normalize, ncols=ncols, titles=titles)
        figure, axes = figure_axes(ax, width=_LONGEST_SIDE, height=_LONGEST_SIDE)
        grid.plot(axes)
        if ax is None:
            # A new figure takes the shape of the drawn grid (tiles and their titles).
            left, right = axes.get_xlim()
            bottom, top = axes.get_ylim()
            ratio = abs(bottom - top) / abs(right - left)
            longest = _LONGEST_SIDE
            width, height = (longest, longest * ratio) if ratio <= 1 else (longest / ratio, longest)
            figure.set_size_inches(max(width, 2.0), max(height, 2.0))
        return figure, axes

    def plot_curves(self, ax: Any = None) -> tuple[Figure, Axes]:
        """Draw the objective of every input per step, one line each, on one ``Axes``.

        The curves are noisy with transforms: every step sees freshly transformed inputs. The
        ``batch`` inputs of a channel or objective share its colour and its legend entry.

        Args:
            ax: A matplotlib ``Axes`` to draw on; by default a new ``Figure``.

        Returns:
            ``(figure, axes)``.
        """
        figure, axes = figure_axes(ax, width=6.0, height=4.0)
        history = self.history.detach().to("cpu", torch.float64)
        copies = 1 if self.batch is None else self.batch
        labels = self._labels()
        lines = history.reshape(history.shape[0], len(labels), copies).numpy()
        steps = np.arange(1, lines.shape[0] + 1)
        for index, label in enumerate(labels):
            for copy in range(copies):
                axes.plot(
                    steps,
                    lines[:, index, copy],
                    linewidth=0.8,
                    color=f"C{index % 10}",
                    label=label if copy == 0 else "_nolegend_",
                )
        axes.set_xlabel("step")
        integer_ticks(axes, "x")
        axes.set_ylabel("objective")
        set_title(axes, f"{self.layer}: objective per step", fontsize="large")
        if len(labels) <= 10:
            title = "objective" if self.objectives is not None else "channel"
            axes.legend(title=title, fontsize="small")
        return figure, axes


def _as_tiles(images: torch.Tensor) -> torch.Tensor:
    """``(n, C, H, W)`` pictures: 1 or 3 channels as they are, sequences and vectors grey."""
    if images.dim() == 2:  # (n, F): a strip of pixels each
        return images[:, None, None, :]
    if images.dim() == 3:  # (n, T, F): a grey picture each
        return images[:, None]
    if images.dim() == 4 and images.shape[1] in (1, 3):
        return images
    # other channel counts, and volumes: the mean over everything but the last two dims
    return images.flatten(1, -3).mean(1, keepdim=True)
