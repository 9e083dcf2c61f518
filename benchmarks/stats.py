"""Streaming activation statistics on LeNet5's conv1 and conv2: time, memory and accuracy.

Three measurements over N inputs of 1x28x28 (10,000 by default) in batches:

* time: ``nl.activation_stats`` against a plain ``model(x)`` loop over the same batches under
  ``torch.no_grad()`` (interleaved repeats, medians; goal: ratio <= 1.10);
* peak memory: streaming statistics against recording every output, concatenating and then
  reducing, each in a fresh subprocess for several N (goal: flat in N for the streaming one);
* accuracy: the largest relative difference of mean, std, min and max against a float64
  two-pass reference (goal: <= 1e-6).

Run ``python benchmarks/stats.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

import torch

import netlens as nl
from netlens.models import LeNet5

LAYERS = ["conv1", "conv2"]


def make_batches(count: int, batch_size: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(count, 1, 28, 28, generator=generator)
    return list(inputs.split(batch_size))


def make_model(seed: int = 0) -> LeNet5:
    torch.manual_seed(seed)
    return LeNet5().eval()


def plain_loop(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for batch in batches:
            model(batch)


def streaming(model: torch.nn.Module, batches: list[torch.Tensor]) -> dict[str, nl.ChannelStats]:
    return nl.activation_stats(model, batches, LAYERS)


def concatenate_then_reduce(
    model: torch.nn.Module, batches: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in LAYERS}
    with torch.no_grad(), nl.record(model, LAYERS) as recorder:
        for batch in batches:
            model(batch)
            for name in LAYERS:
                outputs[name].append(recorder[name])
    result = {}
    for name, parts in outputs.items():
        everything = torch.cat(parts)
        outputs[name] = []
        var, mean = torch.var_mean(everything, dim=(0, 2, 3), correction=0)
        result[name] = torch.stack([mean, var.sqrt()])
    return result


def reference(model: torch.nn.Module, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float64 two-pass: the exact mean first, then the squared deviations from it."""
    sums: dict[str, torch.Tensor] = {}
    mins: dict[str, torch.Tensor] = {}
    maxs: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    with torch.no_grad(), nl.record(model, LAYERS) as recorder:
        for batch in batches:
            model(batch)
            for name in LAYERS:
                out = recorder[name].double()
                sums[name] = sums.get(name, 0) + out.sum(dim=(0, 2, 3))
                low, high = out.amin(dim=(0, 2, 3)), out.amax(dim=(0, 2, 3))
                mins[name] = torch.minimum(mins[name], low) if name in mins else low
                maxs[name] = torch.maximum(maxs[name], high) if name in maxs else high
                counts[name] = counts.get(name, 0) + out.numel() // out.shape[1]
        means = {name: sums[name] / counts[name] for name in LAYERS}
        squares: dict[str, torch.Tensor] = {}
        for batch in batches:
            model(batch)
            for name in LAYERS:
                deviation = recorder[name].double() - means[name].view(1, -1, 1, 1)
                squares[name] = squares.get(name, 0) + deviation.square().sum(dim=(0, 2, 3))
    return {
        name: torch.stack(
            [means[name], (squares[name] / counts[name]).sqrt(), mins[name], maxs[name]]
        )
        for name in LAYERS
    }


def relative_difference(value: torch.Tensor, exact: torch.Tensor) -> float:
    scale = exact.abs().clamp(min=torch.finfo(torch.float64).tiny)
    return float(((value.double() - exact).abs() / scale).max())


