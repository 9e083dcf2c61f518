"""
Activation maximisation of an LSTM's units
==========================================

Recurrent layers have units instead of channels, and :func:`netlens.maximize_activation`
synthesises inputs for them the same way: a sequence ``(T, F)`` is optimised by gradient ascent
until the unit's activation is as high as it goes. Here an LSTM reads 28x28 pictures row by
row (28 time steps of 28 features), so the synthesised sequences can be looked at as pictures,
time downwards.

The LSTM is trained for a few seconds to tell four shapes apart: horizontal, vertical and
diagonal bars, and rings.
"""

# sphinx_gallery_thumbnail_number = 2
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


class RowLSTM(nn.Module):
    """Reads a picture row by row; classifies from the last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(28, 32, batch_first=True)
        self.fc = nn.Linear(32, 4)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(rows)
        return self.fc(output[:, -1])


torch.manual_seed(0)
images, labels = shapes(3000)
rows = images[:, 0]  # (N, 28 steps, 28 features)
model = RowLSTM()
train(model, rows, labels, epochs=4)
test_images, test_labels = shapes(500, seed=1)
accuracy = (model(test_images[:, 0]).argmax(1) == test_labels).float().mean()
print(f"test accuracy {accuracy:.1%}")

# %%
# Hidden units
# ------------
# The LSTM's output ``(N, T, 32)`` has its units on the last dim, and the default objective
# is the unit's mean over time. Reading the last time step instead, as the classifier does,
# is a function of the selected maps ``(n, T)``:

units = nl.maximize_activation(
    model,
    "lstm",
    channels=list(range(16)),
    objective=lambda maps: maps[:, -1],
    input_shape=(28, 28),
    steps=128,
    value_range=(-1, 1),
    seed=0,
)
print(units.images.shape, units.activations[:4])
fig, ax = units.plot(ncols=8)
fig

# %%
# The classes
# -----------
# The same for the four class logits, with a little total-variation penalty (``tv=``) that
# favours smooth sequences; on the right the objective at every step.

classes = nl.maximize_activation(
    model, "fc", input_shape=(28, 28), steps=192, value_range=(-1, 1), tv=0.05, seed=0
)
fig = Figure(figsize=(9, 3), layout="constrained")
left, right = fig.subplots(1, 2)
classes.plot(ax=left, ncols=4)
left.set_title(" / ".join(CLASSES), fontsize=10)
classes.plot_curves(ax=right)
fig

# %%
# The row-by-row MNIST experiment (``examples/mnist_recurrent.py``, in :doc:`/guide/examples`)
# does the same for RNN, LSTM and GRU classifiers of handwritten digits;
# :doc:`/guide/maximization` describes every option.
