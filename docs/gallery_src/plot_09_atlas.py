"""
An atlas of a model
===================

:func:`netlens.atlas` puts every lens of netlens together for a whole model: one pass over a
data set gathers, for every channel of the chosen layers, its statistics, the histogram of its
activations and its strongest data-set examples (cut to their receptive fields, beside their
deconvnet projections); then each channel gets a feature visualisation. The result is an object
to explore in a notebook and, with ``out=``, a static site with a page per layer and per
channel that opens from the file system.

The network is the small CNN of :doc:`plot_04_deconvnet_top9`, trained for a few seconds to
tell four shapes apart. **The atlas this page builds is part of these docs:**
`open it <../atlas/index.html>`__ and click through its layers and channels (the arrow keys
move between channels).
"""

from pathlib import Path

import torch
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
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for _ in range(3):
    for start in range(0, len(images), 64):
        loss = nn.functional.cross_entropy(
            model(images[start : start + 64]), labels[start : start + 64]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
model.eval()

# %%
# Three lines
# -----------
# The data set (here 2,000 held-out shapes), the layers, and where to write the site. The
# feature visualisations take most of the time: ``steps=`` sets their length.

test_images, test_labels = shapes(2000, seed=1)
loader = DataLoader(TensorDataset(test_images, test_labels), batch_size=250)

# The docs' build copies this folder into the site (docs/conf.py, html_extra_path).
site = Path("..") / "_extra" / "atlas"
book = nl.atlas(model, loader, ["conv1", "conv2", "fc"], out=site, k=9, steps=64)
print(book)
print(f"site: {book.site_bytes / 2**20:.1f} MiB, stages: {book.seconds}")

# %%
# In a notebook
# -------------
# ``book[layer]`` is a mapping of channels, ``book[layer][channel]`` a channel's card; both show
# themselves in a notebook (the same markup as the site's pages, pictures inline). This is
# the card of ``conv2``'s channel 3: its feature visualisation, its nine strongest patches over
# the test set and their deconvnet projections, its statistics and histogram.

card = book["conv2"][3]
card

# %%
# Which shapes drive it? The indices of its examples are positions in the data set.

print([CLASSES[test_labels[i]] for i in card.indices])

# %%
# ``plot()`` draws the card's pictures on one Axes, as every netlens result does.

fig, ax = card.plot()
fig

# %%
# The output layer's units are the classes: their feature visualisations are what the model
# takes for a perfect horizontal bar, vertical bar, diagonal or ring.

book["fc"]
