"""Render the pictures of the landing page (docs/index.rst) with netlens.

    python docs/figures/landing.py [--models DIR] [--cifar DIR] [--images N]

draws from ``lenet5_cifar_rgb.pt``, LeNet5 trained for four epochs on colour CIFAR-10 by
``docs/figures/train_cifar_rgb.py``, and the CIFAR-10 test images, and writes
docs/_static/landing/*.png:

- ``top9.png``: the nine test images (of ``--images``) that excite four channels of ``conv2``
  most, beside their deconvnet projections (Zeiler & Fergus's Figure 2), drawn at the width the
  page shows it so that its labels are as large as the text;
- one picture per technique for the "what is in it" cards, without text (the cards say what
  they show): ``record.png``, ``grids.png``, ``statistics.png``, ``deconvnet.png``,
  ``occlusion.png``, ``maximization.png``. ``grids.png`` shows the filters of the gallery's
  small CNN trained on bars and rings (it runs ``docs/gallery_src/plot_02_...py``): four
  epochs leave the colour model's filters close to their random start.

One thread, about a minute on a laptop CPU. Exits non-zero, saying why, when the checkpoint or
the data is missing.
"""

from __future__ import annotations

import argparse
import runpy
import sys
import time
from pathlib import Path

import torch
from _common import load, require
from matplotlib.figure import Figure

import netlens as nl
from netlens.datasets import CIFAR10, DatasetNotFoundError
from netlens.models import LeNet5

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "_static" / "landing"
GALLERY = HERE.parent / "gallery_src"
# Card pictures: 3 x 2 inches at 100 dpi, shown about 300 px wide.
CARD = (3.0, 2.0)


def save(figure: Figure, name: str, dpi: int = 100) -> None:
    figure.savefig(OUT / name, dpi=dpi, facecolor="white")
    print(f"wrote {OUT / name} ({(OUT / name).stat().st_size / 1024:.0f} KB)")


def card() -> Figure:
    return Figure(figsize=CARD, layout="constrained")


def bare(ax: object) -> None:
    ax.set_axis_off()  # type: ignore[attr-defined]
    ax.set_title("")  # type: ignore[attr-defined]


def strongest_channels(model: LeNet5, data: torch.Tensor, count: int) -> list[int]:
    """The ``count`` channels of conv2 with the largest mean activation over ``data``."""
    stats = nl.activation_stats(model, data, "relu2")["relu2"]
    return stats.mean.argsort(descending=True)[:count].tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path.home() / "netlens-data" / "models")
    parser.add_argument("--cifar", type=Path, default=Path.home() / "netlens-data" / "cifar")
    parser.add_argument("--images", type=int, default=5_000, help="test images to search")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    checkpoint = args.models / "lenet5_cifar_rgb.pt"
    require(checkpoint)
    try:
        test_set = CIFAR10(args.cifar, train=False, grey=False, size=None)
    except DatasetNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    model = load(LeNet5(in_channels=3, image_size=32), checkpoint)
    OUT.mkdir(parents=True, exist_ok=True)
    data = test_set.data[: args.images]
    labels = test_set.targets[: args.images]
    channels = strongest_channels(model, data, 4)
    print(f"conv2 channels shown: {channels}")

    # The hero picture: 8 inches at 100 dpi is the page's width, so its labels are 8 to 10 pt.
    top = nl.top_activations(model, data, "conv2", channels=channels, k=9)
    figure = Figure(figsize=(8.0, 4.6), layout="constrained")
    top.plot(ax=figure.add_subplot(), ncols=2)
    save(figure, "top9.png")

    picture = data[7:8]
    with nl.record(model, "relu1") as rec:
        model(picture)
    figure = card()
    left, right = figure.subplots(1, 2, width_ratios=[1, 1.6])
    nl.ActivationGrid(picture, titles=False, rgb=True).plot(ax=left)
    nl.ActivationGrid(rec["relu1"][0][:24], titles=False, ncols=6).plot(ax=right)
    save(figure, "record.png")

    # Four epochs leave the colour model's 5x5 filters close to their random start; the
    # gallery's small CNN trained on bars and rings has clear edge filters to show instead.
    shapes_model = runpy.run_path(str(GALLERY / "plot_02_filter_activation_grids.py"))["model"]
    figure = card()
    nl.FilterGrid(shapes_model.conv1, titles=False, ncols=8).plot(ax=figure.add_subplot())
    save(figure, "grids.png")

    figure = card()
    ax = figure.add_subplot()
    nl.activation_stats(model, data, "relu2")["relu2"].plot(ax=ax)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_title("")
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    save(figure, "statistics.png")

    picks = [0, 1, 2]
    with nl.record(model, "conv2") as rec, torch.no_grad():
        model(data[picks])
    strongest = rec["conv2"].flatten(2).amax(dim=2).argmax(dim=1).tolist()
    projections = [
        nl.deconvnet(model, data[[i]], "conv2", channel).images[0]
        for i, channel in zip(picks, strongest, strict=True)
    ]
    figure = card()
    axes = figure.subplots(2, 3)
    for column, (index, projection) in enumerate(zip(picks, projections, strict=True)):
        nl.ActivationGrid(data[[index]], titles=False, rgb=True).plot(ax=axes[0, column])
        centred = projection / (2 * float(projection.abs().max() or 1.0)) + 0.5
        nl.ActivationGrid(centred[None], titles=False, rgb=True, normalize=(0.0, 1.0)).plot(
            ax=axes[1, column]
        )
    save(figure, "deconvnet.png")

    result = nl.occlusion(model, data[picks], window=6, stride=2, target=labels[picks])
    figure = card()
    axes = figure.subplots(1, 3)
    for sample, ax in enumerate(axes):
        result.plot(ax=ax, sample=sample)
        bare(ax)
    save(figure, "occlusion.png")

    maximized = nl.maximize_activation(
        model,
        "conv2",
        channels=channels + strongest[:2],
        input_shape=(3, 32, 32),
        param="fourier",
        decorrelate=True,
        value_range=(-1, 1),
        steps=256,
        seed=0,
    )
    figure = card()
    maximized.plot(ax=figure.add_subplot(), ncols=3)
    for text in figure.axes[0].texts:
        text.set_visible(False)
    bare(figure.axes[0])
    save(figure, "maximization.png")
    print(f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
