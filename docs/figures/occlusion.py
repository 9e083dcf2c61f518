"""Render the pictures of docs/guide/occlusion.rst from the reference checkpoints.

    python docs/figures/occlusion.py [--models DIR] [--cifar DIR] [--mnist DIR]

writes docs/_static/occlusion/*.png:

- ``lenet_panels.png``: Zeiler & Fergus's panels for LeNet5 (trained on grey CIFAR-10, inputs in
  [-1, 1]) on three CIFAR-10 test images: a grey 6x6 square (baseline 0, the middle of the
  range) slid with stride 2; the probability of the true class, the most probable class and
  the activation of relu2's strongest channel at each position; the attribution on the input.
- ``lenet_windows.png``: the attribution of one image for windows 4, 6 and 10.
- ``lstm_rows.png``: the row-LSTM trained on MNIST, on three test digits, with three rows at a
  time erased to the background value.

Prints the predictions and timings. Exits non-zero, saying why, when a checkpoint or the data
is missing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _common import DPI, fit, load
from matplotlib.figure import Figure

import netlens as nl
from netlens.datasets import CIFAR10, MNIST, MNIST_MEAN, MNIST_STD
from netlens.models import LeNet5, RowClassifier

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "_static" / "occlusion"


def save(figure: Figure, name: str) -> None:
    figure.savefig(OUT / name, dpi=DPI)
    size = (OUT / name).stat().st_size
    print(f"wrote {OUT / name} ({size / 1024:.0f} KB)")


def narrow(axes: object) -> None:
    """Shorter 9 pt panel titles, so five panels fit the 9 inches of the docs' column."""
    for ax in np.asarray(axes).flat:
        title = ax.get_title()
        if title.startswith("input ") and " (target " in title:
            title = title.replace(" (target ", ": ").removesuffix(")")
        ax.set_title(title, fontsize=9)


def confident(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, k: int
) -> list[int]:
    """The first k images, of different classes, that the model classifies right with p > 0.6."""
    with torch.no_grad():
        probabilities = model(images).softmax(1)
    chosen: list[int] = []
    for index in range(len(images)):
        label = int(labels[index])
        right = int(probabilities[index].argmax()) == label
        if (
            right
            and probabilities[index, label] > 0.6
            and label not in {int(labels[c]) for c in chosen}
        ):
            chosen.append(index)
        if len(chosen) == k:
            break
    return chosen


def lenet(models: Path, cifar: Path) -> None:
    model = load(LeNet5(), models / "lenet5_cifar_grey.pt")
    test_set = CIFAR10(cifar, train=False)
    images, labels = test_set.data[:500], test_set.targets[:500]
    picked = confident(model, images, labels, 3)
    inputs = images[picked]
    start = time.perf_counter()
    result = nl.occlusion(
        model, inputs, window=(6, 6), stride=2, target=labels[picked], layer="relu2"
    )
    print(f"LeNet5: {len(picked)} images, window 6 stride 2: {time.perf_counter() - start:.2f} s")
    channels = result.channels.tolist()
    for row, index in enumerate(picked):
        lowest = float(result.probability[row].min())
        print(
            f"  test image {index} ({test_set.classes[int(labels[index])]}): p = "
            f"{float(result.base_score[row]):.3f} unoccluded, {lowest:.3f} at the worst position; "
            f"relu2 channel {channels[row]}"
        )
    figure, axes = result.plot_panels(class_names=test_set.classes)
    narrow(axes)
    save(fit(figure), "lenet_panels.png")

    figure = Figure(figsize=(9, 2.6), layout="constrained")
    axes = figure.subplots(1, 4)
    single = inputs[:1]
    axes[0].imshow(single[0, 0].numpy(), cmap="gray", interpolation="nearest")
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    axes[0].set_title(test_set.classes[int(labels[picked[0]])], fontsize="small")
    for ax, size in zip(axes[1:], (4, 6, 10), strict=True):
        result = nl.occlusion(model, single, window=size, stride=2, target=labels[picked[:1]])
        result.plot(ax, sample=0)
        ax.set_title(f"window {size}, stride 2", fontsize="small")
    save(figure, "lenet_windows.png")


def lstm(models: Path, mnist: Path) -> None:
    model = load(RowClassifier("lstm"), models / "lstm_mnist.pt")
    test_set = MNIST(mnist, train=False, standardize=True)
    images = test_set.data[:500].squeeze(1)  # (N, 28, 28): one row per time step
    labels = test_set.targets[:500]
    picked = confident(model, images, labels, 3)
    background = (0 - MNIST_MEAN) / MNIST_STD
    start = time.perf_counter()
    result = nl.occlusion(
        model, images[picked], window=(3, 28), stride=1, baseline=background, layer="rnn"
    )
    print(f"LSTM: {len(picked)} digits, 3 rows at a time: {time.perf_counter() - start:.2f} s")
    for row, index in enumerate(picked):
        worst = int(result.probability[row].argmin())
        print(
            f"  test digit {index} ({int(labels[index])}): p = {float(result.base_score[row]):.3f}"
            f" unoccluded, {float(result.probability[row].min()):.3f} with rows {worst}-"
            f"{worst + 2} erased"
        )
    figure, axes = result.plot_panels(class_names=test_set.classes)
    narrow(axes)
    save(fit(figure), "lstm_rows.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("/root/netlens-data/models"))
    parser.add_argument("--cifar", type=Path, default=Path("/root/netlens-data/cifar"))
    parser.add_argument("--mnist", type=Path, default=Path("/work/shared/datasets/mnist"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    lenet(args.models, args.cifar)
    lstm(args.models, args.mnist)


if __name__ == "__main__":
    main()
