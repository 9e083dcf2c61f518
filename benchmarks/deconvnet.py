"""Time of ``netlens.deconvnet`` against a plain backward pass, Captum, and a loop over channels.

Run: ``python benchmarks/deconvnet.py`` (``--quick`` for a smoke run). All variants are
interleaved so that machine noise hits them alike; medians are printed with the ratios.

- ``deconvnet / forward+backward``: one projection (``position="max"``) against one plain
  forward pass and a backward pass of the model's output to the input (parameters frozen, so no
  weight gradients: the cheapest plain backward). Goal: <= 1.5.
- ``deconvnet / Captum``: ``nl.deconvnet(..., position=index, scale="unit")`` against
  ``captum.attr.NeuronDeconvolution(...).attribute(..., neuron_selector=...)``, the same quantity
  on the same inputs. Goal: <= 1 (not slower).
- ``batched / loop``: one call with a list of channels against one call per channel.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

import netlens as nl
from netlens.models import LeNet5


class SmallVGG(nn.Module):
    """Six 3x3 conv layers with ReLU and three max pools, for 32x32 RGB images."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in (32, 32, 64, 64, 128, 128):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            if width == channels:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(128 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``(N, 3, 32, 32)`` images."""
        return self.classifier(torch.flatten(self.features(x), 1))


def _median_times(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for index in range(repeats + 2):  # the first two rounds are warm-up
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            if index >= 2:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def bench(
    label: str, model: nn.Module, inputs: torch.Tensor, layer: str, channels: int, repeats: int
) -> None:
    from captum.attr import NeuronDeconvolution

    module = dict(model.named_modules())[layer]
    for param in model.parameters():
        param.requires_grad_(False)
    with nl.record(model, layer) as rec:
        model(inputs[:1])
    index = tuple(size // 2 for size in rec[layer].shape[2:])
    captum = NeuronDeconvolution(model, module)

    def plain() -> None:
        leaf = inputs.detach().requires_grad_(True)
        torch.autograd.grad(model(leaf).sum(), leaf)

    def ours() -> None:
        nl.deconvnet(model, inputs, layer, 1)

    def ours_unit() -> None:
        nl.deconvnet(model, inputs, layer, 1, position=index, scale="unit")

    def theirs() -> None:
        captum.attribute(inputs, neuron_selector=(1, *index))

    def batched() -> None:
        nl.deconvnet(model, inputs, layer, list(range(channels)))

    def loop() -> None:
        for channel in range(channels):
            nl.deconvnet(model, inputs, layer, channel)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum's notes about requires_grad
        t = _median_times(
            {
                "plain": plain,
                "ours": ours,
                "ours_unit": ours_unit,
                "captum": theirs,
                "batched": batched,
                "loop": loop,
            },
            repeats,
        )
    rows = [
        ("plain forward+backward", "plain", "deconvnet", "ours", "<= 1.5"),
        ("Captum NeuronDeconvolution", "captum", "deconvnet (unit)", "ours_unit", "<= 1"),
        (f"loop over {channels} channels", "loop", f"batched {channels}", "batched", "< 1"),
    ]
    print(label)
    for base_label, base, our_label, key, goal in rows:
        print(
            f"  {base_label:<28} {1e3 * t[base]:8.2f} ms | {our_label:<17} {1e3 * t[key]:8.2f} ms"
            f" | ratio {t[key] / t[base]:.2f} (goal {goal})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few repeats, small batch")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch, repeats = (8, 2) if args.quick else (args.batch, args.repeats)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {batch}, {repeats} repeats")
    bench(
        "LeNet5, conv2, 28x28 grey",
        LeNet5().eval(),
        torch.randn(batch, 1, 28, 28),
        "conv2",
        8,
        repeats,
    )
    bench(
        "SmallVGG, features.12, 32x32 RGB",
        SmallVGG().eval(),
        torch.randn(batch, 3, 32, 32),
        "features.12",
        8,
        repeats,
    )


if __name__ == "__main__":
    main()
