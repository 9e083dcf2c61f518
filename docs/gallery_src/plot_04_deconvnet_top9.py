"""
Deconvnet projections and the top-9 of a channel
================================================

Zeiler & Fergus (2014) looked at a feature of a trained network in two ways: the input patches
that excite it most, over a whole data set, and those activations *projected* back to pixels
with a deconvnet, which shows which part of each patch the feature responds to.
:func:`netlens.deconvnet` does the projection for given inputs;
:func:`netlens.top_activations` finds the strongest activations over a data set and returns
the patches under their receptive fields and their projections (the paper's Figure 2).

The network is a small CNN trained for a few seconds to tell four shapes apart.
"""

import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

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
# Projecting one activation
# -------------------------
# For each input, the strongest activation of channel 3 of ``conv2`` (``position="max"``) is
# kept, every other activation of the layer set to zero, and the signal sent down to the
# pixels: unpooled with the max-pool switches, rectified at every ReLU, through the transposed
# filters. ``rule="guided"`` (guided backpropagation) and ``rule="gradient"`` differ only in
# how they pass the ReLUs.

pictures = torch.cat([images[labels == c][:1] for c in range(4)])  # one of each shape
rules = ["deconvnet", "guided", "gradient"]
projections = {rule: nl.deconvnet(model, pictures, "conv2", 3, rule=rule) for rule in rules}
print(projections["deconvnet"].images.shape, projections["deconvnet"].positions.tolist())

fig = Figure(figsize=(8, 5.5), layout="constrained")
axes = fig.subplots(1, 4)
nl.ActivationGrid(pictures, ncols=1, titles=CLASSES).plot(ax=axes[0])
axes[0].set_title("inputs")
for ax, rule in zip(axes[1:], rules, strict=True):
    projections[rule].plot(ax=ax)
    ax.set_title(rule)
    ax.set_yticks([])  # the rows are the inputs on the left
fig

# %%
# The top-9 of a channel over a data set
# --------------------------------------
# :func:`netlens.top_activations` streams a data set through the model once and keeps, per
# channel, the ``k`` strongest activations: which sample, where, how strong, the input patch
# under the receptive field, and its deconvnet projection. Memory stays at ``k`` per channel.

test_images, test_labels = shapes(2000, seed=1)
loader = DataLoader(TensorDataset(test_images, test_labels), batch_size=250)
top = nl.top_activations(model, loader, "conv2", channels=[1, 3, 8, 9], k=9)
print(top.activations.shape, top.patches.shape, top.projections.shape)
print("channel 3's strongest samples:", top.indices[1].tolist())
print("their shapes:", [CLASSES[test_labels[i]] for i in top.indices[1]])

# %%
# Each channel is a block: its nine projections on the left, the input patches on the right.

fig, ax = top.plot(ncols=2)
fig

# %%
# Several workers or machines can each take a shard of the data and combine their results
# exactly with :meth:`~netlens.TopActivations.merge` (or ``all_reduce`` across
# ``torch.distributed`` ranks). :doc:`/guide/deconvnet` has the details; the course report's
# LeNet5 on CIFAR-10 (:doc:`/guide/examples`) shows the same figures for a real data set.
