"""Render the pictures of docs/guide/maximization.rst from the reference checkpoints.

    python docs/figures/maximization.py [--models DIR] [--data-dir DIR] [--part grey|colour|all]

writes docs/_static/maximization/*.png. ``grey``: every channel of LeNet5's conv1 and conv2 and
its ten class logits (trained on grey CIFAR-10, inputs in [-1, 1]), and the ten class logits of
the row-LSTM trained on MNIST (standardised rows). ``colour``: LeNet5 trained on colour CIFAR-10
(``docs/figures/train_cifar_rgb.py``; pixels in [0, 1] normalised with mean and std 0.5): every
channel of conv2, a combined objective, a diversity batch and the class log-probabilities, in
the Fourier parametrisation with colours decorrelated by CIFAR-10's own statistics (from
``--data-dir``, the first 5,000 training images). Prints the settings and what each run reached.
Exits non-zero, saying why, when a checkpoint is missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from _common import DPI, fit, load, pixel_figure, require
from matplotlib.figure import Figure

import netlens as nl
from netlens import objectives as obj
from netlens.datasets import CIFAR10, CIFAR10_CLASSES
from netlens.models import LeNet5, RowClassifier

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "_static" / "maximization"
# MNIST pixels 0..1 standardised with the training mean and std, as the LSTM was trained.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST_RANGE = ((0 - MNIST_MEAN) / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD)


def save(figure: Figure, name: str) -> None:
    fit(figure).savefig(OUT / name, dpi=DPI)
    size = (OUT / name).stat().st_size
    print(f"wrote {OUT / name} ({size / 1024:.0f} KB)")


def run(label: str, model: torch.nn.Module, layer: str | None, **kwargs: object) -> nl.Maximization:
    start = time.perf_counter()
    result = nl.maximize_activation(model, layer, **kwargs)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    settings = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
    print(f"{label}: {layer}, {settings}: {seconds:.1f} s")
    return result


def integral(pixels: torch.Tensor, ncols: int | None = None) -> Figure:
    """The grey pictures as ``Maximization.plot`` shows them (each on its own range), composed
    at three screen pixels per input pixel, with row and column numbers instead of titles."""
    grid = nl.ActivationGrid(pixels, ncols=ncols)
    return pixel_figure([(grid.to_array(scale=3), "")], numbered=grid.shape)


def class_figure(result: nl.Maximization, model: torch.nn.Module, names: Sequence[str]) -> Figure:
    """The class images in a row, each titled with its class and the softmax probability.

    Each 28x28 picture (on its own grey range) is drawn at exactly three screen pixels a pixel.
    """
    with torch.no_grad():
        probabilities = model(result.images).softmax(-1)
    channels = result.channels.tolist()
    panels = []
    for image, channel in zip(result.images, channels, strict=True):
        picture = image[0] if image.dim() == 3 else image
        tile = nl.ActivationGrid(picture[None, None], titles=False).to_array(scale=3)
        panels.append((tile, f"{names[channel]}\np={probabilities[channel, channel]:.2f}"))
    summary = ", ".join(f"{names[c]} {probabilities[i, c]:.3f}" for i, c in enumerate(channels))
    print(f"  softmax of the own class: {summary}")
    return pixel_figure(panels, gap=6, band=40)


def grey(args: argparse.Namespace) -> None:
    """The pictures of the grey LeNet5 and of the row-LSTM."""
    lenet_path = args.models / "lenet5_cifar_grey.pt"
    lstm_path = args.models / "lstm_mnist.pt"
    require(lenet_path, lstm_path)
    lenet = load(LeNet5(), lenet_path)
    lstm = load(RowClassifier("lstm"), lstm_path)
    image = {"input_shape": (1, 28, 28), "value_range": (-1.0, 1.0), "steps": args.steps}

    conv1 = run("LeNet5 conv1", lenet, "conv1", seed=0, **image)
    save(integral(conv1.pixels), "lenet_conv1.png")

    conv1_centre = run(
        "LeNet5 conv1 centre", lenet, "conv1", objective="center", transforms=None, seed=0, **image
    )
    # 7x7 crops at scale 10 and 5x5 filters at scale 14: both grids 70 px a tile, unresampled
    crops = conv1_centre.images[:, :, 11:18, 11:18]
    figure = pixel_figure(
        [
            (nl.ActivationGrid(crops).to_array(scale=10), "centre 7x7 of the synthesised inputs"),
            (nl.FilterGrid(lenet.conv1).to_array(scale=14), "conv1 filters"),
        ]
    )
    save(figure, "lenet_conv1_center.png")
    optimum = lenet.conv1.weight.detach().abs().flatten(1).sum(1) + lenet.conv1.bias.detach()
    fraction = conv1_centre.activations / optimum
    print(f"  centre unit / (sum|w| + b): min {fraction.min():.4f}, max {fraction.max():.4f}")

    conv2 = run("LeNet5 conv2", lenet, "conv2", seed=0, tv=0.05, **image)
    save(integral(conv2.pixels, ncols=8), "lenet_conv2.png")

    logits = run(
        "LeNet5 fc2",
        lenet,
        "fc2",
        param="fourier",
        seed=0,
        tv=0.05,
        l2=0.01,
        **image,
    )
    save(
        class_figure(logits, lenet, CIFAR10_CLASSES),
        "lenet_classes.png",
    )
    figure = Figure(figsize=(9, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    logits.plot(left)
    logits.plot_curves(right)
    save(figure, "lenet_classes_curves.png")

    digits = run(
        "row-LSTM fc",
        lstm,
        "fc",
        input_shape=(28, 28),
        value_range=MNIST_RANGE,
        steps=args.steps,
        seed=0,
        tv=0.05,
    )
    save(
        class_figure(digits, lstm, [str(d) for d in range(10)]),
        "lstm_classes.png",
    )


def rgb_class_figure(result: nl.Maximization, model: torch.nn.Module) -> Figure:
    """The class pictures in a row, each titled with its class and softmax probability."""
    with torch.no_grad():
        probabilities = model(result.images).softmax(-1)
    figure = Figure(figsize=(12, 1.9), layout="constrained")
    axes = figure.subplots(1, len(result.objectives or ()))
    pictures = result.pixels.permute(0, 2, 3, 1).clamp(0, 1)
    for index, ax in enumerate(axes):
        ax.imshow(pictures[index].numpy(), interpolation="nearest")
        p = probabilities[index, index]
        ax.set_title(f"{CIFAR10_CLASSES[index]}\np={p:.2f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    summary = ", ".join(
        f"{name} {probabilities[i, i]:.3f}" for i, name in enumerate(CIFAR10_CLASSES)
    )
    print(f"  softmax of the own class: {summary}")
    return figure


def colour(args: argparse.Namespace) -> None:
    """The pictures of LeNet5 trained on colour CIFAR-10."""
    path = args.models / "lenet5_cifar_rgb.pt"
    require(path)
    model = load(LeNet5(in_channels=3, image_size=32), path)
    images = CIFAR10(args.data_dir, train=True, grey=False, size=None).data[:5000]
    stats = nl.color_stats((images + 1) / 2)  # the pixels in [0, 1], before normalisation
    print(f"CIFAR-10 colours: {stats}; basis\n{stats.basis.numpy().round(4)}")
    colour_kwargs: dict[str, object] = {
        "input_shape": (32, 32),
        "param": "fourier",
        "decorrelate": stats,
        "normalize": (0.5, 0.5),
        "steps": args.steps,
        "seed": 0,
    }

    conv2 = run("RGB LeNet5 conv2", model, "conv2", **colour_kwargs)
    figure, _ = conv2.plot(ncols=8)
    save(figure, "rgb_conv2.png")
    print(f"  objective: mean {conv2.activations.mean():.4f}")

    first, second = obj.channel("conv2", 9), obj.channel("conv2", 15)
    units = obj.neuron("conv2", 9) + 10 * obj.neuron("conv2", 15)
    combined = run(
        "RGB LeNet5 combined",
        model,
        None,
        objective=[first, second, first + 10 * second, units],
        **colour_kwargs,
    )
    figure, _ = combined.plot(ncols=2)
    figure.set_size_inches(6.5, 5.8)
    save(figure, "rgb_combined.png")
    print(f"  objectives: {[str(o) for o in combined.objectives or ()]}")
    print(f"  reached: {combined.activations.numpy().round(3).tolist()}")

    plain = run(
        "RGB LeNet5 batch",
        model,
        None,
        objective=obj.channel("conv2", 4),
        batch=6,
        **colour_kwargs,
    )
    diverse = run(
        "RGB LeNet5 diversity",
        model,
        None,
        objective=obj.channel("conv2", 4) + 0.5 * obj.diversity("relu2"),
        batch=6,
        **colour_kwargs,
    )
    figure = Figure(figsize=(8, 3.3), layout="constrained")
    top, bottom = figure.subplots(2, 1)
    plain.plot(top, ncols=6)
    top.set_title("channel('conv2', 4), batch=6", fontsize=9)
    diverse.plot(bottom, ncols=6)
    bottom.set_title("channel('conv2', 4) + 0.5 * diversity('relu2'), batch=6", fontsize=9)
    save(figure, "rgb_diversity.png")
    with torch.no_grad():
        for label, result in (("batch", plain), ("diversity", diverse)):
            with nl.record(model, "conv2") as recorded:
                model(result.images)
            channel = recorded["conv2"][:, 4].flatten(1).mean(1)
            print(f"  {label}: channel 4 mean {channel.numpy().round(3).tolist()}")

    classes = run(
        "RGB LeNet5 classes",
        model,
        None,
        objective=[obj.class_logit(c, log_probability=True) for c in range(10)],
        tv=0.05,
        **colour_kwargs,
    )
    save(rgb_class_figure(classes, model), "rgb_classes.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("/root/netlens-data/models"))
    parser.add_argument("--data-dir", type=Path, default=Path("/root/netlens-data/cifar"))
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--part", choices=["grey", "colour", "all"], default="all")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.part in ("grey", "all"):
        grey(args)
    if args.part in ("colour", "all"):
        colour(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
