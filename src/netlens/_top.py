"""The strongest activations of channels over a data set, with their projections and patches.

One pass over the data keeps a running top-k per channel; then the kept activations are
projected with the deconvnet (:mod:`netlens._deconvnet`) and cut to their receptive fields
(:mod:`netlens._receptive`): the paper's Figure 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ._checks import (
    InputInfo,
    batches,
    check_channels,
    check_channels_fit,
    check_gradients_allowed,
    check_int,
    prepare_inputs,
)
from ._deconvnet import Seeds, project, recorded, unravel, warn_nonlinear
from ._errors import NetlensValueError
from ._layers import LayerSpec, check_model
from ._model import batched_inputs, evaluating, frozen, progress_bar
from ._outputs import Select, layer_view
from ._receptive import crop, receptive_fields, sweep
from ._record import Recorder
from ._render import Plottable, display, figure_axes, grid

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["TopActivations", "top_activations"]

# Inputs projected per forward/backward pass.
_CHUNK = 256


class _RunningTop:
    """Per channel, the k inputs with the largest activation seen so far: O(channels x k).

    Fed with each batch of inputs and the layer's output arranged ``(N, C, *map)``.
    """

    def __init__(self, name: str, k: int, wanted: list[int] | None) -> None:
        self.name, self.k, self.wanted = name, k, wanted
        self.seen = 0
        self.channels: torch.Tensor | None = None
        self.sample_shape: tuple[int, ...] = ()
        self.map_shape: tuple[int, ...] = ()
        self.values = torch.empty(0)
        self.indices = torch.empty(0, dtype=torch.long)
        self.flat = torch.empty(0, dtype=torch.long)
        self.images = torch.empty(0)

    def _start(self, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        channel_count = output.shape[1]
        wanted = self.wanted if self.wanted is not None else list(range(channel_count))
        check_channels_fit("channels", wanted, channel_count, self.name)
        channels = torch.tensor(wanted, device=output.device)
        self.sample_shape, self.map_shape = tuple(inputs.shape[1:]), tuple(output.shape[2:])
        empty = (len(wanted), 0)
        self.values = output.new_empty(empty)
        self.indices = torch.empty(empty, dtype=torch.long, device=output.device)
        self.flat = torch.empty(empty, dtype=torch.long, device=output.device)
        self.images = inputs.new_empty((*empty, *self.sample_shape))
        return channels

    def update(self, inputs: torch.Tensor, output: torch.Tensor) -> None:
        """Take in a batch of inputs and the layer's arranged output ``(N, C, *map)`` for it."""
        batch = inputs.shape[0]
        if self.channels is None:
            self.channels = self._start(inputs, output)
        elif tuple(inputs.shape[1:]) != self.sample_shape:
            raise NetlensValueError(
                f"Expected every batch to hold inputs of shape {self.sample_shape}, but got a "
                f"batch of shape {tuple(inputs.shape)}."
            )
        count = self.channels.shape[0]
        maps = output[:, self.channels].reshape(batch, count, -1)
        values, flat = maps.max(dim=2)  # the strongest location of each input, (batch, count)
        kept = self.values.shape[1]
        candidates = torch.cat([self.values, values.T], dim=1)
        # A stable sort keeps the earlier input first among equal activations.
        order = torch.sort(candidates, dim=1, descending=True, stable=True).indices[:, : self.k]
        numbers = torch.arange(self.seen, self.seen + batch, device=order.device)
        self.values = candidates.gather(1, order)
        self.indices = torch.cat([self.indices, numbers.expand(count, batch)], dim=1).gather(
            1, order
        )
        self.flat = torch.cat([self.flat, flat.T], dim=1).gather(1, order)
        images = inputs[(order - kept).clamp(min=0)]  # (count, k, *sample)
        if kept:
            rows = torch.arange(count, device=order.device)[:, None]
            previous = self.images[rows, order.clamp(max=kept - 1)]
            from_batch = (order >= kept).reshape(*order.shape, *[1] * len(self.sample_shape))
            images = torch.where(from_batch, images, previous)
        self.images = images
        self.seen += batch


