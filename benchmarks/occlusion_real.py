"""Occlusion on torchvision models: plain against incremental inference, and auto's choice.

For each row (a torchvision model with random weights, one 3xPxP image, a window and a stride)
it times, side by side in one process, ``nl.occlusion(model, x, window=w, stride=s,
incremental=...)`` with ``False`` (plain: every occluded copy through the whole model),
``True`` (incremental inference) and ``"auto"`` (the default), and prints:

* the median time of each path over the rounds (the paths run in a rotating order within each
  round, after one untimed warm-up call of each) and the minimum; the ratios inc/plain and
  auto/plain are ratios of the medians;
* which path ``"auto"`` chose (``result.incremental``);
* the planning share: the time spent in ``Engine.plan`` over the time of the whole
  ``incremental=True`` call (medians), and the time of ``trace`` and ``build`` (``build`` runs
  the traced graph on the unoccluded input and includes ``plan``). These functions are wrapped
  with timers in this process only, for the length of the run;
* the multiply-add share: ``Engine.incremental_macs / Engine.plain_macs``, the engine's own
  estimate, read when ``plan`` returns;
* the peak memory growth of one call of the plain and of the incremental path, each in a fresh
  subprocess: after one plain forward pass of the input (so that loading libraries and
  initialising oneDNN are not counted; not a warm-up call of the path itself, whose freed memory
  glibc would keep for the measured call to reuse, hiding what it needs), the peak
  resident memory during the call minus the resident memory just before it. The peak is
  ``VmHWM`` after resetting it through ``/proc/self/clear_refs`` (as part 3 of
  ``benchmarks/occlusion.py`` does) rather than ``ru_maxrss``, which cannot be reset and, in a
  child started by vfork, keeps the parent's peak;
* the rows that miss the goals (``auto/plain <= 1.10`` and a planning share of at most 10% on
  every row, incremental memory at most the plain path's, and inc/plain goals on the rows that
  incremental inference is for), or "all goals met".

Models are built with ``weights=None`` (nothing is downloaded) and ``num_classes=1000`` (the
classifiers' real sizes matter for memory), seeded, in eval mode, with the running statistics
of every BatchNorm randomised from a fixed seed (fresh ones are 0 and 1, which makes BatchNorm
an identity that no trained model has). A model that ``incremental=True`` refuses gets
"refused" and the reason instead of times.

Run ``python benchmarks/occlusion_real.py`` for every row: roughly 40 to 60 minutes at one
thread on a recent x86 core (an estimate from the rows' multiply-adds and the quick run's speed,
not a timed full run; the plain path alone is about 160 s a call over all rows, most of it
vgg11, resnet50 and densenet121 at 224 px; the rest depends on how fast the engine is), of which
the memory subprocesses take about a quarter (``--no-memory`` skips them). ``--quick`` is a
smoke run of two tiny rows, one round and no memory subprocesses, in about 10 seconds (about 40
with ``--memory``). ``--only resnet18,vgg11`` keeps some models, ``--repeat`` sets the rounds
(default 3), ``--threads`` the threads (default 1, so that the numbers do not depend on other
load on a shared machine), ``--json PATH`` writes the results.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

# torchvision's wheel is built for CUDA and its compiled operators do not register with the CPU
# build of torch; no model definition needs them, so skip registering their meta kernels.
sys.modules.setdefault(
    "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
)
import torchvision  # noqa: E402

# The sibling benchmark (importable when this file runs as a script): its rotating-order timer
# and its reader of /proc/self/status.
from occlusion import _memory_kib, time_interleaved  # noqa: E402

import netlens as nl  # noqa: E402
import netlens._occlusion.choose as occlusion_module  # noqa: E402
import netlens._occlusion.incremental.engine as incremental_module  # noqa: E402

Mode = bool | Literal["auto"]
PATHS: dict[str, Mode] = {"plain": False, "inc": True, "auto": "auto"}


@dataclass(frozen=True)
class Row:
    """One benchmark case: a torchvision model on one ``3 x px x px`` image."""

    model: str
    px: int
    window: int
    stride: int

    @property
    def label(self) -> str:
        """``model px/window/stride``."""
        return f"{self.model} {self.px}/{self.window}/{self.stride}"

    @property
    def positions(self) -> int:
        """Occluder positions on the image."""
        return ((self.px - self.window) // self.stride + 1) ** 2


ROWS = [
    Row("resnet18", 112, 16, 16),
    Row("resnet18", 112, 16, 8),
    Row("resnet18", 224, 16, 16),
    Row("resnet18", 224, 32, 16),
    Row("resnet50", 112, 16, 16),
    Row("resnet50", 224, 32, 16),
    Row("mobilenet_v2", 112, 16, 16),
    Row("densenet121", 112, 16, 16),
    Row("densenet121", 224, 32, 16),
    Row("googlenet", 112, 16, 16),
    Row("inception_v3", 112, 16, 16),
    Row("squeezenet1_1", 112, 16, 16),
    Row("vgg11_bn", 224, 32, 32),
    Row("vgg11", 224, 32, 16),
    Row("alexnet", 224, 32, 16),
    Row("efficientnet_b0", 112, 16, 16),
    Row("convnext_tiny", 112, 16, 16),
    Row("shufflenet_v2_x1_0", 112, 16, 16),
]
QUICK_ROWS = [Row("resnet18", 64, 16, 16), Row("vgg11", 64, 16, 16)]

# Goals. Every row: auto at most 10% slower than plain, planning at most 10% of the incremental
# call, incremental memory at most plain's. Some rows: incremental at most this share of plain.
AUTO_GOAL = 1.10
PLAN_GOAL = 0.10
INC_GOALS = {
    Row("resnet18", 112, 16, 8): 0.75,
    Row("resnet50", 224, 32, 16): 0.80,
    Row("densenet121", 224, 32, 16): 0.80,
    Row("vgg11", 224, 32, 16): 0.5,
}


def make_model(name: str) -> nn.Module:
    """A torchvision classifier with seeded random weights and random BatchNorm statistics."""
    torch.manual_seed(0)
    options: dict[str, Any] = {"weights": None, "num_classes": 1000}
    if name in ("googlenet", "inception_v3"):
        options.update(aux_logits=False, init_weights=True)
    model: nn.Module = getattr(torchvision.models, name)(**options)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
                assert module.running_mean is not None and module.running_var is not None
                shape = module.running_mean.shape
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
    return model.eval()


def make_inputs(row: Row) -> torch.Tensor:
    return torch.randn(1, 3, row.px, row.px, generator=torch.Generator().manual_seed(2))


# -- timers around the engine's stages -----------------------------------------------------------


class Probe:
    """What the wrapped stages of the engine did during one call."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the last call."""
        self.seconds = {"trace": 0.0, "build": 0.0, "plan": 0.0}
        self.mac_share: float | None = None

    def snapshot(self) -> dict[str, Any]:
        """Seconds per stage and the multiply-add share of the last call."""
        return {**self.seconds, "mac_share": self.mac_share}


