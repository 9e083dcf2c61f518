"""
Activation maximisation of a CNN's channels
===========================================

What does a channel respond to most? :func:`netlens.maximize_activation` starts from noise and
changes the input by gradient ascent until the channel's activation is as high as it goes
(Erhan et al. 2009; Olah et al. 2017). All requested channels are optimised together, one
input each, in one batch.

The network is a small CNN trained for a few seconds to tell four shapes apart: horizontal,
vertical and diagonal bars, and rings.
"""

import torch
from matplotlib.figure import Figure
from torch import nn

import netlens as nl

CLASSES = ["horizontal", "vertical", "diagonal", "ring"]


def shapes(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` noisy 28x28 pictures in [-1, 1] of one of four shapes, and their labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (count,), generator=g)
    centre = torch.rand(2, count, 1, 1, generator=g) * 12 + 8
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    dy, dx = ys - centre[0], xs - centre[1]
    radius = (dy**2 + dx**2).sqrt()
    masks = torch.stack(
        [
            (dy.abs() < 1.5) & (dx.abs() < 7),
            (dx.abs() < 1.5) & (dy.abs() < 7),
            ((dy - dx).abs() < 2) & (radius < 8),
            (radius - 5).abs() < 1.3,
        ],
        dim=1,
    )
    images = masks[torch.arange(count), labels].float() * 2 - 1
    return (images + 0.4 * torch.randn(images.shape, generator=g)).unsqueeze(1), labels


def train(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, epochs: int = 3) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for start in range(0, len(inputs), 64):
            loss = nn.functional.cross_entropy(
                model(inputs[start : start + 64]), labels[start : start + 64]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


torch.manual_seed(0)
images, labels = shapes(3000)
model = nn.Sequential()
model.add_module("conv1", nn.Conv2d(1, 16, 5, padding=2))
model.add_module("relu1", nn.ReLU())
model.add_module("pool1", nn.MaxPool2d(2))
model.add_module("conv2", nn.Conv2d(16, 16, 5, padding=2))
model.add_module("relu2", nn.ReLU())
model.add_module("pool2", nn.MaxPool2d(2))
model.add_module("flatten", nn.Flatten())
model.add_module("fc", nn.Linear(16 * 7 * 7, 4))
train(model, images, labels)

# %%
# The channels of a conv layer
# ----------------------------
# One input per channel of ``conv2``, kept inside the data's range [-1, 1]. The default
# ``objective="mean"`` maximises the mean of the channel's whole map, so the pattern repeats
# across the picture; small random jitter, scaling and rotation at every step (the default
# ``transforms``) keep it from turning into high-frequency noise.

channels = nl.maximize_activation(
    model, "conv2", input_shape=(1, 28, 28), steps=128, lr=0.05, value_range=(-1, 1), seed=0
)
print(channels.images.shape, channels.activations[:4])

fig, ax = channels.plot(ncols=8)
fig

# %%
# A channel that stays grey never fires, whatever the input: its activation stays below zero
# (a dead unit; :func:`netlens.activation_stats` finds them over a data set).
print(
    "channels that cannot be made positive:", channels.channels[channels.activations <= 0].tolist()
)

# %%
# ``objective="center"`` maximises only the unit at the centre of the map: the picture then
# shows what that unit sees through its receptive field, and stays grey outside it.

centre = nl.maximize_activation(
    model,
    "conv2",
    channels=list(range(8)),
    objective="center",
    input_shape=(1, 28, 28),
    steps=128,
    value_range=(-1, 1),
    seed=0,
)
fig, ax = centre.plot(ncols=8)
fig

# %%
# The classes
# -----------
# The output units of the classifier are channels too: the input each class's logit is
# highest for. ``plot_curves`` shows the objective at every step, to judge whether the run
# has converged.

classes = nl.maximize_activation(
    model, "fc", input_shape=(1, 28, 28), steps=128, value_range=(-1, 1), tv=0.05, seed=0
)
fig = Figure(figsize=(9, 3), layout="constrained")
left, right = fig.subplots(1, 2)
classes.plot(ax=left, ncols=4)
left.set_title(" / ".join(CLASSES), fontsize=10)
classes.plot_curves(ax=right)
fig

# %%
# Objectives compose: :mod:`netlens.objectives` adds channels, single units, directions,
# class logits and a diversity term, over several layers at once (``channel("conv2", 3) -
# channel("conv2", 5)`` shows what separates two channels). :doc:`/guide/maximization` has the
# Fourier parametrisation, decorrelated colours for RGB models and the regularisers.
