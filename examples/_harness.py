"""The training loop, checkpoints and command-line plumbing shared by the example experiments.

Not part of the netlens library: the examples need a small, exact, resumable trainer, and this
is it. Data are whole tensors in memory (CIFAR-10 at 28x28 grey and MNIST are small), batched by
indexing, which is several times faster on CPU than a DataLoader of single items.

Exact resume: every random choice of epoch ``e`` (shuffling, augmentation, dropout) is drawn
from generators seeded by ``(seed, e)``, so a run stopped after epoch ``k`` (or killed at any
point) and resumed from its checkpoint ends with the same numbers as an uninterrupted run on the
same machine. A checkpoint records everything that changes what an epoch means (the training
config, the script's setup such as ``--quick`` and the recipe, and the data: sizes and a digest
of the labels); ``--resume`` refuses a checkpoint that differs in any of them, or that is
damaged, with one line and exit code 2; a run without ``--resume`` refuses to start over a
checkpoint in ``--out`` unless ``--overwrite`` says to replace it. Ctrl-C ends the progress bar's
line and hands the epochs done to the script, which writes their history and curves; after each
epoch a line estimates the time left. Every file is written through a hidden partial file that
is synced to disk before it is renamed into place, with the mode a plain ``open()`` gives; the
partial files of a killed run are removed by the next one.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netlens.datasets import _atomic_file, _create_partial, _remove_stale_partials

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class ExampleError(Exception):
    """A problem the user can fix (bad argument, missing data): shown as one line, exit code 2."""


# The extras of a netlens checkout ("examples": tqdm and tensorboard) are not on PyPI yet: name
# the package itself, and the extra for those who installed from a checkout.
TENSORBOARD_MISSING = (
    "--tensorboard needs the tensorboard package: pip install tensorboard (in a checkout of "
    'netlens, pip install -e ".[examples]" installs it with tqdm)'
)


@dataclass
class TrainConfig:
    """How one model is trained. Every field is recorded in the checkpoint and the report."""

    epochs: int = 10
    lr: float = 0.003
    batch_size: int = 128
    seed: int = 0
    warmup_epochs: float = 0.0
    schedule: str = "constant"  # "constant" after warm-up, "cosine" or "onecycle"
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    clip_grad_norm: float | None = None

    def validate(self) -> None:
        if self.epochs < 1:
            raise ExampleError(f"--epochs must be at least 1, got {self.epochs}")
        if not self.lr > 0:
            raise ExampleError(f"--lr must be positive, got {self.lr}")
        if self.batch_size < 1:
            raise ExampleError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.schedule not in ("constant", "cosine", "onecycle"):
            raise ExampleError(f"unknown schedule {self.schedule!r}")


@dataclass
class History:
    """Per-epoch numbers of one training run."""

    rows: list[dict[str, float]] = field(default_factory=list)

    def column(self, name: str) -> list[float]:
        return [row[name] for row in self.rows]

    @property
    def final_test_accuracy(self) -> float:
        return self.rows[-1]["test_accuracy"]

    @property
    def best_epoch(self) -> int:
        best = max(self.rows, key=lambda row: row["test_accuracy"])
        return int(best["epoch"])

    def epochs_to_reach(self, accuracy: float) -> int | None:
        for row in self.rows:
            if row["test_accuracy"] >= accuracy:
                return int(row["epoch"])
        return None


# -- files -------------------------------------------------------------------------------------


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a hidden partial file in the same folder, sync it to disk, then rename it.

    Never a half-written or (after a power cut) empty file under ``path``; the file gets the
    mode any plain write gets (0666 less the umask).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_file(path) as file:
        file.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_figure(figure: Any, path: Path) -> None:
    """Save a matplotlib Figure atomically as PNG."""
    buffer = io.BytesIO()
    # 100 dpi: a 9-inch figure is 900 px, the docs' text column, so it shows unscaled
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def write_history(history: History, folder: Path, stem: str = "history") -> None:
    atomic_write_text(folder / f"{stem}.json", json.dumps(history.rows, indent=2) + "\n")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(history.rows[0]))
    writer.writeheader()
    writer.writerows(history.rows)
    atomic_write_text(folder / f"{stem}.csv", text.getvalue())


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def check_writable(folder: Path, what: str) -> None:
    """Create and delete a file in ``folder``: the one sure test that outputs can go there."""
    try:
        probe, path = _create_partial(folder / "write-test")
    except OSError as error:
        raise ExampleError(
            f"cannot write into {what} {folder}: {error.strerror or error}; give a writable folder"
        ) from None
    probe.close()
    path.unlink(missing_ok=True)


def prepare_out_dir(
    path: Path, subfolders: Sequence[str] = (), tensorboard: str | None = None
) -> Path:
    """Create ``path`` and its ``subfolders``, check that each is writable, remove stale parts.

    Called before training, so that a read-only output folder is reported before the first
    epoch; the partial files that a killed run left behind (a checkpoint being written, a figure)
    are removed.
    """
    if path.exists() and not path.is_dir():
        raise ExampleError(f"--out {path} is a file; give a folder (it is created if missing)")
    folders = [("--out folder", path)]
    folders += [("output folder", path / name) for name in subfolders]
    if tensorboard is not None:
        folders.append(("--tensorboard folder", Path(tensorboard)))
    for what, folder in folders:
        if folder.exists() and not folder.is_dir():
            raise ExampleError(f"{what} {folder} is a file; move it away or choose another --out")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ExampleError(f"cannot create {what} {folder}: {error.strerror}") from None
        check_writable(folder, what)
        _remove_stale_partials(folder)
    return path


# -- training ----------------------------------------------------------------------------------


def _lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    if config.schedule == "onecycle":
        # Linear rise to the peak over the warm-up (30% of training when none is given), then
        # cosine decay to zero: the one-cycle policy of Smith & Topin (2017).
        warmup = warmup or 0.3 * total
        if step < warmup:
            return 0.04 + 0.96 * step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1.0, total - warmup)))
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1.0, total - warmup)))
    return 1.0


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream)


def evaluate(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, device: str
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on a whole data set."""
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(inputs), max(batch_size, 512)):
            x = inputs[start : start + max(batch_size, 512)].to(device)
            y = targets[start : start + max(batch_size, 512)].to(device)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    return loss_sum / len(inputs), correct / len(inputs)