PROBE = Probe()


def _timed(stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            PROBE.seconds[stage] += time.perf_counter() - start

    return timed


@contextmanager
def probes() -> Iterator[list[str]]:
    """Wrap ``trace``, ``build`` and ``Engine.plan`` with timers; yield what could not be.

    ``_occlusion`` imports ``trace`` and ``build`` by name, so they are replaced in both modules
    (wherever the name still refers to the original function), and put back on exit.
    """
    replaced: list[tuple[object, str, object]] = []
    missing = []
    for stage in ("trace", "build"):
        original = getattr(incremental_module, stage, None)
        if original is None:
            missing.append(f"netlens._occlusion.incremental.engine.{stage}")
            continue
        wrapper = _timed(stage, original)
        for module in (incremental_module, occlusion_module):
            if getattr(module, stage, None) is original:
                replaced.append((module, stage, original))
                setattr(module, stage, wrapper)
    engine = getattr(incremental_module, "Engine", None)
    plan = getattr(engine, "plan", None)
    if engine is None or plan is None:
        missing.append("netlens._occlusion.incremental.engine.Engine.plan")
    else:
        timed_plan = _timed("plan", plan)

        @wraps(plan)
        def plan_and_read(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = timed_plan(self, *args, **kwargs)
            plain, incremental = (
                getattr(self, "plain_macs", 0),
                getattr(self, "incremental_macs", 0),
            )
            PROBE.mac_share = incremental / plain if plain else None
            return result

        replaced.append((engine, "plan", plan))
        engine.plan = plan_and_read
    try:
        yield missing
    finally:
        for owner, name, original in reversed(replaced):
            setattr(owner, name, original)


# -- one row -------------------------------------------------------------------------------------


def _occlude(model: nn.Module, inputs: torch.Tensor, row: Row, mode: Mode) -> nl.OcclusionMap:
    return nl.occlusion(model, inputs, window=row.window, stride=row.stride, incremental=mode)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def run_row(row: Row, repeat: int, threads: int, memory: bool) -> dict[str, Any]:
    model = make_model(row.model)
    inputs = make_inputs(row)
    found: dict[str, Any] = {**vars(row), "positions": row.positions, "refused": None}

    # Untimed warm-ups, one per path: oneDNN's kernels for these shapes, auto's choice, whether
    # incremental inference runs at all, and how far its results are from the plain path's.
    warm = {"plain": _occlude(model, inputs, row, False)}
    try:
        warm["inc"] = _occlude(model, inputs, row, True)
    except Exception as error:  # a refusal is a NetlensValueError; anything else is a finding too
        found["refused"] = f"{type(error).__name__}: {error}"
    warm["auto"] = _occlude(model, inputs, row, "auto")
    if "inc" in warm:
        found["max_probability_difference"] = float(
            (warm["inc"].probability - warm["plain"].probability).abs().max()
        )

    calls: dict[str, list[dict[str, Any]]] = {path: [] for path in warm}
    auto_choices: list[bool] = []

    def method(path: str) -> Callable[[], None]:
        def call() -> None:
            PROBE.reset()
            result = _occlude(model, inputs, row, PATHS[path])
            calls[path].append(PROBE.snapshot())
            if path == "auto":
                auto_choices.append(result.incremental)

        return call

    times = time_interleaved({path: method(path) for path in warm}, repeat)
    for path in PATHS:
        values = times.get(path, [])
        found[f"{path}_times"] = values
        found[f"{path}_median"] = _median(values)
        found[f"{path}_min"] = min(values) if values else None
    found["inc_over_plain"] = _ratio(found["inc_median"], found["plain_median"])
    found["auto_over_plain"] = _ratio(found["auto_median"], found["plain_median"])
    found["auto_chose_incremental"] = warm["auto"].incremental
    found["auto_choices"] = auto_choices
    inc_calls = calls.get("inc", [])
    found["plan_seconds"] = _median([call["plan"] for call in inc_calls])
    found["trace_build_seconds"] = _median([call["trace"] + call["build"] for call in inc_calls])
    found["plan_share"] = _ratio(found["plan_seconds"], found["inc_median"])
    shares = [call["mac_share"] for call in inc_calls if call["mac_share"] is not None]
    found["mac_share"] = shares[-1] if shares else None
    found["memory_plain_mib"] = found["memory_inc_mib"] = None
    if memory:
        for path in ("plain", "inc"):
            found[f"memory_{path}_mib"] = memory_growth(row, path, threads)
    return found


def print_progress(found: dict[str, Any]) -> None:
    parts = []
    for path in PATHS:
        median, least = found[f"{path}_median"], found[f"{path}_min"]
        text = "refused" if median is None else f"{median:.3f} s (min {least:.3f})"
        parts.append(f"{path} {text}")
    line = f"{Row(*(found[k] for k in ('model', 'px', 'window', 'stride'))).label}: "
    line += (
        ", ".join(parts) + f"; auto chose {'inc' if found['auto_chose_incremental'] else 'plain'}"
    )
    if "max_probability_difference" in found:
        line += f"; max |inc - plain| probability {found['max_probability_difference']:.1e}"
    if len(set(found["auto_choices"])) > 1 or found["auto_choices"][:1] not in (
        [],
        [found["auto_chose_incremental"]],
    ):
        line += f"; auto's choice varied between calls: {found['auto_choices']}"
    if found["refused"]:
        line += f"\n    incremental=True refused: {found['refused']}"
    print(line, flush=True)


# -- peak memory, in fresh processes -------------------------------------------------------------


def memory_child(row: Row, path: str, threads: int) -> None:
    """Run in a fresh process: the growth of the peak resident memory during one call."""
    torch.set_num_threads(threads)
    model = make_model(row.model)
    inputs = make_inputs(row)
    mode = PATHS[path]
    # Warm-up: one plain forward pass of the input, the same for every path (libraries loaded,
    # oneDNN initialised). Not a call of the path itself: glibc keeps what a call freed, so a
    # second call of the same path would reuse it and show almost no growth, whatever it needs.
    with torch.no_grad():
        model(inputs)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _memory_kib("VmRSS")
    try:
        _occlude(model, inputs, row, mode)
    except nl.NetlensValueError as error:
        print(json.dumps({"refused": str(error)}))
        return
    peak = _memory_kib("VmHWM")
    # ru_maxrss is in KiB on Linux; printed for comparison only (see the module docstring).
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "growth_mib": (peak - before) / 1024,
                "ru_maxrss_growth_mib": (maxrss - before) / 1024,
                "rss_before_mib": before / 1024,
            }
        )
    )


