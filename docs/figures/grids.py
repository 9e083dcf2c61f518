"""Render the pictures of docs/guide/grids.rst and docs/guide/statistics.rst.

    python docs/figures/grids.py [--models DIR] [--cifar DIR] [--mnist DIR]

writes docs/_static/grids/*.png (filters, weight heatmaps and feature maps of LeNet5 trained on
grey CIFAR-10 and of the row-LSTM trained on MNIST, and the per-channel statistics of LeNet5's
ReLU layers over the 10,000 CIFAR-10 test images) and docs/_static/grids/relu1_stats_head.csv.
Prints the statistics tables. Exits non-zero, saying why, when a checkpoint or a data set is
missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from _common import DPI, fit, load, pixel_figure, require
from matplotlib.figure import Figure

import netlens as nl
from netlens.datasets import CIFAR10, MNIST
from netlens.models import LeNet5, RowClassifier

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "_static" / "grids"


def save(figure: Figure, name: str) -> None:
    figure.savefig(OUT / name, dpi=DPI)
    size = (OUT / name).stat().st_size
    print(f"wrote {OUT / name} ({size / 1024:.0f} KB)")


def write_head(stats: nl.ChannelStats, path: Path, rows: int) -> None:
    """The first rows of ``stats.to_csv()``, rounded to 3 significant digits for the docs."""
    lines = stats.to_csv().splitlines()
    out = [lines[0]]
    for line in lines[1 : rows + 1]:
        channel, *floats, count, nans, infs = line.split(",")
        out.append(",".join([channel, *(f"{float(v):.3g}" for v in floats), count, nans, infs]))
    path.write_text("\n".join(out) + "\n")
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("/root/netlens-data/models"))
    parser.add_argument("--cifar", type=Path, default=Path("/root/netlens-data/cifar"))
    parser.add_argument("--mnist", type=Path, default=Path("/work/shared/datasets/mnist"))
    args = parser.parse_args(argv)
    lenet_path = args.models / "lenet5_cifar_grey.pt"
    lstm_path = args.models / "lstm_mnist.pt"
    require(lenet_path, lstm_path)
    try:
        cifar = CIFAR10(args.cifar, train=False)
        mnist = MNIST(args.mnist, train=False, standardize=True)
    except nl.NetlensError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    lenet = load(LeNet5(), lenet_path)
    lstm = load(RowClassifier("lstm"), lstm_path)

    # -- weights --------------------------------------------------------------------------------
    # Tile grids are composed at an integer scale and written pixel for pixel (pixel_figure), so
    # every 5x5 filter is the same number of screen pixels in the page.
    conv1 = nl.FilterGrid(lenet.conv1)
    save(pixel_figure([(conv1.to_array(scale=20), "")], numbered=conv1.shape), "conv1_filters.png")

    symmetric = nl.FilterGrid(lenet.conv1, normalize="symmetric", cmap="RdBu_r")
    low, high = symmetric.value_range or (-1.0, 1.0)
    figure = pixel_figure(
        [(symmetric.to_array(scale=20), "")],
        numbered=symmetric.shape,
        colorbar=(low, high, "RdBu_r"),
    )
    save(figure, "conv1_symmetric.png")

    mean = nl.FilterGrid(lenet.conv2, titles=False)
    first = lenet.conv2.weight[:10, :8]
    separate = nl.FilterGrid(first, in_channels="separate", normalize="symmetric", cmap="RdBu_r")
    low, high = separate.value_range or (-1.0, 1.0)
    figure = pixel_figure(
        [
            (mean.to_array(scale=8), "conv2: mean over the 32 input channels"),
            (separate.to_array(scale=8), "filters 0-9 (columns) x input channels 0-7 (rows)"),
        ],
        colorbar=(low, high, "RdBu_r"),
    )
    save(figure, "conv2_filters.png")

    figure = Figure(figsize=(9, 5), layout="constrained")
    left, right = figure.subplots(1, 2)
    nl.FilterGrid(lstm.rnn, normalize="symmetric").plot(left)
    left.set_title("LSTM weight_ih_l0 (512 x 28)", fontsize=9)
    nl.FilterGrid(lstm.rnn, weight="weight_hh_l0", normalize="symmetric").plot(right)
    right.set_title("LSTM weight_hh_l0 (512 x 128)", fontsize=9)
    save(figure, "lstm_weights.png")

    # -- activations ----------------------------------------------------------------------------
    inputs = nl.ActivationGrid(cifar.data[:16], normalize=(-1.0, 1.0))
    save(pixel_figure([(inputs.to_array(scale=5), "")], numbered=inputs.shape), "cifar_inputs.png")

    index = 7
    with torch.no_grad(), nl.record(lenet, ["relu1", "relu2"]) as recorder:
        lenet(cifar.data[index : index + 1])
    image = nl.ActivationGrid(cifar.data[index : index + 1], titles=False)
    relu1 = nl.ActivationGrid(recorder["relu1"][0], titles=False)
    relu2 = nl.ActivationGrid(recorder["relu2"][0], titles=False, normalize="global")
    label = cifar.classes[int(cifar.targets[index])]
    figure = pixel_figure(
        [
            (image.to_array(scale=6), f"test image {index} ({label})"),
            (relu1.to_array(scale=2), "relu1: 32 maps, 28 x 28"),
            (relu2.to_array(scale=3), "relu2: 64 maps, 14 x 14, one range"),
        ]
    )
    save(figure, "lenet_activations.png")

    with torch.no_grad(), nl.record(lstm, "rnn") as recorder:
        lstm(mnist.data[:1])
    digit = nl.ActivationGrid(mnist.data[:1, None], titles=False)
    hidden = nl.ActivationGrid(recorder["rnn"][0], normalize="symmetric", cmap="RdBu_r")
    low, high = hidden.value_range or (-1.0, 1.0)
    figure = pixel_figure(
        [
            (digit.to_array(scale=5), f"digit {int(mnist.targets[0])}, by rows"),
            (hidden.to_array(scale=5), "LSTM output: 28 time steps (rows) x 128 hidden units"),
        ],
        colorbar=(low, high, "RdBu_r"),
    )
    save(figure, "lstm_hidden.png")

    # -- statistics -----------------------------------------------------------------------------
    start = time.perf_counter()
    batches = cifar.data.split(500)
    stats = nl.activation_stats(lenet, batches, ["conv1", "relu1", "relu2", "relu3"])
    seconds = time.perf_counter() - start
    print(f"activation_stats over {len(cifar)} CIFAR-10 test images: {seconds:.1f} s")
    for name, found in stats.items():
        dead = int(found.dead.sum())
        print(
            f"{name}: {found.num_channels} channels, {dead} dead, zero fraction "
            f"{float(found.zero_fraction.mean()):.3f} on average"
        )
    figure, _ = stats["relu1"].plot()
    save(fit(figure), "relu1_stats.png")
    figure, _ = stats["relu2"].plot()
    save(fit(figure), "relu2_stats.png")
    write_head(stats["relu1"], OUT / "relu1_stats_head.csv", rows=8)
    print(stats["relu1"].to_markdown(digits=3))

    start = time.perf_counter()
    rows = [
        (mnist.data[i : i + 1000], mnist.targets[i : i + 1000]) for i in range(0, len(mnist), 1000)
    ]
    recurrent = nl.activation_stats(lstm, rows, "rnn")["rnn"]
    print(
        f"activation_stats of the LSTM over {len(mnist)} MNIST test digits: "
        f"{time.perf_counter() - start:.1f} s"
    )
    figure, _ = recurrent.plot()
    save(fit(figure), "lstm_stats.png")
    saturated = int(((recurrent.max > 0.99) | (recurrent.min < -0.99)).sum())
    print(
        f"rnn: {recurrent.num_channels} hidden units; mean |mean| "
        f"{float(recurrent.mean.abs().mean()):.3f}; {saturated} reach |h| > 0.99"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
