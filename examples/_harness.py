"""The training loop, checkpoints and command-line plumbing shared by the example experiments.

Not part of the netlens library: the examples need a small, exact, resumable trainer, and this
is it. Data are whole tensors in memory (CIFAR-10 at 28x28 grey and MNIST are small), batched by
indexing, which is several times faster on CPU than a DataLoader of single items.

Exact resume: every random choice of epoch ``e`` (shuffling, augmentation, dropout) is drawn
from generators seeded by ``(seed, e)``, so a run stopped after epoch ``k`` and resumed from its
checkpoint ends with the same numbers as an uninterrupted run on the same machine.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class ExampleError(Exception):
    """A problem the user can fix (bad argument, missing data): shown as one line, exit code 2."""


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
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_figure(figure: Any, path: Path) -> None:
    """Save a matplotlib Figure atomically as PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
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


def prepare_out_dir(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise ExampleError(f"--out {path} is a file; give a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExampleError(f"cannot create --out folder {path}: {error.strerror}") from None
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
        raise ExampleError(
            "--tensorboard needs the tensorboard package: pip install 'netlens[examples]'"
        ) from None
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
    log: Callable[[str], None] = print,
) -> History:
    """Train ``model`` with Adam and cross-entropy; write an atomic checkpoint every epoch.

    ``resume`` continues from ``checkpoint`` (which must come from the same model and config);
    ``stop_after`` ends the run after that many epochs (to test resuming).
    """
    config.validate()
    inputs, targets = train_set
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(inputs) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, steps_per_epoch, config)
    )
    history = History()
    start_epoch = 1
    if resume and checkpoint.exists():
        state = load_checkpoint(checkpoint, name, config)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = History(state["history"])
        start_epoch = len(history.rows) + 1
        log(f"{name}: resumed from {checkpoint} after epoch {start_epoch - 1}")
    with _tensorboard(tensorboard and str(Path(tensorboard) / name)) as writer:
        for epoch in range(start_epoch, config.epochs + 1):
            if stop_after is not None and epoch > stop_after:
                break
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
            log(
                f"{name} epoch {epoch:>2}/{config.epochs}: train loss {row['train_loss']:.4f} "
                f"acc {row['train_accuracy']:.2%} | test loss {test_loss:.4f} "
                f"acc {test_accuracy:.2%} | {row['seconds']:.1f} s"
            )
            if writer is not None:
                for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"):
                    writer.add_scalar(key, row[key], epoch)
            save_checkpoint(checkpoint, name, config, model, optimizer, scheduler, history)
    model.eval()
    return history


def save_checkpoint(
    path: Path,
    name: str,
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    history: History,
) -> None:
    buffer = io.BytesIO()
    torch.save(
        {
            "name": name,
            "config": asdict(config),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": history.rows,
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, name: str, config: TrainConfig | None = None) -> dict[str, Any]:
    """Load a checkpoint written by :func:`train`, refusing one of another model or config."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged file
        raise ExampleError(f"cannot read checkpoint {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(state, dict) or "model" not in state or "name" not in state:
        raise ExampleError(f"{path} is not a checkpoint of these examples")
    if state["name"] != name:
        raise ExampleError(f"checkpoint {path} is of model {state['name']!r}, expected {name!r}")
    if config is not None:
        saved = {k: v for k, v in state["config"].items() if k != "epochs"}
        wanted = {k: v for k, v in asdict(config).items() if k != "epochs"}
        if saved != wanted:
            changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
            raise ExampleError(
                f"checkpoint {path} was trained with other settings ({', '.join(changed)}); "
                "drop --resume or use the same settings"
            )
    return state  # type: ignore[no-any-return]


# -- figures -----------------------------------------------------------------------------------


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
        axes.grid(alpha=0.3)
        axes.legend()
    if title:
        figure.suptitle(title)
    return figure


# -- command line ------------------------------------------------------------------------------


def common_arguments(parser: argparse.ArgumentParser, *, epochs: int, lr: float) -> None:
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding the data")
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for all outputs")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints")
    parser.add_argument("--quick", action="store_true", help="small subset, one epoch")
    parser.add_argument("--tensorboard", metavar="DIR", help="also log to TensorBoard")
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
    """Refuse an ``--out`` that is a file, and ``--tensorboard`` without the package."""
    if out.exists() and not out.is_dir():
        raise ExampleError(f"--out {out} is a file; give a folder (it is created if missing)")
    if tensorboard is not None:
        try:
            importlib.import_module("torch.utils.tensorboard")
        except ImportError:
            raise ExampleError(
                "--tensorboard needs the tensorboard package: pip install 'netlens[examples]'"
            ) from None


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
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue from the last epoch", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)
