"""Occlusion sensitivity (Zeiler & Fergus 2014): slide a patch over the input, watch the output.

The occluded copies of a chunk of positions are built at once by index arithmetic (the flat
indices under each window, one scatter; no Python loop over positions) and run through the model
in passes whose size is ``batch_size`` or follows a memory budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

import torch
from torch import nn

from .._core.checks import (
    as_int,
    as_real,
    check_bool,
    check_callable,
    check_channel_dim,
    check_channels,
    check_channels_fit,
    check_choice,
    check_cmap,
    check_int,
    prepare_inputs,
)
from .._core.errors import NetlensTypeError, NetlensValueError, describe
from .._core.hooks import Hooks
from .._core.layers import LayerSpec, check_model
from .._core.model import batched_inputs, evaluating, progress_bar
from .._core.outputs import LayerView, Select, check_select, first_tensor, layer_view
from .._core.render import Plottable, figure_axes, new_figure
from .incremental.engine import (
    AUTO_SHARE,
    Engine,
    Unavailable,
    build,
    check_inputs,
    trace,
    worth_trying,
)

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["OcclusionMap", "occlusion"]

# Default memory budgets of one forward pass (see ``memory_budget`` of :func:`occlusion`). Small
# on the CPU on purpose: passes whose activations stay near the caches run faster than bigger
# ones; on GPUs bigger batches pay.
_CPU_BUDGET = 48 * 2**20
_ACCELERATOR_BUDGET = 1024 * 2**20

# The first forward pass, before anything is measured, assumes that the model's activations take
# up to this many times the bytes of its input.
_FIRST_GUESS = 256

Scores: TypeAlias = Literal["softmax", "logits"] | Callable[[Any], torch.Tensor]
Target: TypeAlias = Literal["pred"] | int | Sequence[int] | torch.Tensor
Baseline: TypeAlias = float | Literal["mean"] | torch.Tensor
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
        self._check_drawable()
        feature = self._feature_map(index, channel)[0] if map == "feature_activation" else None
        fig, axis = figure_axes(ax, width=3.0, height=3.0)
        self._draw_input(axis, index, grey=True)
        if map == "attribution":
            values = _plane(self.attribution[index], len(self.inputs.shape) - 1).mean(0)
            limit = float(values.abs().max()) or 1.0
            axis.imshow(
                values.detach().float().cpu().numpy(),
                cmap=cmap or "RdBu_r",
                vmin=-limit,
                vmax=limit,
                alpha=alpha,
                interpolation="nearest",
            )
        else:
            values = self.probability[index] if feature is None else feature
            self._draw_map(axis, values, cmap=cmap or "viridis", alpha=alpha)
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
        import numpy as np
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch

        cmap = check_cmap("cmap", cmap)
        chosen = (
            list(range(self.inputs.shape[0]))
            if samples is None
            else [self._check_sample(sample) for sample in samples]
        )
        self._check_drawable()
        rows, cols = len(chosen), 4 if self.feature_activation is None else 5
        if axes is None:
            # about 1.8 inches a panel: the figure fits a page's text column at full size, so
            # that titles, ticks and the legend stay legible (>= 8 pt) where it is shown
            fig = new_figure(1.75 * cols + 0.6, 1.8 * rows + 0.2)
            grid = np.asarray(fig.subplots(rows, cols, squeeze=False))
        else:
            grid = np.asarray(axes, dtype=object).reshape(-1)
            if grid.size != rows * cols:
                raise NetlensValueError(
                    f"Expected {rows * cols} Axes ({rows} inputs times {cols} panels), but got "
                    f"{grid.size}."
                )
            grid = grid.reshape(rows, cols)
            fig = cast("Figure", grid[0, 0].figure)
        for row, sample in enumerate(chosen):
            line = list(grid[row])
            target = int(self.target[sample])
            self._draw_input(line[0], sample)
            line[0].set_title(
                f"input {sample}: {_class_name(target, class_names)}", fontsize="medium"
            )
            image = self._draw_map(line[1], self.probability[sample], cmap=cmap)
            fig.colorbar(image, ax=line[1], shrink=0.8)
            line[1].set_title(f"score of {_class_name(target, class_names)}", fontsize="medium")
            present, codes = torch.unique(self.predicted_class[sample], return_inverse=True)
            classes = [int(c) for c in present.tolist()]
            palette = _class_colours(classes)
            self._draw_map(
                line[2],
                codes,
                cmap=ListedColormap(palette),
                vmin=-0.5,
                vmax=len(classes) - 0.5,
            )
            line[2].legend(
                handles=[
                    Patch(color=colour, label=_class_name(c, class_names))
                    for c, colour in zip(classes, palette, strict=True)
                ],
                loc="upper left",
                bbox_to_anchor=(1.0, 1.0),
                fontsize="small",
                frameon=False,
            )
            line[2].set_title("most probable class", fontsize="medium")
            if self.feature_activation is not None:
                values, number = self._feature_map(sample, None)
                image = self._draw_map(line[3], values, cmap=cmap)
                fig.colorbar(image, ax=line[3], shrink=0.8)
                line[3].set_title(f"{self.layer} channel {number}", fontsize="medium")
            self.plot(line[-1], sample=sample)
            line[-1].set_title("attribution", fontsize="medium")
        return fig, grid

    # -- drawing helpers ---------------------------------------------------------------------

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

    def _check_drawable(self) -> None:
        # Window dims before the last two of the input must have a single position.
        shape = self.inputs.shape[1:]
        plane_dims = min(2, len(shape))
        extra = len(self.window) - plane_dims
        if extra > 0 and any(n != 1 for n in self.grid[:extra]):
            raise NetlensValueError(
                "Expected the occluder to move over the last two dims of the input only, to draw "
                f"its maps, but it has {self.grid} positions over a window of {self.window}."
            )

    def _plane_extent(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Extent of each map cell grid over the drawn plane, so that cells sit on their windows."""
        shape = tuple(self.inputs.shape[1:])
        plane = shape[-2:] if len(shape) >= 2 else (1, *shape)
        first_window_dim = len(shape) - len(self.window)
        spans: list[tuple[float, float]] = []
        for offset, size in enumerate(plane):
            dim = len(shape) - len(plane) + offset
            if dim < first_window_dim or dim < 0:
                spans.append((-0.5, size - 0.5))
                continue
            index = dim - first_window_dim
            window, stride, count = self.window[index], self.stride[index], self.grid[index]
            # A cell per position, centred on its window; one position fills its whole window.
            width = stride if count > 1 else window
            start = (window - 1) / 2 - width / 2
            spans.append((start, start + (count - 1) * stride + width))
        return spans[0], spans[1]

    def _map_plane(self, values: torch.Tensor) -> torch.Tensor:
        """A per-position map as a 2-D array over the drawn plane."""
        shape = tuple(self.inputs.shape[1:])
        plane_dims = min(2, len(shape))
        windowed = min(plane_dims, len(self.window))
        cells = values.reshape(self.grid[len(self.grid) - windowed :])
        while cells.dim() < 2:
            cells = cells.unsqueeze(0)
        return cells

    def _draw_map(self, axis: Axes, values: torch.Tensor, *, cmap: Any, **kwargs: Any) -> Any:
        (top, bottom), (left, right) = self._plane_extent()
        image = axis.imshow(
            self._map_plane(values).detach().cpu().numpy(),
            cmap=cmap,
            extent=(left, right, bottom, top),
            interpolation="nearest",
            **kwargs,
        )
        self._set_limits(axis)
        return image

    def _set_limits(self, axis: Axes) -> None:
        shape = tuple(self.inputs.shape[1:])
        height, width = (shape[-2], shape[-1]) if len(shape) >= 2 else (1, shape[-1])
        axis.set_xlim(-0.5, width - 0.5)
        axis.set_ylim(height - 0.5, -0.5)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_aspect("auto" if height * 8 < width or width * 8 < height else "equal")

    def _draw_input(self, axis: Axes, sample: int, *, grey: bool = False) -> None:
        planes = _plane(self.inputs[sample], len(self.inputs.shape) - 1).detach().float().cpu()
        if planes.shape[0] == 3 and not grey:
            low, high = planes.min(), planes.max()
            rgb = (planes - low) / (high - low) if high > low else torch.zeros_like(planes)
            axis.imshow(rgb.permute(1, 2, 0).numpy(), interpolation="nearest")
        else:
            axis.imshow(planes.mean(0).numpy(), cmap="gray", interpolation="nearest")
        self._set_limits(axis)


