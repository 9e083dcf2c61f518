"""Occlusion sensitivity: time against the one-big-batch lower bound and Captum, and peak memory.

Part 1, LeNet5 on 1x28x28 inputs, batches of 1 and 16, window 4 stride 2 (13x13 positions) and
window 8 stride 4 (6x6 positions), softmax scores of the predicted class:

* lower bound: one forward pass over all the occluded copies, built beforehand, as a single
  batch (goal: ``nl.occlusion`` <= 1.2x this);
* ``captum.attr.Occlusion`` with ``perturbations_per_eval=1`` (its default) and with the best of
  several settings (goal: ``nl.occlusion`` faster than both).

Every method runs once per round, rounds repeat in a rotating order (three times as many rounds
for batch 1), and each time is the median over the rounds; the minimum is printed too, being
less sensitive to other load on a shared machine. ``nl.occlusion`` includes its own
unoccluded pass; the lower bound does not.

Part 2, peak memory on 3x224x224 inputs with window 8 and stride 1 (217 x 217 = 47,089 positions),
with a small conv net (so that it runs in reasonable time on a CPU), in a fresh subprocess: the
growth of the peak resident memory during the call against the size of all occluded copies.

Parts 1 and 2 measure the plain path (``incremental=False``: every occluded copy through the
whole model), the subject of the goals above.

Part 3, incremental inference (``incremental=True``) against the plain path and the same lower
bound, side by side in one run, on (a) LeNet5, 1x28x28, batch 16, window 4 stride 2, and (b) a
VGG-style network on 3x64x64 (3x3 convolutions with 64, 64, pool, 128, 128, pool, 256, 256,
pool, then a linear classifier), batch 4, window 8 stride 4 (goals: at most 0.66x and 0.33x the
lower bound). For each case it also prints the largest difference between the two paths, the
multiply-adds each performs (counted as the convolutions and matrix products run), and the
growth of the peak resident memory during one call of each method, in fresh processes.

Run ``python benchmarks/occlusion.py`` (``--quick`` for a smoke run; ``--only-incremental`` for
part 3 alone). Threads default to 1 so that the numbers do not depend on what else runs on a
shared machine; ``--threads`` changes it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import netlens as nl
from netlens.models import LeNet5

CASES = [(1, 4, 2), (1, 8, 4), (16, 4, 2), (16, 8, 4)]  # batch, window, stride
# The memory budget of part 2: nl.occlusion's default on the CPU, passed explicitly so that the
# number printed is the one used.
BUDGET = 48 * 2**20


def make_model(seed: int = 0) -> LeNet5:
    torch.manual_seed(seed)
    return LeNet5().eval()


def occluded_copies(inputs: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """Every occluded copy, built with a plain loop (outside the timed region)."""
    size = inputs.shape[-1]
    copies = []
    for top in range(0, size - window + 1, stride):
        for left in range(0, size - window + 1, stride):
            copy = inputs.clone()
            copy[..., top : top + window, left : left + window] = 0.0
            copies.append(copy)
    return torch.cat(copies)


def time_interleaved(
    methods: dict[str, Callable[[], object]], repeats: int
) -> dict[str, list[float]]:
    names = list(methods)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - start)
    return times


def lenet_case(
    model: nn.Module, batch: int, window: int, stride: int, repeats: int, captum_settings: list
) -> None:
    from captum.attr import Occlusion

    generator = torch.Generator().manual_seed(batch * 100 + window)
    inputs = torch.randn(batch, 1, 28, 28, generator=generator)
    positions = ((28 - window) // stride + 1) ** 2
    copies = occluded_copies(inputs, window, stride)
    result = nl.occlusion(model, inputs, window=window, stride=stride, incremental=False)
    occlusion = Occlusion(lambda x: torch.softmax(model(x), 1))

    def captum(per_eval: int) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            with torch.no_grad():
                return occlusion.attribute(
                    inputs,
                    sliding_window_shapes=(1, window, window),
                    strides=(1, stride, stride),
                    baselines=0.0,
                    target=result.target,
                    perturbations_per_eval=per_eval,
                )

        return call

    def lower_bound() -> None:
        with torch.no_grad():
            model(copies)

    def netlens() -> None:
        nl.occlusion(model, inputs, window=window, stride=stride, incremental=False)

    settings = sorted({1, *(positions if s == "all" else int(s) for s in captum_settings)})
    methods: dict[str, Callable[[], object]] = {"lower bound": lower_bound, "netlens": netlens}
    methods.update({f"captum ppe={s}": captum(s) for s in settings})
    # Cheap cases get more rounds: their medians move most with the machine's load.
    times = time_interleaved(methods, repeats * 3 if batch == 1 else repeats)
    label = f"N={batch} window {window} stride {stride}"
    for kind, reduce in (("median", statistics.median), ("min", min)):
        summary = {name: reduce(values) for name, values in times.items()}
        captum_times = {s: summary[f"captum ppe={s}"] for s in settings}
        best = min(captum_times, key=lambda s: captum_times[s])
        ours = summary["netlens"]
        if kind == "median":
            difference = float((captum(best)() - result.attribution).abs().max())
        print(
            f"{label if kind == 'median' else '':<22} {kind:<6} {positions * batch:>6} "
            f"{summary['lower bound'] * 1e3:>9.1f}ms {ours * 1e3:>7.1f}ms "
            f"{ours / summary['lower bound']:>5.2f}x {captum_times[1] * 1e3:>10.1f}ms "
            f"{captum_times[best] * 1e3:>8.1f}ms (ppe={best:>3}) "
            f"{captum_times[1] / ours:>7.2f}x {captum_times[best] / ours:>7.2f}x "
            f"{difference:>9.1e}",
            flush=True,
        )
    captum_times = {s: statistics.median(times[f"captum ppe={s}"]) for s in settings}
    others = ", ".join(f"ppe={s}: {t * 1e3:.1f}ms" for s, t in captum_times.items())
    print(f"{'':<22} captum medians: {others}", flush=True)


def lenet_part(repeats: int, captum_settings: list[int | str]) -> None:
    model = make_model()
    print(
        f"{'case':<22} {'':<6} {'copies':>6} {'lower bound':>11} {'netlens':>9} {'ratio':>6} "
        f"{'captum ppe=1':>12} {'captum best':>19} {'vs ppe=1':>8} {'vs best':>8} {'max diff':>9}"
    )
    for batch, window, stride in CASES:
        lenet_case(model, batch, window, stride, repeats, captum_settings)


class SmallConvNet(nn.Module):
    """A cheap classifier for 3x224x224 inputs: an 8x8 patch conv, a 3x3 conv, pooling, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, 8, 8, stride=8)
        self.relu1 = nn.ReLU()
        self.conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        x = self.relu2(self.conv(self.relu1(self.patches(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def large_child(stride: int, threads: int) -> None:
    """Run in a fresh process: time and peak memory of one 3x224x224 occlusion."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = SmallConvNet().eval()
    inputs = torch.randn(1, 3, 224, 224)
    # Warm up the kernels on a small input, then measure from a reset high-water mark.
    nl.occlusion(model, inputs, window=112, stride=112, incremental=False)
    counting: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args: counting.append(args[0].shape[0]))
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _memory_kib("VmRSS")
    start = time.perf_counter()
    result = nl.occlusion(
        model, inputs, window=8, stride=stride, memory_budget=BUDGET, incremental=False
    )
    seconds = time.perf_counter() - start
    peak = _memory_kib("VmHWM")
    handle.remove()
    chunk = max(counting)
    # Forward passes alone on a prebuilt batch of the same size (median of 25), extrapolated to
    # every copy.
    batch = inputs.expand(chunk, -1, -1, -1).clone()
    passes = []
    with torch.no_grad():
        for _ in range(25):
            start = time.perf_counter()
            model(batch)
            passes.append(time.perf_counter() - start)
    forward_only = statistics.median(passes) * sum(counting) / chunk
    print(
        json.dumps(
            {
                "positions": result.probability.numel(),
                "grid": list(result.grid),
                "seconds": seconds,
                "forward_only_seconds": forward_only,
                "passes": len(counting),
                "copies_per_pass": chunk,
                "peak_growth_mib": (peak - before) / 1024,
                "rss_before_mib": before / 1024,
                "all_copies_mib": result.probability.numel() * inputs[0].numel() * 4 / 2**20,
            }
        )
    )


def large_part(stride: int, threads: int) -> None:
    out = subprocess.run(
        [sys.executable, __file__, "--large-child", str(stride), "--threads", str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    budget = BUDGET / 2**20
    print(
        f"3x224x224, window 8, stride {stride}: {found['positions']} positions "
        f"({found['grid'][0]} x {found['grid'][1]}), {found['passes']} forward passes of at most "
        f"{found['copies_per_pass']} copies"
    )
    ratio = found["seconds"] / found["forward_only_seconds"]
    print(
        f"  time {found['seconds']:.1f} s (forward passes alone, extrapolated: "
        f"{found['forward_only_seconds']:.1f} s, ratio {ratio:.2f}x)"
    )
    print(
        f"  peak resident memory grew by {found['peak_growth_mib']:.0f} MiB during the call "
        f"(from {found['rss_before_mib']:.0f} MiB; budget {budget:.0f} MiB); all occluded copies "
        f"at once would take {found['all_copies_mib']:.0f} MiB"
    )


# -- part 3: incremental inference ---------------------------------------------------------------


class VGGStyle(nn.Module):
    """3x3 convolutions (64, 64, pool, 128, 128, pool, 256, 256, pool), then a linear layer."""

    def __init__(self, size: int = 64, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in (64, 64, "M", 128, 128, "M", 256, 256, "M"):
            if width == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
            else:
                assert isinstance(width, int)
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * size * size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        return self.classifier(torch.flatten(self.features(x), 1))  # type: ignore[no-any-return]


# name: (model, input shape, batch, window, stride, goal: incremental / lower bound)
INCREMENTAL_CASES = {
    "lenet": ("LeNet5", (1, 28, 28), 16, 4, 2, 0.66),
    "vgg": ("VGG-style", (3, 64, 64), 4, 8, 4, 0.33),
}


def incremental_setup(name: str) -> tuple[nn.Module, torch.Tensor, int, int]:
    _, shape, batch, window, stride, _ = INCREMENTAL_CASES[name]
    torch.manual_seed(0)
    model = (LeNet5() if name == "lenet" else VGGStyle()).eval()
    inputs = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))
    return model, inputs, window, stride


def count_multiply_adds(call: Callable[[], object]) -> int:
    """Multiply-adds of the convolutions and matrix products that run during ``call()``.

    (``torch.utils.flop_counter.FlopCounterMode`` registers global module hooks, under which
    incremental inference refuses to run, so the count is taken at the dispatcher instead.)
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            packet = func._overloadpacket
            if packet is aten.convolution:
                Counter.total += out.numel() * args[1][0].numel()
            elif packet in (aten.mm, aten.bmm):
                Counter.total += out.numel() * args[0].shape[-1]
            elif packet is aten.addmm:
                Counter.total += out.numel() * args[1].shape[-1]
            return out

    with Counter():
        call()
    return Counter.total


def incremental_memory_child(name: str, method: str, threads: int) -> None:
    """Run in a fresh process: the growth of the peak resident memory during one call."""
    torch.set_num_threads(threads)
    model, inputs, window, stride = incremental_setup(name)
    copies = occluded_copies(inputs, window, stride) if method == "lower bound" else None
    # Warm up the kernels on a small job, then measure from a reset high-water mark.
    nl.occlusion(
        model, inputs[:1], window=inputs.shape[-1] // 2, incremental=method == "incremental"
    )
    Path("/proc/self/clear_refs").write_text("5")
    before = _memory_kib("VmRSS")
    with torch.no_grad():
        if copies is not None:
            model(copies)
        else:
            nl.occlusion(
                model, inputs, window=window, stride=stride, incremental=method == "incremental"
            )
    print(json.dumps({"growth_mib": (_memory_kib("VmHWM") - before) / 1024}))


def incremental_memory(name: str, method: str, threads: int) -> float:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--incremental-memory-child",
            name,
            method,
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["growth_mib"])


def incremental_case(name: str, repeats: int, threads: int, memory: bool) -> None:
    label, shape, batch, window, stride, goal = INCREMENTAL_CASES[name]
    model, inputs, window, stride = incremental_setup(name)
    copies = occluded_copies(inputs, window, stride)
    fast = nl.occlusion(model, inputs, window=window, stride=stride, incremental=True)
    plain = nl.occlusion(model, inputs, window=window, stride=stride, incremental=False)
    assert fast.incremental and not plain.incremental
    difference = float((fast.probability - plain.probability).abs().max())
    attribution = float((fast.attribution - plain.attribution).abs().max())

    def lower_bound() -> None:
        with torch.no_grad():
            model(copies)

    methods: dict[str, Callable[[], object]] = {
        "lower bound": lower_bound,
        "plain": lambda: nl.occlusion(
            model, inputs, window=window, stride=stride, incremental=False
        ),
        "incremental": lambda: nl.occlusion(
            model, inputs, window=window, stride=stride, incremental=True
        ),
    }
    times = time_interleaved(methods, repeats)
    print(
        f"{label}, {batch} x {'x'.join(map(str, shape))}, window {window} stride {stride}: "
        f"{copies.shape[0]} occluded copies, {repeats} rounds"
    )
    for kind, reduce in (("median", statistics.median), ("min", min)):
        summary = {method: reduce(values) for method, values in times.items()}
        bound = summary["lower bound"]
        print(
            f"  {kind:<6} lower bound {bound * 1e3:8.1f}ms  plain {summary['plain'] * 1e3:8.1f}ms "
            f"({summary['plain'] / bound:.2f}x)  incremental {summary['incremental'] * 1e3:8.1f}ms "
            f"({summary['incremental'] / bound:.3f}x of the lower bound, goal <= {goal}; "
            f"{summary['plain'] / summary['incremental']:.2f}x faster than plain)",
            flush=True,
        )
    print(
        f"  largest difference incremental - plain: probability {difference:.1e}, "
        f"attribution {attribution:.1e}"
    )
    counted = {method: count_multiply_adds(methods[method]) for method in ("plain", "incremental")}
    share = counted["incremental"] / counted["plain"]
    time_share = statistics.median(times["incremental"]) / statistics.median(times["plain"])
    print(
        f"  multiply-adds counted: plain {counted['plain'] / 1e9:.2f} G, incremental "
        f"{counted['incremental'] / 1e9:.2f} G ({share:.1%} of plain; time {time_share:.1%} of "
        "plain)"
    )
    if memory:
        # Three fresh processes per method, interleaved: the allocator makes single runs vary.
        grown: dict[str, list[float]] = {method: [] for method in methods}
        for _ in range(3):
            for method in methods:
                grown[method].append(incremental_memory(name, method, threads))
        print(
            "  peak resident memory growth during one call (median of 3 processes; all): "
            + ", ".join(
                f"{method} {statistics.median(values):.0f} MiB "
                f"({'/'.join(f'{v:.0f}' for v in values)})"
                for method, values in grown.items()
            ),
            flush=True,
        )


def incremental_part(repeats: int, threads: int, memory: bool) -> None:
    for name in INCREMENTAL_CASES:
        # The VGG-style case takes seconds a call: fewer rounds than LeNet5's.
        incremental_case(name, repeats if name == "lenet" else max(2, repeats - 2), threads, memory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-large", action="store_true", help="only the LeNet5 part")
    parser.add_argument("--skip-lenet", action="store_true", help="only the 3x224x224 part")
    parser.add_argument(
        "--only-incremental", action="store_true", help="only part 3 (incremental inference)"
    )
    parser.add_argument("--skip-memory", action="store_true", help="part 3 without peak memory")
    parser.add_argument("--large-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--incremental-memory-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.large_child is not None:
        large_child(args.large_child, args.threads)
        return
    if args.incremental_memory_child is not None:
        incremental_memory_child(*args.incremental_memory_child, args.threads)
        return
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 7)
    captum_settings: list[int | str] = [16, "all"] if args.quick else [4, 16, 64, "all"]
    import captum

    print(
        f"torch {torch.__version__}, captum {captum.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} thread(s), {repeats} rounds ({3 * repeats} for N=1), "
        "medians and minima over the rounds"
    )
    if not args.skip_lenet and not args.only_incremental:
        lenet_part(repeats, captum_settings)
    if not args.skip_large and not args.only_incremental:
        large_part(8 if args.quick else 1, args.threads)
    incremental_part(repeats, args.threads, not args.skip_memory)


if __name__ == "__main__":
    main()
