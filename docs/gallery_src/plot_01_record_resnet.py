"""
Record the layers of a ResNet-style model
=========================================

:func:`netlens.record` stores what chosen layers compute while the model runs. Layers are
picked by name, by glob or by type; the hooks exist only inside the ``with`` block, and the model
comes back exactly as it was.

The model here is a small residual network, built in a few lines so that the example needs no
download: a stem, two stages of two residual blocks, and a classifier. Each block applies its
``relu`` module twice, which the recorder keeps apart.
"""

import torch
from torch import nn

import netlens as nl


class Block(nn.Module):
    """Two 3x3 convolutions with a skip connection; ``relu`` runs twice per forward pass."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


def stage(channels_in: int, channels: int) -> nn.Sequential:
    down = nn.Conv2d(channels_in, channels, 3, stride=2, padding=1)
    return nn.Sequential(down, Block(channels), Block(channels))


torch.manual_seed(0)
model = nn.Sequential()
model.add_module("stem", nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()))
model.add_module("layer1", stage(16, 32))
model.add_module("layer2", stage(32, 64))
model.add_module("head", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)))
model.eval()

# %%
# Finding layers
# --------------
# :func:`netlens.find_layers` shows what a layer spec selects: a dotted name, a glob (``*``
# stays inside one dotted part, ``**`` spans several), a module class, or a list of these.

print(list(nl.find_layers(model, "layer*.*.conv*")))
print(list(nl.find_layers(model, nn.BatchNorm2d))[:3], "...")

# %%
# A misspelt name fails before anything runs, and says what was meant:

try:
    nl.find_layers(model, "layer1.1.conv3")
except nl.LayerNotFoundError as error:
    print(error)

# %%
# Recording
# ---------
# Inside the block every forward pass stores the output of each selected layer; the recorder
# is a read-only mapping from layer name to tensor.

# A batch of two made-up pictures: smooth colour gradients with a bright disc.
ys, xs = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
disc = ((xs - 0.3) ** 2 + (ys + 0.2) ** 2 < 0.15).float()
images = torch.stack(
    [torch.stack([xs, ys, disc]), torch.stack([disc, -xs, ys * xs])]
)  # (2, 3, 32, 32)

with nl.record(model, ["stem", "layer1.*", "layer2.2.relu"]) as rec:
    logits = model(images)

for name, tensor in rec.items():
    print(f"{name:14} {tuple(tensor.shape)}")

# %%
# A module called several times in one pass (each block's ``relu``) keeps every call, in order;
# the mapping itself holds the last one.

calls = rec.calls("layer2.2.relu")
print(len(calls), [tuple(t.shape) for t in calls])
print(torch.equal(rec["layer2.2.relu"], calls[-1]))

# %%
# Looking at what was recorded
# ----------------------------
# :class:`netlens.ActivationGrid` draws a recorded tensor one channel per tile. The first
# picture through the stem's 16 channels:

grid = nl.ActivationGrid(rec["stem"][0])
fig, ax = grid.plot()
fig

# %%
# The model is left as it was
# ---------------------------
# :func:`netlens.testing.model_unchanged` compares parameters, gradients, buffers (here the
# BatchNorm running statistics), training flags and hooks before and after a block, and fails
# if anything differs. Recording with gradients kept (``detach=False``) changes nothing either:

from netlens.testing import model_unchanged

with model_unchanged(model), nl.record(model, nn.Conv2d, detach=False) as rec:
    model(images)
print(len(rec), "conv outputs recorded; they carry gradients:", rec["stem.0"].requires_grad)

# %%
# Where next: :doc:`/guide/recording` covers tuple outputs (``select=``), in-place operations
# and gradients; :doc:`/guide/layers` the rules every technique applies to a layer's output.
