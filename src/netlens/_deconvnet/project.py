"""Deconvnet projections (Zeiler & Fergus 2014): :func:`deconvnet` and its :class:`Projection`.

To project one activation of a layer back to the input, the paper sets every other activation of
that layer to zero and runs the signal down an attached deconvnet: max-unpooling with the
switches recorded in the forward pass, rectification of the signal, and the transposed filters.
Here one forward pass runs with the ReLU rule of :mod:`netlens._deconvnet.rules` in place, and
autograd does the rest in one (batched) backward pass from the seeded activations.

The layer's output is read through :class:`~netlens._core.outputs.LayerView`: the seed of a
projection is built in the arranged ``(N, C, *rest)`` layout and mapped back to the layer's own
layout before backpropagating, so a channels-last stage or a time-first recurrent layer is
projected as its channels and batch axes say.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from .._core.checks import (
    check_channels,
    check_channels_fit,
    check_choice,
    check_gradients_allowed,
    check_position,
    non_finite,
    prepare_inputs,
)
from .._core.errors import NetlensTypeError, NetlensValueError, NotRecordedError, describe
from .._core.layers import LayerSpec, check_model
from .._core.model import batched_inputs, depends_on, evaluating
from .._core.outputs import LayerView, Select, layer_view
from .._core.render import Plottable, display, figure_axes, montage, set_title
from .._record import Recorder
from .rules import Rectifier, warn_nonlinear

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Projection", "deconvnet"]

Rule = Literal["deconvnet", "guided", "gradient"]
Scale = Literal["activation", "unit"]
Position = Literal["max", "all"] | Sequence[int]

_RULES = ("deconvnet", "guided", "gradient")
_SCALES = ("activation", "unit")


# -- validation --------------------------------------------------------------------------------


def _check_position(position: object) -> str | tuple[int, ...]:
    if isinstance(position, str):
        return check_choice("position", position, ("max", "all"))
    if isinstance(position, (tuple, list, torch.Size)):
        return check_position("position", position)
    raise NetlensTypeError(
        'Expected position to be "max", "all" or a tuple of indices into the channel\'s map, '
        f"but got {describe(position)}."
    )


# -- the projection ----------------------------------------------------------------------------


def recorded(recorder: Recorder, name: str) -> torch.Tensor:
    """The layer's selected output from ``recorder``, or an error saying the layer never ran."""
    try:
        return recorder[name]
    except NotRecordedError:
        raise NetlensValueError(
            f"Expected layer {name!r} to run in the model's forward pass on these inputs, but it "
            "never ran: pick a layer that the model uses."
        ) from None