def memory_growth(row: Row, path: str, threads: int) -> float | str:
    """Peak memory growth of one call in a fresh process: MiB, or why there is no number."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--memory-child",
            row.model,
            str(row.px),
            str(row.window),
            str(row.stride),
            path,
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1:] or [f"exit status {out.returncode}"]
        return f"failed: {tail[0]}"
    found = json.loads(out.stdout.strip().splitlines()[-1])
    if "refused" in found:
        return "refused"
    return float(found["growth_mib"])


# -- summary -------------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "refused" if value is None else f"{value:.3f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mib(value: float | str | None) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else f"{value:.0f}"


def print_table(header: list[str], lines: list[list[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines, strict=True)]
    for cells in (header, ["-" * width for width in widths], *lines):
        # The model's name to the left, numbers to the right.
        padded = [cells[0].ljust(widths[0])]
        padded += [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        print("| " + " | ".join(padded) + " |")


def summary(results: list[dict[str, Any]]) -> None:
    print("\nMedians (ratios are median/median):")
    header = [
        "model", "px", "window", "stride", "positions", "plain s", "inc s", "auto s",
        "inc/plain", "auto/plain", "auto chose", "plan share", "trace+build s", "MAC share",
        "mem plain MiB", "mem inc MiB",
    ]  # fmt: skip
    lines = [
        [
            found["model"],
            str(found["px"]),
            str(found["window"]),
            str(found["stride"]),
            str(found["positions"]),
            _seconds(found["plain_median"]),
            _seconds(found["inc_median"]),
            _seconds(found["auto_median"]),
            _times(found["inc_over_plain"]),
            _times(found["auto_over_plain"]),
            "inc" if found["auto_chose_incremental"] else "plain",
            _share(found["plan_share"]),
            "-" if found["trace_build_seconds"] is None else f"{found['trace_build_seconds']:.3f}",
            _share(found["mac_share"]),
            _mib(found["memory_plain_mib"]),
            _mib(found["memory_inc_mib"]),
        ]
        for found in results
    ]
    print_table(header, lines)
    print("\nMinima over the rounds:")
    lines = [
        [
            found["model"],
            str(found["px"]),
            str(found["window"]),
            str(found["stride"]),
            _seconds(found["plain_min"]),
            _seconds(found["inc_min"]),
            _seconds(found["auto_min"]),
            _times(_ratio(found["inc_min"], found["plain_min"])),
            _times(_ratio(found["auto_min"], found["plain_min"])),
        ]
        for found in results
    ]
    print_table(
        [
            "model",
            "px",
            "window",
            "stride",
            "plain s",
            "inc s",
            "auto s",
            "inc/plain",
            "auto/plain",
        ],
        lines,
    )


def violations(results: list[dict[str, Any]], memory: bool) -> list[str]:
    missed = []
    for found in results:
        row = Row(found["model"], found["px"], found["window"], found["stride"])
        auto = found["auto_over_plain"]
        if auto is not None and auto > AUTO_GOAL:
            missed.append(f"{row.label}: auto/plain {auto:.2f} > {AUTO_GOAL:.2f}")
        if found["refused"]:
            missed.append(f"{row.label}: incremental=True refused ({found['refused']})")
            continue
        share = found["plan_share"]
        if share is not None and share > PLAN_GOAL:
            missed.append(f"{row.label}: plan share {share:.1%} > {PLAN_GOAL:.0%}")
        plain_mib, inc_mib = found["memory_plain_mib"], found["memory_inc_mib"]
        if memory and not (isinstance(plain_mib, float) and isinstance(inc_mib, float)):
            missed.append(f"{row.label}: memory not measured (plain {plain_mib}, inc {inc_mib})")
        elif memory and inc_mib > plain_mib:
            missed.append(f"{row.label}: mem inc {inc_mib:.0f} MiB > mem plain {plain_mib:.0f} MiB")
        goal = INC_GOALS.get(row)
        inc = found["inc_over_plain"]
        if goal is not None and inc is not None and inc > goal:
            missed.append(f"{row.label}: inc/plain {inc:.2f} > {goal:.2f}")
    return missed


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two tiny rows, one round")
    parser.add_argument("--repeat", type=int, default=None, help="rounds (default 3; quick 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default=None, help="comma-separated model names to run")
    parser.add_argument("--memory", action="store_true", help="measure memory under --quick")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--memory-child", nargs=5, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        name, px, window, stride, path = args.memory_child
        memory_child(Row(name, int(px), int(window), int(stride)), path, args.threads)
        return

    rows = QUICK_ROWS if args.quick else ROWS
    if args.only:
        names = {name.strip() for name in args.only.split(",") if name.strip()}
        known = {row.model for row in rows}
        if names - known:
            parser.error(
                f"unknown model(s) {sorted(names - known)} for this run; expected some of "
                f"{sorted(known)}"
            )
        rows = [row for row in rows if row.model in names]
    repeat = args.repeat or (1 if args.quick else 3)
    memory = not args.no_memory and (args.memory or not args.quick)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, netlens "
        f"{nl.__version__}, Python {platform.python_version()}, {platform.platform()}, "
        f"{platform.machine()}, {torch.get_num_threads()} thread(s), {repeat} round(s), "
        f"memory {'on' if memory else 'off'}",
        flush=True,
    )
    results = []
    with probes() as missing:
        if missing:
            print(f"not found, so not timed: {', '.join(missing)}", flush=True)
        for row in rows:
            found = run_row(row, repeat, args.threads, memory)
            print_progress(found)
            results.append(found)
    summary(results)
    missed = violations(results, memory)
    print("\nGoals:" + ("" if memory else " (memory not measured: its goal is not checked)"))
    for line in missed or ["all goals met"]:
        print(f"  {line}")
    absent = [row.label for row in INC_GOALS if row not in rows]
    if absent:
        print(f"  (rows with inc/plain goals not in this run: {', '.join(absent)})")
    if args.json is not None:
        header = {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "repeat": repeat,
        }
        document = {"header": header, "rows": results, "goals_missed": missed}
        args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
