"""Render the pictures of docs/guide/deconvnet.rst from the trained LeNet5 and CIFAR-10.

    python docs/figures/deconvnet.py [--models DIR] [--cifar DIR] [--images N]

writes docs/_static/deconvnet/*.png:

- ``rules.png``: four CIFAR-10 test images (grey 28x28, in [-1, 1]) and, for the conv2 channel
  strongest on each, the projection of its strongest activation by the three rules: deconvnet
  (Zeiler & Fergus), guided backpropagation, plain gradient.
- ``channels.png``: for one test image, the deconvnet projection of the strongest activation of
  eight conv2 channels.
- ``top9_conv2.png``: the paper's Figure 2 for eight conv2 channels: the top-9 activations over
  the first ``--images`` test images (default: all 10,000), their projections beside the input
  patches under their 14x14 receptive fields.
- ``top9_conv1.png``: the same for eight conv1 channels (5x5 receptive fields).

The eight channels of each layer are those whose 9th-strongest activation over the images is
largest, every eighth in that order, leaving out channels that never fire (projecting those
shows nothing).

Prints the timings. Exits non-zero, saying why, when the checkpoint or the data is missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import DPI, fit, load, pixel_figure, require
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import netlens as nl
from netlens.datasets import CIFAR10, DatasetNotFoundError
from netlens.models import LeNet5

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "_static" / "deconvnet"


def save(figure: Figure, name: str) -> None:
    fit(figure).savefig(OUT / name, dpi=DPI)
    size = (OUT / name).stat().st_size
    print(f"wrote {OUT / name} ({size / 1024:.0f} KB)")


def centred(image: torch.Tensor) -> torch.Tensor:
    """A projection for display: zero mid-grey, scaled on its own."""
    extent = float(image.abs().max()) or 1.0
    return image / (2 * extent) + 0.5


def rules_figure(
    model: LeNet5, images: torch.Tensor, classes: list[str], labels: torch.Tensor
) -> Figure:
    with nl.record(model, "conv2") as rec, torch.no_grad():
        model(images)
    strongest = rec["conv2"].flatten(2).amax(dim=2).argmax(dim=1)  # per image
    figure = Figure(figsize=(6.4, 1.75 * len(images)), layout="constrained")
    axes = figure.subplots(len(images), 4)
    for row, (image, channel) in enumerate(zip(images, strongest.tolist(), strict=True)):
        axes[row, 0].imshow(image[0].numpy(), cmap="gray", vmin=-1, vmax=1)
        axes[row, 0].set_ylabel(f"{classes[int(labels[row])]}\nconv2 ch {channel}", fontsize=9)
        for column, rule in enumerate(("deconvnet", "guided", "gradient"), start=1):
            projection = nl.deconvnet(model, image[None], "conv2", channel, rule=rule)
            axes[row, column].imshow(
                centred(projection.images[0, 0]).numpy(), cmap="gray", vmin=0, vmax=1
            )
            if row == 0:
                axes[row, column].set_title(rule, fontsize=10)
        if row == 0:
            axes[row, 0].set_title("input", fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return figure


def channels_figure(model: LeNet5, image: torch.Tensor, channels: list[int]) -> Figure:
    projection = nl.deconvnet(model, image[None], "conv2", channels)
    figure = Figure(figsize=(1.25 * (len(channels) + 1), 1.7), layout="constrained")
    axes = figure.subplots(1, len(channels) + 1)
    axes[0].imshow(image[0].numpy(), cmap="gray", vmin=-1, vmax=1)
    axes[0].set_title("input", fontsize=9)
    for ax, channel, shown in zip(axes[1:], channels, projection.images[0], strict=True):
        ax.imshow(centred(shown[0]).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"ch {channel}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return figure


def live_channels(model: LeNet5, data: torch.Tensor, layer: str, count: int = 8) -> list[int]:
    """``count`` channels spread over the ranking by the 9th-strongest activation."""
    strongest = []
    with nl.record(model, layer) as rec, torch.no_grad():
        for batch in data.split(500):
            model(batch)
            strongest.append(rec[layer].flatten(2).amax(dim=2))
    ninth = torch.cat(strongest).topk(9, dim=0).values[-1]
    ranking = ninth.argsort(descending=True).tolist()
    live = [channel for channel in ranking if ninth[channel] > 0]
    step = max(1, len(live) // count)
    return sorted(live[::step][:count])


def top_figure(model: LeNet5, data: torch.Tensor, layer: str, channels: list[int]) -> Figure:
    loader = torch.utils.data.DataLoader(data, batch_size=500)
    start = time.perf_counter()
    top = nl.top_activations(model, loader, layer, channels=channels, k=9)
    print(f"top_activations over {len(data)} images, {layer}: {time.perf_counter() - start:.1f} s")
    strongest = [round(value, 2) for value in top.activations[:, 0].tolist()]
    print(f"  patches {tuple(top.patches.shape)}; strongest per channel: {strongest}")
    _, ax = top.plot(ncols=2)
    return integral(ax)


def integral(ax: Axes) -> Figure:
    """The montage of ``ax`` redrawn pixel for pixel at the largest integer scale that fits.

    ``TopActivations.plot`` shows one montage image; resampled to an arbitrary figure size, its
    5x5 patches come out with unequal pixel sizes. Repeating each pixel k times and writing the
    array unresampled keeps every tile the same size; the channel labels are put back in place.
    """
    montage = np.asarray(ax.images[0].get_array())
    scale = max(1, 880 // montage.shape[1])
    pixels = (np.clip(montage, 0, 1) * 255).round().astype(np.uint8)
    pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    figure = pixel_figure([(pixels, ax.get_title())])
    width, height = (figure.get_size_inches() * DPI).tolist()
    bottom = 4  # pixel_figure's margin under the montage
    for text in ax.texts:
        # data coordinates are pixel centres of the montage, rows counted from the top
        x, y = text.get_position()
        figure.text(
            (x + 0.5) * scale / width,
            (bottom + pixels.shape[0] - (y + 0.5) * scale) / height,
            text.get_text(),
            fontsize=9,
            va="bottom",
        )
    return figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("/root/netlens-data/models"))
    parser.add_argument("--cifar", type=Path, default=Path("/root/netlens-data/cifar"))
    parser.add_argument("--images", type=int, default=10_000, help="test images to search")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    checkpoint = args.models / "lenet5_cifar_grey.pt"
    require(checkpoint)
    try:
        test_set = CIFAR10(args.cifar, train=False)
    except DatasetNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    model = load(LeNet5(), checkpoint)
    OUT.mkdir(parents=True, exist_ok=True)
    data = test_set.data[: args.images]
    picks = [0, 1, 2, 3]
    save(rules_figure(model, data[picks], test_set.classes, test_set.targets[picks]), "rules.png")
    channels = live_channels(model, data, "conv2")
    print(f"conv2 channels shown: {channels}")
    save(channels_figure(model, data[7], channels), "channels.png")
    save(top_figure(model, data, "conv2", channels), "top9_conv2.png")
    save(top_figure(model, data, "conv1", live_channels(model, data, "conv1")), "top9_conv1.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
