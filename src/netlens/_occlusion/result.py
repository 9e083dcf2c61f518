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
    Along,
    Plottable,
    axes_grid,
    axes_stack,
    category_colours,
    colour_bar,
    draw_bars,
    draw_categories,
    draw_category_strip,
    draw_cells,
    draw_input,
    draw_profile,
    draw_signed_overlay,
    draw_strip,
    figure_axes,
    frame_plane,
    integer_ticks,
    label_room,
    position_ticks,
    set_title,
    text_width,
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
# What a chart of each map shows along its value axis (the probability map holds the scores).
_AXIS_NAMES = {
    "attribution": "attribution",
    "probability": "score",
    "feature_activation": "feature activation",
}


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
        labels: Sequence[str] | None = None,
    ) -> tuple[Figure, Axes]:
        """Draw one map of one input on one Axes.

        Over an input of two dims or more (images, signals, row sequences) the map is drawn
        over the input, in grey. A sequence of tokens or values (inputs ``(N, T)``) is drawn as a
        chart along the sequence: the attribution as one bar per position, the score and the
        feature activation as dots at their windows' centres (the score beside the unoccluded
        one). Token ids are never drawn as a picture.

        Args:
            ax: Axes to draw on, or None for a new figure.
            sample: Which input.
            map: ``"attribution"`` (per element, diverging colours centred at zero),
                ``"probability"`` or ``"feature_activation"`` (per occluder position, each cell
                on its window's centre).
            channel: For the feature activation of several channels, which one (one of
                :attr:`channels`); the first by default.
            alpha: Opacity of the map over the input.
            cmap: Colour map; ``"RdBu_r"`` for the attribution, ``"viridis"`` otherwise.
            labels: One name per position of the sequence the occluder moves along (the
                tokens), to name the positions: of ``(N, T)`` inputs, of the time steps of
                ``(N, C, T)`` signals under a ``(k,)`` window, of the rows of ``(N, T, F)`` row
                sequences under a ``(k, F)`` window. As many are shown as fit (every one, or
                every 2nd, 5th, ...), upright when they are long.

        Returns:
            The figure and the Axes.

        Raises:
            NetlensValueError: An unknown map, sample or colour map name, a feature map without
                ``layer``, maps that cannot be drawn over two dims, or labels for a map over
                two dims or of another length than the sequence.
            NetlensTypeError: A sample, map, cmap or labels of the wrong type.
        """
        index = self._check_sample(sample)
        check_choice("map", map, _MAPS)
        cmap = check_cmap("cmap", cmap)
        occluder = self._occluder()
        names = self._check_labels(labels, occluder)
        feature = self._feature_map(index, channel)[0] if map == "feature_activation" else None
        values = self.probability[index] if feature is None else feature
        if len(occluder.sample_shape) == 1:  # tokens or values in a row: a chart
            length = occluder.sequence_length()
            widest = max((text_width(name, 8.0) for name in names or ()), default=0.0)
            width = min(14.0, max(5.0, length * min(max(0.32, widest + 0.1), 0.9) + 1.6))
            fig, axis = figure_axes(ax, width=width, height=2.6 + label_room(names, width))
            if map == "attribution":
                draw_bars(axis, self.attribution[index], cmap=cmap or "RdBu_r")
            else:
                reference = float(self.base_score[index]) if feature is None else None
                draw_profile(
                    axis,
                    occluder.sequence_centres(),
                    values,
                    length=length,
                    cmap=cmap or "viridis",
                    reference=reference,
                )
            axis.set_ylabel(_AXIS_NAMES[map], fontsize="small")
            position_ticks(axis, "x", names)
            if names is None:
                axis.set_xlabel("position", fontsize="small")
        else:
            width, height = _size_over_input(occluder, names)
            fig, axis = figure_axes(ax, width=width, height=height)
            self._draw_input(axis, index, occluder, grey=True)
            if map == "attribution":
                drops = _plane(self.attribution[index], len(self.inputs.shape) - 1).mean(0)
                draw_signed_overlay(axis, drops, cmap=cmap or "RdBu_r", alpha=alpha)
            else:
                _draw_cells(axis, occluder, values, cmap=cmap or "viridis", alpha=alpha)
            along = occluder.sequence_axis()
            if names is not None and along is not None:
                position_ticks(axis, along, names)
        set_title(axis, f"{_AXIS_NAMES[map]} on input {index}", fontsize="small")
        return fig, axis

    def plot_panels(
        self,
        axes: Any = None,
        *,
        samples: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        cmap: str = "viridis",
        labels: Sequence[str] | None = None,
    ) -> tuple[Figure, np.ndarray]:
        """Draw the paper's panels, one row per input, on a grid of Axes.

        Columns: the input; the target score for each occluder position; the most probable class
        for each position (with a legend of ``class_names``); with ``layer``, the summed
        activation of the channel (the first of several); and the attribution over the input
        (:meth:`plot`). Maps are placed at their window centres, so that they line up with the
        input.

        Maps along a sequence are drawn as strips of cells, not stretched over the input: along
        the rows of row sequences ``(N, T, F)`` under a ``(k, F)`` window, a column beside the
        input; along tokens ``(N, T)`` or the time of signals ``(N, C, T)``, the panels of each
        input are stacked one above the other (the returned array keeps its ``(inputs,
        panels)`` shape), the tokens written above them (``labels``, or the ids) and the
        attribution drawn as bars below.

        Args:
            axes: None for a new figure, or as many Axes as panels (rows times columns, any
                array-like shape).
            samples: Which inputs to draw; all by default.
            class_names: Names of the classes, indexed by class number, for the legend.
            cmap: Colour map of the score and activation maps.
            labels: One name per position of the sequence (the tokens), as for :meth:`plot`.

        Returns:
            The figure and a ``(rows, columns)`` array of Axes.

        Raises:
            NetlensValueError: Maps that cannot be drawn over two dims, a wrong number of Axes,
                an unknown sample, or labels for a map over two dims or of another length than
                the sequence.
        """
        cmap = check_cmap("cmap", cmap)
        chosen = (
            list(range(self.inputs.shape[0]))
            if samples is None
            else [self._check_sample(sample) for sample in samples]
        )
        occluder = self._occluder()
        names = self._check_labels(labels, occluder)
        rows, cols = len(chosen), 4 if self.feature_activation is None else 5
        what = f"{rows} inputs times {cols} panels"
        stacked = occluder.sequence_axis() == "x"
        if stacked:
            fig, grid = self._stacked_axes(axes, rows, cols, occluder, names, what)
        else:
            # about 1.8 inches a panel: the figure fits a page's text column at full size, so
            # that titles, ticks and the legend stay legible (>= 8 pt) where it is shown
            size = (1.75 * cols + 0.6, 1.8 * rows + 0.2)
            fig, grid = axes_grid(axes, rows, cols, size=size, what=what)
        for row, sample in enumerate(chosen):
            line = list(grid[row])
            name = _class_name(int(self.target[sample]), class_names)
            self._draw_input(line[0], sample, occluder, names=names)
            set_title(line[0], f"input {sample}: {name}")
            image = self._draw_map(line[1], occluder, self.probability[sample], cmap=cmap)
            colour_bar(fig, image, line[1], low=stacked)
            set_title(line[1], f"score of {name}")
            self._draw_classes(line[2], occluder, sample, class_names)
            set_title(line[2], "most probable class")
            if self.feature_activation is not None:
                values, number = self._feature_map(sample, None)
                image = self._draw_map(line[3], occluder, values, cmap=cmap)
                colour_bar(fig, image, line[3], low=stacked)
                set_title(line[3], f"{self.layer} channel {number}")
            if stacked:  # the names below the panels, each panel's positions under the others'
                self.plot(line[-1], sample=sample, labels=names)
                if names is None:
                    position_ticks(line[-1], "x", None)
                for axis in (line[0], line[-1]):
                    axis.set_aspect("auto")
            else:  # the names beside the input, in the first column
                self.plot(line[-1], sample=sample)
            set_title(line[-1], "attribution")
        return fig, grid

    # -- how the pictures are drawn --------------------------------------------------------

    def _stacked_axes(
        self,
        axes: Any,
        rows: int,
        cols: int,
        occluder: OccluderGrid,
        names: list[str] | None,
        what: str,
    ) -> tuple[Figure, np.ndarray]:
        """The panels of a sequence along x: each input's one above the other, as a grid."""
        length = occluder.sequence_length()
        widest = max((text_width(name, 9.0) for name in names or ()), default=0.0)
        width = min(14.0, max(6.0, length * min(max(0.4, widest + 0.1), 0.9) + 2.8))
        flat = len(occluder.sample_shape) == 1
        tokens = flat and not self.inputs.is_floating_point()
        below = label_room(names, width)  # labels under the last panel
        # relative heights of the Axes, and the inches each panel takes with its title
        first, last = (0.05, 2.0) if tokens else (1.0, 1.6) if flat else (1.4, 1.4)
        ratios = ([first] + [0.7] * (cols - 2) + [last]) * rows
        top = 1.0
        if tokens:  # the tokens written out, perhaps upright
            written = names or [str(int(token)) for token in torch.unique(self.inputs).tolist()]
            top = 0.55 + label_room(written, width, fontsize=9.0)
        inches = rows * (top + 0.95 * (cols - 2) + 1.9 + below)
        size = (width, inches)
        fig, stacked = axes_stack(axes, ratios, size=size, what=what)
        grid = stacked.reshape(rows, cols)
        for line in grid:
            for axis in line[1:-1]:  # strips in between: ticks without labels
                axis.tick_params(axis="x", labelbottom=False)
        return fig, grid

    def _draw_input(
        self,
        axis: Axes,
        sample: int,
        occluder: OccluderGrid,
        *,
        grey: bool = False,
        names: list[str] | None = None,
    ) -> None:
        """The input under the maps: a picture, or the tokens written out (ids are no picture)."""
        along = occluder.sequence_axis()
        if self.inputs.is_floating_point():
            draw_input(axis, self.inputs[sample], grey=grey)
        elif len(occluder.sample_shape) == 1:
            ids = [str(int(token)) for token in self.inputs[sample].tolist()]
            axis.set_xlim(-0.5, len(ids) - 0.5)
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_visible(False)
            axis.set_facecolor("none")
            axis.tick_params(axis="x", length=0)
            position_ticks(axis, "x", names or ids, fontsize=9.0)
            return
        else:
            frame_plane(axis, *occluder.plane())  # ids of more dims: the maps alone
        if names is not None and along is not None:
            position_ticks(axis, along, names)

    def _draw_map(
        self, axis: Axes, occluder: OccluderGrid, values: torch.Tensor, *, cmap: Any
    ) -> AxesImage:
        """A per-position map: cells over the input's plane, or a strip along a sequence."""
        along = occluder.sequence_axis()
        if along is None:
            return _draw_cells(axis, occluder, values, cmap=cmap)
        image = draw_strip(
            axis,
            values,
            along=along,
            span=occluder.sequence_span(),
            length=occluder.sequence_length(),
            cmap=cmap,
        )
        _shape_strip(axis, along)
        return image

    def _draw_classes(
        self,
        axis: Axes,
        occluder: OccluderGrid,
        sample: int,
        class_names: Sequence[str] | None,
    ) -> None:
        """The most probable class at each position, with a legend of the classes present."""
        present, codes = torch.unique(self.predicted_class[sample], return_inverse=True)
        classes = [int(c) for c in present.tolist()]
        colours = category_colours(classes)
        legend = [_class_name(c, class_names) for c in classes]
        along = occluder.sequence_axis()
        if along is None:
            draw_categories(
                axis,
                occluder.plane_cells(codes),
                colours=colours,
                labels=legend,
                extent=occluder.plane_extent(),
                plane=occluder.plane(),
            )
            return
        draw_category_strip(
            axis,
            codes,
            colours=colours,
            labels=legend,
            along=along,
            span=occluder.sequence_span(),
            length=occluder.sequence_length(),
        )
        _shape_strip(axis, along)

    def _check_labels(self, labels: object, occluder: OccluderGrid) -> list[str] | None:
        """``labels`` as strings, one per position of the sequence; None stays None."""
        if labels is None:
            return None
        items = labels.tolist() if isinstance(labels, torch.Tensor) else labels
        if hasattr(items, "tolist") and not isinstance(items, Sequence):  # a numpy array
            items = items.tolist()
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise NetlensTypeError(
                "Expected labels to be None or a sequence of strings, one per position (such as "
                f"the tokens), but got {describe(labels)}."
            )
        along = occluder.sequence_axis()
        if along is None:
            raise NetlensValueError(
                "Expected labels=None for maps over two dims: labels name the positions of a "
                f"sequence, but the occluder moves over {occluder.grid} positions of inputs of "
                f"shape {tuple(self.inputs.shape)}."
            )
        length = occluder.sequence_length()
        if len(items) != length:
            dim = self.inputs.dim() - (1 if along == "x" else 2)
            raise NetlensValueError(
                f"Expected {length} labels, one per position of dim {dim} of the inputs of shape "
                f"{tuple(self.inputs.shape)}, but got {len(items)}."
            )
        return [str(item) for item in items]

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


def _shape_strip(axis: Axes, along: Along) -> None:
    """A strip along x as wide as its place and low; along y narrow beside the input."""
    if along == "y":
        axis.set_box_aspect(4.0)
    integer_ticks(axis, along)


def _size_over_input(occluder: OccluderGrid, names: Sequence[str] | None) -> tuple[float, float]:
    """``(width, height)`` of a new figure of a map over an input: long signals wide.

    Long row sequences are tall; labels along the rows widen it by the widest of them, labels
    along x may stand upright below it.
    """
    height, width = occluder.plane()
    if height * 8 < width:
        size = [min(12.0, max(4.0, 0.12 * width + 1.5)), 2.6]
    elif width * 8 < height:
        size = [3.0, min(9.0, max(3.0, 0.12 * height + 1.0))]
    else:
        size = [3.0, 3.0]
    if names and occluder.sequence_axis() == "y":
        size[0] += min(3.0, max(text_width(name, 8.0) for name in names))
    elif names:
        size[1] += label_room(names, size[0])
    return size[0], size[1]


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
