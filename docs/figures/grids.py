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
from _common import load, require
from matplotlib.figure import Figure

import netlens as nl
from netlens.datasets import CIFAR10, MNIST
from netlens.models import LeNet5, RowClassifier

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "_static" / "grids"


def save(figure: Figure, name: str, dpi: int = 80) -> None:
    figure.savefig(OUT / name, dpi=dpi)
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
    figure, _ = nl.FilterGrid(lenet.conv1).plot()
    figure.suptitle("LeNet5 conv1: 32 filters, each on its own grey range", fontsize=10)
    save(figure, "conv1_filters.png")

    figure, _ = nl.FilterGrid(lenet.conv1, normalize="symmetric").plot()
    figure.suptitle("conv1, one range centred at zero", fontsize=10)
    save(figure, "conv1_symmetric.png")

    figure = Figure(figsize=(9, 4.6), layout="constrained")
    left, right = figure.subplots(1, 2, width_ratios=[1, 1.25])
    nl.FilterGrid(lenet.conv2, titles=False).plot(left)
    left.set_title("conv2: mean over the 32 input channels", fontsize=9)
    first = lenet.conv2.weight[:10, :8]
    nl.FilterGrid(first, in_channels="separate", normalize="symmetric").plot(right)
    right.set_title("filters 0-9 (columns) x input channels 0-7 (rows)", fontsize=9)
    save(figure, "conv2_filters.png")

    figure = Figure(figsize=(9, 5), layout="constrained")
    left, right = figure.subplots(1, 2)
    nl.FilterGrid(lstm.rnn, normalize="symmetric").plot(left)
    left.set_title("LSTM weight_ih_l0 (512 x 28)", fontsize=9)
    nl.FilterGrid(lstm.rnn, weight="weight_hh_l0", normalize="symmetric").plot(right)
    right.set_title("LSTM weight_hh_l0 (512 x 128)", fontsize=9)
    save(figure, "lstm_weights.png", dpi=60)  # noise-like weights compress badly

    # -- activations ----------------------------------------------------------------------------
    figure, _ = nl.ActivationGrid(cifar.data[:16], normalize=(-1.0, 1.0)).plot()
    save(figure, "cifar_inputs.png")

    index = 7
    with torch.no_grad(), nl.record(lenet, ["relu1", "relu2"]) as recorder:
        lenet(cifar.data[index : index + 1])
    figure = Figure(figsize=(11, 4.4), layout="constrained")
    axes = figure.subplots(1, 3, width_ratios=[0.6, 1, 1])
    nl.ActivationGrid(cifar.data[index : index + 1], titles=False).plot(axes[0])
    axes[0].set_title(
        f"test image {index} ({cifar.classes[int(cifar.targets[index])]})", fontsize=9
    )
    nl.ActivationGrid(recorder["relu1"][0], titles=False).plot(axes[1])
    axes[1].set_title("relu1: 32 maps, 28 x 28", fontsize=9)
    nl.ActivationGrid(recorder["relu2"][0], titles=False, normalize="global").plot(axes[2])
    axes[2].set_title("relu2: 64 maps, 14 x 14, one range", fontsize=9)
    save(figure, "lenet_activations.png")

    with torch.no_grad(), nl.record(lstm, "rnn") as recorder:
        lstm(mnist.data[:1])
    figure = Figure(figsize=(9, 3.2), layout="constrained")
    left, right = figure.subplots(1, 2, width_ratios=[1, 3.5])
    nl.ActivationGrid(mnist.data[:1, None], titles=False).plot(left)
    left.set_title(f"digit {int(mnist.targets[0])}, read row by row", fontsize=9)
    nl.ActivationGrid(recorder["rnn"][0], normalize="symmetric").plot(right)
    right.set_title("LSTM output: 28 steps (rows) x 128 hidden units", fontsize=9)
    right.set_xlabel("hidden unit")
    right.set_ylabel("time step (image row)")
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
    save(figure, "relu1_stats.png")
    figure, _ = stats["relu2"].plot()
    save(figure, "relu2_stats.png")
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
    save(figure, "lstm_stats.png")
    saturated = int(((recurrent.max > 0.99) | (recurrent.min < -0.99)).sum())
    print(
        f"rnn: {recurrent.num_channels} hidden units; mean |mean| "
        f"{float(recurrent.mean.abs().mean()):.3f}; {saturated} reach |h| > 0.99"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