@contextmanager
def _tensorboard(log_dir: str | None) -> Iterator[Any]:
    if log_dir is None:
        yield None
        return
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ExampleError(TENSORBOARD_MISSING) from None
    writer = SummaryWriter(log_dir)
    try:
        yield writer
    finally:
        writer.close()


def _bar(total: int, description: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=description, leave=False, unit="batch")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`, with the epochs finished before it (all checkpointed).

    A ``KeyboardInterrupt``, so that whatever does not know it still stops; the scripts catch
    it to write the history and the figures of the finished epochs before they stop.
    """

    def __init__(self, name: str, history: History) -> None:
        super().__init__(name)
        self.name = name
        self.history = history


def duration(seconds: float) -> str:
    """``0.4 s``, ``45 s``, ``7 min``, ``1 h 20 min``: a rounded time for estimates."""
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{round(seconds)} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def estimate_line(
    epoch: int,
    epochs: int,
    seconds: Sequence[float],
    later: float = 0.0,
    *,
    last: int | None = None,
    now: float | None = None,
) -> str:
    """What is left after ``epoch`` of ``epochs``, from the times of this invocation's epochs.

    Training goes on to epoch ``last`` (``epochs`` by default; less with ``--stop-after``).
    ``later`` is the work after this training (the lenses, further models), counted in epochs
    of this training; with it the line also gives the time left for the whole run and the
    clock time (``now``: seconds since the epoch, the present by default) at which it ends.
    """
    last = epochs if last is None else last
    mean = sum(seconds) / len(seconds)
    parts = [f"epoch {epoch}/{epochs} took {duration(seconds[-1])}"]
    training = (last - epoch) * mean
    if epoch < last:
        parts.append(f"about {duration(training)} to go for training")
    if later > 0:
        whole = training + later * mean
        finish = time.strftime("%H:%M", time.localtime((now or time.time()) + whole))
        parts.append(f"about {duration(whole)} to go in all (done at about {finish})")
    return "; ".join(parts)


def train(
    name: str,
    model: nn.Module,
    train_set: tuple[torch.Tensor, torch.Tensor],
    test_set: tuple[torch.Tensor, torch.Tensor],
    config: TrainConfig,
    checkpoint: Path,
    *,
    device: str = "cpu",
    augment: Augment | None = None,
    resume: bool = False,
    progress: bool = True,
    tensorboard: str | None = None,
    stop_after: int | None = None,
    setup: Mapping[str, Any] | None = None,
    later: float = 0.0,
    log: Callable[[str], None] = print,
) -> History:
    """Train ``model`` with Adam and cross-entropy; write an atomic checkpoint every epoch.

    ``resume`` continues from ``checkpoint``, which must come from the same model, config,
    ``setup`` (what the script sets beyond the config: ``--quick``, the recipe ...) and data;
    ``stop_after`` ends the run after that many epochs (to test resuming). After each epoch a
    line estimates the time left (:func:`estimate_line`; ``later`` is the work that follows,
    in epochs of this training). Ctrl-C raises :class:`TrainingInterrupted` with the finished
    epochs, after the progress bar is closed, so that what follows starts on a line of its own.
    """
    config.validate()
    inputs, targets = train_set
    data = describe_data(train_set, test_set)
    setup = dict(setup or {})
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(inputs) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, steps_per_epoch, config)
    )
    history = History()
    start_epoch = 1
    if resume and checkpoint.exists():
        state = load_checkpoint(checkpoint, name, config, setup, data)
        restore(checkpoint, state, model, optimizer, scheduler, steps_per_epoch)
        history = History(state["history"])
        start_epoch = len(history.rows) + 1
        log(f"{name}: resumed from {checkpoint} after epoch {start_epoch - 1}")
    last_epoch = config.epochs if stop_after is None else min(stop_after, config.epochs)
    seconds: list[float] = []  # of this invocation's epochs: a resumed run may be elsewhere
    saved = len(history.rows)  # the epochs in the checkpoint on disk
    bar = None
    try:
        with _tensorboard(tensorboard and str(Path(tensorboard) / name)) as writer:
            for epoch in range(start_epoch, last_epoch + 1):
                started = time.perf_counter()
                model.train()
                torch.manual_seed(config.seed * 7919 + epoch)  # dropout and other in-model noise
                order = torch.randperm(len(inputs), generator=_generator(config.seed, epoch, 0))
                augment_rng = _generator(config.seed, epoch, 1)
                loss_sum, correct, seen = 0.0, 0, 0
                bar = _bar(steps_per_epoch, f"{name} epoch {epoch}/{config.epochs}", progress)
                for start in range(0, len(inputs), config.batch_size):
                    index = order[start : start + config.batch_size]
                    x, y = inputs[index], targets[index]
                    if augment is not None:
                        x = augment(x, augment_rng)
                    x, y = x.to(device), y.to(device)
                    logits = model(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if config.clip_grad_norm is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    loss_value = loss.item()
                    if not math.isfinite(loss_value):
                        raise ExampleError(
                            f"{name}: the training loss became {loss_value} in epoch {epoch}; "
                            "lower --lr"
                        )
                    loss_sum += loss_value * len(y)
                    correct += int((logits.argmax(1) == y).sum())
                    seen += len(y)
                    if bar is not None:
                        bar.update(1)
                if bar is not None:
                    bar.close()
                    bar = None
                test_loss, test_accuracy = evaluate(model, *test_set, config.batch_size, device)
                row = {
                    "epoch": epoch,
                    "train_loss": loss_sum / seen,
                    "train_accuracy": correct / seen,
                    "test_loss": test_loss,
                    "test_accuracy": test_accuracy,
                    "lr": optimizer.param_groups[0]["lr"],
                    "seconds": time.perf_counter() - started,
                }
                history.rows.append(row)
                seconds.append(row["seconds"])
                log(
                    f"{name} epoch {epoch:>2}/{config.epochs}: train loss "
                    f"{row['train_loss']:.4f} acc {row['train_accuracy']:.2%} | test loss "
                    f"{test_loss:.4f} acc {test_accuracy:.2%} | {row['seconds']:.1f} s"
                )
                if writer is not None:
                    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"):
                        writer.add_scalar(key, row[key], epoch)
                save_checkpoint(
                    checkpoint, name, config, model, optimizer, scheduler, history, setup, data
                )
                saved = len(history.rows)
                if epoch < last_epoch or later > 0:
                    line = estimate_line(epoch, config.epochs, seconds, later, last=last_epoch)
                    log("  " + line)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()  # clears the bar's line (and the ^C on it)
        elif sys.stdout.isatty():
            print()  # the terminal echoed ^C after the last line
        # only the checkpointed epochs: an epoch cut short in its checkpoint is not done
        raise TrainingInterrupted(name, History(history.rows[:saved])) from None
    model.eval()
    return history


def describe_data(
    train_set: tuple[torch.Tensor, torch.Tensor], test_set: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, Any]:
    """What identifies a run's data: sizes, image shape and a digest of the labels in order.

    Another subset (``--quick``, ``--train-subset``), split or data set changes the labels or
    their order; the digest of the labels is cheap and exact across machines, where one of the
    float images would not be.
    """

    def digest(labels: torch.Tensor) -> str:
        as_bytes = labels.detach().cpu().to(torch.int64).contiguous().numpy().tobytes()
        return hashlib.sha256(as_bytes).hexdigest()[:16]

    return {
        "train_size": len(train_set[1]),
        "test_size": len(test_set[1]),
        "image_shape": list(train_set[0].shape[1:]),
        "train_labels": digest(train_set[1]),
        "test_labels": digest(test_set[1]),
    }


def save_checkpoint(
    path: Path,
    name: str,
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    history: History,
    setup: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
) -> None:
    buffer = io.BytesIO()
    torch.save(
        {
            "name": name,
            "config": asdict(config),
            "setup": dict(setup or {}),
            "data": dict(data or {}),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": history.rows,
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


def refuse_to_replace(checkpoint: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start afresh over an earlier run's ``checkpoint`` unless told what to do.

    A rerun into the same ``--out`` would replace it after its first epoch: an interrupted
    run's hours would be lost to a command typed without ``--resume``.
    """
    if resume or overwrite or not checkpoint.exists():
        return
    raise ExampleError(
        f"{checkpoint} holds {_describe_checkpoint(checkpoint)}; rerun with --resume to continue "
        "from it, or with --overwrite to start afresh and replace it"
    )


def _describe_checkpoint(path: Path) -> str:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        name, done, planned = state["name"], len(state["history"]), int(state["config"]["epochs"])
    except Exception:  # damaged, or not ours: still not ours to replace silently
        return "a file that is not a readable checkpoint of these examples"
    finished = "finished" if done >= planned else "interrupted"
    return (
        f"the checkpoint of another run ({name}, {done} of {planned} "
        f"epoch{'s' if planned != 1 else ''} done: {finished})"
    )


def one_line(error: BaseException, limit: int | None = None) -> str:
    """An error message on one line (cut to ``limit`` characters: torch's can be long)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


# The way out of a checkpoint that cannot be resumed.
AFRESH = "start afresh with --overwrite instead of --resume"

_CHECKPOINT_FIELDS = {
    "name": str,
    "config": dict,
    "setup": dict,
    "data": dict,
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "history": list,
}


def _read_checkpoint(path: Path) -> Any:
    drop = f"delete it, or {AFRESH}"
    try:
        size = path.stat().st_size
        if size == 0:
            raise ExampleError(
                f"checkpoint {path} is empty (0 bytes): a run was killed while writing it; {drop}"
            )
        return torch.load(path, map_location="cpu", weights_only=True)
    except ExampleError:
        raise
    except PermissionError as error:
        raise ExampleError(
            f"cannot read checkpoint {path}: permission denied ({error.strerror})"
        ) from None
    except Exception as error:  # torch raises many kinds for a damaged file
        raise ExampleError(
            f"cannot read checkpoint {path} ({type(error).__name__}: {one_line(error, 200)}): "
            f"it is damaged or not a checkpoint; {drop}"
        ) from None


def load_checkpoint(
    path: Path,
    name: str,
    config: TrainConfig | None = None,
    setup: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`train`, refusing one that is damaged or of another run.

    With ``config``, every field but ``epochs`` must match, and so must ``setup`` (and ``data``
    when given, as :func:`train` does). ``epochs`` may differ only for the ``constant`` schedule,
    and only upwards: there the learning rate of a step does not depend on the length of the run,
    so the longer run continues exactly as an uninterrupted run of that length would. Cosine and
    one-cycle schedules are laid out over the whole run, so another length would be another run.
    """
    state = _read_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state or "name" not in state:
        raise ExampleError(f"{path} is not a checkpoint of these examples")
    if state["name"] != name:
        raise ExampleError(
            f"checkpoint {path} is of model {state['name']!r}, expected {name!r}; {AFRESH}, "
            "or use the same settings"
        )
    problems = [
        key for key, kind in _CHECKPOINT_FIELDS.items() if not isinstance(state.get(key), kind)
    ]
    history = state.get("history")
    if isinstance(history, list) and [
        row.get("epoch") if isinstance(row, dict) else None for row in history
    ] != list(range(1, len(history) + 1)):
        problems.append("history")
    if problems:
        old = "setup" in problems and "setup" not in state
        why = "written by an older version of the examples" if old else "damaged"
        raise ExampleError(
            f"checkpoint {path} lacks or has broken {', '.join(problems)} ({why}); delete it, or "
            f"{AFRESH}"
        )
    if config is not None:
        _check_same_run(path, state, config, dict(setup or {}), data)
    return state


def _check_same_run(
    path: Path,
    state: dict[str, Any],
    config: TrainConfig,
    setup: dict[str, Any],
    data: Mapping[str, Any] | None,
) -> None:
    saved = {**state["config"], **state["setup"]}
    wanted = {**asdict(config), **setup}
    changed = sorted(
        key
        for key in set(saved) | set(wanted)
        if key != "epochs" and saved.get(key) != wanted.get(key)
    )
    if changed:
        there = ", ".join(f"{key} {saved.get(key)}" for key in changed)
        now = ", ".join(f"{key} {wanted.get(key)}" for key in changed)
        raise ExampleError(
            f"checkpoint {path} was trained with other settings ({', '.join(changed)}): there "
            f"{there}, now {now}; {AFRESH}, or use the same settings"
        )
    if data is not None and state["data"] != dict(data):
        keys = sorted(
            k for k in set(data) | set(state["data"]) if state["data"].get(k) != data.get(k)
        )
        raise ExampleError(
            f"checkpoint {path} was trained on other data ({', '.join(keys)} differ: "
            f"{state['data'].get('train_size')} training images there, {data.get('train_size')} "
            f"now); {AFRESH}, or use the same --data-dir and subset"
        )
    done, before = len(state["history"]), state["config"]["epochs"]
    if config.epochs != before and config.schedule != "constant":
        raise ExampleError(
            f"checkpoint {path} is of a {before}-epoch run whose {config.schedule} schedule is "
            f"laid out over all its epochs; --epochs {config.epochs} would make another run. "
            f"Resume with --epochs {before}, or {AFRESH}"
        )
    if config.epochs < done:
        raise ExampleError(
            f"checkpoint {path} already holds {done} epochs, more than --epochs {config.epochs}; "
            f"{AFRESH}, or give at least that many epochs"
        )


def restore(
    path: Path,
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    steps_per_epoch: int,
) -> None:
    """Load the states of a checkpoint into ``model``, ``optimizer`` and ``scheduler``, checked.

    A tensor of the wrong shape, a missing key or a schedule that is not where the history says
    (``epochs x steps_per_epoch`` steps) is refused with one line.
    """
    broken = f"checkpoint {path} does not fit this model and run"
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as error:
        raise ExampleError(
            f"{broken} ({type(error).__name__}: {one_line(error, 300)}); it is damaged or of "
            f"another version: delete it, or {AFRESH}"
        ) from None
    # Adam's load_state_dict takes moments of any shape; the first step would then fail.
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for key, value in optimizer.state.get(parameter, {}).items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.dim()
                    and value.shape != parameter.shape
                ):
                    raise ExampleError(
                        f"{broken}: the optimizer's {key} has shape {tuple(value.shape)} for a "
                        f"parameter of shape {tuple(parameter.shape)}; delete it, or "
                        f"{AFRESH}"
                    )
    steps = len(state["history"]) * steps_per_epoch
    if scheduler.last_epoch != steps:
        raise ExampleError(
            f"{broken}: its schedule is at step {scheduler.last_epoch}, but "
            f"{len(state['history'])} epochs of {steps_per_epoch} steps make {steps}; delete it, "
            f"or {AFRESH}"
        )


class Steps:
    """The numbered steps after training, each logged as it starts and ends with its time.

    ``lens 3/7: occlusion ...`` and then ``lens 3/7: occlusion: 12.3 s``: the long part of a run
    after its last epoch shows how far it is (the techniques add their own bars inside a step).
    """

    def __init__(self, total: int, log: Callable[[str], None], what: str = "lens") -> None:
        self.total = total
        self.log = log
        self.what = what
        self.started = 0
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        self.started += 1
        prefix = f"{self.what} {self.started}/{self.total}: {label}"
        self.log(f"{prefix} ...")
        started = time.perf_counter()
        yield
        self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started
        self.log(f"{prefix}: {self.seconds[label]:.1f} s")


# -- figures -----------------------------------------------------------------------------------


def integer_epochs(axes: Any) -> None:
    """Whole epochs on the x axis: one epoch alone would get ticks 0.96 ... 1.04."""
    from matplotlib.ticker import MaxNLocator

    # min_n_ticks=1: by default integer ticks need two integers in view, and one epoch has one
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def plot_curves(histories: dict[str, History], title: str = "") -> Any:
    """Train/test accuracy and loss per epoch, one colour per model."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4))
    accuracy_axes, loss_axes = figure.subplots(1, 2)
    for index, (name, history) in enumerate(histories.items()):
        colour = f"C{index}"
        epochs = history.column("epoch")
        accuracy_axes.plot(epochs, history.column("train_accuracy"), "--", color=colour)
        accuracy_axes.plot(epochs, history.column("test_accuracy"), "-o", color=colour, label=name)
        loss_axes.plot(epochs, history.column("train_loss"), "--", color=colour)
        loss_axes.plot(epochs, history.column("test_loss"), "-o", color=colour, label=name)
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy", title="accuracy (dashed: train)")
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy", title="loss (dashed: train)")
    for axes in (accuracy_axes, loss_axes):
        integer_epochs(axes)
        axes.grid(alpha=0.3)
        axes.legend()
    if title:
        figure.suptitle(title)
    return figure


# -- command line ------------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every default, except where the help text already says what it is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or any(
            action.default is off for off in (None, False, argparse.SUPPRESS)
        ):
            return text
        return text + " (default: %(default)s)"


def common_arguments(parser: argparse.ArgumentParser, *, epochs: int, lr: float) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help="folder that holds the data; when the data is missing it is downloaded there, if "
        "the folder is new, empty or holds part of the data set",
    )
    parser.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="download the data into --data-dir when it is missing there",
    )
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for all outputs")
    parser.add_argument("--epochs", type=int, default=epochs, help="epochs to train")
    parser.add_argument("--lr", type=float, default=lr, help="peak learning rate of Adam")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the weights and the data order"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    earlier = parser.add_mutually_exclusive_group()
    earlier.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoints in --out (refused if they are of other settings)",
    )
    earlier.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh even if --out holds the checkpoint of an earlier run, and replace it "
        "(without --resume or --overwrite such a checkpoint is refused)",
    )
    parser.add_argument("--quick", action="store_true", help="small subset, one epoch")
    parser.add_argument(
        "--tensorboard", metavar="DIR", help="also log to TensorBoard in DIR (default: no logging)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_device(device: str) -> str:
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ExampleError(f"unknown --device {device!r}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ExampleError(f"--device {device} asked for, but CUDA is not available here")
    return device


def check_out_and_tensorboard(out: Path, tensorboard: str | None) -> None:
    """Refuse an unwritable ``--out`` or ``--tensorboard``, or the latter without its package.

    Checked before the data is read, and without creating anything.
    """
    if out.exists() and not out.is_dir():
        raise ExampleError(f"--out {out} is a file; give a folder (it is created if missing)")
    _check_can_write(out, "--out folder")
    if tensorboard is not None:
        try:
            importlib.import_module("torch.utils.tensorboard")
        except ImportError:
            raise ExampleError(TENSORBOARD_MISSING) from None
        _check_can_write(Path(tensorboard), "--tensorboard folder")


def _check_can_write(folder: Path, what: str) -> None:
    if folder.is_dir():
        check_writable(folder, what)
        return
    if folder.exists():
        raise ExampleError(f"{what} {folder} is a file; give a folder")
    parent = next((p for p in folder.parents if p.exists()), None)
    if parent is not None and not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
        raise ExampleError(f"cannot create {what} {folder}: {parent} is not a writable folder")


@contextmanager
def removing_created_folders(folder: Path) -> Iterator[None]:
    """Remove the folders on the way to ``folder`` that the block created, if it fails.

    Only folders that did not exist before and are empty again are removed, innermost first: a
    failed download leaves the file system as it was.
    """
    missing = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        yield
    except BaseException:
        for path in missing:
            with suppress(OSError):
                path.rmdir()
        raise


def check_download_target(folder: Path, known: Sequence[str], what: str) -> None:
    """Refuse to download ``what`` into a folder that holds other files and nothing of it.

    A mistyped ``--data-dir`` (a home folder, a project) must not receive a large download
    silently; a new or empty folder, or one holding part of the data set, is fine.
    """
    if not folder.is_dir():
        return
    # hidden entries (.DS_Store, .gitkeep, a killed download's partial file) do not count
    entries = sorted(entry.name for entry in folder.iterdir() if not entry.name.startswith("."))
    if entries and not set(entries) & set(known):
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ExampleError(
            f"{what} is not in --data-dir {folder}, which holds other files ({shown}); refused "
            f"to download {what} into it. Give the folder that holds {what}, or a new or empty "
            "one to download it into"
        )


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> None:
    """Run ``main`` and turn user errors into one line on stderr and exit code 2."""
    from netlens import NetlensError

    try:
        code = main(argv)
    except (ExampleError, NetlensError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # a full disk, a folder without write permission ...
        where = f" ({error.filename})" if error.filename else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as interrupt:
        if not isinstance(interrupt, TrainingInterrupted) and sys.stderr.isatty():
            print(file=sys.stderr)  # the terminal echoed ^C where the cursor was
        print("interrupted; rerun with --resume to continue from the last epoch", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)
