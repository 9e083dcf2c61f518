"""Overhead of ``netlens.record`` on every leaf layer against a plain forward pass.

The goal case: :class:`netlens.models.LeNet5`, batch 256, every leaf layer recorded, under
``torch.no_grad()``: a recorded forward pass may cost at most 1.05 times a plain one. Run
``OMP_NUM_THREADS=1 python benchmarks/record_overhead.py`` (``--quick`` for a smoke run).

Method. Plain and recorded forward passes are interleaved, their order rotating from one repeat
to the next, so that machine noise hits all alike; the medians of wall time and of the process's
CPU time are printed with the ratios recorded / plain; the verdict on the goal goes by CPU time,
which another process holding the core does not inflate. "per call" enters ``record``, runs one
forward pass and leaves; "steady" is one forward pass of an identical copy of the model inside a
``record`` block that stays open (a loop over batches).

Allocator. A LeNet5 forward pass at batch 256 allocates about 90 MB of outputs. glibc's
``malloc`` hands freed memory above its (self-adjusting) trim threshold back to the system and
faults it in again on the next pass: about 25,000 page faults per plain pass on Linux, a quarter
of its time, and how many depends on the order in which tensors are freed, which keeping outputs
alive (what a recorder does) changes. With glibc's defaults recorded passes come out 10-20%
*faster* than plain ones: that measures the allocator's heuristics, not the recorder. So by
default the benchmark turns trimming and ``mmap`` off (``mallopt``), every pass reuses the same
memory without page faults, and the ratio is the recorder's own cost; ``--allocator system``
keeps glibc's defaults. The page faults per pass are printed either way.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import resource
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import netlens as nl
from netlens.models import LeNet5, RowClassifier

GOAL = 1.05
# glibc's mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


class InplaceLeNet5(LeNet5):
    """LeNet5 with in-place ReLUs: every recorded conv output gets overwritten, so it is cloned."""

    def __init__(self) -> None:
        super().__init__()
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.relu3 = nn.ReLU(inplace=True)


def pin_allocator() -> bool:
    """Keep freed memory in the process (glibc): no trimming, no ``mmap`` for large blocks."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, 2**30)) and bool(mallopt(_M_MMAP_MAX, 0))


def leaves(model: nn.Module) -> list[str]:
    """The names of the modules without children: every layer that computes."""
    return [name for name, module in model.named_modules() if name and not list(module.children())]


class Sample:
    """Wall seconds, CPU seconds and page faults of one call."""

    def __init__(self, fn: Callable[[], object]) -> None:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        self.cpu = time.process_time() - cpu
        self.wall = time.perf_counter() - wall
        self.faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def measure(model: nn.Module, inputs: torch.Tensor, repeats: int) -> dict[str, list[Sample]]:
    """Samples of three ways to run a forward pass, interleaved in rotating order."""
    layers = leaves(model)
    watched = copy.deepcopy(model)

    def plain() -> None:
        model(inputs)

    def per_call() -> None:
        with nl.record(model, layers):
            model(inputs)

    def steady() -> None:
        watched(inputs)

    ways = [("plain", plain), ("per_call", per_call), ("steady", steady)]
    samples: dict[str, list[Sample]] = {name: [] for name, _ in ways}
    with nl.record(watched, layers):
        for index in range(repeats + 3):  # the first three are warm-up
            shift = index % len(ways)
            for name, fn in ways[shift:] + ways[:shift]:
                sample = Sample(fn)
                if index >= 3:
                    samples[name].append(sample)
    return samples


def median(samples: list[Sample], clock: str) -> float:
    return statistics.median(getattr(sample, clock) for sample in samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, small batch")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--allocator",
        choices=("pinned", "system"),
        default="pinned",
        help="pinned (default): no trimming or mmap in glibc's malloc; system: its defaults",
    )
    args = parser.parse_args()
    pinned = args.allocator == "pinned" and pin_allocator()
    batch, repeats = (16, 3) if args.quick else (args.batch, args.repeats)
    torch.manual_seed(0)
    cases = {
        "LeNet5 (ReLU)": (LeNet5().eval(), torch.randn(batch, 1, 28, 28)),
        "LeNet5 (in-place ReLU)": (InplaceLeNet5().eval(), torch.randn(batch, 1, 28, 28)),
        "row-LSTM": (RowClassifier("lstm").eval(), torch.randn(batch, 28, 28)),
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch}, "
        f"{repeats} interleaved repeats, no_grad, all leaf layers recorded, allocator "
        + ("pinned" if pinned else "system defaults")
    )
    print("per call: enter record, one forward, exit; steady: one forward with the block open")
    print("ratios of medians to the plain forward; faults: median page faults per pass")
    print(
        f"{'model':<24}{'plain ms':>10}{'per call':>10}{'steady':>8}"
        f"{'cpu: per call':>15}{'steady':>8}{'faults: plain':>15}{'steady':>8}"
    )
    goal: dict[str, float] = {}
    with torch.no_grad():
        for name, (model, inputs) in cases.items():
            samples = measure(model, inputs, repeats)
            plain = {clock: median(samples["plain"], clock) for clock in ("wall", "cpu")}
            ratios = {
                (way, clock): median(samples[way], clock) / plain[clock]
                for way in ("per_call", "steady")
                for clock in ("wall", "cpu")
            }
            faults = {way: median(samples[way], "faults") for way in ("plain", "steady")}
            print(
                f"{name:<24}{plain['wall'] * 1e3:>10.2f}"
                f"{ratios['per_call', 'wall']:>10.3f}{ratios['steady', 'wall']:>8.3f}"
                f"{ratios['per_call', 'cpu']:>15.3f}{ratios['steady', 'cpu']:>8.3f}"
                f"{faults['plain']:>15.0f}{faults['steady']:>8.0f}"
            )
            if name == "LeNet5 (ReLU)":
                goal = {f"{way} ({clock})": ratio for (way, clock), ratio in ratios.items()}
    # The verdict goes by CPU time: wall time also counts the moments another process held the
    # core, which on a shared machine swings the plain medians by 50%.
    worst = max(goal["per_call (cpu)"], goal["steady (cpu)"])
    print(
        f"goal case, LeNet5 batch {batch}, recorded / plain: CPU time per call "
        f"{goal['per_call (cpu)']:.3f}, steady {goal['steady (cpu)']:.3f} "
        f"({'<=' if worst <= GOAL else '>'} {GOAL}); wall time per call "
        f"{goal['per_call (wall)']:.3f}, steady {goal['steady (wall)']:.3f}"
    )


if __name__ == "__main__":
    main()
