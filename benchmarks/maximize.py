"""Activation maximisation: netlens' batched call against one channel at a time.

Run: ``python benchmarks/maximize.py`` (``--quick`` for a smoke run). For every channel of
LeNet5's ``conv1`` (32) and ``conv2`` (64), 256 Adam steps at lr 0.05 on the mean of the
channel's map, inputs in [-1, 1] through the same tanh squash, no transforms, the same starting
noise for every method:

* ``one-at-a-time``: the plain loop of lucent and FlashTorch: one input per channel, the full
  model runs every step (a forward hook catches the layer's output), the parameters keep
  ``requires_grad`` as the model came, so their gradients are computed too.
* ``batched, full model``: all channels as one batch with frozen parameters, but the full model
  still runs every step (what batching alone gives).
* ``netlens``: ``nl.maximize_activation``: one batch, the forward pass stops at the target
  layer and only each input's own channel of the layer is computed.

The three are run interleaved, ``--repeats`` times, and the medians are printed with the speed-up
of netlens over each, and the objective each reaches (mean over channels, and netlens / plain
loop per channel: min, median, max). Goal: >= 8x faster than one-at-a-time, with an
objective equal or higher.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch import nn

import netlens as nl
from netlens._maximize.param import _channel_seed
from netlens.models import LeNet5
from netlens.testing import model_unchanged

LR = 0.05
INIT_STD = 0.01


def start_noise(channels: list[int], seed: int) -> torch.Tensor:
    """The starting point netlens uses for each channel (so that all methods start alike)."""
    generators = [torch.Generator().manual_seed(_channel_seed(seed, c)) for c in channels]
    return torch.stack([INIT_STD * torch.randn((1, 28, 28), generator=g) for g in generators])


def squash(raw: torch.Tensor) -> torch.Tensor:
    return torch.tanh(raw)  # value range (-1, 1)


def one_at_a_time(
    model: nn.Module, layer: str, channels: list[int], steps: int, seed: int
) -> torch.Tensor:
    """The lucent / FlashTorch loop: one channel, the full model, every step."""
    module = dict(model.named_modules())[layer]
    noise = start_noise(channels, seed)
    reached = []
    for index, channel in enumerate(channels):
        raw = noise[index : index + 1].clone().requires_grad_(True)
        optimizer = torch.optim.Adam([raw], lr=LR)
        captured: dict[str, torch.Tensor] = {}
        handle = module.register_forward_hook(
            lambda m, i, o, seen=captured: seen.__setitem__("out", o)
        )
        try:
            for _ in range(steps):
                optimizer.zero_grad()
                model(squash(raw))
                loss = -captured["out"][0, channel].mean()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                model(squash(raw))
                reached.append(captured["out"][0, channel].mean())
        finally:
            handle.remove()
    model.zero_grad(set_to_none=True)  # the plain loop leaves parameter gradients behind
    return torch.stack(reached)


def batched_full_model(
    model: nn.Module, layer: str, channels: list[int], steps: int, seed: int
) -> torch.Tensor:
    """All channels as one batch, frozen parameters, but the whole model every step."""
    module = dict(model.named_modules())[layer]
    raw = start_noise(channels, seed).requires_grad_(True)
    optimizer = torch.optim.Adam([raw], lr=LR)
    index = torch.tensor(channels)
    rows = torch.arange(len(channels))
    captured: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for _ in range(steps):
            optimizer.zero_grad()
            model(squash(raw))
            loss = -captured["out"][rows, index].flatten(1).mean(1).sum()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            model(squash(raw))
            return captured["out"][rows, index].flatten(1).mean(1)
    finally:
        handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)


def with_netlens(
    model: nn.Module, layer: str, channels: list[int], steps: int, seed: int
) -> torch.Tensor:
    result = nl.maximize_activation(
        model,
        layer,
        channels,
        input_shape=(1, 28, 28),
        steps=steps,
        lr=LR,
        transforms=None,
        value_range=(-1, 1),
        seed=seed,
    )
    return result.activations


METHODS = {
    "one-at-a-time": one_at_a_time,
    "batched, full model": batched_full_model,
    "netlens": with_netlens,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 channels, 16 steps, 1 repeat")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--layers", nargs="+", default=["conv1", "conv2"], choices=["conv1", "conv2"]
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(args.threads)
    steps, repeats = (16, 1) if args.quick else (args.steps, args.repeats)
    torch.manual_seed(0)
    model = LeNet5().eval()
    layers = {name: {"conv1": 32, "conv2": 64}[name] for name in args.layers}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU, LeNet5 (seeded "
        f"default init), {steps} steps, {repeats} interleaved repeat(s), medians"
    )
    for method in METHODS.values():  # warm-up: imports, kernel caches
        method(model, "conv1", [0], 2, 0)
    header = f"{'layer':<7}{'channels':>9}" + "".join(f"{name + ' s':>24}" for name in METHODS)
    print(header + f"{'speed-up':>10}{'vs batched':>11}")
    all_times: dict[str, list[float]] = {name: [] for name in METHODS}
    objective_rows = []
    for layer, width in layers.items():
        channels = list(range(4 if args.quick else width))
        times: dict[str, list[float]] = {name: [] for name in METHODS}
        reached: dict[str, torch.Tensor] = {}
        for repeat in range(repeats):
            for name, method in METHODS.items():
                with model_unchanged(model):
                    start = time.perf_counter()
                    reached[name] = method(model, layer, channels, steps, repeat)
                    times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name in METHODS:
            all_times[name].append(medians[name])
        print(
            f"{layer:<7}{len(channels):>9}"
            + "".join(f"{medians[name]:>24.2f}" for name in METHODS)
            + f"{medians['one-at-a-time'] / medians['netlens']:>9.1f}x"
            + f"{medians['batched, full model'] / medians['netlens']:>10.1f}x"
        )
        ratio = reached["netlens"] / reached["one-at-a-time"]
        objective_rows.append(
            f"{layer:<7}"
            + "".join(f"{reached[name].mean().item():>24.4f}" for name in METHODS)
            + "".join(f"{value:>8.4f}" for value in (ratio.min(), ratio.median(), ratio.max()))
            + f"{int((ratio >= 1).sum()):>5}/{len(ratio)}"
        )
    total = {name: sum(values) for name, values in all_times.items()}
    print(
        f"{'both':<7}{'':>9}"
        + "".join(f"{total[name]:>24.2f}" for name in METHODS)
        + f"{total['one-at-a-time'] / total['netlens']:>9.1f}x"
        + f"{total['batched, full model'] / total['netlens']:>10.1f}x"
    )
    print()
    print(
        "objective reached (last repeat): mean over channels; netlens / one-at-a-time per "
        "channel: min, median, max, and how many channels reached at least as much"
    )
    print(
        f"{'layer':<7}"
        + "".join(f"{name:>24}" for name in METHODS)
        + "".join(f"{label:>8}" for label in ("min", "median", "max"))
        + f"{'>= 1':>8}"
    )
    for row in objective_rows:
        print(row)


if __name__ == "__main__":
    main()
