"""The pictures of an atlas beside the data: feature visualisations and weights.

Feature visualisations run :func:`~netlens.maximize_activation` on fixed chunks of a layer's
channels (all of a chunk in one batch). The chunks are the same whatever the number of
processes, and a channel's run is seeded by the channel, so that ranks that split the chunks
between them produce exactly the pictures one process would.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._core.distributed import gather, rank_of, world_size
from .._core.outputs import LayerView
from .._maximize.api import maximize_activation
from .._maximize.objectives import channel as channel_objective
from .._maximize.objectives import diversity

__all__ = ["CHUNK", "feature_visualisations", "weight_pictures"]

#: Channels optimised together: a batch large enough to use the machine, small enough that a
#: rank's share of a small layer is not a single chunk.
CHUNK = 32
# The weight of the diversity term for the extra pictures (lucent's example uses 1e2 on a loss;
# netlens maximises, so the sign is +).
_DIVERSITY = 10.0


def _mine(count: int, group: Any) -> list[range]:
    """The chunks of ``range(count)`` this rank optimises: every world-th chunk."""
    chunks = [range(start, min(start + CHUNK, count)) for start in range(0, count, CHUNK)]
    return chunks[rank_of(group) :: world_size(group)]


def feature_visualisations(
    model: nn.Module,
    view: LayerView,
    channels: int,
    input_shape: tuple[int, ...],
    *,
    steps: int,
    diverse: int,
    value_range: tuple[float, float],
    seed: int,
    group: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One picture per channel ``(C, *input)`` and ``diverse`` more per channel, or None."""
    decorrelate = len(input_shape) == 3 and input_shape[0] == 3
    options: dict[str, Any] = {
        "input_shape": input_shape,
        "steps": steps,
        "param": "fourier" if len(input_shape) == 3 else "pixel",
        "decorrelate": decorrelate,
        "value_range": value_range,
        "seed": seed,
    }
    pieces: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []
    for chunk in _mine(channels, group):
        single = maximize_activation(
            model,
            view.name,
            list(chunk),
            select=view.select,
            channel_dim=view.channel_dim,
            **options,
        ).images.detach()
        extra = None
        if diverse:
            objectives = [
                channel_objective(view.name, c, select=view.select, channel_dim=view.channel_dim)
                + _DIVERSITY
                * diversity(view.name, select=view.select, channel_dim=view.channel_dim)
                for c in chunk
            ]
            images = maximize_activation(
                model, objective=objectives, batch=diverse, **options
            ).images
            extra = images.detach().reshape(len(chunk), diverse, *input_shape)
        pieces.append((chunk.start, single.cpu(), None if extra is None else extra.cpu()))
    every = sorted((piece for part in gather(pieces, group) for piece in part), key=lambda p: p[0])
    features = torch.cat([piece[1] for piece in every])
    extras = [piece[2] for piece in every]
    more = None if not diverse else torch.cat([e for e in extras if e is not None])
    return features, more


def weight_pictures(module: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor | None:
    """Per output channel, its weights where they make a picture; else None.

    A convolution over 1 or 3 input channels (a first layer: the weights look like the inputs
    they match), a linear layer over the flattened input (its unit's weights reshaped like an
    input), and a recurrent layer's input weights (per unit, one row per gate).
    """
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.modules.conv._ConvNd) and isinstance(weight, torch.Tensor):
        if weight.shape[1] in (1, 3) and not module.transposed:
            return weight.detach().cpu()
        return None
    if isinstance(module, nn.Linear) and isinstance(weight, torch.Tensor):
        size = 1
        for dim in input_shape:
            size *= dim
        if weight.shape[1] == size:
            return weight.detach().cpu().reshape(weight.shape[0], *input_shape)
        return None
    if isinstance(module, nn.RNNBase):
        weight_ih = getattr(module, "weight_ih_l0", None)
        if not isinstance(weight_ih, torch.Tensor) or module.proj_size:
            return None
        gates = weight_ih.shape[0] // module.hidden_size
        per_unit = weight_ih.detach().cpu().reshape(gates, module.hidden_size, -1)
        return per_unit.transpose(0, 1)  # (hidden units, gates, input features)
    return None