class UpdateClock:
    """Add up this process's CPU time spent adding tensors to ``ActivationStats``.

    A direct measure of what the statistics cost, less disturbed by noise than a difference of
    two totals. ``activation_stats`` adds each output through ``ActivationStats._add`` (what
    ``update`` calls once it has checked its argument), so that is the method timed.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._add = nl.ActivationStats._add

    def __enter__(self) -> UpdateClock:
        original = self._add

        def add(stats: nl.ActivationStats, tensor: torch.Tensor, dim: int) -> nl.ActivationStats:
            start = time.process_time()
            try:
                return original(stats, tensor, dim)
            finally:
                self.seconds += time.process_time() - start

        nl.ActivationStats._add = add  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        nl.ActivationStats._add = self._add  # type: ignore[method-assign]


def measure_time(args: argparse.Namespace) -> None:
    model, batches = make_model(), make_batches(args.count, args.batch_size)
    plain_loop(model, batches[:2])
    streaming(model, batches[:2])
    inside: list[float] = []
    # wall-clock and this process's CPU time: on a shared machine the second is less disturbed
    times: dict[str, dict[str, list[float]]] = {
        "plain": {"wall": [], "cpu": []},
        "stats": {"wall": [], "cpu": []},
    }
    for repeat in range(args.repeats):
        order = [("plain", plain_loop), ("stats", streaming)]
        if repeat % 2:
            order.reverse()
        for label, run in order:
            with UpdateClock() as clock:
                wall, cpu = time.perf_counter(), time.process_time()
                run(model, batches)
                times[label]["cpu"].append(time.process_time() - cpu)
                times[label]["wall"].append(time.perf_counter() - wall)
            if label == "stats":
                inside.append(clock.seconds)
    print(f"time over {args.count} inputs, batch {args.batch_size}, {args.repeats} repeats")
    for clock in ("wall", "cpu"):
        plain, stats = (statistics.median(times[k][clock]) for k in ("plain", "stats"))
        pairs = [s / p for s, p in zip(times["stats"][clock], times["plain"][clock], strict=True)]
        print(f"  {clock:4} plain forward loop   median {plain:8.3f} s")
        print(f"  {clock:4} activation_stats     median {stats:8.3f} s")
        print(f"  {clock:4} ratio of medians     {stats / plain:8.3f}   (goal <= 1.10)")
        fastest = min(times["stats"][clock]) / min(times["plain"][clock])
        print(f"  {clock:4} ratio of minimums    {fastest:8.3f}")
        print(f"  {clock:4} per-repeat ratios    {', '.join(f'{r:.3f}' for r in pairs)}")
    share = statistics.median(inside) / statistics.median(times["plain"]["cpu"])
    print(f"  cpu  inside ActivationStats.update, median {statistics.median(inside):6.3f} s")
    print(f"       = {share:.3f} of the plain loop's CPU time, so a ratio of {1 + share:.3f}")


def measure_accuracy(args: argparse.Namespace) -> None:
    model, batches = make_model(), make_batches(args.count, args.batch_size)
    found = streaming(model, batches)
    exact = reference(model, batches)
    print(f"accuracy against a float64 two-pass reference over {args.count} inputs")
    worst = 0.0
    for name in LAYERS:
        stats = found[name]
        parts = {"mean": stats.mean, "std": stats.std, "min": stats.min, "max": stats.max}
        diffs = {
            key: relative_difference(value, exact[name][i])
            for i, (key, value) in enumerate(parts.items())
        }
        worst = max(worst, *diffs.values())
        text = "  ".join(f"{key} {diff:.2e}" for key, diff in diffs.items())
        print(f"  {name}: max relative difference  {text}")
    print(f"  largest                 {worst:.2e}   (goal <= 1e-6)")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_worker(approach: str, count: int, batch_size: int) -> None:
    model, batches = make_model(), make_batches(count, batch_size)
    # Linux: writing 5 to clear_refs resets the peak (VmHWM) to the current resident size, so
    # that the import of torch and the set-up do not hide the pass's own peak.
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    before = _status_kib("VmRSS")
    if approach == "streaming":
        streaming(model, batches)
    else:
        concatenate_then_reduce(model, batches)
    print((_status_kib("VmHWM") - before) / 1024)


def measure_memory(args: argparse.Namespace) -> None:
    counts = [args.count // 4, args.count // 2, args.count]
    print("peak memory (MiB) above the model and the inputs, each run in a fresh process")
    print(f"  {'N':>8} {'streaming':>12} {'concatenate':>12}")
    for count in counts:
        row = []
        for approach in ("streaming", "concatenate"):
            command = [sys.executable, __file__, "--memory-worker", approach]
            command += ["--count", str(count), "--batch-size", str(args.batch_size)]
            command += ["--threads", str(args.threads)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            row.append(float(output.strip().splitlines()[-1]))
        print(f"  {count:>8} {row[0]:>12.1f} {row[1]:>12.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run on 500 inputs")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=["time", "accuracy", "memory"], help="one measurement")
    parser.add_argument("--memory-worker", choices=["streaming", "concatenate"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        memory_worker(args.memory_worker, args.count, args.batch_size)
        return
    if args.quick:
        args.count, args.repeats = 500, 2
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s)"
    )
    measurements = {"time": measure_time, "accuracy": measure_accuracy, "memory": measure_memory}
    for name, measure in measurements.items():
        if args.only in (None, name):
            measure(args)


if __name__ == "__main__":
    main()
