"""Overhead of ``netlens.record`` on every layer against a plain forward pass.

Run: ``python benchmarks/record_overhead.py`` (``--quick`` for a smoke run). Plain and recorded
forwards are interleaved so that machine noise hits both alike; medians are printed with the
ratio recorded / plain. Goal: <= 1.05 with the default settings (copy-on-write included).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import netlens as nl
from netlens.models import LeNet5, RowClassifier


class InplaceLeNet5(LeNet5):
    """LeNet5 with in-place ReLUs: every recorded conv output gets overwritten, so it is cloned."""

    def __init__(self) -> None:
        super().__init__()
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.relu3 = nn.ReLU(inplace=True)


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(model: nn.Module, inputs: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """Median seconds of three ways to run a forward pass, interleaved.

    The third is a forward of an identical copy of the model inside a ``record`` block that
    stays open (the steady state of a loop over batches).
    """
    layers = [name for name, _ in model.named_modules() if name]
    watched = copy.deepcopy(model)

    def plain() -> None:
        model(inputs)

    def per_call() -> None:
        with nl.record(model, layers):
            model(inputs)

    def steady() -> None:
        watched(inputs)

    times: dict[str, list[float]] = {"plain": [], "per_call": [], "steady": []}
    with nl.record(watched, layers):
        for index in range(repeats + 3):  # the first three are warm-up
            for name, fn in (("plain", plain), ("per_call", per_call), ("steady", steady)):
                elapsed = _time(fn)
                if index >= 3:
                    times[name].append(elapsed)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return medians["plain"], medians["per_call"], medians["steady"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few repeats, small batch")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    batch, repeats = (16, 3) if args.quick else (args.batch, args.repeats)
    torch.manual_seed(0)
    cases = {
        "LeNet5 (ReLU)": (LeNet5().eval(), torch.randn(batch, 1, 28, 28)),
        "LeNet5 (in-place ReLU)": (InplaceLeNet5().eval(), torch.randn(batch, 1, 28, 28)),
        "row-LSTM": (RowClassifier("lstm").eval(), torch.randn(batch, 28, 28)),
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch}, "
        f"{repeats} interleaved repeats, no_grad"
    )
    print("per call: enter record, one forward, exit; steady: one forward with the block open")
    header = (
        f"{'model':<24}{'plain ms':>10}{'per call ms':>13}{'ratio':>7}{'steady ms':>11}{'ratio':>7}"
    )
    print(header)
    with torch.no_grad():
        for name, (model, inputs) in cases.items():
            plain, per_call, steady = measure(model, inputs, repeats)
            print(
                f"{name:<24}{plain * 1e3:>10.2f}{per_call * 1e3:>13.2f}{per_call / plain:>7.3f}"
                f"{steady * 1e3:>11.2f}{steady / plain:>7.3f}"
            )


if __name__ == "__main__":
    main()
