"""
Occlusion sensitivity of an image classifier
============================================

Which part of a picture does a classifier rely on? :func:`netlens.occlusion` slides a grey
square over the input, as Zeiler & Fergus (2014) did, and records at every position the
probability of the correct class, the class the model now prefers, and the activation of a
feature map. Where the probability collapses, the model was looking.

The classifier is a small CNN trained for a few seconds to tell four shapes apart; the shape
sits at a random place in noise, so a good model must look at it and nowhere else.
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
# The paper's panels
# ------------------
# A 7x7 square of the background value (-1) slides with stride 2 over three test pictures.
# ``target`` is the class whose probability is tracked (here the true labels), ``layer`` the
# feature map whose activation is summed at each position (its strongest channel on the
# unoccluded input, unless ``channel=`` says which).

test_images, test_labels = shapes(3, seed=7)
result = nl.occlusion(
    model,
    test_images,
    window=7,
    stride=2,
    baseline=-1.0,
    target=test_labels,
    layer="relu2",
)
print(result.probability.shape, result.channels.tolist(), result.incremental)

# %%
# One row per picture: the input, the probability of its class for each position of the
# square (each cell drawn at the square's centre, so that maps line up with the input), the
# most probable class, the activation of the feature map, and the attribution: the drop in
# the class's probability, per pixel, averaged over the squares that cover it.

fig, axes = result.plot_panels(class_names=CLASSES)
fig

# %%
# One map at a time
# -----------------
# :meth:`~netlens.OcclusionMap.plot` draws one map over its input, on one Axes: the
# attribution (red where hiding the pixel lowers the score) or the probability.

fig = Figure(figsize=(9, 3.2), layout="constrained")
axes = fig.subplots(1, 3)
for sample, ax in enumerate(axes):
    result.plot(ax=ax, sample=sample)
    ax.set_title(CLASSES[test_labels[sample]])
fig

# %%
# Sizes of the square
# -------------------
# A square smaller than the shape's strokes barely moves the score; one as large as the shape
# hides it wherever it lands on it. The attribution of the first picture for three sizes:

fig = Figure(figsize=(9, 3.2), layout="constrained")
axes = fig.subplots(1, 3)
for window, ax in zip([3, 7, 11], axes, strict=True):
    sized = nl.occlusion(model, test_images[:1], window=window, stride=1, baseline=-1.0)
    sized.plot(ax=ax)
    ax.set_title(f"window {window}, stride 1")
fig

# %%
# The model runs on batches of occluded copies; ``batch_size=`` or ``memory_budget=`` bound
# them, and ``incremental="auto"`` recomputes only the region each square can change when the
# model allows it. :doc:`/guide/occlusion` has the details, and the course report's LeNet5 on
# CIFAR-10 (:doc:`/guide/examples`) the same panels on real photographs.
