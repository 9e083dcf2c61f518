"""What occlusion measured: :class:`OcclusionMap`, its pictures, and the builder that makes it.

The pictures are drawn by the rendering module (an input with a map over it, maps of cells
placed on their windows, a map of classes with a legend); this module only says which map goes
where.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import torch

from .._core.checks import as_int, check_choice, check_cmap
from .._core.errors import NetlensTypeError, NetlensValueError, describe
from .._core.render import (
    Plottable,
    axes_grid,
    category_colours,
    colour_bar,
    draw_categories,
    draw_cells,
    draw_input,
    draw_signed_overlay,
    figure_axes,
)
from .geometry import OccluderGrid, spread_drops

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

    from .job import OcclusionJob
    from .tally import Tally

__all__ = ["MapName", "OcclusionMap", "occlusion_map"]

MapName: TypeAlias = Literal["attribution", "probability", "feature_activation"]

_MAPS = ("attribution", "probability", "feature_activation")


@dataclass(frozen=True, eq=False)
class OcclusionMap(Plottable):
    """What :func:`occlusion` measured, per input and per occluder position.

    The grid of positions has one dim per window dim: ``grid[d] = (size[d] - window[d]) //
    stride[d] + 1`` for the occluded dims ``size`` of the input. Floating results are in the
    inputs' dtype and every tensor is on the inputs' device.

    Attributes:
        inputs: The inputs, ``(N, *shape)``, as passed.
        probability: ``(N, *grid)``, the score of the target class with the occluder at each
            position (a probability with ``scores="softmax"``, a logit with ``"logits"``).
        predicted_class: ``(N, *grid)`` (int64), the most probable class at each position.
        feature_activation: The summed activation of the tracked channels of ``layer`` at each
            position: ``(N, *grid)`` for one channel (an int ``channel``, or by default the
            strongest channel of each input), ``(N, K, *grid)`` for a list of K channels; None
            without ``layer``.
        attribution: ``(N, *shape)``, per input element the drop of the target score (unoccluded
            minus occluded) averaged over the windows that cover it; 0 where no window does.
        target: ``(N,)`` (int64), the class whose score is tracked.
        base_score: ``(N,)``, the target score on the unoccluded inputs.
        window: The occluder's size over the last ``len(window)`` dims.
        stride: The step between positions in each of those dims.
        layer: Name of the recorded layer, or None.
        channels: The tracked channels (int64, 1-D): one entry for an int ``channel``, the
            listed channels (the ``K`` dim of ``feature_activation``) for a list, and by
            default one entry per input, the channel strongest on it; None without ``layer``.
        incremental: Whether incremental inference computed the occluded copies (True), or
            every copy ran through the whole model (False); see ``incremental`` of
            :func:`occlusion`.
    """

    inputs: torch.Tensor
    probability: torch.Tensor
    predicted_class: torch.Tensor
    feature_activation: torch.Tensor | None
    attribution: torch.Tensor
    target: torch.Tensor
    base_score: torch.Tensor
    window: tuple[int, ...]
    stride: tuple[int, ...]
    layer: str | None
    channels: torch.Tensor | None
    incremental: bool = False

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of occluder positions along each window dim."""
        return tuple(self.probability.shape[1:])

    def plot(
        self,
        ax: Any = None,
        *,
        sample: int = 0,
        map: MapName = "attribution",
        channel: int | None = None,
        alpha: float = 0.55,
        cmap: str | None = None,
    ) -> tuple[Figure, Axes]:
        """Draw one map of one input over that input, in grey, on one Axes.

        Args:
            ax: Axes to draw on, or None for a new figure.
            sample: Which input.
            map: ``"attribution"`` (per element, diverging colours centred at zero),
                ``"probability"`` or ``"feature_activation"`` (per occluder position, each cell
                on its window's centre).
            channel: For the feature activation of several channels, which one (one of
                :attr:`channels`); the first by default.
            alpha: Opacity of the map.
            cmap: Colour map; ``"RdBu_r"`` for the attribution, ``"viridis"`` otherwise.

        Returns:
            The figure and the Axes.

        Raises:
            NetlensValueError: An unknown map, sample or colour map name, a feature map without
                ``layer``, or maps that cannot be drawn over two dims.
            NetlensTypeError: A sample, map or cmap of the wrong type.
        """
        index = self._check_sample(sample)
        check_choice("map", map, _MAPS)
        cmap = check_cmap("cmap", cmap)
        occluder = self._occluder()
        feature = self._feature_map(index, channel)[0] if map == "feature_activation" else None
        fig, axis = figure_axes(ax, width=3.0, height=3.0)
        draw_input(axis, self.inputs[index], grey=True)
        if map == "attribution":
            values = _plane(self.attribution[index], len(self.inputs.shape) - 1).mean(0)
            draw_signed_overlay(axis, values, cmap=cmap or "RdBu_r", alpha=alpha)
        else:
            values = self.probability[index] if feature is None else feature
            _draw_cells(axis, occluder, values, cmap=cmap or "viridis", alpha=alpha)
        axis.set_title(f"{map.replace('_', ' ')} on input {index}", fontsize="small")
        return fig, axis

    def plot_panels(
        self,
        axes: Any = None,
        *,
        samples: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        cmap: str = "viridis",
    ) -> tuple[Figure, np.ndarray]:
        """Draw the paper's panels, one row per input, on a grid of Axes.

        Columns: the input; the target score for each occluder position; the most probable class
        for each position (with a legend of ``class_names``); with ``layer``, the summed
        activation of the channel (the first of several); and the attribution over the input
        (:meth:`plot`). Maps are
        placed at their window centres, so that they line up with the input.

        Args:
            axes: None for a new figure, or as many Axes as panels (rows times columns, any
                array-like shape).
            samples: Which inputs to draw; all by default.
            class_names: Names of the classes, indexed by class number, for the legend.
            cmap: Colour map of the score and activation maps.

        Returns:
            The figure and a ``(rows, columns)`` array of Axes.

        Raises:
            NetlensValueError: Maps that cannot be drawn over two dims, a wrong number of Axes or
                an unknown sample.
        """
        cmap = check_cmap("cmap", cmap)
        chosen = (
            list(range(self.inputs.shape[0]))
            if samples is None
            else [self._check_sample(sample) for sample in samples]
        )
        occluder = self._occluder()
        rows, cols = len(chosen), 4 if self.feature_activation is None else 5
        # about 1.8 inches a panel: the figure fits a page's text column at full size, so that
        # titles, ticks and the legend stay legible (>= 8 pt) where it is shown
        fig, grid = axes_grid(
            axes,
            rows,
            cols,
            size=(1.75 * cols + 0.6, 1.8 * rows + 0.2),
            what=f"{rows} inputs times {cols} panels",
        )
        for row, sample in enumerate(chosen):
            line = list(grid[row])
            name = _class_name(int(self.target[sample]), class_names)
            draw_input(line[0], self.inputs[sample])
            line[0].set_title(f"input {sample}: {name}", fontsize="medium")
            image = _draw_cells(line[1], occluder, self.probability[sample], cmap=cmap)
            colour_bar(fig, image, line[1])
            line[1].set_title(f"score of {name}", fontsize="medium")
            present, codes = torch.unique(self.predicted_class[sample], return_inverse=True)
            classes = [int(c) for c in present.tolist()]
            draw_categories(
                line[2],
                occluder.plane_cells(codes),
                colours=category_colours(classes),
                labels=[_class_name(c, class_names) for c in classes],
                extent=occluder.plane_extent(),
                plane=occluder.plane(),
            )
            line[2].set_title("most probable class", fontsize="medium")
            if self.feature_activation is not None:
                values, number = self._feature_map(sample, None)
                image = _draw_cells(line[3], occluder, values, cmap=cmap)
                colour_bar(fig, image, line[3])
                line[3].set_title(f"{self.layer} channel {number}", fontsize="medium")
            self.plot(line[-1], sample=sample)
            line[-1].set_title("attribution", fontsize="medium")
        return fig, grid

    # -- what the pictures need ----------------------------------------------------------------

    def _check_sample(self, sample: object) -> int:
        count = self.inputs.shape[0]
        index = as_int(sample)
        if index is None:
            raise NetlensTypeError(
                f"Expected a sample index (int) in [0, {count}), but got {describe(sample)}."
            )
        if not -count <= index < count:
            raise NetlensValueError(f"Expected a sample index in [0, {count}), but got {index}.")
        return index % count

    def _feature_map(self, sample: int, channel: object) -> tuple[torch.Tensor, int]:
        """One sample's feature activation over the grid, and the channel it belongs to."""
        if self.feature_activation is None or self.channels is None:
            raise NetlensValueError(
                "Expected an occlusion map recorded with layer= to draw the feature activation, "
                "but this one has none."
            )
        listed = [int(c) for c in self.channels.tolist()]
        if self.feature_activation.dim() == 1 + len(self.grid):  # one channel per input
            number = listed[sample] if len(listed) == self.inputs.shape[0] else listed[0]
            if channel is not None and as_int(channel) != number:
                raise NetlensValueError(
                    f"Expected channel to be None or {number}, the channel tracked for input "
                    f"{sample}, but got {describe(channel)}."
                )
            return self.feature_activation[sample], number
        wanted = listed[0] if channel is None else as_int(channel)
        if wanted is None or wanted not in listed:
            raise NetlensValueError(
                f"Expected channel to be one of the tracked channels {listed}, but got "
                f"{describe(channel)}."
            )
        return self.feature_activation[sample, listed.index(wanted)], wanted

    def _occluder(self) -> OccluderGrid:
        """The occluder's grid over the inputs, checked to move over the drawn plane only."""
        occluder = OccluderGrid(tuple(self.inputs.shape[1:]), self.window, self.stride)
        occluder.check_drawable()
        return occluder