def unravel(flat: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Flat indices into a map of ``shape`` as index tuples along a new last dimension."""
    if not shape:
        return flat.new_zeros((*flat.shape, 0))
    return torch.stack(torch.unravel_index(flat, tuple(shape)), dim=-1)


@dataclass(frozen=True)
class Seeds:
    """What to project: ``channels[k, n]`` of input ``n`` in seed set ``k``.

    Channels and positions refer to the arranged output ``(N, C, *map)``.
    """

    channels: torch.Tensor  # (K, N)
    position: str | torch.Tensor  # "max", "all" or (K, N, d) indices into the map


def project(
    model: nn.Module,
    view: LayerView,
    inputs: torch.Tensor,
    seeds: Seeds,
    rule: str,
    scale: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[str]]:
    """Project one activation (or map) per input and seed set: one forward, one backward pass.

    ``inputs`` are on the model's device and in its dtype. Returns the projections
    ``(K, N, ...)``, the seeded activations, their positions in the channel's map (``None`` for
    whole maps) and the labels of non-ReLU nonlinearities on the path.
    """
    name = view.name
    leaf = inputs.detach().requires_grad_(True)
    rectifier = Rectifier(model, guided=rule == "guided") if rule != "gradient" else None
    # The parameters keep requires_grad (another thread may be training with them): the
    # backward asks for the gradient of the input leaf alone.
    with evaluating(model), ExitStack() as stack:
        if rectifier is not None:
            stack.enter_context(rectifier)
        # The recorder's copy-on-write mode must sit above the rectifier: it has to see an
        # in-place ReLU call before the rectifier replaces it.
        recorder = stack.enter_context(Recorder(model, {name: view}, detach=False, device=None))
        with torch.enable_grad(), batched_inputs(model, tuple(inputs.shape)):
            model(leaf.clone())  # a clone: the model may write into its input
        output = recorded(recorder, name)
        stack.close()
    if not depends_on(output, leaf):
        raise NetlensValueError(
            f"Expected the output of layer {name!r} to depend on the inputs, but it does not (it "
            "has no autograd history from them): pick a layer between the inputs and the output."
        )
    arranged = view.arrange(output, inputs.shape[0])
    # The seeds live in the layer's own layout (a time-first recurrent layer: (T, N, H)), as
    # autograd needs them, and are written through their arranged view (K, N, C, *map): the
    # layer's arrangement with the seed-set axis in front.
    seed = output.new_zeros((seeds.channels.shape[0], *output.shape))
    arranged_seed = seed.permute(0, *(1 + dim for dim in view.order(output)))
    activations, positions = _seed(arranged, arranged_seed, name, seeds, scale)
    images = _backward(output, leaf, seed)
    if images is None:
        raise NetlensValueError(
            f"Expected the output of layer {name!r} to depend on the inputs, but no gradient "
            "reaches them."
        )
    labels = rectifier.nonlinear_on_path(output) if rectifier is not None else []
    return images.detach(), activations, positions, labels


def _backward(output: torch.Tensor, leaf: torch.Tensor, seed: torch.Tensor) -> torch.Tensor | None:
    """Backpropagate each of the ``K`` seeds ``(K, *output.shape)``: ``(K, *leaf.shape)``.

    Several seeds go through one batched backward pass (autograd's ``is_grads_batched``), after
    a single forward pass: cheaper than repeating the batch once per seed, whose forward would
    cost ``K`` times as much.
    """
    if seed.shape[0] == 1:
        (grad,) = torch.autograd.grad(output, leaf, seed[0], allow_unused=True)
        return None if grad is None else grad.unsqueeze(0)
    try:
        (grad,) = torch.autograd.grad(
            output, leaf, seed, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
        return grad
    except RuntimeError:
        # Some operation on the path has no batched backward: one backward per seed instead.
        grads = [
            torch.autograd.grad(output, leaf, part, retain_graph=True, allow_unused=True)[0]
            for part in seed
        ]
        return None if grads[0] is None else torch.stack([g for g in grads if g is not None])


def _seed(
    arranged: torch.Tensor, seed: torch.Tensor, name: str, seeds: Seeds, scale: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Write the chosen activations (or ones) into the zero ``seed``, arranged ``(K, N, C, *map)``.

    Returns the seeded activations and their positions in the map (``None`` for whole maps).
    """
    sets, count = seeds.channels.shape
    channel_count, map_shape = arranged.shape[1], tuple(arranged.shape[2:])
    check_channels_fit(
        "channel", sorted(set(seeds.channels.reshape(-1).tolist())), channel_count, name
    )
    device = arranged.device
    which = torch.arange(sets, device=device)[:, None]
    rows = torch.arange(count, device=device)[None, :]
    channels = seeds.channels.to(device)
    maps = arranged.detach()[rows, channels]  # (sets, count, *map_shape)
    if isinstance(seeds.position, str) and seeds.position == "all":
        seed[which, rows, channels] = maps if scale == "activation" else torch.ones_like(maps)
        return maps, None
    flat_maps = maps.reshape(sets, count, -1)
    if isinstance(seeds.position, torch.Tensor):
        positions = seeds.position.to(device)
        _check_position_fits(positions[0, 0], map_shape, name)
        flat = torch.zeros((sets, count), dtype=torch.long, device=device)
        for index, size in zip(positions.unbind(-1), map_shape, strict=True):
            flat = flat * size + index
    else:  # "max": the strongest location, per input
        flat = flat_maps.argmax(dim=-1)
    values = flat_maps.gather(-1, flat[..., None])
    ones = torch.ones_like(values)
    flat_seed = torch.zeros_like(flat_maps).scatter_(
        -1, flat[..., None], values if scale == "activation" else ones
    )
    seed[which, rows, channels] = flat_seed.reshape(maps.shape)
    return values.squeeze(-1), unravel(flat, map_shape)


def _check_position_fits(position: torch.Tensor, map_shape: tuple[int, ...], name: str) -> None:
    index = tuple(int(i) for i in position)
    if len(index) != len(map_shape) or any(
        i >= size for i, size in zip(index, map_shape, strict=True)
    ):
        raise NetlensValueError(
            f"Expected position to index the {len(map_shape)}-d map of layer {name!r}, of shape "
            f"{map_shape}, but got {index}."
        )


# -- the public function -----------------------------------------------------------------------


def deconvnet(
    model: nn.Module,
    inputs: torch.Tensor,
    layer: LayerSpec,
    channel: int | Sequence[int] | torch.Tensor,
    *,
    position: Position = "max",
    scale: Scale = "activation",
    rule: Rule = "deconvnet",
    select: Select | None = None,
    channel_dim: int | None = None,
) -> Projection:
    """Project an activation of a layer back to input space with a deconvnet.

    As in Zeiler & Fergus (2014): every activation of ``layer`` but the chosen one(s) is set to
    zero, and the signal goes down through the network with max-pool switches (unpooling to
    the location of each forward maximum), rectification of the signal at every ReLU, and the
    transposed filters of each convolution. Batch normalisation (in eval mode), linear layers,
    flattening and residual additions are passed through as autograd differentiates them.

    Every ReLU call is covered: ``nn.ReLU`` (also in place), ``F.relu``, ``torch.relu``,
    ``Tensor.relu`` and ``relu_``, intercepted during the forward pass, so a model written with
    ``F.relu`` gets the deconvnet rule too, not the plain gradient. Another nonlinearity on the
    path (tanh, sigmoid, GELU, ELU, softplus, SiLU, a recurrent layer, ...) has no deconvnet
    rule; it is backpropagated as a gradient and a warning names it, once per call.

    The layer's output is read by the layer contract: a tuple or list gives its first tensor, a
    mapping its first tensor value, a ``PackedSequence`` its padded tensor (padding steps hold
    zeros that depend on no input); ``select=`` picks another part. The channel axis follows
    from the module's kind (dim 1 for the convolution family, the last dim for ``nn.Linear``,
    attention and recurrent layers) or ``channel_dim=``; the batch axis from the module (dim 1
    for ``batch_first=False``). A position indexes the remaining axes in their order: for
    ``nn.Linear`` on ``(N, T, D)`` tokens, ``(t,)`` is token ``t``.

    The model runs in eval mode; each module's training flag is restored afterwards, also when
    several threads run techniques on the model at once (the last one out restores them). The
    parameters are left alone (``requires_grad`` included): the gradient is taken with respect
    to the inputs only, so no ``.grad`` is touched, neither the parameters' nor that of
    ``inputs``. A layer that runs several times in one forward pass is projected from its last
    call.

    Args:
        model: The network.
        inputs: A batch ``(N, ...)`` of floating-point inputs. They run on the model's device
            and in its dtype; the results come back on the inputs' device and in their dtype.
        layer: One layer, as for :func:`find_layers`.
        channel: A channel index, or a list of them: one projection per channel, all from one
            forward pass and one batched backward pass (memory grows with the number of
            channels).
        position: ``"max"``: the channel's strongest location, per input. ``"all"``: the whole
            map of the channel. A tuple of indices into the map (``(i, j)`` for a conv layer,
            ``()`` for a linear one on ``(N, D)``): that location, for every input.
        scale: ``"activation"`` seeds the projection with the activation values (the paper);
            ``"unit"`` with ones (what gradient-style libraries compute).
        rule: ``"deconvnet"`` rectifies the backward signal at each ReLU; ``"guided"`` also
            masks it by the forward activation (guided backpropagation); ``"gradient"`` is the
            plain gradient (saliency).
        select: Which part of the layer's output to project from: an index, a key or a
            callable, as for :func:`record`.
        channel_dim: The channel axis of the layer's output, where the module's kind does not
            say it (channels-last stages: ``-1``).

    Returns:
        The :class:`Projection`.

    Raises:
        LayerNotFoundError: ``layer`` names no module.
        NetlensValueError: A layer spec matching several layers, a layer that does not run or
            does not depend on the inputs, a channel or position outside the layer's output, an
            unknown ``position``, ``scale`` or ``rule``, an empty batch, inputs without their
            batch dimension, or a call inside ``torch.inference_mode()``.
        NetlensTypeError: Inputs that are not a floating-point tensor, or a channel or position
            that is not made of ints.

    Example:
        >>> import torch
        >>> import netlens as nl
        >>> from netlens.models import LeNet5
        >>> model = LeNet5().eval()
        >>> images = torch.randn(4, 1, 28, 28)
        >>> projection = nl.deconvnet(model, images, "conv2", 7)
        >>> projection.images.shape, projection.positions.shape, projection.channels
        (torch.Size([4, 1, 28, 28]), torch.Size([4, 2]), tensor([7]))
        >>> nl.deconvnet(model, images, "conv2", [0, 1, 2], position="all").images.shape
        torch.Size([4, 3, 1, 28, 28])
    """
    check_model(model)
    view = layer_view(model, layer, select=select, channel_dim=channel_dim)
    channels, listed = check_channels("channel", channel)
    where = _check_position(position)
    check_choice("scale", scale, _SCALES)
    check_choice("rule", rule, _RULES)
    check_gradients_allowed("deconvnet")
    prepared, info = prepare_inputs(inputs, model)
    batch, count = prepared.shape[0], len(channels)
    channel_index = torch.tensor(channels, device=prepared.device)[:, None].expand(count, batch)
    seeds = Seeds(
        channel_index,
        where
        if isinstance(where, str)
        else torch.tensor(where, dtype=torch.long).reshape(1, 1, -1).expand(count, batch, -1),
    )
    images, activations, positions, labels = project(model, view, prepared, seeds, rule, scale)
    warn_nonlinear(labels, view.name, rule)
    for what, values in (("activations", activations), ("projections", images)):
        bad = non_finite(values)
        if bad is not None:  # the NaN rule of every technique: never returned without a word
            raise NetlensValueError(
                f"Expected finite {what} of layer {view.name!r}, but the model gave {bad} "
                f"values (of {values.numel()}) on these inputs."
            )

    def per_input(tensor: torch.Tensor) -> torch.Tensor:
        # (K, N, ...) -> (N, K, ...) for a list of channels, (N, ...) for one channel
        return info.restore(tensor.transpose(0, 1) if listed else tensor[0])

    return Projection(
        images=per_input(images),
        activations=per_input(activations),
        positions=None if positions is None else per_input(positions),
        channels=torch.tensor(channels),
        layer=view.name,
        rule=rule,
        scale=scale,
        listed=listed,
    )


# -- the result --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Projection(Plottable):
    """Deconvnet projections of activations back to input space, from :func:`deconvnet`.

    Attributes:
        images: The projections, shaped like the inputs ``(N, ...)`` for one channel and
            ``(N, K, ...)`` for a list of ``K`` channels; on the inputs' device, in their dtype.
        activations: The projected activation values, ``(N,)`` or ``(N, K)``; for
            ``position="all"`` the channel's whole map, ``(N, *map)`` or ``(N, K, *map)``.
        positions: Where in the channel's map each projected activation sits, ``(N, d)`` or
            ``(N, K, d)`` for a ``d``-dimensional map; ``None`` for ``position="all"``.
        channels: The projected channels, a 1-D tensor (one entry for an int channel).
        layer: The layer's name.
        rule: ``"deconvnet"``, ``"guided"`` or ``"gradient"``.
        scale: ``"activation"`` or ``"unit"``.
        listed: Whether the channels were given as a list, so that the data keep a channel
            dimension after the batch one.
    """

    images: torch.Tensor
    activations: torch.Tensor
    positions: torch.Tensor | None
    channels: torch.Tensor
    layer: str
    rule: str
    scale: str
    listed: bool = field(default=True, repr=False)

    def __repr__(self) -> str:
        return (
            f"Projection(layer={self.layer!r}, channels={self.channels.tolist()}, "
            f"rule={self.rule!r}, scale={self.scale!r}, images={tuple(self.images.shape)})"
        )

    def plot(self, ax: Axes | None = None) -> tuple[Figure, Axes]:
        """Draw the projections, one row per input and one column per channel.

        Each projection is scaled on its own and centred, so that zero is mid-grey, positive
        values light and negative ones dark; three-channel inputs are drawn in colour.

        Args:
            ax: Draw on this ``Axes``; by default on a new ``Figure``.

        Returns:
            The ``(Figure, Axes)`` drawn on.
        """
        images = self.images if self.listed else self.images.unsqueeze(1)
        rows, columns = images.shape[:2]
        tiles = [[display(images[r, c], centred=True) for c in range(columns)] for r in range(rows)]
        canvas, centres_x, centres_y = montage(tiles)
        title = f"{self.rule} projections, layer {self.layer!r}"
        fig, ax = figure_axes(
            ax, width=1.2 * columns + 1.0, height=1.2 * rows + 0.6, title=(title, "medium")
        )
        ax.imshow(canvas, interpolation="nearest")
        ax.set_xticks(centres_x, [f"ch {c}" for c in self.channels.tolist()])
        ax.set_yticks(centres_y, [f"input {r}" for r in range(rows)])
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        set_title(ax, title, fontsize="medium")
        return fig, ax
