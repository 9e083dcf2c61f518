"""Activation maximisation: synthesise, for each channel of a layer, the input that drives it.

Every requested channel gets its own input and all of them are optimised together as one batch
(Olah, Mordvintsev & Schubert 2017, "Feature Visualization", for the parametrisations and the
transforms). The layer's output is read through the layer contract (:mod:`netlens._outputs`):
its channels are those every other technique sees. Two things make it fast: the forward pass
stops as soon as the target layer has run (later layers cannot change the objective), and for a
plain ``nn.Conv2d`` or ``nn.Linear`` target whose channels are its own output features only the
one output channel each input is optimised for is computed.
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

from ._checks import (
    as_int,
    as_real,
    check_channels,
    check_channels_fit,
    check_choice,
    check_gradients_allowed,
    check_int,
    check_real,
)
from ._errors import NetlensTypeError, NetlensValueError, describe
from ._grid import ActivationGrid, Normalize
from ._hooks import Hooks
from ._layers import LayerSpec, check_model
from ._model import batched_inputs, evaluating, frozen, model_dtype_device, progress_bar
from ._outputs import LayerView, Select, layer_view
from ._record import StopForward, Target
from ._render import Plottable, figure_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Maximization", "maximize_activation"]

#: ``objective``: ``"mean"``, ``"center"`` or a function from the selected maps ``(n, *map)``
#: to one value per input ``(n,)``.
Objective = str | Callable[[torch.Tensor], torch.Tensor]

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


@dataclass(frozen=True, eq=False)
class Maximization(Plottable):
    """The inputs that maximise each requested channel, with the objective along the way.

    Activation maximisation has no inputs of the user's: every tensor here is in the model's
    dtype and on the model's device (``channels`` excepted: int64 on the CPU).

    For ``channels=`` an int, the channel dimension is dropped; for a list or None (all channels)
    it is kept, ``K`` being the number of channels.

    Attributes:
        images: The synthesised inputs, ``(K, *input_shape)`` (``input_shape`` for an int
            channel), inside ``value_range`` when one was given.
        activations: The objective each channel reaches on its final input, computed without
            transforms: ``(K,)`` (0-d for an int channel).
        history: The objective at every step, on the transformed inputs that the step optimised:
            ``(steps, K)`` (``(steps,)`` for an int channel).
        channels: The channel (or unit) each input was optimised for, a 1-D int64 tensor (one
            entry for an int channel).
        layer: The name of the target layer.
    """

    images: torch.Tensor
    activations: torch.Tensor
    history: torch.Tensor
    channels: torch.Tensor
    layer: str

    def __repr__(self) -> str:
        return (
            f"Maximization(layer={self.layer!r}, channels={self.channels.tolist()}, "
            f"images={tuple(self.images.shape)}, steps={self.history.shape[0]})"
        )

    @property
    def _single(self) -> bool:
        """Whether the result is of one int channel (its channel dimension dropped)."""
        return self.activations.dim() == 0

    def plot(
        self,
        ax: Any = None,
        *,
        ncols: int | None = None,
        normalize: Normalize = "filter",
    ) -> tuple[Figure, Axes]:
        """Show the inputs as a grid of pictures titled by channel, on one ``Axes``.

        Images with 1 or 3 channels are drawn grey or RGB, ``(T, F)`` sequences as grey
        pictures (time downwards), vectors as strips, other channel counts as their mean over
        channels. The objective per step is :meth:`plot_curves`.

        Args:
            ax: A matplotlib ``Axes`` to draw on; by default a new ``Figure``.
            ncols: Tiles per row (near-square by default).
            normalize: As for :class:`ActivationGrid`: ``"filter"`` (each picture on its own
                range, the default), ``"global"``, ``"symmetric"`` or a fixed ``(low, high)``.

        Returns:
            ``(figure, axes)``.
        """
        images = self.images.detach().cpu()
        tiles = _as_tiles(images[None] if self._single else images)
        grid = ActivationGrid(
            tiles,
            normalize=normalize,
            ncols=ncols,
            titles=[str(channel) for channel in self.channels.tolist()],
        )
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
        """Draw the objective of every channel per step, one line each, on one ``Axes``.

        The curves are noisy with transforms: every step sees freshly transformed inputs.

        Args:
            ax: A matplotlib ``Axes`` to draw on; by default a new ``Figure``.

        Returns:
            ``(figure, axes)``.
        """
        figure, axes = figure_axes(ax, width=6.0, height=4.0)
        history = self.history.detach().to("cpu", torch.float64).numpy()
        if self._single:
            history = history[:, None]
        steps = np.arange(1, history.shape[0] + 1)
        for index, channel in enumerate(self.channels.tolist()):
            axes.plot(steps, history[:, index], linewidth=0.8, label=str(channel))
        axes.set_xlabel("step")
        axes.set_ylabel("objective")
        axes.set_title(f"{self.layer}: objective per step")
        if len(self.channels) <= 10:
            axes.legend(title="channel", fontsize="small")
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

    Only space is decorrelated; the colour decorrelation of the paper needs the colour
    statistics of a data set (ImageNet's), which netlens does not assume.
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
    target: Target, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> None:
    """Run the whole model once on zero inputs: count the layer's calls, check ``input_shape``.

    A failure before the target layer is a matter of ``input_shape`` (an input the model does
    not take, or one without its batch dimension reaching a convolution or recurrent layer); a
    failure at or after it (``select=``, ``channel_dim=``) is reported as it is.
    """
    inputs = torch.zeros((_PROBE_BATCH, *shape), dtype=dtype, device=device)
    reached: list[bool] = []
    try:
        with (
            batched_inputs(target.model, tuple(inputs.shape), unbatched_hint=None),
            Hooks() as hooks,
        ):
            # added after batched_inputs' checks, so that it records only inputs they let pass
            hooks.add(
                target.view.module.register_forward_pre_hook(lambda m, a: reached.append(True))
            )
            target.probe(inputs, f"a batch of inputs of input_shape {shape}")
    except NetlensValueError as error:
        if reached:
            raise
        raise NetlensValueError(
            "Expected input_shape to be the shape of one input of the model without its batch "
            f"dimension, but got {shape}: a batch of such inputs, {tuple(inputs.shape)}, does "
            f"not fit the model. {error}"
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
            hooks.add(self.module.register_forward_pre_hook(hook))
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
        weight = self.module.weight[self.channels]
        bias = self.module.bias[self.channels] if self.module.bias is not None else None
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
        grouped = features.reshape(1, -1, *features.shape[2:])
        grouped = grouped.contiguous(memory_format=torch.channels_last)
        weight = weight.contiguous(memory_format=torch.channels_last)
        padding: Any = conv.padding  # a tuple of ints or "same" / "valid"
        out = F.conv2d(grouped, weight, bias, conv.stride, padding, conv.dilation, count)
        return out.view(count, 1, *out.shape[2:])


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


def _total_variation(images: torch.Tensor, spatial: int) -> torch.Tensor:
    """Mean absolute difference of neighbours along each spatial dim, per input."""
    total = images.new_zeros(images.shape[0])
    for dim in range(images.dim() - spatial, images.dim()):
        if images.shape[dim] > 1:
            total = total + images.diff(dim=dim).abs().flatten(1).mean(1)
    return total


# -- validation --------------------------------------------------------------------------------


def _check_input_shape(input_shape: object) -> tuple[int, ...]:
    if isinstance(input_shape, torch.Size):
        input_shape = tuple(input_shape)
    if not isinstance(input_shape, (tuple, list)) or not input_shape:
        raise NetlensTypeError(
            "Expected input_shape to be a non-empty tuple of ints, the shape of one input "
            f"without the batch dimension such as (1, 28, 28), but got {describe(input_shape)}."
        )
    sizes = [as_int(size) for size in input_shape]
    if any(size is None or size <= 0 for size in sizes):
        raise NetlensValueError(
            f"Expected input_shape to hold positive ints, but got {tuple(input_shape)}."
        )
    return tuple(size for size in sizes if size is not None)


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


def _check_objective(objective: object) -> Objective:
    if callable(objective):
        return cast(Callable[[torch.Tensor], torch.Tensor], objective)
    if not isinstance(objective, str):
        raise NetlensTypeError(
            f"Expected objective to be one of {_OBJECTIVES} or a callable, but got "
            f"{describe(objective)}."
        )
    return check_choice("objective", objective, _OBJECTIVES)


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


def _channel_seed(seed: int, channel: int) -> int:
    """A well-mixed 64-bit seed per (seed, channel).

    A channel's run is thus the same alone or in a batch of others.
    """
    return int(np.random.SeedSequence([seed, channel]).generate_state(1, np.uint64)[0])


# -- the public function -----------------------------------------------------------------------


def maximize_activation(
    model: nn.Module,
    layer: LayerSpec,
    channels: int | Sequence[int] | torch.Tensor | None = None,
    *,
    input_shape: Sequence[int],
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
    select: Select | None = None,
    channel_dim: int | None = None,
    blur_every: int = 0,
    blur_sigma: float = 0.5,
) -> Maximization:
    """Synthesise one input per channel of a layer that drives that channel as high as it goes.

    All requested channels are optimised together as one batch with Adam: input ``i`` is the
    parameter of channel ``channels[i]`` only. Each step runs the model in eval mode (dropout
    off, BatchNorm on its running statistics) with frozen parameters, and only as far as the
    target layer: the forward pass stops right after it, and for a plain ``nn.Conv2d`` or
    ``nn.Linear`` whose channels are its own output features only each input's own channel is
    computed. The model is left exactly as it was, also when this raises.

    The layer's output is read by the layer contract, as in every technique: a tuple or list
    gives its first tensor, a mapping its first tensor value, a ``PackedSequence`` its padded
    tensor (``select=`` picks another part); the channel axis follows from the module's kind
    (dim 1 for the convolution family, the last dim for ``nn.Linear``, transformers-style
    ``Conv1D``, recurrent layers, attention, ...) or from ``channel_dim=``; the batch axis of a
    recurrent layer with ``batch_first=False`` is dim 1.

    ``value_range=(low, high)`` keeps the inputs strictly inside the box by a smooth
    parametrisation, ``low + (high - low) * (tanh(z) + 1) / 2`` of the unconstrained ``z``,
    rather than by clipping after each step: gradients stay informative everywhere, Adam's
    moments are not fought by a projection, and it composes with the Fourier parametrisation,
    whose pixels cannot be clipped one by one.

    Args:
        model: Any ``nn.Module`` taking floating-point batches ``(n, *input_shape)``.
        layer: The target layer, as for :func:`find_layers`; must select exactly one layer.
        channels: A channel (or unit) index, or a list of them; all channels of the layer by
            default. An int drops the channel dimension of the result, a list or None keeps it.
        input_shape: The shape of one input without the batch dimension: ``(C, H, W)`` for
            images (any C and size), ``(T, F)`` for sequences.
        objective: ``"mean"`` of the channel's map (default), ``"center"``: the unit at the
            centre of the map (the value itself for a linear unit), or a function from the
            selected maps ``(n, *map)`` (row ``i``: channel ``channels[i]`` of input ``i``, the
            layer's output arranged ``(n, C, *map)``) to one value per input ``(n,)``, for
            example ``lambda maps: maps[:, -1]`` for the last time step of a recurrent unit.
        steps: Adam steps.
        lr: Adam's learning rate.
        param: ``"pixel"`` (the input is the parameter) or ``"fourier"`` (a spectrum scaled by
            1/frequency over the spatial dims, the decorrelated parametrisation of Olah et al.
            2017; the colour decorrelation of the paper is left out as it needs a data set's
            colour statistics).
        transforms: ``"default"``: a random jitter of about 1/14 of the size (whole pixels),
            scale in [0.9, 1.1] and rotation within +-10 degrees for images, a jitter along
            time for sequences; ``None``: none; or a list from ``"jitter"``, ``"scale"``,
            ``"rotate"``. Drawn afresh for every input at every step; edges are reflected.
        l2: Weight of the mean squared input value, per input.
        tv: Weight of the total variation (mean absolute difference of neighbours), per input.
        value_range: ``(low, high)`` bounds of the inputs (``(-1, 1)`` for netlens' CIFAR-10), or
            None for unbounded inputs.
        seed: Makes the run repeatable; the global random state is never touched. Each channel
            draws from its own generator, so a channel's input is the same alone or in a batch.
        progress: Show a progress bar (needs tqdm).
        select: Which part of the layer's output to maximise, for layers that return several:
            an index (into a tuple or list), a key (of a mapping) or a function of the output.
        channel_dim: The channel axis of the layer's output, where the module's kind does not
            tell it (``-1`` for channels-last stages).
        blur_every: Blur the inputs every this many steps (0: never), a regulariser against
            high frequencies. With ``value_range`` the blur applies before the squash.
        blur_sigma: Standard deviation in pixels of that Gaussian blur.

    Returns:
        A :class:`Maximization` with the inputs, the objective reached and its history, in the
        model's dtype and on its device (there are no user inputs to follow).

    Raises:
        LayerNotFoundError: See :func:`find_layers`.
        NetlensValueError: A layer spec selecting several layers, a channel out of range, an
            ``input_shape`` that does not fit the model, ``steps`` or ``lr`` not positive, a
            ``value_range`` with ``low >= high``, an unknown ``param``, transform or objective
            name, an objective function that does not return one value per channel, or a call
            inside ``torch.inference_mode()`` (which allows no gradients).
        NetlensTypeError: Arguments of the wrong type.

    Example:
        >>> import netlens as nl
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
        >>> one = nl.maximize_activation(net, "conv1", 4, input_shape=(1, 28, 28), steps=2)
        >>> one.images.shape, one.activations.shape, one.history.shape  # no channel dim
        (torch.Size([1, 28, 28]), torch.Size([]), torch.Size([2]))
    """
    check_model(model)
    view = layer_view(model, layer, select=select, channel_dim=channel_dim)
    requested, listed = (None, True) if channels is None else check_channels("channels", channels)
    shape = _check_input_shape(input_shape)
    steps = check_int("steps", steps)
    lr = check_real("lr", lr, positive=True)
    l2 = check_real("l2", l2)
    tv = check_real("tv", tv)
    bounds = _check_value_range(value_range)
    param = check_choice("param", param, _PARAMS)
    names = _check_transforms(transforms, shape)
    objective = _check_objective(objective)
    seed = check_int("seed", secrets.randbits(63) if seed is None else seed, minimum=0)
    blur_every = check_int("blur_every", blur_every, minimum=0)
    blur_sigma = check_real("blur_sigma", blur_sigma, positive=True)
    check_gradients_allowed("maximize_activation")

    dtype, device = model_dtype_device(model)
    dtype = dtype or torch.get_default_dtype()
    device = device or torch.device("cpu")
    spatial = _spatial_dims(len(shape))
    module = view.module
    hooked = bool(module._forward_hooks or module._forward_pre_hooks)

    with ExitStack() as stack:
        stack.enter_context(evaluating(model))
        stack.enter_context(frozen(model))
        stack.enter_context(torch.enable_grad())  # also when called under torch.no_grad()
        if device.type == "cuda" and any(isinstance(m, nn.RNNBase) for m in model.modules()):
            # cuDNN computes an RNN's backward only in training mode; the native kernels do
            # it in eval mode too, so dropout stays off and results are those of eval mode.
            stack.enter_context(torch.backends.cudnn.flags(enabled=False))
        target = Target(model, view)
        _probe(target, shape, dtype, device)
        output = target.recorder[view.name]
        width = view.channels(output)
        chosen = list(range(width)) if requested is None else requested
        check_channels_fit("channels", chosen, width, view.name)
        index = torch.tensor(chosen, device=device)
        runner: Target | _SlicedTarget = target
        sliced = _SlicedTarget.applies(view, output, target.calls, hooked)
        if sliced:
            runner = _SlicedTarget(model, cast("nn.Conv2d | nn.Linear", module), index)
            stack.enter_context(runner.stopping())
        target.recorder.clear()  # the probe's tensors are not needed any more

        generators = [torch.Generator().manual_seed(_channel_seed(seed, c)) for c in chosen]
        raw_shape = shape if param == "pixel" else _spectrum_shape(shape)
        noise = torch.stack(
            [_INIT_STD * torch.randn(raw_shape, generator=g, dtype=dtype) for g in generators]
        ).to(device)
        parametrization: _Pixel | _Fourier = (
            _Pixel(noise) if param == "pixel" else _Fourier(noise, shape, spatial)
        )

        def images() -> torch.Tensor:
            raw = parametrization.image()
            if bounds is None:
                return raw
            low, high = bounds
            return low + (high - low) * (torch.tanh(raw) + 1) / 2

        def objective_of(inputs: torch.Tensor) -> torch.Tensor:
            maps = _select(runner(inputs), index, sliced)
            return _objective_values(objective, maps)

        optimizer = _Adam(parametrization.raw, lr)
        history: list[torch.Tensor] = []
        for step in progress_bar(range(steps), enabled=progress, desc=f"maximize {view.name}"):
            current = images()
            inputs = current
            if names:
                draws = torch.stack(
                    [torch.rand(4, generator=g, dtype=torch.float64) for g in generators]
                )
                inputs = _transform(current, draws, names, sequence=len(shape) == 2)
            values = objective_of(inputs)
            if not values.requires_grad:
                raise NetlensValueError(
                    "Expected the objective to depend on the input through the model, but its "
                    "values carry no gradient (does the objective function detach them?)."
                )
            loss = -values.sum()
            if l2:
                loss = loss + l2 * current.pow(2).flatten(1).mean(1).sum()
            if tv:
                loss = loss + tv * _total_variation(current, spatial).sum()
            (gradient,) = torch.autograd.grad(loss, [parametrization.raw], allow_unused=True)
            optimizer.step(torch.zeros_like(parametrization.raw) if gradient is None else gradient)
            history.append(values.detach())
            if blur_every and (step + 1) % blur_every == 0 and step + 1 < steps:
                parametrization.blur_(blur_sigma, spatial)
        with torch.no_grad():
            final = images().detach()
            reached = objective_of(final).detach()
        target.recorder.clear()
    trace = torch.stack(history)
    return Maximization(
        images=final if listed else final[0],
        activations=reached if listed else reached[0],
        history=trace if listed else trace[:, 0],
        channels=torch.tensor(chosen, dtype=torch.long),
        layer=view.name,
    )
