"""Activation maximisation: synthesise the inputs that drive channels, units or objectives.

Every requested channel (or objective of :mod:`netlens.objectives`) gets its own input, or
``batch`` inputs, and all of them are optimised together as one batch (Olah, Mordvintsev &
Schubert 2017, "Feature Visualization", for the parametrisations, the decorrelated colours and
the transforms). Layers are read through the layer contract (:mod:`netlens._core.outputs`): their
channels are those every other technique sees. Two things make it fast: the forward pass stops
as soon as the deepest layer the objective reads has run (later layers cannot change the
objective), and for a plain ``nn.Conv2d`` or ``nn.Linear`` target whose channels are its own
output features only the one output channel each input is optimised for is computed.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._color import ColorStats, color_matrix, to_colors
from .._core.checks import (
    as_int,
    as_real,
    check_bool,
    check_channels,
    check_channels_fit,
    check_choice,
    check_gradients_allowed,
    check_int,
    check_not_meta,
    check_real,
    non_finite,
)
from .._core.errors import NetlensTypeError, NetlensValueError, describe
from .._core.hooks import Hooks, user_hooks
from .._core.layers import LayerSpec, check_model
from .._core.model import (
    batched_inputs,
    cudnn_off,
    depends_on,
    evaluating,
    model_dtype_device,
    progress_bar,
)
from .._core.outputs import LayerView, Select, first_tensor, layer_view
from .._core.render import Plottable, figure_axes
from .._grid import ActivationGrid, Normalize
from .._record import Recorder, StopForward, Target
from .objectives import Objective as Expression
from .objectives import _Diversity

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Maximization", "maximize_activation"]

#: ``objective``: ``"mean"``, ``"center"``, a function from the selected maps ``(n, *map)`` to
#: one value per input ``(n,)``, or objectives of :mod:`netlens.objectives` (one or a list).
Objective = str | Callable[[torch.Tensor], torch.Tensor] | Expression | Sequence[Expression]

#: ``decorrelate``: off, on (ImageNet's colours), a data set's :class:`ColorStats`, or a 3x3
#: square root of a colour covariance.
Decorrelate = bool | ColorStats | torch.Tensor | Sequence[Sequence[float]]

#: ``normalize``: ``(mean, std)``, each a number or one number per input channel.
Normalization = tuple[
    float | Sequence[float] | torch.Tensor, float | Sequence[float] | torch.Tensor
]

_PARAMS = ("pixel", "fourier")
_TRANSFORMS = ("jitter", "scale", "rotate")
_OBJECTIVES = ("mean", "center")
# Standard deviation of the initial noise, in pixel units (pixel) or spectrum units (fourier).
_INIT_STD = 0.01
# Random scale range and largest rotation (degrees) of the default transforms.
_SCALE_RANGE = (0.9, 1.1)
_MAX_DEGREES = 10.0
# The batch of zero inputs the first, full forward pass runs on (2, so that a batch axis cannot
# be mistaken for a size-1 dim).
_PROBE_BATCH = 2
# The longer side of a new figure of the synthesised inputs, in inches.
_LONGEST_SIDE = 7.0
# Whether image batches go to the model in the channels-last layout on the CPU (see the loop).
_CHANNELS_LAST = True
# The name a result gives the model's output when an objective reads it (class_logit).
_OUTPUT = "output"
# Off the CPU, how many steps run between checks that everything stayed finite (a check waits
# for the device); a NaN is still reported at the step it appeared.
_CHECK_EVERY = 16


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
    objectives: tuple[Expression, ...] | None = None
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
        axes.set_ylabel("objective")
        axes.set_title(f"{self.layer}: objective per step")
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


# -- parametrisations --------------------------------------------------------------------------


def _spatial_dims(rank: int) -> int:
    """How many trailing dims are space (or time).

    All of a vector or a (T, F) plane, else all but the leading channel dim.
    """
    return rank if rank <= 2 else rank - 1


class _Pixel:
    """The input itself (before the value-range squash) is the parameter."""

    def __init__(self, noise: torch.Tensor) -> None:
        self.raw = noise.clone().requires_grad_(True)

    def image(self) -> torch.Tensor:
        return self.raw

    @torch.no_grad()
    def blur_(self, sigma: float, spatial: int) -> None:
        self.raw.copy_(_gaussian_blur(self.raw, sigma, spatial))


class _Fourier:
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
        spectrum = torch.view_as_complex(self.raw) * self.scale
        return torch.fft.irfftn(  # type: ignore[no-any-return]
            spectrum, s=self.shape[-len(self.dims) :], dim=self.dims, norm="ortho"
        )

    @torch.no_grad()
    def blur_(self, sigma: float, spatial: int) -> None:
        # The Fourier transform of a Gaussian of std sigma pixels: an exact (circular) blur.
        self.raw.mul_(torch.exp(-2.0 * math.pi**2 * sigma**2 * self.frequency**2)[..., None])


def _frequencies(size: Sequence[int]) -> torch.Tensor:
    """|f| in cycles per sample on the grid of an n-D real FFT of ``size``."""
    axes = [torch.fft.fftfreq(n, dtype=torch.float64) for n in size[:-1]]
    axes.append(torch.fft.rfftfreq(size[-1], dtype=torch.float64))
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grids).pow(2).sum(0).sqrt()


def _spectrum_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The real view ``(..., 2)`` of the spectrum of a real FFT over the trailing dims."""
    return (*shape[:-1], shape[-1] // 2 + 1, 2)


def _gaussian_blur(images: torch.Tensor, sigma: float, spatial: int) -> torch.Tensor:
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


# -- transforms --------------------------------------------------------------------------------


def _transform(
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


# -- the optimiser ------------------------------------------------------------------------------


class _Adam:
    """Adam (Kingma & Ba 2015) on one tensor, computed as ``torch.optim.Adam`` does by default.

    Written out because the first ``torch.optim`` optimizer of a process imports
    ``torch._dynamo``, seconds of work for what is a few tensor operations per step here.
    """

    def __init__(self, param: torch.Tensor, lr: float) -> None:
        self.param = param
        self.lr = lr
        self.betas = (0.9, 0.999)
        self.eps = 1e-8
        self.steps = 0
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        beta1, beta2 = self.betas
        self.steps += 1
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = self.lr / (1 - beta1**self.steps)
        denom = (self.exp_avg_sq.sqrt() / (1 - beta2**self.steps) ** 0.5).add_(self.eps)
        self.param.addcdiv_(self.exp_avg, denom, value=-step_size)


# -- running the model up to the target layer --------------------------------------------------


def _probe(
    target: Target,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    note: str = "",
) -> None:
    """Run the whole model once on zero inputs: count the layer's calls, check ``input_shape``.

    A failure before the target layer is a matter of ``input_shape`` (an input the model does
    not take, or one without its batch dimension reaching a convolution or recurrent layer); a
    failure at or after it (``select=``, ``channel_dim=``) is reported as it is. ``note`` says
    how ``input_shape`` was completed, for that message.
    """
    inputs = torch.zeros((_PROBE_BATCH, *shape), dtype=dtype, device=device)
    reached: list[bool] = []
    try:
        with (
            batched_inputs(target.model, tuple(inputs.shape), unbatched_hint=None),
            Hooks() as hooks,
        ):
            # added after batched_inputs' checks, so that it records only inputs they let pass
            hooks.forward_pre(target.view.module, lambda m, a: reached.append(True))
            target.probe(inputs, f"a batch of inputs of input_shape {shape}")
    except NetlensValueError as error:
        if reached:
            raise
        raise NetlensValueError(
            "Expected input_shape to be the shape of one input of the model without its batch "
            f"dimension, but got {shape}{note}: a batch of such inputs, {tuple(inputs.shape)}, "
            f"does not fit the model. {error}"
        ) from error


class _SlicedTarget:
    """The target's output computed for one channel per input only.

    The forward pass stops at the target's input; then input ``i`` meets only the weights of
    its own channel: a grouped convolution, or a row of the linear layer. Used only where it
    equals the full layer under the layer contract (:meth:`applies`).
    """

    def __init__(
        self, model: nn.Module, module: nn.Conv2d | nn.Linear, channels: torch.Tensor
    ) -> None:
        self.model = model
        self.module = module
        self.channels = channels
        self._captured: list[torch.Tensor] = []

    @staticmethod
    def applies(view: LayerView, output: torch.Tensor, calls: int, hooked: bool) -> bool:
        """Whether computing one channel per input equals the full layer under ``view``.

        ``output`` is the layer's selected output on the probe's inputs.
        """
        module = view.module
        # A subclass may override forward, and a hook of the user's own on the layer could
        # change its output: such layers run in full. So do layers read through select=, and
        # those whose channel axis (by kind or channel_dim=) is not their own output feature
        # axis (a Linear on (N, T, D) read with channel_dim=1 has the tokens as channels).
        if calls != 1 or hooked or view.select is not None:
            return False
        batch, channel = view.dims(output)
        if type(module) is nn.Linear:
            return batch == 0 and channel == output.dim() - 1
        return (
            type(module) is nn.Conv2d
            and module.groups == 1
            and module.padding_mode == "zeros"
            and (batch, channel) == (0, 1)
        )

    @contextmanager
    def stopping(self) -> Iterator[None]:
        """Keep the hook that captures the layer's input and stops the forward pass."""

        def hook(module: nn.Module, args: Any) -> None:
            self._captured.append(args[0])
            raise StopForward

        with Hooks() as hooks:
            hooks.forward_pre(self.module, hook)
            yield

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(n, 1, *map)``: channel ``channels[i]`` of input ``i``."""
        self._captured.clear()
        with suppress(StopForward):
            self.model(inputs)
        if not self._captured:
            raise NetlensValueError(
                "Expected the target layer to run in every forward pass, but it did not run."
            )
        features = self._captured.pop()
        # detached: the gradient goes to the inputs alone, the parameters keep requires_grad
        weight = self.module.weight.detach()[self.channels]
        bias = self.module.bias.detach()[self.channels] if self.module.bias is not None else None
        if isinstance(self.module, nn.Linear):
            shape = (features.shape[0],) + (1,) * (features.dim() - 2) + (-1,)
            out = (features * weight.view(shape)).sum(-1)
            if bias is not None:
                out = out + bias.view(shape[:-1])
            return out.unsqueeze(1)
        conv = self.module
        count = features.shape[0]
        # channels_last: on CPU a convolution with many groups ran about 3x faster in this
        # layout (LeNet5's conv2, 64 groups; benchmarks/maximize.py).
        grouped: torch.Tensor = _GroupedLayout.apply(features)  # type: ignore[no-untyped-call]
        weight = weight.contiguous(memory_format=torch.channels_last)
        padding: Any = conv.padding  # a tuple of ints or "same" / "valid"
        out = F.conv2d(grouped, weight, bias, conv.stride, padding, conv.dilation, count)
        return out.view(count, 1, *out.shape[2:])


class _GroupedLayout(torch.autograd.Function):
    """``(N, C, H, W)`` features as one channels-last image ``(1, N * C, H, W)``.

    The gradient goes back in the features' own memory layout: a channels-last gradient
    reaching a channels-last max-pool keeps PyTorch's CPU kernels on their fast path, where a
    plain ``reshape`` would hand back a contiguous one and cost two full copies in the pool's
    backward (benchmarks/lucent_compare.py).
    """

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor) -> torch.Tensor:
        ctx.shape = features.shape
        ctx.layout = (
            torch.channels_last
            if features.is_contiguous(memory_format=torch.channels_last)
            and not features.is_contiguous()
            else torch.contiguous_format
        )
        flat = features.reshape(1, -1, *features.shape[2:])
        return flat.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor) -> torch.Tensor:
        return gradient.reshape(ctx.shape).contiguous(memory_format=ctx.layout)


class _ExpressionTarget:
    """Evaluates objective expressions: runs the model as far as they read, once per step.

    One recorder holds every layer the expressions read (one view per distinct layer, select=
    and channel_dim=); the forward pass stops once each of them has run its last call of the
    forward, unless a term reads the model's output. Objective ``k`` is evaluated on rows
    ``k * copies`` to ``(k + 1) * copies`` of the batch, so that diversity compares the inputs
    of one objective only.
    """

    def __init__(self, model: nn.Module, objectives: tuple[Expression, ...], copies: int) -> None:
        self.model = model
        self.objectives = objectives
        self.copies = copies
        self.views: dict[str, LayerView] = {}
        self.keys: dict[int, str] = {}  # id(term) -> recorder key
        self.needs_output = False
        for objective in objectives:
            for _, term in objective.terms:
                if term.layer is None:
                    self.needs_output = True
                    continue
                view = layer_view(
                    model, term.layer, select=term.select, channel_dim=term.channel_dim
                )
                key = next((k for k, seen in self.views.items() if seen == view), None)
                if key is None:
                    key = f"{len(self.views)}:{view.name}"
                    self.views[key] = view
                self.keys[id(term)] = key
        self.recorder = Recorder(model, self.views, detach=False, device=None)
        self.calls = dict.fromkeys(self.views, 1)
        self._seen = dict.fromkeys(self.views, 0)
        self.order: list[str] = list(self.views)  # by when each layer ran, after the probe

    def layer_names(self) -> str:
        """The layers read, in the model's order, then ``"output"``: for results."""
        names = list(dict.fromkeys(self.views[key].name for key in self.order))
        if self.needs_output:
            names.append(_OUTPUT)
        return ", ".join(names)

    def _stop(self, key: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._seen[key] += 1
            if all(self._seen[k] >= self.calls[k] for k in self.calls):
                raise StopForward

        return hook

    def _run(self, inputs: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The arranged outputs of the layers read, and of the model when a term reads it."""
        self._seen = dict.fromkeys(self.views, 0)
        returned: Any = None
        with self.recorder:
            with Hooks() as hooks:
                if not self.needs_output:
                    # registered after the recorder's hooks, so that outputs are stored first
                    for key, view in self.views.items():
                        hooks.forward(view.module, self._stop(key))
                with suppress(StopForward):
                    returned = self.model(inputs)
            missing = [key for key in self.views if key not in self.recorder]
            if missing:
                raise NetlensValueError(
                    f"Expected every layer the objective reads to run in every forward pass, "
                    f"as in the first one, but {self._names(missing)} did not run in this one."
                )
            outputs = {
                key: view.arrange(self.recorder[key], inputs.shape[0])
                for key, view in self.views.items()
            }
        return outputs, _arrange_output(returned, inputs.shape[0]) if self.needs_output else None

    def _names(self, keys: list[str]) -> str:
        """The layers of recorder keys as the user named them ("layer 'spare'"), for messages."""
        names = list(dict.fromkeys(self.views[key].name for key in keys))
        listed = ", ".join(repr(name) for name in names)
        return f"layer {listed}" if len(names) == 1 else f"layers {listed}"

    def probe(self, inputs: torch.Tensor, shape: tuple[int, ...], note: str = "") -> None:
        """Run the whole model once: check ``input_shape``, count calls, check the objectives.

        As for one layer: a failure before any layer read is a matter of ``input_shape``.
        """
        reached: list[bool] = []
        ran: list[str] = []
        returned: Any = None

        def first_run(key: str) -> Callable[[nn.Module, Any, Any], None]:
            return lambda module, args, output: None if key in ran else ran.append(key)

        try:
            with (
                batched_inputs(self.model, tuple(inputs.shape), unbatched_hint=None),
                Hooks() as hooks,
                self.recorder,
                torch.no_grad(),
            ):
                for key, view in self.views.items():
                    module = view.module
                    hooks.forward_pre(module, lambda m, a: reached.append(True))
                    hooks.forward(module, first_run(key))
                try:
                    returned = self.model(inputs)
                except NetlensValueError:
                    raise
                except Exception as error:
                    # A model may fail after the layers read (a linear layer sized for another
                    # input size); their outputs are all that is needed, unless a term reads
                    # the model's output.
                    if self.needs_output or len(ran) < len(self.views):
                        raise NetlensValueError(
                            f"Expected the model to run on a batch of inputs of input_shape "
                            f"{shape}, but it raised {type(error).__name__}: {error}"
                        ) from error
        except NetlensValueError as error:
            if reached:
                raise
            raise NetlensValueError(
                "Expected input_shape to be the shape of one input of the model without its "
                f"batch dimension, but got {shape}{note}: a batch of such inputs, "
                f"{tuple(inputs.shape)}, does not fit the model. {error}"
            ) from error
        missing = [key for key in self.views if key not in ran]
        if missing:
            raise NetlensValueError(
                "Expected every layer the objective reads to run in the model's forward pass, "
                f"but {self._names(missing)} did not run on inputs of input_shape {shape}{note}."
            )
        self.calls = {key: len(self.recorder.calls(key)) for key in self.views}
        outputs = {
            key: view.arrange(self.recorder[key], inputs.shape[0])
            for key, view in self.views.items()
        }
        self.order = ran
        self.recorder.clear()
        output = _arrange_output(returned, inputs.shape[0]) if self.needs_output else None
        with torch.no_grad():
            for objective in self.objectives:
                # checks channels, positions and vector sizes before the first step
                self._values_of(objective, outputs, output, slice(None))

    def _values_of(
        self,
        objective: Expression,
        outputs: dict[str, torch.Tensor],
        output: torch.Tensor | None,
        rows: slice,
    ) -> torch.Tensor:
        def read(term: Any) -> torch.Tensor:
            tensor = output if term.layer is None else outputs[self.keys[id(term)]]
            assert tensor is not None
            return tensor[rows]

        return objective._values(read)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """One value per input: objective ``k`` of the rows of copies of objective ``k``."""
        outputs, output = self._run(inputs)
        copies = self.copies
        values = [
            self._values_of(objective, outputs, output, slice(k * copies, (k + 1) * copies))
            for k, objective in enumerate(self.objectives)
        ]
        self.recorder.clear()
        return torch.cat(values)


def _arrange_output(returned: Any, batch: int) -> torch.Tensor:
    """The model's output ``(N, ..., classes)`` arranged ``(N, classes, ...)``."""
    output = first_tensor(returned)
    if output is None or output.dim() < 2 or output.shape[0] != batch:
        raise NetlensValueError(
            f"Expected the model to return a batch of {batch} class scores (N, classes) for "
            f"class_logit, but it returned {describe(returned)}."
        )
    return output.movedim(-1, 1)


# -- objective ---------------------------------------------------------------------------------


def _select(arranged: torch.Tensor, channels: torch.Tensor, sliced: bool) -> torch.Tensor:
    """The map of channel ``channels[i]`` of input ``i``: ``(n, *map)``."""
    if sliced:
        return arranged[:, 0]
    return arranged[torch.arange(arranged.shape[0], device=arranged.device), channels]


def _objective_values(objective: Objective, maps: torch.Tensor) -> torch.Tensor:
    if objective == "mean":
        return maps.flatten(1).mean(1) if maps.dim() > 1 else maps
    if objective == "center":
        centre: tuple[slice | int, ...] = (slice(None), *(size // 2 for size in maps.shape[1:]))
        return maps[centre]
    values = cast(Callable[[torch.Tensor], torch.Tensor], objective)(maps)
    if not isinstance(values, torch.Tensor) or values.shape != (maps.shape[0],):
        raise NetlensValueError(
            f"Expected the objective to return one value per channel, a tensor of shape "
            f"({maps.shape[0]},) from maps of shape {tuple(maps.shape)}, but it returned "
            f"{describe(values)}."
        )
    return values


def _input_names(labels: list[int], expressions: bool) -> list[str]:
    """What each channel or objective is called in messages ("channel 3", "objective 0")."""
    kind = "objective" if expressions else "channel"
    return [f"{kind} {label}" for label in labels]


class _FiniteWatch:
    """Stops the optimisation at the step where a NaN or infinite value appears.

    Each step records, per input, whether its pixels (before transforms), its objective value
    and its gradient are finite. On the CPU they are checked at once; elsewhere every
    ``_CHECK_EVERY`` steps (a check waits for the device), still naming the first bad step.
    """

    _KINDS = ("inputs", "objective", "gradient")

    def __init__(
        self,
        steps: int,
        copies: int,
        names: list[str],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.steps = steps
        self.copies = copies
        self.names = names
        self.dtype = dtype
        self.every = 1 if device.type == "cpu" else _CHECK_EVERY
        self.flags: list[torch.Tensor] = []  # per step: (3, n) bools
        self.checked = 0

    def check(
        self,
        step: int,
        current: torch.Tensor,
        history: list[torch.Tensor],
        gradient: torch.Tensor,
    ) -> None:
        """Record step ``step``'s flags; raise if a checked step holds a non-finite value."""
        self.flags.append(
            torch.stack(
                [
                    torch.isfinite(current).flatten(1).all(1),
                    torch.isfinite(history[step]),
                    torch.isfinite(gradient).flatten(1).all(1),
                ]
            )
        )
        if (step + 1) % self.every == 0:
            self.flush(history)

    def flush(self, history: list[torch.Tensor]) -> None:
        """Check every step recorded since the last check."""
        pending = self.flags[self.checked :]
        if not pending:
            return
        stacked = torch.stack(pending)  # (k, 3, n)
        self.checked = len(self.flags)
        if bool(stacked.all()):
            return
        flat = stacked.flatten(1).all(1).tolist()
        offset = flat.index(False)
        step = self.checked - len(pending) + offset
        flags = stacked[offset].cpu()
        kind = next(k for k in range(3) if not bool(flags[k].all()))
        bad = (~flags[kind]).nonzero().flatten().tolist()
        raise NetlensValueError(self._message(step, self._KINDS[kind], bad, history[step]))

    def _message(self, step: int, kind: str, bad: list[int], values: torch.Tensor) -> str:
        total = len(self.names) * self.copies
        which = list(dict.fromkeys(self.names[index // self.copies] for index in bad))
        where = ", ".join(which[:8]) + (", ..." if len(which) > 8 else "")
        inputs = f"{len(bad)} of the {total} inputs ({where})"
        when = f"at step {step + 1} of {self.steps}"
        if kind == "inputs":
            return (
                f"Expected finite inputs throughout the optimisation, but {when} the inputs of "
                f"{inputs} became NaN or infinite: stopped there. Lower lr, bound the inputs "
                "with value_range=, or add l2=."
            )
        if kind == "objective":
            counted = non_finite(values[bad].cpu()) or "NaN or infinite"
            half = self.dtype.itemsize < 4
            return (
                f"Expected a finite objective throughout the optimisation, but {when} the "
                f"objective of {inputs} was not finite ({counted} values) on finite inputs: "
                f"the model (in {self.dtype}) or the objective produced it. Stopped there; "
                "look for an overflow, a division by zero or a log of zero"
                + (", or run the model in float32." if half else ".")
            )
        return (
            f"Expected a finite gradient throughout the optimisation, but {when} the gradient "
            f"of the objective for {inputs} was NaN or infinite while the objective was "
            f"finite: the model's backward pass (in {self.dtype}) produced it. Stopped there."
        )


def _total_variation(images: torch.Tensor, spatial: int) -> torch.Tensor:
    """Mean absolute difference of neighbours along each spatial dim, per input."""
    total = images.new_zeros(images.shape[0])
    for dim in range(images.dim() - spatial, images.dim()):
        if images.shape[dim] > 1:
            total = total + images.diff(dim=dim).abs().flatten(1).mean(1)
    return total


def _layer_objective(
    stack: ExitStack,
    model: nn.Module,
    view: LayerView,
    requested: list[int] | None,
    objective: str | Callable[[torch.Tensor], torch.Tensor],
    shape_note: tuple[tuple[int, ...], str],
    copies: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[list[int], str, Callable[[torch.Tensor], torch.Tensor], Callable[[], None]]:
    """Set up the first form (one layer, channels): probe, check channels, pick the runner.

    Returns the channels, the layer's name, the function from a batch of inputs (``copies``
    per channel, channel-major) to their objective values, and the function that forgets the
    recorded tensors.
    """
    shape, note = shape_note
    module = view.module
    hooked = user_hooks(module)
    target = Target(model, view)
    _probe(target, shape, dtype, device, note)
    output = target.recorder[view.name]
    width = view.channels(output)
    chosen = list(range(width)) if requested is None else requested
    check_channels_fit("channels", chosen, width, view.name)
    index = torch.tensor(chosen, device=device).repeat_interleave(copies)
    runner: Target | _SlicedTarget = target
    sliced = _SlicedTarget.applies(view, output, target.calls, hooked)
    if sliced:
        runner = _SlicedTarget(model, cast("nn.Conv2d | nn.Linear", module), index)
        stack.enter_context(runner.stopping())
    target.recorder.clear()  # the probe's tensors are not needed any more

    def values_of(inputs: torch.Tensor) -> torch.Tensor:
        return _objective_values(objective, _select(runner(inputs), index, sliced))

    return chosen, view.name, values_of, target.recorder.clear


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


# -- validation ---------------------------------------------------------------------------------


def _first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first module (in registration order) with parameters of its own, if any."""
    for name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is not None:
            return name, module
    return None


def _check_input_shape(model: nn.Module, input_shape: object) -> tuple[tuple[int, ...], str]:
    """The input shape, completed from the model's first layer where it says what is missing.

    A convolution first layer given only its spatial sizes (``(H, W)`` for ``Conv2d``) adds its
    ``in_channels`` in front; a linear first layer given nothing gives ``(in_features,)``.
    Nothing else is guessed: a recurrent layer's ``(8,)`` could mean 8 steps or 8 features.
    Also returns a note for messages, saying how the shape was completed ("" when it was not).
    """
    first = _first_layer(model)
    name, module = first if first is not None else ("", None)
    if input_shape is None and isinstance(module, nn.Linear):
        return (module.in_features,), f" (from the in_features of the first layer {name!r})"
    if isinstance(input_shape, torch.Size):
        input_shape = tuple(input_shape)
    if not isinstance(input_shape, (tuple, list)) or not input_shape:
        hint = ""
        if isinstance(module, nn.modules.conv._ConvNd):
            hint = (
                f"; the first layer {name!r} takes {module.in_channels} channels, so the "
                f"spatial size alone will do, such as {(32,) * len(module.kernel_size)}"
            )
        raise NetlensTypeError(
            "Expected input_shape to be a non-empty tuple of ints, the shape of one input "
            f"without the batch dimension such as (1, 28, 28), but got {describe(input_shape)}"
            f"{hint}."
        )
    sizes = [as_int(size) for size in input_shape]
    if any(size is None or size <= 0 for size in sizes):
        raise NetlensValueError(
            f"Expected input_shape to hold positive ints, but got {tuple(input_shape)}."
        )
    shape = tuple(size for size in sizes if size is not None)
    if isinstance(module, nn.modules.conv._ConvNd) and len(shape) == len(module.kernel_size):
        note = f" (completed from {shape} by the in_channels of the first layer {name!r})"
        return (module.in_channels, *shape), note
    return shape, ""


def _check_value_range(value_range: object) -> tuple[float, float] | None:
    if value_range is None:
        return None
    if not isinstance(value_range, (tuple, list)) or len(value_range) != 2:
        raise NetlensTypeError(
            "Expected value_range to be None or a pair (low, high), but got "
            f"{describe(value_range)}."
        )
    bounds = [as_real(bound) for bound in value_range]
    if any(bound is None for bound in bounds):
        raise NetlensTypeError(
            f"Expected value_range bounds to be numbers, but got {describe(value_range)}."
        )
    low, high = (cast(float, bound) for bound in bounds)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise NetlensValueError(
            f"Expected value_range bounds to be finite numbers, but got {tuple(value_range)}."
        )
    if not low < high:
        raise NetlensValueError(
            f"Expected value_range (low, high) with low < high, but got {tuple(value_range)}."
        )
    return low, high


def _check_transforms(transforms: object, input_shape: tuple[int, ...]) -> tuple[str, ...]:
    rank = len(input_shape)
    if transforms is None:
        return ()
    if isinstance(transforms, str):
        if transforms == "default":
            return _TRANSFORMS if rank == 3 else ("jitter",) if rank == 2 else ()
        transforms = (transforms,)
    if not isinstance(transforms, (tuple, list)) or not all(isinstance(t, str) for t in transforms):
        raise NetlensTypeError(
            'Expected transforms to be "default", None or a list of names from '
            f"{list(_TRANSFORMS)}, but got {describe(transforms)}."
        )
    unknown = [name for name in transforms if name not in _TRANSFORMS]
    if unknown:
        raise NetlensValueError(
            f'Expected transforms to be "default", None or names from {list(_TRANSFORMS)}, but '
            f"got {unknown[0]!r}."
        )
    if transforms and rank not in (2, 3):
        raise NetlensValueError(
            "Expected an input_shape of an image (C, H, W) or a sequence (T, F) for transforms, "
            f"but got {input_shape}; pass transforms=None."
        )
    return tuple(name for name in _TRANSFORMS if name in transforms)


def _channel_seed(seed: int, channel: int, copy: int | None = None) -> int:
    """A well-mixed 64-bit seed per (seed, channel) or (seed, channel, copy).

    A channel's run is thus the same alone or in a batch of others.
    """
    entropy = [seed, channel] if copy is None else [seed, channel, copy]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def _check_objective(objective: object) -> str | Callable[[torch.Tensor], torch.Tensor]:
    if callable(objective) and not isinstance(objective, Expression):
        return cast(Callable[[torch.Tensor], torch.Tensor], objective)
    if not isinstance(objective, str):
        raise NetlensTypeError(
            f"Expected objective to be one of {_OBJECTIVES}, a callable or objectives of "
            f"netlens.objectives, but got {describe(objective)}."
        )
    return check_choice("objective", objective, _OBJECTIVES)


def _check_expressions(objective: object) -> tuple[tuple[Expression, ...], bool] | None:
    """The objective expressions and whether they came as a list; None for the other forms."""
    if isinstance(objective, Expression):
        return (objective,), False
    if isinstance(objective, (list, tuple)):
        if not objective or not all(isinstance(item, Expression) for item in objective):
            raise NetlensTypeError(
                "Expected objective to be a string, a callable, an objective of "
                "netlens.objectives or a non-empty list of them, but got "
                f"{describe(objective)}."
            )
        return tuple(objective), True
    return None


def _check_normalize(
    normalize: object, shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(mean, std)`` as float64 tensors: scalars, or one entry per channel of an image."""
    if normalize is None:
        return None
    if not isinstance(normalize, (tuple, list)) or len(normalize) != 2:
        raise NetlensTypeError(
            "Expected normalize to be None or a pair (mean, std), as torchvision's Normalize "
            f"takes them, but got {describe(normalize)}."
        )
    pair = []
    for name, value in zip(("mean", "std"), normalize, strict=True):
        if (isinstance(value, torch.Tensor) and value.is_complex()) or (
            isinstance(value, (np.ndarray, np.generic)) and np.iscomplexobj(value)
        ):
            raise NetlensTypeError(
                f"Expected normalize's {name} to hold real numbers, but got complex values "
                f"({describe(value)}), whose imaginary part would be lost."
            )
        try:
            tensor = torch.as_tensor(
                value.detach().cpu() if isinstance(value, torch.Tensor) else value,
                dtype=torch.float64,
            )
        except (TypeError, ValueError, RuntimeError) as error:
            raise NetlensTypeError(
                f"Expected normalize's {name} to be a number or a sequence of numbers, but got "
                f"{describe(value)}."
            ) from error
        if tensor.dim() > 1 or (tensor.dim() == 1 and (len(shape) != 3 or len(tensor) != shape[0])):
            raise NetlensValueError(
                f"Expected normalize's {name} to be a number or one number per channel of an "
                f"image input (C, H, W), but got {describe(value)} for input_shape {shape}."
            )
        if not bool(torch.isfinite(tensor).all()):
            raise NetlensValueError(
                f"Expected normalize's {name} to be finite, but got {tensor.tolist()}."
            )
        pair.append(tensor)
    mean, std = pair
    if not bool((std > 0).all()):
        raise NetlensValueError(f"Expected normalize's std to be > 0, but got {std.tolist()}.")
    return mean, std


def _check_normalize_in(
    normalization: tuple[torch.Tensor, torch.Tensor] | None,
    bounds: tuple[float, float] | None,
    work: torch.dtype,
    dtype: torch.dtype,
) -> None:
    """Refuse a ``normalize`` that is finite in float64 but not where it is used.

    ``(x - mean) / std`` is computed in ``work`` (float32 at least) and handed to the model in
    ``dtype``: a std of 1e-50 is 0 in float32, 1e-40 has an infinite reciprocal there, and a
    std of 1e-6 maps pixels in (0, 1) beyond what float16 holds.
    """
    if normalization is None:
        return
    mean, std = normalization
    for name, value in (("mean", mean), ("std", std)):
        bad = non_finite(value.to(work))
        if bad is not None:
            raise NetlensValueError(
                f"Expected normalize's {name} to be finite in {work}, the dtype the inputs are "
                f"computed in, but got {value.tolist()}, with {bad} values there."
            )
    cast = std.to(work)
    if not bool((cast > 0).all()) or non_finite(1 / cast) is not None:
        raise NetlensValueError(
            f"Expected normalize's std to be at least {torch.finfo(work).tiny:g} in {work}, the "
            f"dtype the inputs are computed in (so that 1 / std is finite there), but got "
            f"{std.tolist()}, which is {cast.tolist()} in {work}."
        )
    if bounds is None:
        return
    low, high = bounds
    extremes = torch.stack([(low - mean) / std, (high - mean) / std])
    if non_finite(extremes.to(work)) is not None or non_finite(extremes.to(dtype)) is not None:
        limit = torch.finfo(dtype).max
        raise NetlensValueError(
            f"Expected normalize to map the value range ({low:g}, {high:g}) to inputs that the "
            f"model's dtype {dtype} holds (up to {limit:g}), but (x - mean) / std reaches "
            f"{float(extremes.abs().max()):g}: check normalize's mean and std, and the value "
            "range (the pictures' units)."
        )


def _check_batch(batch: object) -> int | None:
    return None if batch is None else check_int("batch", batch)


# -- the public function -----------------------------------------------------------------------


def maximize_activation(
    model: nn.Module,
    layer: LayerSpec | None = None,
    channels: int | Sequence[int] | torch.Tensor | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    objective: Objective = "mean",
    steps: int = 256,
    lr: float = 0.05,
    param: str = "pixel",
    transforms: str | Sequence[str] | None = "default",
    l2: float = 0.0,
    tv: float = 0.0,
    value_range: tuple[float, float] | None = None,
    seed: int | None = None,
    progress: bool = False,
    batch: int | None = None,
    decorrelate: Decorrelate = False,
    normalize: Normalization | None = None,
    select: Select | None = None,
    channel_dim: int | None = None,
    blur_every: int = 0,
    blur_sigma: float = 0.5,
) -> Maximization:
    """Synthesise the inputs that drive channels of a layer, or objectives, as high as they go.

    Two forms. ``maximize_activation(model, layer, channels, ...)`` synthesises one input per
    channel (all channels of the layer by default) for ``objective="mean"``, ``"center"`` or a
    function of the channel's map. ``maximize_activation(model, objective=o, ...)``, with ``o``
    an objective of :mod:`netlens.objectives` (or a list of them) and no ``layer`` or
    ``channels``, synthesises one input per objective; an objective may combine channels,
    units, directions, class logits and diversity over several layers.

    All inputs are optimised together as one batch with Adam: each input is the parameter of
    its own channel or objective only. Each step runs the model in eval mode (dropout off,
    BatchNorm on its running statistics) with frozen parameters, and only as far as the
    deepest layer read: the forward pass stops right after it (through to the output for
    :func:`~netlens.objectives.class_logit`); for a plain ``nn.Conv2d`` or ``nn.Linear`` target
    of the first form, whose channels are its own output features, only each input's own channel
    is computed. The model is left exactly as it was, also when this raises.

    Layers are read by the layer contract, as in every technique: a tuple or list gives its
    first tensor, a mapping its first tensor value, a ``PackedSequence`` its padded tensor
    (``select=`` picks another part); the channel axis follows from the module's kind (dim 1
    for the convolution family, the last dim for ``nn.Linear``, transformers-style ``Conv1D``,
    recurrent layers, attention, ...) or from ``channel_dim=``; the batch axis of a recurrent
    layer with ``batch_first=False`` is dim 1.

    An input is made as ``parameter -> spatial image (param) -> colours (decorrelate) -> value
    range -> normalize -> transforms -> model``. ``value_range=(low, high)`` keeps the inputs
    strictly inside the box by a smooth parametrisation, ``low + (high - low) * (tanh(z) + 1) /
    2`` of the unconstrained ``z``, rather than by clipping after each step: gradients stay
    informative everywhere, Adam's moments are not fought by a projection, and it composes with
    the Fourier parametrisation, whose pixels cannot be clipped one by one. With
    ``normalize=(mean, std)`` the inputs are pictures in ``value_range`` ((0, 1) by default)
    mapped by ``(x - mean) / std`` before the model, as torchvision's ``Normalize``.

    Args:
        model: Any ``nn.Module`` taking floating-point batches ``(n, *input_shape)``.
        layer: The target layer, as for :func:`find_layers`; must select exactly one layer.
            Omitted (None) with objective expressions.
        channels: A channel (or unit) index, or a list of them; all channels of the layer by
            default. An int drops the channel dimension of the result, a list or None keeps it.
            Omitted with objective expressions.
        input_shape: The shape of one input without the batch dimension: ``(C, H, W)`` for
            images (any C and size), ``(T, F)`` for sequences. Completed from the model's first
            layer (its first module with parameters) where that says what is missing: the
            spatial size alone, ``(H, W)``, for a ``Conv2d`` first layer (its ``in_channels``
            added in front), nothing at all for an ``nn.Linear`` one.
        objective: ``"mean"`` of the channel's map (default), ``"center"``: the unit at the
            centre of the map (the value itself for a linear unit), or a function from the
            selected maps ``(n, *map)`` (row ``i``: the channel of input ``i``, the layer's
            output arranged ``(n, C, *map)``) to one value per input ``(n,)``, for example
            ``lambda maps: maps[:, -1]`` for the last time step of a recurrent unit. Or an
            objective of :mod:`netlens.objectives` (the result drops the objective dimension),
            or a list of them (one input each), without ``layer`` and ``channels``.
        steps: Adam steps.
        lr: Adam's learning rate.
        param: ``"pixel"`` (the input is the parameter) or ``"fourier"`` (a spectrum scaled by
            1/frequency over the spatial dims, the decorrelated parametrisation of Olah et al.
            2017, as Lucid's ``fft_image``).
        transforms: ``"default"``: a random jitter of about 1/14 of the size (whole pixels),
            scale in [0.9, 1.1] and rotation within +-10 degrees for images, a jitter along
            time for sequences; ``None``: none; or a list from ``"jitter"``, ``"scale"``,
            ``"rotate"``. Drawn afresh for every input at every step; edges are reflected.
        l2: Weight of the mean squared input value, per input.
        tv: Weight of the total variation (mean absolute difference of neighbours), per input.
        value_range: ``(low, high)`` bounds of the inputs (``(-1, 1)`` for netlens' CIFAR-10).
            With ``normalize``, the bounds of the pictures before it, (0, 1) by default;
            without, of the model's inputs, unbounded by default.
        seed: Makes the run repeatable; the global random state is never touched. Each
            channel (or objective, by its index) draws from its own generator, so a channel's
            input is the same alone or in a batch.
        progress: Show a progress bar (needs tqdm).
        batch: ``n`` inputs per channel or objective, from different starting noise, in a
            dimension of size ``n`` after the channel dimension of the results; None (default):
            one input and no such dimension. With
            :func:`~netlens.objectives.diversity` in the objective the ``n`` inputs of an
            objective are pushed apart (it needs ``n >= 2``).
        decorrelate: For RGB inputs ``(3, H, W)``: optimise the colours in a decorrelated basis
            (the parameter's 3 channels are mapped by a 3x3 matrix at every pixel, Lucid's
            ``to_valid_rgb(decorrelate=True)``). ``True``: ImageNet's colour statistics
            (Lucid's and lucent's matrix, :data:`netlens._color.IMAGENET_COLOR_SQRT`); a
            :class:`ColorStats` from :func:`color_stats`: the data's own; a 3x3 matrix: the
            square root of a colour covariance. The matrix is scaled so that its largest
            column has norm 1.
        normalize: ``(mean, std)``, each a number or one number per input channel, as
            torchvision's ``Normalize`` takes them: the model's inputs are ``(x - mean) /
            std`` of pictures ``x`` in ``value_range``. Results keep the model's inputs as
            ``images`` and the pictures as ``pixels``.
        select: Which part of the layer's output to maximise, for layers that return several:
            an index (into a tuple or list), a key (of a mapping) or a function of the output.
            Objective expressions take it per term instead.
        channel_dim: The channel axis of the layer's output, where the module's kind does not
            tell it (``-1`` for channels-last stages). Per term for objective expressions.
        blur_every: Blur the inputs every this many steps (0: never), a regulariser against
            high frequencies. With ``value_range`` the blur applies before the squash.
        blur_sigma: Standard deviation in pixels of that Gaussian blur.

    Returns:
        A :class:`Maximization` with the inputs, the objective reached and its history, in the
        dtype and on the device of the model's first layer (there are no user inputs to
        follow); see there for the shapes.

    Raises:
        LayerNotFoundError: See :func:`find_layers`.
        NetlensValueError: A layer spec selecting several layers, a channel out of range, an
            ``input_shape`` that does not fit the model, ``steps``, ``lr`` or ``batch`` not
            positive, a ``value_range`` with ``low >= high``, an unknown ``param``, transform
            or objective name, an objective function that does not return one value per
            channel, ``layer``, ``channels``, ``select`` or ``channel_dim`` given with objective
            expressions (or no ``layer`` without them), ``diversity`` with fewer than 2 inputs
            per objective, ``decorrelate`` for inputs without 3 channels or with a NaN or
            infinite matrix or :class:`ColorStats`, a ``normalize`` that is not finite, or whose
            ``std`` is not positive, in the dtype it is used in (float32 at least; the model's
            for the inputs it makes), a layer the objective reads that does not run, or a call
            inside ``torch.inference_mode()`` (which allows no gradients). Also, during the
            run, as soon as the inputs, the objective or its gradient become NaN or infinite:
            the message names the step and the channels or objectives (nothing is returned).
        NetlensTypeError: Arguments of the wrong type, complex ``normalize`` or
            ``decorrelate`` values among them.

    Example:
        >>> import netlens as nl
        >>> from netlens import objectives as obj
        >>> from netlens.models import LeNet5
        >>> net = LeNet5()
        >>> result = nl.maximize_activation(
        ...     net, "conv1", [0, 1, 2], input_shape=(1, 28, 28), steps=8,
        ...     value_range=(-1, 1), seed=0,
        ... )
        >>> result.images.shape, result.history.shape, result.channels
        (torch.Size([3, 1, 28, 28]), torch.Size([8, 3]), tensor([0, 1, 2]))
        >>> bool((result.images.abs() < 1).all())
        True
        >>> one = nl.maximize_activation(net, "conv1", 4, input_shape=(28, 28), steps=2)
        >>> one.images.shape, one.activations.shape, one.history.shape  # no channel dim
        (torch.Size([1, 28, 28]), torch.Size([]), torch.Size([2]))
        >>> both = nl.maximize_activation(
        ...     net, objective=obj.channel("conv2", 3) + 0.1 * obj.diversity("conv2"),
        ...     input_shape=(28, 28), batch=2, steps=2, seed=0,
        ... )
        >>> both.images.shape, both.activations.shape, both.layer
        (torch.Size([2, 1, 28, 28]), torch.Size([2]), 'conv2')
    """
    check_model(model)
    progress = check_bool("progress", progress)
    expressions = _check_expressions(objective)
    if expressions is None:
        if layer is None:
            raise NetlensValueError(
                "Expected a layer (and channels), or an objective of netlens.objectives as "
                f"objective=, but got layer=None and objective={describe(objective)}."
            )
        view: LayerView | None = layer_view(model, layer, select=select, channel_dim=channel_dim)
        requested, listed = (
            (None, True) if channels is None else check_channels("channels", channels)
        )
        classic = _check_objective(objective)
    else:
        given = {
            name: value
            for name, value in (
                ("layer", layer),
                ("channels", channels),
                ("select", select),
                ("channel_dim", channel_dim),
            )
            if value is not None
        }
        if given:
            name = next(iter(given))
            raise NetlensValueError(
                f"Expected no {name} with an objective of netlens.objectives (the objective "
                f"names its layers and channels; select= and channel_dim= go to its terms), "
                f"but got {name}={describe(given[name])}."
            )
        view, requested, classic = None, None, "mean"
        listed = expressions[1]
    shape, completed = _check_input_shape(model, input_shape)
    steps = check_int("steps", steps)
    lr = check_real("lr", lr, positive=True)
    l2 = check_real("l2", l2)
    tv = check_real("tv", tv)
    param = check_choice("param", param, _PARAMS)
    names = _check_transforms(transforms, shape)
    seed = check_int("seed", secrets.randbits(63) if seed is None else seed, minimum=0)
    batch = _check_batch(batch)
    copies = 1 if batch is None else batch
    blur_every = check_int("blur_every", blur_every, minimum=0)
    blur_sigma = check_real("blur_sigma", blur_sigma, positive=True)
    colors = color_matrix(decorrelate)
    if colors is not None and (len(shape) != 3 or shape[0] != 3):
        raise NetlensValueError(
            f"Expected an input_shape of RGB images (3, H, W) for decorrelate, but got {shape}."
        )
    normalization = _check_normalize(normalize, shape)
    bounds = _check_value_range(value_range)
    if bounds is None and normalization is not None:
        bounds = (0.0, 1.0)
    if expressions is not None and copies < 2:
        diverse = [
            term
            for expression in expressions[0]
            for _, term in expression.terms
            if isinstance(term, _Diversity)
        ]
        if diverse:
            raise NetlensValueError(
                f"Expected batch >= 2 for {diverse[0]!r}, which pushes the inputs of an "
                f"objective apart, but got batch={batch}."
            )
    check_gradients_allowed("maximize_activation")
    check_not_meta(model)

    # the dtype the model takes its inputs in: its first layer's, not a float64 temperature's
    dtype, device = model_dtype_device(model)
    dtype = dtype or torch.get_default_dtype()
    device = device or torch.device("cpu")
    spatial = _spatial_dims(len(shape))
    # The parametrisation and Adam's state live in at least float32 whatever the model's
    # dtype: in float16 Adam's eps (1e-8) rounds to 0 and squared gradients underflow, and
    # the images turned NaN from step 2. Inputs are cast to the model's dtype on the way in.
    work = torch.promote_types(dtype, torch.float32)
    _check_normalize_in(normalization, bounds, work, dtype)

    with ExitStack() as stack:
        # The parameters keep requires_grad (shared with every thread); the gradient is asked
        # for the parametrisation alone, so their .grad is never written.
        stack.enter_context(evaluating(model))
        stack.enter_context(torch.enable_grad())  # also when called under torch.no_grad()
        if device.type == "cuda" and any(isinstance(m, nn.RNNBase) for m in model.modules()):
            # cuDNN computes an RNN's backward only in training mode; the native kernels do
            # it in eval mode too, so dropout stays off and results are those of eval mode.
            stack.enter_context(cudnn_off())
        values_of: Callable[[torch.Tensor], torch.Tensor]
        if view is not None:
            labels, name, values_of, clear = _layer_objective(
                stack, model, view, requested, classic, (shape, completed), copies, dtype, device
            )
        else:
            assert expressions is not None
            expression_target = _ExpressionTarget(model, expressions[0], copies)
            probe = torch.zeros((_PROBE_BATCH, *shape), dtype=dtype, device=device)
            expression_target.probe(probe, shape, completed)
            labels = list(range(len(expressions[0])))
            name = expression_target.layer_names()
            values_of = expression_target
            clear = expression_target.recorder.clear

        generators = [
            torch.Generator().manual_seed(
                _channel_seed(seed, label, None if batch is None else copy)
            )
            for label in labels
            for copy in range(copies)
        ]
        raw_shape = shape if param == "pixel" else _spectrum_shape(shape)
        noise = torch.stack(
            [_INIT_STD * torch.randn(raw_shape, generator=g, dtype=work) for g in generators]
        ).to(device)
        parametrization: _Pixel | _Fourier = (
            _Pixel(noise) if param == "pixel" else _Fourier(noise, shape, spatial)
        )
        mean_std = _broadcast_normalization(normalization, shape, work, device)
        matrix = None if colors is None else colors.to(device, work)

        def images() -> torch.Tensor:
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

        # On the CPU, convolutions and above all max-pooling of image batches ran faster in the
        # channels-last layout (LeNet5 up to conv2: 1.75x; benchmarks/lucent_compare.py); the
        # values are the same up to rounding.
        channels_last = _CHANNELS_LAST and device.type == "cpu" and len(shape) == 3
        optimizer = _Adam(parametrization.raw, lr)
        history: list[torch.Tensor] = []
        watch = _FiniteWatch(
            steps, copies, _input_names(labels, expressions is not None), dtype, device
        )
        for step in progress_bar(range(steps), enabled=progress, desc=f"maximize {name}"):
            current = images()
            inputs = current
            if names:
                draws = torch.stack(
                    [torch.rand(4, generator=g, dtype=torch.float64) for g in generators]
                )
                inputs = _transform(current, draws, names, sequence=len(shape) == 2)
            inputs = inputs.to(dtype)
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            values = values_of(inputs)
            if step == 0 and not depends_on(values, parametrization.raw):
                raise NetlensValueError(
                    "Expected the objective to depend on the input through the model, but its "
                    "values carry no gradient (does the objective function detach them?)."
                )
            loss = -values.sum()
            if l2:
                loss = loss + l2 * current.pow(2).flatten(1).mean(1).sum()
            if tv:
                loss = loss + tv * _total_variation(current, spatial).sum()
            (found,) = torch.autograd.grad(loss, [parametrization.raw], allow_unused=True)
            gradient = torch.zeros_like(parametrization.raw) if found is None else found
            history.append(values.detach())
            # before the step: a NaN gradient would make every later input NaN
            watch.check(step, current.detach(), history, gradient)
            optimizer.step(gradient)
            if blur_every and (step + 1) % blur_every == 0 and step + 1 < steps:
                parametrization.blur_(blur_sigma, spatial)
        watch.flush(history)
        with torch.no_grad():
            final = images().detach().to(dtype)
            reached = values_of(final).detach()
        clear()
        if not (bool(torch.isfinite(final).all()) and bool(torch.isfinite(reached).all())):
            raise NetlensValueError(
                f"Expected finite inputs and activations after {steps} steps, but the "
                f"optimisation of a {dtype} model produced NaN or infinite values: lower lr, "
                "bound the inputs with value_range=, or run the model in float32."
            )
    count = len(labels)
    grouped = (count,) if batch is None else (count, batch)
    trace = torch.stack(history).view(steps, *grouped)
    final = final.view(*grouped, *shape)
    reached = reached.view(grouped)
    return Maximization(
        images=final if listed else final[0],
        activations=reached if listed else reached[0],
        history=trace if listed else trace[:, 0],
        channels=torch.tensor(labels, dtype=torch.long),
        layer=name,
        objectives=None if expressions is None else expressions[0],
        batch=batch,
        normalize=None
        if normalization is None
        else (normalization[0].to(device, dtype), normalization[1].to(device, dtype)),
        value_range=bounds,
    )