def top_activations(
    model: nn.Module,
    data: torch.Tensor | Iterable[Any],
    layer: LayerSpec,
    *,
    channels: int | Sequence[int] | torch.Tensor | None = None,
    k: int = 9,
    progress: bool = False,
    select: Select | None = None,
    channel_dim: int | None = None,
) -> TopActivations:
    """Find the k strongest activations of each channel over a data set and project them.

    One pass over ``data`` keeps, per channel, the ``k`` inputs with the largest value of the
    channel's map (one entry per input, at its strongest location) in a running top-k; memory
    grows with ``channels x k``, not with the data. Then the receptive field of each of those
    activations is computed from the network (the input elements the activation depends on)
    and both the input patch under it and the deconvnet projection of the activation are cut
    out: the paper's Figure 2, drawn by :meth:`TopActivations.plot`.

    The layer is read as :func:`deconvnet` reads it (``select=``, ``channel_dim=``, the batch
    axis from the module), and the model runs in eval mode with its parameters frozen.

    Args:
        model: The network.
        data: A tensor of inputs, or an iterable of batches (a ``DataLoader``): tensors or
            ``(inputs, targets, ...)`` tuples, floating-point. They run on the model's device
            and in its dtype; the results come back on the device and in the dtype of the
            first batch.
        layer: One layer, as for :func:`deconvnet`.
        channels: A channel, or a list of them; by default all channels of the layer.
        k: How many activations to keep per channel.
        progress: Show a progress bar over the batches (needs tqdm).
        select: Which part of the layer's output to read, as for :func:`record`.
        channel_dim: The channel axis of the layer's output, where the module's kind does not
            say it.

    Returns:
        The :class:`TopActivations`.

    Raises:
        NetlensValueError: Fewer than ``k`` inputs in ``data``, inputs of varying shapes, and
            the errors of :func:`deconvnet`.
        NetlensTypeError: ``data`` that is neither a tensor nor an iterable of batches, or
            batches that are not floating-point tensors.

    Example:
        >>> import torch
        >>> import netlens as nl
        >>> from netlens.models import LeNet5
        >>> model = LeNet5().eval()
        >>> loader = torch.utils.data.DataLoader(torch.randn(40, 1, 28, 28), batch_size=16)
        >>> top = nl.top_activations(model, loader, "conv2", channels=[3, 5], k=4)
        >>> top.activations.shape, top.patches.shape  # 14x14 receptive fields
        (torch.Size([2, 4]), torch.Size([2, 4, 1, 14, 14]))
        >>> nl.top_activations(model, loader, "conv2", channels=3, k=4).patches.shape
        torch.Size([4, 1, 14, 14])
    """
    check_model(model)
    view = layer_view(model, layer, select=select, channel_dim=channel_dim)
    name = view.name
    wanted, listed = (None, True) if channels is None else check_channels("channels", channels)
    k = check_int("k", k)
    check_gradients_allowed("top_activations")
    top = _RunningTop(name, k, wanted)
    info: InputInfo | None = None
    compute_dtype = torch.float32
    recorder = Recorder(model, {name: view}, detach=True, device=None)
    with evaluating(model), frozen(model), torch.no_grad(), recorder:
        for batch in progress_bar(batches(data), enabled=progress, desc="top activations"):
            prepared, batch_info = prepare_inputs(batch, model, name="data")
            checking: AbstractContextManager[None] = nullcontext()
            if info is None:
                info, compute_dtype = batch_info, prepared.dtype
                checking = batched_inputs(model, tuple(prepared.shape))
            with checking:
                model(prepared)
            output = view.arrange(recorded(recorder, name), prepared.shape[0])
            # Patches show the inputs as given: kept in their own dtype, not the model's.
            top.update(batch.detach().to(prepared.device, info.dtype), output)
    if info is None or top.channels is None or top.seen < k:
        raise NetlensValueError(f"Expected at least k={k} inputs in data, but got {top.seen}.")
    count = top.channels.shape[0]
    images = top.images.reshape(count * k, *top.sample_shape)
    channel_index = top.channels.repeat_interleave(k)
    positions = unravel(top.flat.reshape(-1), top.map_shape)
    projected = []
    labels: list[str] = []
    for start in range(0, count * k, _CHUNK):
        part = slice(start, start + _CHUNK)
        seeds = Seeds(channel_index[None, part], positions[None, part])
        inputs = images[part].to(compute_dtype)
        chunk, _, _, found = project(model, view, inputs, seeds, "deconvnet", "activation")
        projected.append(chunk[0])
        labels += [label for label in found if label not in labels]
    warn_nonlinear(labels, name, "deconvnet")
    # Sweeping each map dimension through the centre finds the largest receptive field inside
    # the input (the patch size), even when every top activation sits at a border.
    swept = sweep(top.map_shape, positions.device)
    boxes = receptive_fields(
        model,
        view,
        torch.cat([images, images[:1].expand(swept.shape[0], *top.sample_shape)]),
        torch.cat([channel_index, channel_index[:1].expand(swept.shape[0])]),
        torch.cat([positions, swept]),
    )
    size = tuple(int(s) for s in (boxes[:, :, 1] - boxes[:, :, 0]).amax(dim=0))
    boxes = boxes[: count * k]
    box_list = boxes.tolist()
    shape = (count, k, *size)
    restore = info.restore

    def per_channel(tensor: torch.Tensor) -> torch.Tensor:
        # (C, k, ...): kept for a list of channels, dropped for one int channel
        return restore(tensor if listed else tensor[0])

    return TopActivations(
        layer=name,
        channels=top.channels.cpu(),
        activations=per_channel(top.values),
        indices=per_channel(top.indices),
        positions=per_channel(positions.reshape(count, k, -1)),
        boxes=per_channel(boxes.reshape(count, k, *boxes.shape[1:])),
        patches=per_channel(crop(images, box_list, size).reshape(shape)),
        projections=per_channel(crop(torch.cat(projected), box_list, size).reshape(shape)),
    )


