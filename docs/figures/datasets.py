"""Render the pictures of docs/guide/datasets.rst from the real CIFAR-10 and MNIST test splits.

    python docs/figures/datasets.py [--cifar DIR] [--mnist DIR]

writes docs/_static/datasets/{cifar10.png, mnist.png}: the first test image of each class, as
the readers return them. Exits non-zero, saying why, when the data is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure

from netlens.datasets import CIFAR10, MNIST, DatasetNotFoundError

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "_static" / "datasets"


def first_of_each_class(targets: torch.Tensor) -> list[int]:
    return [int((targets == label).nonzero()[0]) for label in range(10)]


def cifar_figure(root: Path) -> Figure:
    colour = CIFAR10(root, train=False, grey=False, size=None)
    grey = CIFAR10(root, train=False)
    figure = Figure(figsize=(9, 2.2), dpi=100)
    axes = figure.subplots(2, 10)
    for column, index in enumerate(first_of_each_class(grey.targets)):
        rgb = (colour.data[index].permute(1, 2, 0) + 1) / 2
        axes[0, column].imshow(rgb.numpy())
        axes[0, column].set_title(grey.classes[int(grey.targets[index])], fontsize=9)
        axes[1, column].imshow(grey.data[index, 0].numpy(), cmap="gray", vmin=-1, vmax=1)
    axes[0, 0].set_ylabel("RGB 32x32", fontsize=8)
    axes[1, 0].set_ylabel("grey 28x28", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.tight_layout()
    return figure


def mnist_figure(root: Path) -> Figure:
    digits = MNIST(root, train=False)
    figure = Figure(figsize=(9, 1.2), dpi=100)
    axes = figure.subplots(1, 10)
    for ax, index in zip(axes, first_of_each_class(digits.targets), strict=True):
        ax.imshow(digits.data[index].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(str(int(digits.targets[index])), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.tight_layout()
    return figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cifar", type=Path, default=Path("/root/netlens-data/cifar"))
    parser.add_argument("--mnist", type=Path, default=Path("../shared/datasets/mnist"))
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        cifar = cifar_figure(args.cifar)
        mnist = mnist_figure(args.mnist)
    except DatasetNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, figure in (("cifar10", cifar), ("mnist", mnist)):
        figure.savefig(OUT / f"{name}.png", dpi=100)
        print(f"wrote {OUT / f'{name}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
