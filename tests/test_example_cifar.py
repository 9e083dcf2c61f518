"""End to end: examples/cifar_lenet.py on a small synthetic CIFAR-10 in the official layout."""

from __future__ import annotations

import csv
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _examples import EXAMPLES, interrupt_in_training_step, load_example
from PIL import Image

import netlens.datasets

PERIODS = (5.0, 10.0)  # pixels, at 32x32
ANGLES = (0.0, 22.5, 45.0, 67.5, 90.0)  # degrees; each class also takes the mirrored angle


example = load_example("cifar_lenet")


def gratings(count: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """Noisy sine gratings; the class sets orientation and period, so a flip keeps the class.

    Horizontal flips (the example's augmentation) mirror an angle a to -a, so a class is the
    pair {a, -a}: five orientations in [0, 90] degrees times two periods make ten classes.
    """
    labels = rng.permutation(np.arange(count) % 10)
    y, x = np.mgrid[0:32, 0:32].astype(np.float64)
    images = np.empty((count, 3, 32, 32), np.uint8)
    for index, label in enumerate(labels):
        angle = np.deg2rad(ANGLES[label % 5]) * rng.choice([-1.0, 1.0])
        period = PERIODS[label // 5] * rng.uniform(0.9, 1.1)
        along = x * np.cos(angle) + y * np.sin(angle)
        wave = np.sin(2 * np.pi * along / period + rng.uniform(0, 2 * np.pi))
        grey = 128 + rng.uniform(50, 110) * wave + rng.normal(0, 25, (32, 32))
        tint = rng.uniform(0.8, 1.2, (3, 1, 1))
        images[index] = np.clip(grey[None] * tint, 0, 255).astype(np.uint8)
    return images.reshape(count, 3072), [int(label) for label in labels]


def write_cifar(root: Path, per_batch: int = 80, test: int = 100) -> Path:
    """The official ``cifar-10-batches-py/`` layout: pickled dicts with bytes keys."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data, labels = gratings(test if name == "test_batch" else per_batch, rng)
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar"))


QUICK = ["--quick", "--batch-size", "32", "--no-progress"]


# One intra-op thread for this file's tests (tests/conftest.py): tiny batches: more threads only add
# synchronisation, and the machine may be shared.
ONE_THREAD = True


@pytest.fixture(scope="module")
def quick_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    board = out.parent / "tensorboard"
    argv = ["--data-dir", str(data_dir), "--out", str(out), "--tensorboard", str(board), *QUICK]
    assert example.main(argv) == 0
    return out


EXPECTED = [
    "REPORT.md",
    "accuracy.png",
    "checkpoint.pt",
    "conv1_activations.png",
    "conv1_filters.png",
    "deconvnet_conv2.png",
    "history.csv",
    "history.json",
    "loss.png",
    "maximize_conv1.png",
    "maximize_conv2.png",
    "occlusion.png",
    "stats.png",
    "stats_conv1.csv",
    "stats_conv1.md",
    "stats_conv2.csv",
    "stats_conv2.md",
]


def test_quick_run_writes_every_output(quick_run: Path) -> None:
    assert sorted(path.name for path in quick_run.iterdir()) == EXPECTED
    for png in quick_run.glob("*.png"):
        with Image.open(png) as image:
            image.load()
            assert image.width > 100 and image.height > 100, png.name
    assert list((quick_run.parent / "tensorboard").rglob("events.out.tfevents.*"))


def test_the_atlas_flag_builds_the_models_atlas(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert example.main(["--data-dir", str(data_dir), "--out", str(out), *QUICK, "--atlas"]) == 0
    index = (out / "atlas" / "index.html").read_text()
    assert all(f'href="{layer}/index.html"' in index for layer in ("conv1", "conv2", "fc1"))
    channel = (out / "atlas" / "conv2" / "63.html").read_text()
    assert "Feature visualisation" in channel and "Strongest data-set examples" in channel
    assert "Feature visualisation" not in (out / "atlas" / "fc1" / "5.html").read_text()


def test_quick_run_learns_the_gratings(quick_run: Path) -> None:
    with (quick_run / "history.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 1
    assert set(rows[0]) >= {"epoch", "train_loss", "test_loss", "test_accuracy", "seconds"}
    assert float(rows[0]["test_accuracy"]) > 0.3  # chance is 0.1
    assert json.loads((quick_run / "history.json").read_text())[0]["test_accuracy"] == float(
        rows[0]["test_accuracy"]
    )
    report = (quick_run / "REPORT.md").read_text()
    assert f"{100 * float(rows[0]['test_accuracy']):.2f}%" in report


def test_statistics_tables(quick_run: Path) -> None:
    for conv, channels in (("conv1", 32), ("conv2", 64)):
        with (quick_run / f"stats_{conv}.csv").open(newline="") as file:
            rows = list(csv.DictReader(file))
        assert [int(row["channel"]) for row in rows] == list(range(channels))
        for row in rows:
            assert 0 <= float(row["zero_fraction"]) <= 1
            assert float(row["min"]) >= 0  # after the ReLU
            assert int(row["count"]) == 100 * (28 * 28 if conv == "conv1" else 14 * 14)
        table = (quick_run / f"stats_{conv}.md").read_text().splitlines()
        assert len(table) == channels + 2 and table[0].startswith("| channel |")


def test_report_links_resolve_in_report_order(quick_run: Path) -> None:
    report = (quick_run / "REPORT.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert links, "no links in REPORT.md"
    for link in links:
        assert (quick_run / link).is_file(), link
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert [heading.split(".")[0] for heading in headings] == [f"## {i}" for i in range(1, 8)]
    assert "nan" not in report.lower()


def history_without_time(out: Path) -> list[dict[str, Any]]:
    rows = json.loads((out / "history.json").read_text())
    return [{key: value for key, value in row.items() if key != "seconds"} for row in rows]


@pytest.mark.parametrize(
    "recipe",
    [["--recipe", "report"], ["--recipe", "improved", "--crop-padding", "2", "--dropout", "0.5"]],
    ids=["report", "dropout-and-crops"],
)
def test_resume_ends_with_the_same_numbers(
    recipe: list[str], data_dir: Path, tmp_path: Path
) -> None:
    common = ["--data-dir", str(data_dir), *QUICK, "--epochs", "2", "--train-only", *recipe]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert example.main([*common, "--out", str(whole)]) == 0
    assert example.main([*common, "--out", str(parts), "--stop-after", "1"]) == 0
    assert sorted(path.name for path in parts.iterdir()) == [
        "accuracy.png",
        "checkpoint.pt",
        "history.csv",
        "history.json",
        "loss.png",
    ]  # what the epochs done can draw
    assert len(json.loads((parts / "history.json").read_text())) == 1
    assert example.main([*common, "--out", str(parts), "--resume"]) == 0
    assert history_without_time(parts) == history_without_time(whole)
    state = torch.load(whole / "checkpoint.pt", weights_only=True)
    resumed = torch.load(parts / "checkpoint.pt", weights_only=True)
    for name, tensor in state["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name


def test_improved_recipe_with_dropout_and_crops_runs(data_dir: Path, tmp_path: Path) -> None:
    argv = ["--data-dir", str(data_dir), "--out", str(tmp_path), *QUICK, "--train-only"]
    assert (
        example.main([*argv, "--recipe", "improved", "--crop-padding", "2", "--dropout", "0.5"])
        == 0
    )
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["name"] == "lenet5-cifar-dropout0.5-crop2"
    assert state["config"]["schedule"] == "cosine"


def test_augmentation_flips_and_crops() -> None:
    images = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    flipped = example.make_augment(0)(images, torch.Generator().manual_seed(0))
    for before, after in zip(images, flipped, strict=True):
        assert torch.equal(after, before) or torch.equal(after, before.flip(2))
    cropped = example.make_augment(1)(images, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(images, [1, 1, 1, 1], value=-1.0)
    for index in range(2):
        windows = [
            padded[index, :, top : top + 4, left : left + 4]
            for top in range(3)
            for left in range(3)
        ]
        windows += [window.flip(2) for window in windows]
        assert any(torch.equal(cropped[index], window) for window in windows)


# -- bad input ------------------------------------------------------------------------------------


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command line as ``python cifar_lenet.py`` would; return its one-line error."""
    with pytest.raises(SystemExit) as exit_info:
        example.harness.run_cli(example.main, argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    assert "Traceback" not in error
    return error


def closed_port() -> int:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        return int(server.getsockname()[1])


def test_missing_data_dir_without_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/cifar-10-python.tar.gz"
    monkeypatch.setattr(netlens.datasets, "CIFAR10_URL", url)
    data, out = tmp_path / "nowhere" / "cifar", tmp_path / "out"
    error = run_cli(["--data-dir", str(data), "--out", str(out), *QUICK], capsys)
    assert "could not be downloaded" in error and str(data) in error
    assert sorted(tmp_path.iterdir()) == []  # no data folder, no output folder


def test_file_in_the_wrong_format(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "data" / "cifar-10-batches-py"
    broken.mkdir(parents=True)
    for source in (data_dir / "cifar-10-batches-py").iterdir():
        (broken / source.name).write_bytes(source.read_bytes())
    (broken / "data_batch_3").write_bytes(b"these are not the pickles you are looking for")
    out = tmp_path / "out"
    error = run_cli(["--data-dir", str(broken.parent), "--out", str(out), *QUICK], capsys)
    assert "data_batch_3" in error
    assert not out.exists()


def test_checkpoint_of_another_model(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(other.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    config = example.TrainConfig()
    checkpoint = tmp_path / "checkpoint.pt"
    history = example.History()
    example.harness.save_checkpoint(
        checkpoint, "lstm", config, other, optimizer, scheduler, history
    )
    before = checkpoint.read_bytes()
    argv = ["--data-dir", str(data_dir), "--out", str(tmp_path), *QUICK, "--resume"]
    error = run_cli(argv, capsys)
    assert "'lstm'" in error and "lenet5-cifar" in error
    assert checkpoint.read_bytes() == before
    # a bare state dict, such as a reference model, is refused as well
    torch.save(example.LeNet5().state_dict(), checkpoint)
    before = checkpoint.read_bytes()
    assert "not a checkpoint" in run_cli(argv, capsys)
    assert checkpoint.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_checkpoint_of_other_settings(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--data-dir", str(data_dir), "--out", str(tmp_path), *QUICK, "--train-only"]
    assert example.main([*argv, "--stop-after", "1", "--epochs", "2"]) == 0
    capsys.readouterr()
    error = run_cli([*argv, "--epochs", "2", "--resume", "--lr", "0.01"], capsys)
    assert "lr" in error and "--resume" in error


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--lr", "-1"], "--lr must be positive"),
        (["--dropout", "1"], "--dropout must be in [0, 1)"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "nope"], ""),
    ],
)
def test_bad_arguments(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    error = run_cli(["--data-dir", str(tmp_path), "--out", str(out), *flags], capsys)
    assert message in error
    assert not out.exists()


def test_out_is_a_file(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    error = run_cli(["--data-dir", str(data_dir), "--out", str(out), *QUICK], capsys)
    assert "is a file" in error
    assert out.read_text() == "keep me"


def test_the_script_exits_with_one_line(tmp_path: Path) -> None:
    script = EXAMPLES / "cifar_lenet.py"
    argv = [sys.executable, str(script), "--data-dir", str(tmp_path), "--epochs", "0"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert result.stderr == "error: --epochs must be at least 1, got 0\n"
    assert list(tmp_path.iterdir()) == []


# -- hardening: modes, resumes of another run, broken checkpoints, kills ---------------------------


def test_outputs_have_the_mode_of_a_plain_write(quick_run: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    modes = {path.name: path.stat().st_mode & 0o777 for path in quick_run.iterdir()}
    assert modes == dict.fromkeys(EXPECTED, 0o666 & ~umask)


TWO_EPOCHS = [*QUICK, "--epochs", "2", "--train-only"]  # the report's recipe: constant lr


@pytest.fixture(scope="module")
def uninterrupted(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    assert example.main(["--data-dir", str(data_dir), "--out", str(out), *TWO_EPOCHS]) == 0
    return out


@pytest.fixture(scope="module")
def half_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint after epoch 1 of the two-epoch run, which --resume continues."""
    out = tmp_path_factory.mktemp("half")
    argv = ["--data-dir", str(data_dir), "--out", str(out), *TWO_EPOCHS, "--stop-after", "1"]
    assert example.main(argv) == 0
    return out / "checkpoint.pt"


def test_longer_run_with_a_constant_lr_continues_as_an_uninterrupted_one(
    data_dir: Path, tmp_path: Path, uninterrupted: Path
) -> None:
    common = ["--data-dir", str(data_dir), "--out", str(tmp_path), *QUICK, "--train-only"]
    assert example.main([*common, "--epochs", "1"]) == 0  # finished: one epoch
    assert example.main([*common, "--epochs", "2", "--resume"]) == 0  # extended to two
    assert history_without_time(tmp_path) == history_without_time(uninterrupted)


@pytest.mark.parametrize(
    ("first", "then", "expected"),
    [
        (["--quick"], ["--epochs", "1"], "other settings (quick, warmup_epochs)"),
        (["--quick"], ["--quick", "--recipe", "improved"], "(label_smoothing, schedule"),
        (["--quick"], ["--quick", "--crop-padding", "2"], "'lenet5-cifar-crop2'"),
        (["--quick"], ["--quick", "--train-subset", "100"], "'lenet5-cifar-subset100'"),
        (
            ["--quick", "--recipe", "improved", "--epochs", "1"],
            ["--quick", "--recipe", "improved", "--epochs", "2"],
            "cosine schedule is laid out over all its epochs",
        ),
        (["--quick", "--epochs", "2"], ["--quick", "--epochs", "1"], "already holds 2 epochs"),
    ],
    ids=["quick-then-full", "recipe", "crops", "subset", "longer-cosine", "shorter"],
)
def test_resume_of_another_run_is_refused(
    first: list[str],
    then: list[str],
    expected: str,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = ["--data-dir", str(data_dir), "--out", str(tmp_path)]
    common += ["--batch-size", "32", "--no-progress", "--train-only"]
    assert example.main([*common, *first]) == 0
    capsys.readouterr()
    checkpoint = tmp_path / "checkpoint.pt"
    before = checkpoint.read_bytes()
    error = run_cli([*common, *then, "--resume"], capsys)
    assert expected in error and "--resume" in error
    assert checkpoint.read_bytes() == before


def test_resume_on_other_data_is_refused(
    half_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = write_cifar(tmp_path / "other", per_batch=60)
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(half_run.read_bytes())
    argv = ["--data-dir", str(other), "--out", str(out), *TWO_EPOCHS, "--resume"]
    error = run_cli(argv, capsys)
    assert "trained on other data" in error and "400 training images there, 300 now" in error


def damage(state: dict[str, Any], how: str) -> dict[str, Any]:
    if how == "missing_key":
        del state["optimizer"]
    elif how == "model_shape":
        state["model"]["conv1.weight"] = torch.zeros(3, 1, 5, 5)
    elif how == "moment_shape":
        state["optimizer"]["state"][0]["exp_avg"] = torch.zeros(7)
    elif how == "schedule_step":
        state["scheduler"]["last_epoch"] += 1
    elif how == "history":
        state["history"] = state["history"] * 2
    return state


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("empty", "is empty (0 bytes)"),
        ("truncated", "damaged or not a checkpoint"),
        ("missing_key", "lacks or has broken optimizer"),
        ("model_shape", "size mismatch for conv1.weight"),
        ("moment_shape", "the optimizer's exp_avg has shape (7,)"),
        ("schedule_step", "its schedule is at step 14, but 1 epochs of 13 steps make 13"),
        ("history", "lacks or has broken history"),
    ],
)
def test_broken_checkpoint_is_one_line(
    how: str,
    expected: str,
    half_run: Path,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    if how == "empty":
        checkpoint.write_bytes(b"")
    elif how == "truncated":
        checkpoint.write_bytes(half_run.read_bytes()[:5000])
    else:
        state = torch.load(half_run, weights_only=True)
        torch.save(damage(state, how), checkpoint)
    before = checkpoint.read_bytes()
    argv = ["--data-dir", str(data_dir), "--out", str(tmp_path), *TWO_EPOCHS, "--resume"]
    error = run_cli(argv, capsys)
    assert expected in error
    assert checkpoint.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_read_only_out_is_refused_before_the_first_epoch(
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: make the probe meet a read-only folder
        real = example.harness._create_partial

        def refuse(destination: Path) -> Any:
            if destination.parent == out:
                raise OSError(30, "Read-only file system")
            return real(destination)

        monkeypatch.setattr(example.harness, "_create_partial", refuse)
    else:
        out.chmod(0o555)
    try:
        error = run_cli(["--data-dir", str(data_dir), "--out", str(out), *QUICK], capsys)
    finally:
        out.chmod(0o755)
    assert f"cannot write into --out folder {out}" in error
    assert "epoch" not in capsys.readouterr().out
    assert list(out.iterdir()) == []


def test_download_into_an_unrelated_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netlens.datasets, "CIFAR10_URL", f"http://127.0.0.1:{closed_port()}/x")
    (tmp_path / "thesis.tex").write_text("keep me")
    out = tmp_path / "out"
    error = run_cli(["--data-dir", str(tmp_path), "--out", str(out), *QUICK], capsys)
    assert "holds other files (thesis.tex); refused to download CIFAR-10" in error
    error = run_cli(["--data-dir", str(tmp_path / "new"), "--no-download", *QUICK], capsys)
    assert "Expected CIFAR-10" in error and "--no-download" in error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["thesis.tex"]


# A run that SIGKILLs itself at a chosen point: a kill with no chance to clean up.
KILLER = """
import importlib.util, os, signal, sys
from pathlib import Path

examples, mode, *argv = sys.argv[1:]
spec = importlib.util.spec_from_file_location("cifar_lenet", Path(examples) / "cifar_lenet.py")
example = importlib.util.module_from_spec(spec)
sys.modules["cifar_lenet"] = example
spec.loader.exec_module(example)
harness = sys.modules["_harness"]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if mode == "epoch":  # in the middle of epoch 2: its fifth training step
    import torch.nn.functional as F
    saves, steps, real_save, real_loss = [], [], harness.save_checkpoint, F.cross_entropy
    def save(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
    def loss(*args, **kwargs):
        if saves and kwargs.get("reduction", "mean") == "mean":
            steps.append(1)
            if len(steps) == 5:
                die()
        return real_loss(*args, **kwargs)
    harness.save_checkpoint, F.cross_entropy = save, loss
elif mode == "write":  # epoch 2's checkpoint written and synced, not yet renamed into place
    real_replace = os.replace
    def replace(source, target):
        if Path(target).name == "checkpoint.pt" and Path(target).exists():
            die()
        real_replace(source, target)
    os.replace = replace
elif mode == "lenses":  # training done, in the middle of the lenses
    def occlusion(*args, **kwargs):
        die()
    example.nl.occlusion = occlusion
harness.run_cli(example.main, argv)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["epoch", "write", "lenses"])
def test_kill_at_any_point_then_resume_gives_the_uninterrupted_history(
    mode: str, data_dir: Path, tmp_path: Path, uninterrupted: Path
) -> None:
    out = tmp_path / "out"
    argv = ["--data-dir", str(data_dir), "--out", str(out), *TWO_EPOCHS]
    if mode == "lenses":
        argv.remove("--train-only")
    child = tmp_path / "killer.py"
    child.write_text(KILLER)
    killed = subprocess.run(
        [sys.executable, str(child), str(EXAMPLES), mode, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"},
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert len(state["history"]) == (2 if mode == "lenses" else 1)
    parts = list(out.glob(".checkpoint.pt.*.part"))
    assert len(parts) == (1 if mode == "write" else 0)
    assert example.main([*argv, "--resume"]) == 0
    assert history_without_time(out) == history_without_time(uninterrupted)
    assert not list(out.glob(".*.part"))  # the killed run's partial file is gone
    if mode == "lenses":
        assert (out / "REPORT.md").is_file()


# -- a new user's first hour: estimates, reruns into the same --out, Ctrl-C, the figures -------


def fake_checkpoint(path: Path, done: int, epochs: int) -> bytes:
    """A checkpoint of ``done`` epochs of an ``epochs``-epoch run, as train() writes it."""
    model = example.LeNet5()
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    rows = [{"epoch": epoch, "test_accuracy": 0.5} for epoch in range(1, done + 1)]
    config = example.TrainConfig(epochs=epochs)
    path.parent.mkdir(parents=True, exist_ok=True)
    example.harness.save_checkpoint(
        path, "lenet5-cifar", config, model, optimizer, scheduler, example.History(rows)
    )
    return path.read_bytes()


def test_a_rerun_does_not_replace_another_runs_checkpoint(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "out" / "checkpoint.pt"
    before = fake_checkpoint(checkpoint, done=3, epochs=10)
    argv = ["--data-dir", str(data_dir), "--out", str(checkpoint.parent), *QUICK, "--train-only"]
    error = run_cli(argv, capsys)
    assert f"{checkpoint} holds the checkpoint of another run (lenet5-cifar, 3 of 10" in error
    assert "--resume to continue" in error and "--overwrite to start afresh" in error
    assert checkpoint.read_bytes() == before
    assert sorted(path.name for path in checkpoint.parent.iterdir()) == ["checkpoint.pt"]
    # a file that is no checkpoint is not replaced silently either
    checkpoint.write_bytes(b"not a checkpoint")
    assert "not a readable checkpoint" in run_cli(argv, capsys)
    assert checkpoint.read_bytes() == b"not a checkpoint"
    # --overwrite starts afresh and replaces it
    assert example.main([*argv, "--overwrite"]) == 0
    assert "after 1 epoch (best" in capsys.readouterr().out  # not "1 epochs"
    state = torch.load(checkpoint, weights_only=True)
    assert state["name"] == "lenet5-cifar" and len(state["history"]) == 1


def test_resume_and_overwrite_exclude_each_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--data-dir", str(tmp_path), "--resume", "--overwrite"])
    assert exit_info.value.code == 2
    assert "not allowed with argument --resume" in capsys.readouterr().err


def test_ctrl_c_writes_the_history_and_curves_of_the_epochs_done(
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    argv = ["--data-dir", str(data_dir), "--out", str(out), "--batch-size", "32", "--quick"]
    argv += ["--epochs", "2"]  # with progress bars: the interrupt must end the bar's line
    interrupt_in_training_step(monkeypatch, 13 + 5)  # 400 images: 13 steps an epoch
    with pytest.raises(SystemExit) as exit_info:
        example.harness.run_cli(example.main, argv)
    assert exit_info.value.code == 130
    captured = capsys.readouterr()
    assert "epoch 1/2 took" in captured.out and "to go for training" in captured.out
    assert "stopped after epoch 1 of 2: wrote history.csv, history.json, accuracy.png and " in (
        captured.out
    )
    message = "interrupted; rerun with --resume to continue from the last epoch\n"
    before, _, after = captured.err.rpartition(message)
    assert after == "" and (before == "" or before[-1] in "\r\n"), captured.err[-300:]
    assert sorted(path.name for path in out.iterdir()) == [
        "accuracy.png",
        "checkpoint.pt",
        "history.csv",
        "history.json",
        "loss.png",
    ]
    assert [row["epoch"] for row in json.loads((out / "history.json").read_text())] == [1]
    monkeypatch.undo()
    # --resume goes on from there (the lenses of a --quick run are off with --train-only)
    assert example.main([*argv, "--no-progress", "--train-only", "--resume"]) == 0
    assert [row["epoch"] for row in json.loads((out / "history.json").read_text())] == [1, 2]


def test_the_epoch_axes_have_whole_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figures: list[Any] = []
    monkeypatch.setattr(example.harness, "save_figure", lambda figure, path: figures.append(figure))
    row = {"epoch": 1, "train_loss": 2.0, "train_accuracy": 0.2, "test_loss": 2.1}
    history = example.History([{**row, "test_accuracy": 0.25}])
    example.write_curves(history, Path("unused"))
    figures.append(example.harness.plot_curves({"one epoch": history}))
    assert len(figures) == 3
    for figure in figures:
        FigureCanvasAgg(figure).draw()
        for axes in figure.axes:
            low, high = axes.get_xlim()
            ticks = [tick for tick in axes.get_xticks() if low <= tick <= high]
            assert ticks == [1.0], (axes.get_title(), ticks)


def test_occlusion_rows_say_predicted_and_true_and_the_attribution_has_a_colour_bar() -> None:
    import netlens as nl

    torch.manual_seed(0)
    model = example.LeNet5().eval()
    inputs = torch.rand(2, 1, 28, 28) * 2 - 1
    result = nl.occlusion(model, inputs, window=6, stride=6, layer="relu2")
    figure = example.occlusion_figure(result, [1, 3])
    titles = [axes.get_title() for axes in figure.axes]
    for row, true in enumerate(("automobile", "cat")):
        predicted = example.CIFAR10_CLASSES[int(result.target[row])]
        assert f"predicted: {predicted}\n(true: {true})" in titles
    attribution = [axes for axes in figure.axes if axes.get_title() == "attribution"]
    assert len(attribution) == 2
    assert all(axes.images[-1].colorbar is not None for axes in attribution)


def test_estimates_of_the_time_left() -> None:
    harness = example.harness
    assert [harness.duration(s) for s in (0.2, 45, 89, 405, 5369, 5400, 4 * 3600)] == [
        "0.2 s",
        "45 s",
        "89 s",
        "7 min",
        "89 min",
        "1 h 30 min",
        "4 h 0 min",
    ]
    now = 1_700_000_000.0
    finish = time.strftime("%H:%M", time.localtime(now + 9 * 45 + 2 * 45))
    assert harness.estimate_line(1, 10, [45.0], 2.0, now=now) == (
        "epoch 1/10 took 45 s; about 7 min to go for training; about 8 min to go in all "
        f"(done at about {finish})"
    )
    # --stop-after 2 of 10 epochs: training ends after epoch 2
    assert harness.estimate_line(1, 10, [40.0], last=2) == (
        "epoch 1/10 took 40 s; about 40 s to go for training"
    )
    assert harness.estimate_line(2, 2, [30.0, 50.0], 3.0, now=now).startswith(
        "epoch 2/2 took 50 s; about 2 min to go in all"
    )


def test_the_lenses_count_their_steps(quick_run: Path) -> None:
    lines: list[str] = []
    steps = example.harness.Steps(2, lines.append)
    with steps.step("first"):
        pass
    with steps.step("second"):
        pass
    assert [line.split(":")[0] for line in lines] == ["lens 1/2"] * 2 + ["lens 2/2"] * 2
    assert lines[0] == "lens 1/2: first ..." and lines[1].startswith("lens 1/2: first: ")
    assert set(steps.seconds) == {"first", "second"}
    assert "Time of the lenses: first-layer filters" in (quick_run / "REPORT.md").read_text()


def test_help_explains_the_course_report_and_the_time_it_takes() -> None:
    text = " ".join(example.build_parser().format_help().split())
    assert "course report this library grew from" in text and "61.10% test accuracy" in text
    assert "--quick takes about" in text and "s an epoch" in text
    assert "--overwrite" in text


def test_missing_tensorboard_names_the_package(
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = example.harness.importlib.import_module

    def import_module(name: str, *args: Any) -> Any:
        if name == "torch.utils.tensorboard":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(example.harness.importlib, "import_module", import_module)
    out = tmp_path / "out"
    argv = ["--data-dir", str(data_dir), "--out", str(out), "--tensorboard", str(tmp_path / "tb")]
    error = run_cli(argv, capsys)
    assert "pip install tensorboard" in error and 'pip install -e ".[examples]"' in error
    assert "netlens[" not in error
    assert not out.exists()