@dataclass(frozen=True, eq=False)
class TopActivations(Plottable):
    """The strongest activations of channels over a data set, from :func:`top_activations`.

    For each channel, the ``k`` inputs on which it responded most (its largest value over the
    map, one entry per input), strongest first, with the input patch under the receptive field
    of that activation and the deconvnet projection of the activation, cut out the same way.
    For a list of channels (or all of them) every field but ``channels`` starts with a channel
    dimension ``C``; for one int channel it has none. Tensors are on the device of the data, and
    floating ones in its dtype.

    Attributes:
        layer: The layer's name.
        channels: The channels, a 1-D tensor (one entry for an int channel).
        activations: The activation values, ``(C, k)``, strongest first.
        indices: Each input's index in the data, counted in iteration order, ``(C, k)``.
        positions: Each activation's position in the channel's map (the layer's output without
            its batch and channel axes), ``(C, k, d)``.
        boxes: The receptive field of each activation in its input, ``[start, stop)`` for each
            input dimension after the batch one, clipped to the input, ``(C, k, n, 2)``.
        patches: The inputs under the receptive fields, ``(C, k, *patch)``, ``patch`` being
            the extent of the largest receptive field inside the input; where a receptive
            field reaches past the input's border the patch is zero (as zero padding is).
        projections: The deconvnet projections, cut out and padded like ``patches``.
    """

    layer: str
    channels: torch.Tensor
    activations: torch.Tensor
    indices: torch.Tensor
    positions: torch.Tensor
    boxes: torch.Tensor
    patches: torch.Tensor
    projections: torch.Tensor

    def __repr__(self) -> str:
        return (
            f"TopActivations(layer={self.layer!r}, channels={self.channels.tolist()}, "
            f"k={self.activations.shape[-1]}, patches={tuple(self.patches.shape)})"
        )

    def plot(self, ax: Axes | None = None, *, ncols: int | None = None) -> tuple[Figure, Axes]:
        """Draw the paper's Figure 2: per channel, the projections beside the input patches.

        Each channel is a block: a square grid of its ``k`` projections (strongest first, row
        by row; each scaled on its own and centred, zero mid-grey) on the left and the grid of
        the matching input patches on the right, all patches on one common value range.

        Args:
            ax: Draw on this ``Axes``; by default on a new ``Figure``.
            ncols: Channel blocks per row; by default about the square root of half the
                number of channels (blocks are twice as wide as high).

        Returns:
            The ``(Figure, Axes)`` drawn on.
        """
        # One int channel has no channel dimension: (k,) activations.
        single = self.activations.dim() == 1
        projections_all = self.projections.unsqueeze(0) if single else self.projections
        patches_all = self.patches.unsqueeze(0) if single else self.patches
        count, k = projections_all.shape[:2]
        side = math.ceil(math.sqrt(k))
        ncols = max(1, min(count, ncols or round(math.sqrt(count / 2)) or 1))
        # Patches are inputs: one range for all, so that they compare as the inputs do.
        span = (float(patches_all.min()), float(patches_all.max()))
        tile_height, tile_width = display(patches_all[0, 0], centred=False).shape[:2]
        band, gap = max(3, tile_height // 2), max(2, tile_width // 2)
        blocks = []
        for channel in range(count):
            projections = grid([display(p, centred=True) for p in projections_all[channel]], side)
            patches = grid(
                [display(p, centred=False, value_range=span) for p in patches_all[channel]], side
            )
            spacer = np.ones((projections.shape[0], max(2, tile_width // 3), 3))
            label = np.ones((band, 2 * projections.shape[1] + spacer.shape[1], 3))
            side_by_side = np.concatenate([projections, spacer, patches], axis=1)
            blocks.append(np.concatenate([label, side_by_side], axis=0))
        block_height, block_width = blocks[0].shape[:2]
        fig, ax = figure_axes(
            ax,
            width=0.45 * ncols * (2 * side + 1) + 0.5,
            height=0.5 * math.ceil(count / ncols) * (side + 0.6) + 0.6,
        )
        ax.imshow(grid(blocks, ncols, gap=gap), interpolation="nearest")
        for channel in range(count):
            row, column = divmod(channel, ncols)
            x, y = column * (block_width + gap), row * (block_height + gap) + band - 1
            ax.text(x, y, f"channel {int(self.channels[channel])}", fontsize="small", va="bottom")
        ax.set_axis_off()
        ax.set_title(f"top-{k} activations of layer {self.layer!r}", fontsize="medium")
        return fig, ax