def _draw_cells(
    axis: Axes, occluder: OccluderGrid, values: torch.Tensor, *, cmap: Any, **options: Any
) -> AxesImage:
    """A per-position map drawn over the input's plane, each cell on its window."""
    return draw_cells(
        axis,
        occluder.plane_cells(values),
        extent=occluder.plane_extent(),
        plane=occluder.plane(),
        cmap=cmap,
        **options,
    )


def _plane(tensor: torch.Tensor, sample_dims: int) -> torch.Tensor:
    """One sample as ``(colour, height, width)``: the leading dims merged into colour."""
    if sample_dims == 1:
        return tensor.reshape(1, 1, -1)
    return tensor.reshape(-1, *tensor.shape[-2:])


def _class_name(index: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    return str(index)


def occlusion_map(job: OcclusionJob, tally: Tally, incremental: bool) -> OcclusionMap:
    """The result of a job from its tally: maps over the grid, attribution over the input.

    Every tensor goes back to the inputs' device, floating ones in the inputs' dtype.
    """
    count, grid = tally.count, job.grid.grid
    activation = None
    if job.layer is not None:
        activation = tally.activation.reshape(count, -1, *grid)
        activation = activation if job.listed else activation[:, 0]
    drops = (tally.base_score[:, None] - tally.probability).reshape(count, *grid)
    restore = job.restore.restore
    return OcclusionMap(
        inputs=job.given_inputs.detach(),
        probability=restore(tally.probability.reshape(count, *grid)),
        predicted_class=restore(tally.predicted.reshape(count, *grid)),
        feature_activation=None if activation is None else restore(activation),
        attribution=restore(spread_drops(drops, job.grid)),
        target=restore(tally.target),
        base_score=restore(tally.base_score),
        window=job.grid.window,
        stride=job.grid.stride,
        layer=None if job.layer is None else job.layer.name,
        channels=None
        if job.layer is None
        else restore(_tracked(tally.channel_index, job.channels)),
        incremental=incremental,
    )


def _tracked(channel_index: torch.Tensor, channels: list[int] | None) -> torch.Tensor:
    """The ``channels`` of the result: as requested, or the strongest one of each input."""
    if channels is None:
        return channel_index[:, 0]
    return torch.tensor(channels, dtype=torch.long, device=channel_index.device)
