"""
Streaming statistics over a DataLoader
======================================

:func:`netlens.activation_stats` passes a whole data set through a model once and keeps, for
every channel of the chosen layers, the mean, standard deviation, minimum, maximum and the
fraction of exact zeros (dead ReLU units have 1). Memory does not grow with the data: the
statistics are merged batch by batch in float64.

The model is a small CNN trained for a few seconds on pictures of four shapes.
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
# One pass over a DataLoader
# --------------------------
# ``data`` is any iterable of batches; a batch may be a tensor or an ``(inputs, targets)``
# tuple, as a ``DataLoader`` yields. The model runs in eval mode without gradients, and comes
# back as it was.

test_images, test_labels = shapes(2000, seed=1)
loader = DataLoader(TensorDataset(test_images, test_labels), batch_size=250)
stats = nl.activation_stats(model, loader, ["relu1", "relu2", "fc"])

relu2 = stats["relu2"]
print(relu2.count[0].item(), "values per channel of relu2 (2000 pictures x 14 x 14)")
print("dead channels of relu2:", relu2.channels[relu2.dead].tolist())

# %%
# The statistics as a table (``to_csv`` writes the same as CSV):

print(relu2.to_markdown(digits=3))

# %%
# And as a picture: the mean of each channel with one standard deviation either side, the
# min-max range behind it, and dead channels in red.

fig = Figure(figsize=(9, 3.2), layout="constrained")
left, right = fig.subplots(1, 2, width_ratios=[2, 1])
relu2.plot(ax=left)
stats["fc"].plot(ax=right)
right.set_xticks(range(4), CLASSES)
fig

# %%
# Streaming by hand
# -----------------
# :class:`netlens.ActivationStats` is the accumulator underneath: ``update`` with batches,
# ``merge`` partial results (from shards, workers, or ranks with ``all_reduce``), ``compute``
# at the end. Two halves merged give the statistics of the whole, up to rounding:

first, second = nl.ActivationStats(), nl.ActivationStats()
with nl.record(model, "relu2") as rec, torch.no_grad():
    for index, (batch, _) in enumerate(loader):
        model(batch)
        (first if index < 4 else second).update(rec["relu2"])
merged = first.merge(second).compute()
print(torch.allclose(merged.mean, relu2.mean), torch.allclose(merged.std, relu2.std))

# %%
# :doc:`/guide/statistics` says how channels are found for linear, recurrent and channels-last
# layers, and how to run the same pass on several GPUs or machines.
