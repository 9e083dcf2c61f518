"""
Filter and activation grids
===========================

:class:`netlens.FilterGrid` draws the weights of a layer: a conv layer's filters as small
images, a linear or recurrent weight as a heatmap with its gate blocks labelled.
:class:`netlens.ActivationGrid` draws what a layer computes on an input, one channel per tile.

A small CNN is trained for a few seconds to tell four shapes apart (a horizontal, a vertical and
a diagonal bar, and a ring, at random places in noise), so that its filters have something to
show.
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
# Small starting weights, so that the filters show what training wrote into them rather than
# their random start (the task is learnt within an epoch).
with torch.no_grad():
    model.conv1.weight.mul_(0.1)
train(model, images, labels)

# %%
# The first layer's filters
# -------------------------
# One tile per filter; with one input channel the tiles are grey. ``normalize="filter"`` (the
# default) stretches each filter over the whole grey range, so that every filter's pattern
# shows, whatever its size: trained on bars and rings, most are edges, horizontal, vertical
# or diagonal. Deeper layers have many input channels: a tile is then their mean, or
# ``in_channels="separate"`` draws one row per input channel.

fig, ax = nl.FilterGrid(model.conv1).plot()
fig

# %%
# ``normalize="symmetric"`` puts all filters on one scale centred at zero, with a colorbar:
# strong and weak filters can be compared, and the sign reads red (positive) against blue.

fig, ax = nl.FilterGrid(model.conv1, normalize="symmetric").plot()
fig

# %%
# Activations
# -----------
# Record a layer and draw its channels on one input: each tile is one channel's feature map.

picture = images[labels == 3][:1]  # a ring
with nl.record(model, "relu1") as rec:
    model(picture)

fig = Figure(figsize=(9, 3), layout="constrained")
left, right = fig.subplots(1, 2, width_ratios=[1, 3])
nl.ActivationGrid(picture[0], titles=False).plot(ax=left)
left.set_title("input")
nl.ActivationGrid(rec["relu1"][0], ncols=8).plot(ax=right)
right.set_title("relu1, 16 channels")
fig

# %%
# Recurrent weights
# -----------------
# A 2-D weight is a heatmap. For LSTM and GRU layers the rows are split into the gate blocks
# PyTorch stacks (``i, f, g, o`` for an LSTM) and labelled. An LSTM reading the same pictures
# row by row, trained for a few seconds:


class RowLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(28, 32, batch_first=True)
        self.fc = nn.Linear(32, 4)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(rows)
        return self.fc(output[:, -1])


rnn = RowLSTM()
train(rnn, images[:, 0], labels, epochs=2)

fig = Figure(figsize=(9, 5), layout="constrained")
left, right = fig.subplots(1, 2)
nl.FilterGrid(rnn.lstm, weight="weight_ih_l0", normalize="symmetric").plot(ax=left)
left.set_title("weight_ih_l0 (128 x 28)")
nl.FilterGrid(rnn.lstm, weight="weight_hh_l0", normalize="symmetric").plot(ax=right)
right.set_title("weight_hh_l0 (128 x 32)")
fig

# %%
# Grids are pictures too: :meth:`~netlens.FilterGrid.to_array` gives the composed RGB array
# (for TensorBoard's ``add_image``), and :meth:`~netlens.FilterGrid.save` writes a PNG, SVG or
# PDF. See :doc:`/guide/grids` for every option.

print(nl.FilterGrid(model.conv1).to_array().shape)