def _plane(tensor: torch.Tensor, sample_dims: int) -> torch.Tensor:
    """One sample as ``(colour, height, width)``: the leading dims merged into colour."""
    if sample_dims == 1:
        return tensor.reshape(1, 1, -1)
    return tensor.reshape(-1, *tensor.shape[-2:])


def _class_name(index: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    return str(index)


def _class_colours(classes: list[int]) -> list[Any]:
    from matplotlib import colormaps

    table = colormaps["tab10" if max(classes, default=0) < 10 else "tab20"]
    return [table(c % table.N) for c in classes]


# -- the computation -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    """Where the occluder goes: window and stride over the last dims of one sample."""

    sample_shape: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def occluded_shape(self) -> tuple[int, ...]:
        return self.sample_shape[len(self.sample_shape) - len(self.window) :]

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(
            (size - window) // stride + 1
            for size, window, stride in zip(
                self.occluded_shape, self.window, self.stride, strict=True
            )
        )

    @property
    def positions(self) -> int:
        return math.prod(self.grid)

    @property
    def plane_size(self) -> int:
        return math.prod(self.occluded_shape)

    def plane_strides(self) -> list[int]:
        shape = self.occluded_shape
        return [math.prod(shape[d + 1 :]) for d in range(len(shape))]

    def cells(self, start: int, stop: int, device: torch.device) -> torch.Tensor:
        """``(stop - start, window size)``: flat plane indices under the window at each position."""
        plane_strides = self.plane_strides()
        offsets = torch.zeros(1, dtype=torch.long, device=device)
        for size, step in zip(self.window, plane_strides, strict=True):
            offsets = (offsets[:, None] + torch.arange(size, device=device) * step).reshape(-1)
        remaining = torch.arange(start, stop, device=device)
        origin = torch.zeros_like(remaining)
        for d in reversed(range(len(self.grid))):
            origin += (remaining % self.grid[d]) * (self.stride[d] * plane_strides[d])
            remaining = remaining // self.grid[d]
        return origin[:, None] + offsets[None, :]

    def origins(self) -> torch.Tensor:
        """``(positions, len(window))`` (int64, CPU): where each window starts, in order."""
        axes = [
            torch.arange(count) * stride
            for count, stride in zip(self.grid, self.stride, strict=True)
        ]
        return torch.cartesian_prod(*axes).reshape(self.positions, len(self.window))

    def coverage(self, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
        """Per window dim, ``(grid, size)``: 1 where the window at a position covers an index."""
        matrices = []
        for size, window, stride, count in zip(
            self.occluded_shape, self.window, self.stride, self.grid, strict=True
        ):
            index = torch.arange(size, device=device)
            start = torch.arange(count, device=device)[:, None] * stride
            matrices.append(((index >= start) & (index < start + window)).to(dtype))
        return matrices


def _attribution(drops: torch.Tensor, geometry: _Geometry) -> torch.Tensor:
    """Spread each position's drop over its window and average per element.

    The window is a box, so its indicator factorises over dims: contracting the drops with one
    coverage matrix per dim sums them per element without a loop over positions.
    """
    matrices = geometry.coverage(drops.dtype, drops.device)
    total = drops
    count = torch.ones((), dtype=drops.dtype, device=drops.device)
    for matrix in matrices:
        total = torch.tensordot(total, matrix, dims=([1], [0]))  # grid dim out, size dim in (last)
        count = count[..., None] * matrix.sum(0)
    average = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    shape = (drops.shape[0],) + (1,) * (len(geometry.sample_shape) - len(geometry.window))
    average = average.reshape(shape + geometry.occluded_shape)
    return average.expand(drops.shape[0], *geometry.sample_shape).contiguous()


def _as_sizes(value: object, name: str, rank: int) -> tuple[int, ...]:
    """An int (repeated ``rank`` times) or a non-empty sequence of ints, all positive."""
    single = as_int(value)
    if single is not None:
        return (check_int(name, single),) * rank
    if not isinstance(value, (list, tuple)) or not value:
        raise NetlensTypeError(
            f"Expected {name} to be an int or a non-empty sequence of ints, but got "
            f"{describe(value)}."
        )
    return tuple(check_int(f"each size of {name}", size) for size in value)


def _geometry(inputs: torch.Tensor, window: object, stride: object) -> _Geometry:
    sample_shape = tuple(inputs.shape[1:])
    default_rank = max(1, len(sample_shape) - 1)
    if isinstance(window, (list, tuple)) and not 1 <= len(window) <= len(sample_shape):
        raise NetlensValueError(
            f"Expected a window of 1 to {len(sample_shape)} sizes for inputs of shape "
            f"{tuple(inputs.shape)} (it covers the last len(window) dims), but got {len(window)} "
            f"sizes: {tuple(window)}."
        )
    windows = _as_sizes(window, "window", default_rank)
    occluded = sample_shape[len(sample_shape) - len(windows) :]
    if any(w > size for w, size in zip(windows, occluded, strict=True)):
        raise NetlensValueError(
            f"Expected a window no larger than the occluded dims {occluded} of inputs of shape "
            f"{tuple(inputs.shape)}, but got window {windows}."
        )
    if stride is None:
        strides = windows
    else:
        if isinstance(stride, (list, tuple)) and len(stride) != len(windows):
            raise NetlensValueError(
                f"Expected one stride per window dim ({len(windows)}), but got {tuple(stride)}."
            )
        strides = _as_sizes(stride, "stride", len(windows))
        # A stride past the free space means one position; clamped, so that no index
        # arithmetic overflows (stride=2**62).
        strides = tuple(
            min(step, size - w + 1)
            for step, size, w in zip(strides, occluded, windows, strict=True)
        )
    return _Geometry(sample_shape, windows, strides)


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


def _checked_scores(
    scores: Callable[[Any], torch.Tensor], output: object, rows: int, custom: bool
) -> torch.Tensor:
    if not custom and not isinstance(output, torch.Tensor):
        raise NetlensTypeError(
            "Expected the model to return a tensor of scores (batch, classes), but it returned "
            f"{describe(output)}; pass scores= a callable that picks the scores from it."
        )
    result = scores(output)
    if not isinstance(result, torch.Tensor) or result.dim() != 2 or result.shape[0] != rows:
        raise NetlensValueError(
            f"Expected scores of shape (batch, classes) for a batch of {rows} copies, but got "
            f"{describe(result)}; pass scores= a callable that maps the model's output to them."
        )
    return result


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


def check_finite_sums(sums: torch.Tensor, layer: str) -> None:
    """The summed activations of a layer must be finite (the NaN rule of every technique)."""
    if sums.is_floating_point() and not bool(torch.isfinite(sums).all()):
        bad = int((~torch.isfinite(sums)).any(1).sum()) if sums.dim() > 1 else 1
        raise NetlensValueError(
            f"Expected finite activations of layer {layer!r}, but its output on {bad} of the "
            f"{sums.shape[0]} inputs of a forward pass holds NaN or inf values, which would make "
            "feature_activation NaN there."
        )


class _Feature:
    """The channel sums of one layer's output in the latest forward pass.

    Summed in the forward hook itself, so that a later in-place operation (a ReLU after a conv)
    cannot change them and no output is kept alive. The layer's latest call per pass counts.
    """

    def __init__(self, view: LayerView) -> None:
        self.view = view
        self.rows = 0
        self.sums: torch.Tensor | None = None

    def hook(self, module: nn.Module, args: Any, output: Any) -> None:
        arranged = self.view.arrange(self.view.tensor(output), self.rows)  # (N, C, *rest)
        self.sums = (
            arranged.sum(tuple(range(2, arranged.dim()))) if arranged.dim() > 2 else arranged
        )

    def take(self) -> torch.Tensor:
        """``(rows, channels)`` of the pass just run."""
        sums, self.sums = self.sums, None
        if sums is None:
            raise NetlensValueError(
                f"Expected layer {self.view.name!r} to run in the model's forward pass, but it "
                "did not run."
            )
        check_finite_sums(sums, self.view.name)
        return sums


@contextmanager
def _output_bytes(model: nn.Module, enabled: bool) -> Iterator[list[int]]:
    """Count the bytes of every leaf module's output during the block (in ``total[0]``)."""
    total = [0]
    if not enabled:
        yield total
        return

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        tensor = first_tensor(output, module)
        if tensor is not None:
            total[0] += tensor.numel() * tensor.element_size()

    with Hooks() as hooks:
        for module in model.modules():
            if next(module.children(), None) is None:
                hooks.forward(module, hook)
        yield total


Chunk: TypeAlias = tuple[int, int, int, int]


def _plan(start: int, offset: int, stop: int, count: int, rows: int) -> list[Chunk]:
    """Chunks ``(first slot, stop slot, first input, stop input)`` of at most ``rows`` copies.

    They start at slot ``start``, input ``offset``, and take whole slots when the inputs fit,
    else one slot split over the inputs.
    """
    chunks: list[Chunk] = []
    if offset:
        chunks += [(start, start + 1, n, min(n + rows, count)) for n in range(offset, count, rows)]
        start += 1
    if rows >= count:
        step = rows // count
        chunks += [(p, min(p + step, stop), 0, count) for p in range(start, stop, step)]
    else:
        chunks += [
            (p, p + 1, n, min(n + rows, count))
            for p in range(start, stop)
            for n in range(0, count, rows)
        ]
    return chunks


class _Copies:
    """The occluded copies of each pass, built in one buffer that is reused from pass to pass.

    Rows of the buffer are ``(slot, input)`` pairs. A pass over every input puts back what the
    previous pass hid (a scatter of the window's cells) and hides the new windows: work in
    proportion to the window rather than to the input. A pass over part of the inputs, or one
    after a forward pass that wrote into its input (seen on the buffer's version counter),
    refreshes the copies from the inputs first.
    """

    def __init__(self, planes: torch.Tensor, baseline: torch.Tensor, geometry: _Geometry) -> None:
        self.planes = planes  # (inputs, lead, plane)
        self.baseline = baseline.expand(planes.shape)
        self.geometry = geometry
        self.buffer = _tracked_empty(planes, (0, *planes.shape))
        # Cells hidden in each slot row of the buffer; rows past it hold no valid copy.
        self.hidden = torch.zeros(0, 1, dtype=torch.long, device=planes.device)
        self.version = -1

    def make(self, chunk: Chunk) -> torch.Tensor:
        """The copies of a chunk, slot-major: ``(slots * inputs, *sample_shape)``."""
        first, stop, n_first, n_stop = chunk
        slots, members = stop - first, n_stop - n_first
        every_input = members == self.planes.shape[0]
        cells = self.geometry.cells(max(first, 1) - 1, stop - 1, self.planes.device)
        if first == 0:  # the unoccluded inputs: their row "hides" cell 0 under its own value
            cells = torch.cat([cells.new_zeros(1, cells.shape[1]), cells])
        reuse = (
            every_input and slots <= self.hidden.shape[0] and self.buffer._version == self.version
        )
        if not reuse and (self.buffer.shape[0] < slots or self.buffer.shape[1] != members):
            self.buffer = _tracked_empty(self.planes, (slots, members, *self.planes.shape[1:]))
        rows = self.buffer[:slots]
        original = self.planes[None, n_first:n_stop]
        if reuse:
            rows.scatter_(3, *_cells_of(original, self.hidden[:slots], members))
            self.hidden[:slots] = cells
        else:
            rows.copy_(original.expand_as(rows))
            self.hidden = cells if every_input else cells[:0]
        hide = 1 if first == 0 else 0
        base = self.baseline[None, n_first:n_stop]
        rows[hide:].scatter_(3, *_cells_of(base, cells[hide:], members))
        self.version = self.buffer._version
        return rows.reshape(slots * members, *self.geometry.sample_shape)


def _tracked_empty(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A new tensor with a version counter, also under ``torch.inference_mode()``.

    Tensors made in inference mode have none, and the copies' buffer needs one to notice a model
    that writes into its input.
    """
    with torch.inference_mode(False):
        return like.new_empty(shape)


def _cells_of(
    source: torch.Tensor, cells: torch.Tensor, members: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index and values for ``scatter_`` along the plane dim: ``source`` at ``cells`` per row.

    ``source`` is ``(1, members, lead, plane)``, ``cells`` is ``(rows, window size)``.
    """
    shape = (cells.shape[0], members, source.shape[2], cells.shape[1])
    index = cells[:, None, None, :].expand(shape)
    return index, source.expand(shape[:3] + source.shape[3:]).gather(3, index)


class _Run:
    """The state of one occlusion run: fills per-position results chunk by chunk.

    Slot 0 is the unoccluded inputs, slot ``k`` the occluder at position ``k - 1``, so that
    the unoccluded pass shares the first forward pass with the first occluded copies.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        geometry: _Geometry,
        baseline: torch.Tensor,
        scores: Callable[[Any], torch.Tensor],
        custom_scores: bool,
        target: torch.Tensor | None,
        channels: list[int] | None,
        feature: _Feature | None,
    ) -> None:
        self.model = model
        self.geometry = geometry
        self.count = inputs.shape[0]
        self.copies = _Copies(
            inputs.reshape(self.count, -1, geometry.plane_size), baseline, geometry
        )
        self.scores = scores
        self.custom_scores = custom_scores
        self.requested_target = target
        self.requested_channels = channels
        self.feature = feature
        # Allocated at the first forward pass, in the dtype and on the device of the scores and
        # of the activations.
        self.target = torch.zeros(0, dtype=torch.long)
        self.predicted = torch.zeros(0, dtype=torch.long)
        self.base_score = torch.zeros(0)
        self.probability = torch.zeros(0)
        # (N, K): the K channels tracked for each input; K = 1 for the strongest one.
        self.channel_index = torch.zeros(0, 1, dtype=torch.long)
        self.activation = torch.zeros(0)  # (N, K, positions)
        self.classes = -1
        # The scores and sums of the unoccluded inputs, to check a traced graph against.
        self.unoccluded_scores: list[torch.Tensor] = []
        self.unoccluded_sums: list[torch.Tensor] = []

    def run(self, chunk: Chunk) -> None:
        """Evaluate one chunk of occluded copies through the model and store what it says."""
        first, stop, n_first, n_stop = chunk
        slots, members = stop - first, n_stop - n_first
        if self.feature is not None:
            self.feature.rows = slots * members
        output = self.model(self.copies.make(chunk))
        scores = self._scores(output, slots * members).reshape(slots, members, -1)
        sums = None
        if self.feature is not None:
            sums = self.feature.take().reshape(slots, members, -1)
        if first == 0:
            self._unoccluded(scores[0], None if sums is None else sums[0], n_first, n_stop)
            scores = scores[1:]
            sums = None if sums is None else sums[1:]
        if scores.shape[0] == 0:
            return
        self._store(slice(max(first, 1) - 1, stop - 1), n_first, n_stop, scores, sums)

    def record(
        self,
        positions: torch.Tensor,
        n_first: int,
        n_stop: int,
        output: Any,
        sums: torch.Tensor | None,
    ) -> None:
        """Store what incremental inference computed for some positions of some inputs."""
        count, members = positions.shape[0], n_stop - n_first
        scores = self._scores(output, count * members).reshape(count, members, -1)
        if sums is not None and self.feature is not None:
            check_finite_sums(sums, self.feature.view.name)
        if sums is not None:
            sums = sums.reshape(count, members, -1)
        self._store(positions.to(scores.device), n_first, n_stop, scores, sums)

    def _scores(self, output: Any, rows: int) -> torch.Tensor:
        scores = _checked_scores(self.scores, output, rows, self.custom_scores)
        finite = torch.isfinite(scores).all(1) if scores.is_floating_point() else None
        if finite is not None and not bool(finite.all()):
            # One rule for every technique: no NaN or inf returned without a word.
            raise NetlensValueError(
                "Expected finite scores from the model, but its output on "
                f"{int((~finite).sum())} of the {rows} inputs of a forward pass (occluded copies "
                "or the inputs themselves) holds NaN or inf values, which would make the maps "
                "NaN there. Check the model on occluded inputs (a division by something the "
                "occluder can make zero, a log of it) or try another baseline."
            )
        if self.classes < 0:
            self._allocate(scores)
        if scores.shape[1] != self.classes:
            raise NetlensValueError(
                f"Expected the same number of scores on every forward pass ({self.classes}), "
                f"but got {scores.shape[1]}."
            )
        return scores

    def _store(
        self,
        occluded: slice | torch.Tensor,
        n_first: int,
        n_stop: int,
        scores: torch.Tensor,
        sums: torch.Tensor | None,
    ) -> None:
        """``scores`` and ``sums`` are ``(positions, members, ...)``."""
        members = slice(n_first, n_stop)
        picked = self.target[members].expand(scores.shape[0], n_stop - n_first)[..., None]
        self.probability[members, occluded] = scores.gather(2, picked)[..., 0].T
        self.predicted[members, occluded] = scores.argmax(2).T
        if sums is not None:
            picked = self.channel_index[members].expand(sums.shape[0], n_stop - n_first, -1)
            self.activation[members, :, occluded] = sums.gather(2, picked).permute(1, 2, 0)

    def _allocate(self, scores: torch.Tensor) -> None:
        self.classes = scores.shape[1]
        if self.requested_target is not None:
            _check_classes(self.requested_target, self.classes)
        positions = self.geometry.positions
        self.target = torch.zeros(self.count, dtype=torch.long, device=scores.device)
        self.predicted = torch.zeros(self.count, positions, dtype=torch.long, device=scores.device)
        self.base_score = scores.new_zeros(self.count)
        self.probability = scores.new_zeros(self.count, positions)

    def _unoccluded(
        self, scores: torch.Tensor, sums: torch.Tensor | None, n_first: int, n_stop: int
    ) -> None:
        members = slice(n_first, n_stop)
        self.unoccluded_scores.append(scores)
        if sums is not None:
            self.unoccluded_sums.append(sums)
        if self.requested_target is None:
            self.target[members] = scores.argmax(1)
        else:
            self.target[members] = self.requested_target[members]
        self.base_score[members] = scores.gather(1, self.target[members, None])[:, 0]
        if sums is None or self.feature is None:
            return
        if self.activation.dim() == 1:  # the first unoccluded pass: allocate
            requested = self.requested_channels
            if requested is None:
                picked = torch.zeros(self.count, 1, dtype=torch.long, device=sums.device)
            else:
                check_channels_fit("channel", requested, sums.shape[1], self.feature.view.name)
                picked = torch.tensor(requested, device=sums.device).expand(self.count, -1)
            self.channel_index = picked
            self.activation = sums.new_zeros(self.count, picked.shape[1], self.geometry.positions)
        if self.requested_channels is None:
            self.channel_index[members, 0] = sums.argmax(1)


def _check_classes(target: torch.Tensor, classes: int) -> None:
    if bool((target >= classes).any()):
        raise NetlensValueError(
            f"Expected target classes in [0, {classes}), but got "
            f"{target[target >= classes].tolist()}."
        )


def occlusion(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    window: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    baseline: Baseline = 0.0,
    target: Target = "pred",
    scores: Scores = "softmax",
    layer: LayerSpec | None = None,
    channel: int | Sequence[int] | torch.Tensor | None = None,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    incremental: bool | Literal["auto"] = "auto",
    progress: bool = False,
    select: Select | None = None,
    channel_dim: int | None = None,
) -> OcclusionMap:
    """Slide a baseline patch over each input and record how the model's output changes.

    As in Zeiler & Fergus (2014): for every position of the occluder it records the score of
    the target class, the most probable class and, with ``layer``, the summed activation of one
    channel; and it spreads the drops of the target score back over the input (``.attribution``,
    the quantity of ``captum.attr.Occlusion`` with the channel dim inside its window).

    The window covers the last ``len(window)`` dims of each input: for images ``(N, C, H, W)`` a
    window ``(h, w)`` hides a patch across all channels at once; for 1-D signals ``(N, C, L)`` a
    window ``(k,)`` hides a segment; for row sequences ``(N, T, F)`` a window ``(k, F)`` hides k
    rows; for token ids ``(N, T)`` a window ``(k,)`` hides k tokens. Positions are the full
    windows at ``0, s, 2s, ...`` in each dim, ``(size - window) // stride + 1`` of them. At a
    ragged edge (when ``stride`` does not divide ``size - window``) the last ``(size - window)
    % stride`` elements are covered by fewer windows or, with a stride larger than the window,
    by none: their attribution is then 0. (Captum adds a cut-off window there; the two agree
    whenever the positions tile the input exactly.)

    The inputs are moved to the model's device (floating ones to its floating dtype); the
    results come back on the inputs' device, floating results in the inputs' dtype. The model
    runs in eval mode (each module's ``training`` flag is restored afterwards) and without
    gradients, also under ``torch.inference_mode()``; the model itself is left as it was.

    By default the occluded copies are computed by **incremental inference** (Nakandala et al.,
    SIGMOD 2019) where the model allows it and it saves work: the model (traced with
    ``torch.fx``) runs once on the unoccluded inputs, keeping its activations, and each copy
    recomputes, layer by layer, only the box of each feature map its window can change, from
    the kept activations around it; past an operation that mixes every position (a flatten and
    a linear layer, global pooling, an operation it does not know) the rest of the network runs
    as usual. The results are the same as running each copy through the model, up to rounding.
    ``result.incremental`` says which way they were computed. Otherwise the occluded copies are
    built a chunk of positions at a time by scattering the baseline under every window of the
    chunk (no Python loop over positions), in a buffer reused from pass to pass, and evaluated
    ``batch_size`` copies per forward pass, or by default as many as fit in ``memory_budget``.
    The first pass, which also carries the unoccluded inputs, assumes activations of up to 256
    times the input's size and measures the real ones to size the passes after it. Peak memory
    thus stays bounded however many positions there are.

    Args:
        model: A classifier returning ``(N, classes)``, or any model with ``scores``.
        inputs: ``(N, ...)`` inputs with their batch dim: floating point and finite, or integer
            (token ids) with an integer ``baseline``.
        window: The occluder's size over the last ``len(window)`` dims; an int means the same
            size over every dim after dim 1 (the channel dim of images).
        stride: Step between positions, an int or one per window dim; default ``window`` (no
            overlap).
        baseline: The occluder's value: a number, ``"mean"`` (each input's own mean) or a tensor
            broadcastable to ``inputs``; for integer inputs an int (a [MASK] token id) or an
            integer tensor.
        target: The class to track: ``"pred"`` (the class predicted on each unoccluded input),
            an int, or one int per input.
        scores: ``"softmax"`` (probabilities), ``"logits"`` (the output as is) or a callable
            from the model's output to ``(N, classes)`` scores.
        layer: A layer spec (see :func:`find_layers`) naming one layer whose channel activation
            is recorded: its output (see ``select``) summed over everything but the batch and
            channel axes; its latest call per forward pass counts.
        channel: The channel to track, an int, or a list of channels (see
            :attr:`OcclusionMap.feature_activation`); by default, for each input, the channel
            with the largest summed activation on the unoccluded input, as in the paper.
        batch_size: Occluded copies per forward pass; default: as many as fit in
            ``memory_budget``.
        memory_budget: Bytes that one forward pass may take, counting the copies and the
            outputs of every module of the model on them (with incremental inference: the kept
            activations of the unoccluded inputs, and the boxes and windows each copy
            computes), when ``batch_size`` is not given. Default (None): 48 MiB on the CPU
            (passes whose activations stay near the caches run faster than bigger ones), 1 GiB
            on other devices.
        incremental: ``"auto"`` (default): incremental inference where the model allows it
            and it pays (it needs at most 80% of the plain path's multiply-adds, and those are
            at least 10**9: below, tracing costs about what it saves); else every copy through
            the whole model. ``True``: incremental inference, or a
            :class:`~netlens.NetlensValueError` that names the module or operation that prevents
            it (integer inputs, a model torch.fx cannot trace, a module with hooks, a first
            layer it does not know, a forward pass with side effects). ``False``: every occluded
            copy through the whole model.
        progress: Show a progress bar over the forward passes after the first (needs tqdm).
        select: Which part of the layer's output to read, when it returns several: an index, a
            key or a callable (see :func:`record`). By default a tuple or list gives its first
            tensor, a mapping its first tensor value, a ``PackedSequence`` its padded tensor.
        channel_dim: The channel axis of the layer's output, when its module's kind does not
            say it (``-1`` for channels-last stages); default by the module's kind.

    Returns:
        An :class:`OcclusionMap`.

    Raises:
        NetlensValueError: Inputs without their batch dim, a window larger than the input or of
            the wrong rank, a stride, batch size or budget that is not positive, a baseline of
            the wrong shape, non-finite inputs, a target class or a channel out of range, a
            target of the wrong length, a layer spec matching several layers, model outputs
            that are not ``(N, classes)``, or ``incremental=True`` where incremental inference
            cannot run.
        NetlensTypeError: Arguments of the wrong type, inputs that are neither floating point
            nor integer, or a baseline that is not an integer for integer inputs.

    Example:
        >>> import torch, torch.nn as nn
        >>> import netlens as nl
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(576, 3))
        >>> result = nl.occlusion(net, torch.randn(2, 1, 14, 14), window=(4, 4), stride=2)
        >>> result.probability.shape  # 6 x 6 occluder positions per input
        torch.Size([2, 6, 6])
        >>> result.attribution.shape
        torch.Size([2, 1, 14, 14])
        >>> result.incremental  # a small job: every copy went through the whole model
        False
        >>> fast = nl.occlusion(net, result.inputs, window=(4, 4), stride=2, incremental=True)
        >>> fast.incremental  # the conv computed only the box each window can change
        True
        >>> torch.allclose(fast.probability, result.probability, atol=1e-6)
        True
        >>> text = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(80, 2))
        >>> ids = torch.randint(1, 50, (3, 10))  # token ids; 0 plays [MASK]
        >>> nl.occlusion(text, ids, window=(1,), baseline=0).probability.shape
        torch.Size([3, 10])
    """
    check_model(model)
    progress = check_bool("progress", progress)
    prepared, info = prepare_inputs(inputs, model, floating=False)
    if prepared.is_complex() or prepared.dtype == torch.bool:
        raise NetlensTypeError(
            "Expected floating-point inputs, or integer inputs (token ids) with an integer "
            f"baseline, but got dtype {prepared.dtype}."
        )
    if prepared.dim() < 2:
        raise NetlensValueError(
            "Expected inputs of shape (N, ...) with at least one dim to occlude after the batch "
            f"dim, but got shape {tuple(prepared.shape)}."
        )
    if prepared.is_floating_point() and not bool(torch.isfinite(prepared).all()):
        raise NetlensValueError("Expected finite inputs, but they hold NaN or inf values.")
    count, device = prepared.shape[0], prepared.device
    geometry = _geometry(prepared, window, stride)
    baseline_planes = _baseline(baseline, prepared, geometry.plane_size)
    if not prepared.is_floating_point():
        _check_token_baseline(model, baseline_planes)
    score_function, custom_scores = _scores_function(scores)
    requested_target = None
    if isinstance(target, str):
        check_choice("target", target, ("pred",))
    else:
        requested_target = _per_input(target, "target", count, device)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size)
    budget = (
        _default_budget(device)
        if memory_budget is None
        else check_int("memory_budget", memory_budget)
    )
    # each argument checked on its own first, so that a wrong one is named as such
    channels, listed = (None, False) if channel is None else check_channels("channel", channel)
    check_select(select)
    check_channel_dim("channel_dim", channel_dim, optional=True)
    feature = None
    if layer is not None:
        feature = _Feature(layer_view(model, layer, select=select, channel_dim=channel_dim))
    elif channel is not None or select is not None or channel_dim is not None:
        raise NetlensValueError(
            "Expected layer= together with channel=, select= or channel_dim=, but got no layer."
        )
    mode = _check_incremental(incremental)
    batch_statistics = _batch_statistics(model)
    if batch_statistics is not None:
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
        mode = False

    run = _Run(
        model,
        prepared,
        geometry,
        baseline_planes,
        score_function,
        custom_scores,
        requested_target,
        channels,
        feature,
    )
    slots = geometry.positions + 1
    sample_bytes = prepared[0].numel() * prepared.element_size()
    # Without batch_size, the first pass assumes activations up to _FIRST_GUESS times the input;
    # when more passes follow, it measures every module's outputs to size them.
    rows = batch_size or max(1, budget // (sample_bytes * (3 + _FIRST_GUESS)))
    engine = None
    with evaluating(model), torch.no_grad():
        candidate = mode is not False
        if candidate:
            try:
                check_inputs(prepared)
            except Unavailable as reason:
                _refuse(mode, reason)
                candidate = False
        if not candidate:
            _run_all_plain(run, model, inputs, feature, slots, rows, budget, batch_size, progress)
        else:
            # The unoccluded inputs alone go through the model: the reference of every map, what
            # the traced graph must reproduce before it is trusted, and the size of the job.
            started = time.perf_counter()
            with (
                Hooks() as hooks,
                batched_inputs(model, tuple(inputs.shape)),
                _output_bytes(model, batch_size is None) as total,
            ):
                if feature is not None:
                    hooks.forward(feature.view.module, feature.hook)
                for chunk in _plan(0, 0, 1, count, rows):
                    run.run(chunk)
            unoccluded = time.perf_counter() - started
            small = mode == "auto" and not worth_trying(model, unoccluded, geometry.positions)
            if batch_size is None:
                rows = max(1, int(budget // (3 * sample_bytes + total[0] / count)))
            chunks = _plan(1, 0, slots, count, rows)
            if mode == "auto" and not small and len(chunks) < 4:
                # A quarter of the copies at most in the timed chunk, so that timing it leaves
                # the rest to the faster path.
                rows = max(1, -(-geometry.positions * count // 4))
                chunks = _plan(1, 0, slots, count, rows)
            done = 0  # chunks of the plain path already run
            plain_seconds = math.inf
            if mode == "auto" and not small and len(chunks) > 1:
                # Time the plain path on its first chunk: what the incremental one must beat.
                started = time.perf_counter()
                _run_plain(run, chunks[:1], feature, False)
                plain_seconds = (time.perf_counter() - started) / _copies(chunks[0])
                done = 1
            if mode is True or (not small and len(chunks) > done):
                lead = prepared[0].numel() // geometry.plane_size
                full_baseline = baseline_planes.expand(
                    baseline_planes.shape[0], lead, geometry.plane_size
                ).reshape(-1, *geometry.sample_shape)
                engine = _engine(
                    model, run, mode, prepared, full_baseline, geometry, feature, budget, batch_size
                )
            if engine is not None and done:
                engine.skip(_whole_positions(chunks[0], count))
                engine = _faster(engine, run, plain_seconds, _copies(chunks[0]))
            if engine is None:
                _run_plain(run, chunks[done:], feature, progress)
            else:
                _run_incremental(engine, run, progress)

    grid = geometry.grid
    activation = None
    if feature is not None:
        activation = run.activation.reshape(count, -1, *grid)
        activation = activation if listed else activation[:, 0]
    drops = (run.base_score[:, None] - run.probability).reshape(count, *grid)
    restore = info.restore
    return OcclusionMap(
        inputs=inputs.detach(),
        probability=restore(run.probability.reshape(count, *grid)),
        predicted_class=restore(run.predicted.reshape(count, *grid)),
        feature_activation=None if activation is None else restore(activation),
        attribution=restore(_attribution(drops, geometry)),
        target=restore(run.target),
        base_score=restore(run.base_score),
        window=geometry.window,
        stride=geometry.stride,
        layer=None if feature is None else feature.view.name,
        channels=None if feature is None else restore(_tracked(run.channel_index, channels)),
        incremental=engine is not None,
    )


def _run_all_plain(
    run: _Run,
    model: nn.Module,
    inputs: torch.Tensor,
    feature: _Feature | None,
    slots: int,
    rows: int,
    budget: int,
    batch_size: int | None,
    progress: bool,
) -> None:
    """Every occluded copy through the whole model, ``rows`` at a time, from slot 0 on.

    The unoccluded inputs ride along in the first pass; without ``batch_size``, that pass
    measures the model's activations to size the passes after it.
    """
    count = run.count
    sample_bytes = run.copies.planes[0].numel() * run.copies.planes.element_size()
    first, *chunks = _plan(0, 0, slots, count, rows)
    measure = batch_size is None and bool(chunks)
    with Hooks() as hooks:
        if feature is not None:
            hooks.forward(feature.view.module, feature.hook)
        with batched_inputs(model, tuple(inputs.shape)), _output_bytes(model, measure) as total:
            run.run(first)
    if measure:
        rows = max(1, int(budget // (3 * sample_bytes + total[0] / _copies(first))))
        resume, offset = (first[1], 0) if first[3] == count else (first[0], first[3])
        chunks = _plan(resume, offset, slots, count, rows)
    _run_plain(run, chunks, feature, progress)


def _run_plain(run: _Run, chunks: list[Chunk], feature: _Feature | None, progress: bool) -> None:
    """These chunks of occluded copies through the whole model."""
    with Hooks() as hooks:
        if feature is not None:
            hooks.forward(feature.view.module, feature.hook)
        for chunk in progress_bar(
            chunks, enabled=progress, desc="occlusion", unit="batch", total=len(chunks)
        ):
            run.run(chunk)


def _run_incremental(engine: Engine, run: _Run, progress: bool) -> None:
    """Every batch the engine has left, by incremental inference."""
    for batch in progress_bar(
        engine.batches(),
        enabled=progress,
        desc="occlusion",
        unit="batch",
        total=engine.batch_count(),
    ):
        output, sums = engine.evaluate(batch)
        run.record(batch.positions, batch.first, batch.stop, output, sums)


def _copies(chunk: Chunk) -> int:
    return (chunk[1] - chunk[0]) * (chunk[3] - chunk[2])


def _whole_positions(chunk: Chunk, count: int) -> torch.Tensor:
    """The positions a plain chunk computed for every input (slot ``k`` is position ``k - 1``)."""
    if chunk[2] != 0 or chunk[3] != count:
        return torch.zeros(0, dtype=torch.long)
    return torch.arange(chunk[0] - 1, chunk[1] - 1)


def _faster(engine: Engine, run: _Run, plain_seconds: float, rows: int) -> Engine | None:
    """The engine if its passes are faster per copy than the plain path's; else None.

    Under ``incremental="auto"``: the engine runs its first two batches of at most ``rows``
    copies (the plain path's timed chunk; what they compute is kept) and the second one is
    timed (the first also pays for new shapes, once per run), against the plain path's first
    chunk, timed before. Tracing and planning are spent either way; the choice is about what
    is left.
    """
    timed = engine.first_batches(2, rows)
    if len(timed) > 1 and timed[1].group != timed[0].group:
        timed = timed[:1]
    seconds = 0.0
    for batch in timed:
        started = time.perf_counter()
        output, sums = engine.evaluate(batch)
        seconds = time.perf_counter() - started
        run.record(batch.positions, batch.first, batch.stop, output, sums)
    if timed:
        engine.skip(torch.cat([batch.positions for batch in timed]))
        last = timed[-1]
        per_copy = seconds / (len(last.positions) * (last.stop - last.first))
        if engine.groups and per_copy >= plain_seconds:
            return None
    return engine


def _check_incremental(value: object) -> bool | Literal["auto"]:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        check_choice("incremental", value, ("auto",))
        return "auto"
    raise NetlensTypeError(
        f"Expected incremental to be 'auto', True or False, but got {describe(value)}."
    )


def _refuse(mode: bool | Literal["auto"], reason: Unavailable) -> None:
    """Under ``incremental=True``, say what prevents incremental inference; else nothing."""
    if mode is True:
        raise NetlensValueError(
            "Expected a model and inputs that incremental inference can run on "
            f"(incremental=True), but {reason}. Pass incremental='auto' to run every occluded "
            "copy through the model where it cannot, or incremental=False."
        ) from None


def _engine(
    model: nn.Module,
    run: _Run,
    mode: bool | Literal["auto"],
    inputs: torch.Tensor,
    baseline: torch.Tensor,
    geometry: _Geometry,
    feature: _Feature | None,
    budget: int,
    batch_size: int | None,
) -> Engine | None:
    """The incremental engine, checked against the model's own unoccluded pass; or None."""
    view = None if feature is None else feature.view
    expected_scores = torch.cat(run.unoccluded_scores)
    expected_sums = torch.cat(run.unoccluded_sums) if run.unoccluded_sums else None

    def check(first: int, stop: int, output: Any, sums: torch.Tensor | None) -> None:
        """The traced graph must give the model's own output on the unoccluded inputs."""
        traced = _checked_scores(run.scores, output, stop - first, run.custom_scores)
        if not _close(traced, expected_scores[first:stop]):
            raise Unavailable(
                "the traced graph's output on the unoccluded inputs differs from the model's "
                "(the forward pass does something torch.fx does not record)"
            )
        if (
            sums is not None
            and expected_sums is not None
            and not _close(sums, expected_sums[first:stop])
        ):
            assert view is not None
            raise Unavailable(f"layer {view.name!r} outputs other values in the traced graph")

    try:
        engine = build(
            trace(model, inputs, view),
            inputs,
            baseline,
            geometry.origins(),
            geometry.window,
            view,
            budget,
            batch_size,
            check,
        )
    except Unavailable as reason:
        _refuse(mode, reason)
        return None
    if mode == "auto" and engine.incremental_macs > AUTO_SHARE * engine.plain_macs:
        return None  # too little to save: not worth timing
    return engine


def _close(found: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal up to the rounding of the same operations run in another batch."""
    if found.shape != expected.shape:
        return False
    tolerance = {torch.float64: 1e-9, torch.float32: 1e-4}.get(expected.dtype, 1e-2)
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return bool(torch.allclose(found, expected, rtol=tolerance, atol=tolerance * scale))


def _tracked(channel_index: torch.Tensor, channels: list[int] | None) -> torch.Tensor:
    """The ``channels`` of the result: as requested, or the strongest one of each input."""
    if channels is None:
        return channel_index[:, 0]
    return torch.tensor(channels, dtype=torch.long, device=channel_index.device)


def _default_budget(device: torch.device) -> int:
    return _CPU_BUDGET if device.type == "cpu" else _ACCELERATOR_BUDGET
