"""The examples' harness as a careless user and a killed process meet it: files, modes, help.

The end-to-end faults (broken checkpoints, resumes of another run, kills) are in
tests/test_example_cifar.py and tests/test_example_mnist.py, next to the runs they need.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from _examples import load_example

cifar = load_example("cifar_lenet", reuse=True)
mnist = load_example("mnist_recurrent", reuse=True)
harness = sys.modules["_harness"]


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def tiny_checkpoint(path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    history = harness.History([{"epoch": 1, "test_accuracy": 0.5}])
    harness.save_checkpoint(
        path, "tiny", harness.TrainConfig(epochs=2), model, optimizer, scheduler, history
    )


def test_outputs_get_the_normal_mode_not_mkstemps(tmp_path: Path, umask_022: None) -> None:
    from matplotlib.figure import Figure

    harness.atomic_write_text(tmp_path / "REPORT.md", "# report\n")
    history = harness.History([{"epoch": 1, "test_accuracy": 0.5}])
    harness.write_history(history, tmp_path)
    harness.save_figure(Figure(figsize=(1, 1)), tmp_path / "figure.png")
    tiny_checkpoint(tmp_path / "checkpoint.pt")
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in tmp_path.iterdir()}
    assert modes == dict.fromkeys(
        ["REPORT.md", "history.json", "history.csv", "figure.png", "checkpoint.pt"], "0o644"
    )


def test_outputs_are_synced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        events.append("fsync")
        real_fsync(descriptor)

    def replace(source: str | Path, target: str | Path) -> None:
        events.append(f"replace {Path(target).name}")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    tiny_checkpoint(tmp_path / "checkpoint.pt")
    harness.atomic_write_text(tmp_path / "REPORT.md", "x")
    # each file synced before its rename, and its folder after it
    expected = ["fsync", "replace checkpoint.pt", "fsync", "fsync", "replace REPORT.md", "fsync"]
    assert events == expected


def test_prepare_out_dir_removes_stale_parts_and_probes_every_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "rnn").mkdir(parents=True)
    stale = [out / ".checkpoint.pt.1a2b3c4d.part", out / "rnn" / ".curves.png.00000000.part"]
    for path in stale:
        path.write_bytes(b"x" * 100)
    kept = out / "notes.part"  # not hidden: not ours
    kept.write_text("mine")
    harness.prepare_out_dir(out, ["rnn", "lenses"], str(tmp_path / "board"))
    assert not any(path.exists() for path in stale)
    assert kept.read_text() == "mine"
    assert sorted(path.name for path in out.iterdir()) == ["lenses", "notes.part", "rnn"]
    assert (tmp_path / "board").is_dir()


def test_unwritable_output_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: simulate a read-only folder
        real = harness._create_partial

        def refuse(destination: Path) -> object:
            if destination.parent == out:
                raise PermissionError(13, "Permission denied")
            return real(destination)

        monkeypatch.setattr(harness, "_create_partial", refuse)
    else:
        out.chmod(0o555)
    try:
        with pytest.raises(harness.ExampleError, match=f"cannot write into --out folder {out}"):
            harness.check_out_and_tensorboard(out, None)
        with pytest.raises(harness.ExampleError, match="Permission denied"):
            harness.prepare_out_dir(out)
    finally:
        out.chmod(0o755)
    assert list(out.iterdir()) == []


def test_download_target_must_be_new_empty_or_related(tmp_path: Path) -> None:
    names = cifar.DATA_NAMES
    harness.check_download_target(tmp_path / "new", names, "CIFAR-10")  # created on download
    harness.check_download_target(tmp_path, names, "CIFAR-10")  # empty
    (tmp_path / ".cifar-10-python.tar.gz.0badf00d.part").write_bytes(b"")  # a killed download
    (tmp_path / ".DS_Store").write_bytes(b"")
    harness.check_download_target(tmp_path, names, "CIFAR-10")
    (tmp_path / "thesis.tex").write_text("")
    with pytest.raises(harness.ExampleError, match=r"holds other files \(thesis.tex\)"):
        harness.check_download_target(tmp_path, names, "CIFAR-10")
    (tmp_path / "cifar-10-batches-py").mkdir()  # part of the data set: fine
    harness.check_download_target(tmp_path, names, "CIFAR-10")


def test_failed_block_removes_only_the_folders_it_created(tmp_path: Path) -> None:
    existing = tmp_path / "data"
    existing.mkdir()
    target = existing / "new" / "deeper"
    with pytest.raises(RuntimeError), harness.removing_created_folders(target):
        target.mkdir(parents=True)
        raise RuntimeError("download failed")
    assert sorted(tmp_path.rglob("*")) == [existing]


def defaults_shown(parser: argparse.ArgumentParser) -> list[str]:
    """The options whose --help line does not say their default."""
    help_text = " ".join(parser.format_help().split())
    titles = {
        id(action): group.title or ""
        for group in parser._action_groups
        for action in group._group_actions
    }
    missing = []
    for action in parser._actions:
        if not action.option_strings or action.dest == "help" or action.required:
            continue
        if action.default is False:  # a flag: off unless given
            continue
        if action.default is None:  # the help (or its group's title) says what happens
            if "default" not in (action.help or "") + titles[id(action)]:
                missing.append(action.option_strings[-1])
            continue
        if f"(default: {action.default})" not in help_text:
            missing.append(action.option_strings[-1])
    return missing


@pytest.mark.parametrize("script", [cifar, mnist], ids=["cifar", "mnist"])
def test_help_shows_every_default(script: ModuleType) -> None:
    parser = script.build_parser()
    assert defaults_shown(parser) == []
    text = " ".join(parser.format_help().split())
    assert "--download, --no-download" in text and "(default: True)" in text
    assert "(default: out)" in text and "(default: 128)" in text


def test_checkpoint_faults_are_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"")
    with pytest.raises(harness.ExampleError, match="is empty"):
        harness.load_checkpoint(path, "tiny")
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(harness.ExampleError, match="damaged or not a checkpoint") as caught:
        harness.load_checkpoint(path, "tiny")
    assert "\n" not in str(caught.value)
    tiny_checkpoint(path)
    state = torch.load(path, weights_only=True)
    for key, broken in (("optimizer", None), ("history", [{"epoch": 2}]), ("setup", "x")):
        torch.save({**state, key: broken}, path)
        with pytest.raises(harness.ExampleError, match=f"lacks or has broken {key}"):
            harness.load_checkpoint(path, "tiny")
    del state["setup"]
    torch.save(state, path)
    with pytest.raises(harness.ExampleError, match="older version"):
        harness.load_checkpoint(path, "tiny")
