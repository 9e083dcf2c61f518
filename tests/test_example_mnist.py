"""examples/mnist_recurrent.py end to end, in --quick mode, on small synthetic IDX files."""

from __future__ import annotations

import csv
import gzip
import json
import re
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _examples import interrupt_in_training_step, load_example

MODELS = ("rnn", "lstm", "gru", "cnn")
TRAIN, TEST = 512, 128


example = load_example("mnist_recurrent")
harness = sys.modules["_harness"]


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _digits(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Learnable "digits": class c is a bright bar over rows 2c + 4 and 2c + 5, plus noise."""
    labels = rng.integers(0, 10, count)
    images = rng.integers(0, 60, (count, 28, 28))
    for index, label in enumerate(labels):
        images[index, 2 * label + 4 : 2 * label + 6, 4:24] = 255
    return images, labels


def write_mnist(folder: Path, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", TRAIN), ("t10k", TEST)):
        images, labels = _digits(count, rng)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            data = _idx(array)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


# One intra-op thread for this file's tests (tests/conftest.py): Tiny recurrent models run many
# times faster on one thread than on a busy pool.
ONE_THREAD = True


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("mnist"))


# One --quick run of all four models, shared by the tests marked slow (about 20 s of CPU).
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("run") / "out"
    tensorboard = out.parent / "tensorboard"
    lines: list[str] = []
    example.print = lines.append  # the example logs with print
    try:
        code = example.main(
            ["--data-dir", str(data_dir), "--out", str(out), "--quick", "--no-progress",
             "--batch-size", "32", "--seed", "1", "--tensorboard", str(tensorboard)]
        )  # fmt: skip
    finally:
        del example.print
    assert code == 0
    return out, "\n".join(lines)


@pytest.mark.slow
def test_the_atlas_flag_builds_the_lstms_atlas(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--data-dir", str(data_dir), "--out", str(out), "--quick", "--no-progress"]
    argv += ["--batch-size", "32", "--models", "lstm", "--no-lenses", "--atlas"]
    example.print = lambda *args: None  # the example logs with print
    try:
        assert example.main(argv) == 0
    finally:
        del example.print
    site = out / "lstm" / "atlas"
    assert 'href="rnn/index.html"' in (site / "index.html").read_text()
    unit = (site / "rnn" / "127.html").read_text()  # the last of its 128 hidden units
    assert "Feature visualisation" in unit and "Weights" in unit  # its input weights per gate


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        harness.run_cli(example.main, argv)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


# -- the quick run -------------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_run_writes_every_output(quick_run: tuple[Path, str]) -> None:
    out, _ = quick_run
    expected = {"REPORT.md", "comparison.csv", "comparison.md", "comparison.png"}
    for name in MODELS:
        expected |= {
            f"{name}/{file}"
            for file in ("checkpoint.pt", "history.csv", "history.json", "curves.png")
        }
    lenses = {"hidden_stats.png", "row_occlusion.png", "row_occlusion.csv"}
    lenses |= {"row_occlusion_digits.png", "maximize_classes.png"}
    for name in ("rnn", "lstm", "gru"):
        lenses |= {f"hidden_stats_{name}.csv", f"{name}_weight_ih_l0.png"}
        lenses |= {f"{name}_weight_hh_l0.png"}
    expected |= {f"lenses/{file}" for file in lenses}
    written = {str(path.relative_to(out)) for path in out.rglob("*") if path.is_file()}
    assert written == expected  # nothing missing, no partial or stray files
    for path in out.rglob("*.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    for name in MODELS:  # --tensorboard: one log folder per model
        events = list((out.parent / "tensorboard").glob(f"{name}*/events.out.tfevents.*"))
        assert len(events) == 1 and events[0].stat().st_size > 0, name


@pytest.mark.slow
def test_histories_and_comparison_agree(quick_run: tuple[Path, str]) -> None:
    out, _ = quick_run
    with open(out / "comparison.csv", newline="") as file:
        rows = {row["model"]: row for row in csv.DictReader(file)}
    assert list(rows) == list(MODELS)
    parameters = {"rnn": 21_514, "lstm": 82_186, "gru": 61_962, "cnn": 3_274_634}
    for name in MODELS:
        history = json.loads((out / name / "history.json").read_text())
        assert [row["epoch"] for row in history] == [1]  # --quick: one epoch
        row = rows[name]
        assert float(row["test_accuracy"]) == pytest.approx(history[-1]["test_accuracy"])
        assert int(row["best_epoch"]) == 1
        assert int(row["parameters"]) == parameters[name]
        assert float(row["seconds_per_epoch"]) == pytest.approx(history[0]["seconds"])
        reached = history[0]["test_accuracy"] >= 0.95
        assert row["epochs_to_95"] == ("1" if reached else "")
        with open(out / name / "history.csv", newline="") as file:
            assert float(next(csv.DictReader(file))["test_loss"]) == pytest.approx(
                history[0]["test_loss"]
            )
        state = torch.load(out / name / "checkpoint.pt", weights_only=True)
        assert state["config"]["batch_size"] == 32 and state["config"]["seed"] == 1
    # the recipe: one-cycle for all, lower peaks for the recurrent models, orthogonal RNN
    state = torch.load(out / "rnn" / "checkpoint.pt", weights_only=True)
    assert state["name"] == "rnn-orthogonal"
    assert state["config"]["lr"] == 0.002 and state["config"]["schedule"] == "onecycle"
    assert state["config"]["clip_grad_norm"] is None
    state = torch.load(out / "gru" / "checkpoint.pt", weights_only=True)
    assert state["config"]["lr"] == 0.005 and state["config"]["schedule"] == "onecycle"
    state = torch.load(out / "lstm" / "checkpoint.pt", weights_only=True)
    assert state["config"]["lr"] == 0.005 and state["name"] == "lstm"
    state = torch.load(out / "cnn" / "checkpoint.pt", weights_only=True)
    assert state["config"]["lr"] == 0.01 and state["config"]["schedule"] == "onecycle"
    assert state["config"]["clip_grad_norm"] is None
    # the synthetic bars are learnable: the best model is well above chance (10%) already
    assert max(float(row["test_accuracy"]) for row in rows.values()) > 0.3
    table = (out / "comparison.md").read_text()
    assert table.count("\n") == 2 + len(MODELS)
    assert "| LSTM | " in table and "21,514" in table


@pytest.mark.slow
def test_report_assembles_everything(quick_run: tuple[Path, str]) -> None:
    out, log = quick_run
    report = (out / "REPORT.md").read_text()
    assert "--quick" in report and "--batch-size 32" in report
    assert (out / "comparison.md").read_text() in report
    for link in re.findall(r"\]\(([^)]+)\)", report):
        assert (out / link).is_file(), link
    for heading in (
        "Hidden-unit statistics",
        "Row-occlusion sensitivity",
        "Recurrent weights",
        "Activation maximisation",
    ):
        assert f"### {heading}" in report
    assert "report: " in log and "lens 2/4: row occlusion ..." in log
    assert "lens 4/4: activation maximisation: " in log
    for gate in ("| LSTM | f |", "| GRU | z |", "| RNN (tanh) | h |"):
        assert gate in report


def _trained(out: Path, name: str) -> torch.nn.Module:
    from netlens.models import LeNet5, RowClassifier

    model = LeNet5() if name == "cnn" else RowClassifier(name)
    model.load_state_dict(torch.load(out / name / "checkpoint.pt", weights_only=True)["model"])
    return model.double().eval()


@pytest.mark.slow
def test_lens_tables_hold_what_the_lenses_compute(
    quick_run: tuple[Path, str], data_dir: Path
) -> None:
    from netlens.datasets import MNIST

    out, _ = quick_run
    images = MNIST(data_dir, train=False, standardize=True).data.double()
    # hidden-unit statistics: the LSTM's output over all test digits and all 28 steps
    with torch.no_grad():
        states = _trained(out, "lstm").rnn(images)[0].reshape(-1, 128)
    with open(out / "lenses" / "hidden_stats_lstm.csv", newline="") as file:
        units = list(csv.DictReader(file))
    assert len(units) == 128
    assert all(int(float(unit["count"])) == TEST * 28 for unit in units)
    for column, reference in (("mean", states.mean(0)), ("std", states.std(0, correction=0))):
        measured = torch.tensor([float(unit[column]) for unit in units], dtype=torch.float64)
        torch.testing.assert_close(measured, reference, rtol=0, atol=1e-5)
    # row occlusion: hide rows r..r+2 of the first 32 digits, one offset at a time, by hand
    gru = _trained(out, "gru")
    digits = images[:32]
    background = (0 - 0.1307) / 0.3081
    with torch.no_grad():
        probabilities = gru(digits).softmax(1)
        target = probabilities.argmax(1)
        base = probabilities.gather(1, target[:, None])[:, 0]
        drop_sum, covered = torch.zeros(28, dtype=torch.float64), torch.zeros(28)
        for offset in range(26):
            hidden = digits.clone()
            hidden[:, offset : offset + 3] = background
            score = gru(hidden).softmax(1).gather(1, target[:, None])[:, 0]
            drop_sum[offset : offset + 3] += (base - score).mean()
            covered[offset : offset + 3] += 1
    with open(out / "lenses" / "row_occlusion.csv", newline="") as file:
        profile = list(csv.DictReader(file))
    assert [int(row["row"]) for row in profile] == list(range(28))
    assert set(profile[0]) == {"row", *MODELS}
    measured = torch.tensor([float(row["gru"]) for row in profile], dtype=torch.float64)
    torch.testing.assert_close(measured, drop_sum / covered, rtol=0, atol=2e-5)


@pytest.mark.slow
def test_resume_skips_finished_training(
    quick_run: tuple[Path, str], data_dir: Path, tmp_path: Path
) -> None:
    out, _ = quick_run
    copy = tmp_path / "out"
    (copy / "rnn").mkdir(parents=True)
    (copy / "rnn" / "checkpoint.pt").write_bytes((out / "rnn" / "checkpoint.pt").read_bytes())
    lines: list[str] = []
    example.print = lines.append
    try:
        argv = ["--data-dir", str(data_dir), "--out", str(copy), "--quick", "--no-progress"]
        argv += ["--batch-size", "32", "--seed", "1", "--models", "rnn", "--no-lenses"]
        assert example.main([*argv, "--resume"]) == 0
    finally:
        del example.print
    assert any("resumed from" in line and "after epoch 1" in line for line in lines)
    assert not any("epoch  1/1" in line for line in lines)  # nothing trained again
    before = json.loads((out / "rnn" / "history.json").read_text())
    assert json.loads((copy / "rnn" / "history.json").read_text()) == before
    assert "Lenses" not in (copy / "REPORT.md").read_text()


# -- bad input -----------------------------------------------------------------------------------


def _bad(tmp_path: Path, data_dir: Path) -> list[tuple[list[str], str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    return [
        (["--models", "rnn,transformer"], "--models"),
        (["--models", "rnn,rnn"], "twice"),
        (["--models", ","], "--models"),
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "ten"], "--epochs"),
        (["--lr", "-0.1"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--batch-size", "0"], "--batch-size"),
        (["--clip-grad-norm", "-1"], "--clip-grad-norm"),
        (["--schedule", "warm"], "--schedule"),
        (["--device", "tpu:x"], "--device"),
        *([] if torch.cuda.is_available() else [(["--device", "cuda"], "CUDA")]),
        (["--bogus"], "unrecognized"),
        (["--data-dir", str(tmp_path / "missing"), "--no-download"], "--download"),
        (["--data-dir", str(a_file)], "is a file"),
        (["--out", str(a_file)], "is a file"),
    ]


def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    for extra, needle in _bad(tmp_path, data_dir):
        argv = ["--data-dir", str(data_dir), "--out", str(out), "--quick", *extra]
        code, stdout, stderr = _run_cli(argv, capsys)
        assert code == 2, extra
        assert stderr.count("\n") == 1 and stderr.startswith("error: "), (extra, stderr)
        assert needle in stderr, (extra, stderr)
        assert "Traceback" not in stderr + stdout
        assert not out.exists(), extra


def test_bad_data_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_mnist(tmp_path / "plain", gz=False)
    (folder / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + bytes(12))
    out = tmp_path / "out"
    code, _, stderr = _run_cli(["--data-dir", str(folder), "--out", str(out), "--quick"], capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert "t10k-images-idx3-ubyte" in stderr and "magic number" in stderr
    assert not out.exists()
    truncated = write_mnist(tmp_path / "truncated")
    labels = truncated / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:-5]))
    code, _, stderr = _run_cli(["--data-dir", str(truncated), "--out", str(out)], capsys)
    assert code == 2 and stderr.count("\n") == 1 and "truncated" in stderr
    assert not out.exists()


@pytest.mark.slow
def test_resume_with_other_settings_is_refused_before_anything_changes(
    quick_run: tuple[Path, str], data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = quick_run
    checkpoint = out / "lstm" / "checkpoint.pt"
    before = checkpoint.read_bytes(), (out / "REPORT.md").read_bytes()
    argv = ["--data-dir", str(data_dir), "--out", str(out), "--quick", "--resume"]
    code, _, stderr = _run_cli([*argv, "--batch-size", "32", "--seed", "1", "--lr", "0.5"], capsys)
    assert code == 2 and stderr.count("\n") == 1 and "other settings (lr)" in stderr
    code, _, stderr = _run_cli(
        [*argv, "--batch-size", "32", "--seed", "1", "--init", "pytorch"], capsys
    )
    assert code == 2 and stderr.count("\n") == 1 and "'rnn-orthogonal', expected 'rnn'" in stderr
    assert (checkpoint.read_bytes(), (out / "REPORT.md").read_bytes()) == before


def test_orthogonal_init_of_the_row_classifier() -> None:
    from netlens.models import RowClassifier

    for cell, gates in (("rnn", 1), ("lstm", 4), ("gru", 3)):
        torch.manual_seed(0)
        model = RowClassifier(cell, input_size=5, hidden_size=6, orthogonal_init=True)
        weight = model.rnn.weight_hh_l0.detach().double()
        assert weight.shape == (gates * 6, 6)
        for block in weight.split(6):
            eye = torch.eye(6, dtype=torch.float64)  # float32 weights: rounding ~1e-7
            torch.testing.assert_close(block @ block.T, eye, rtol=0, atol=1e-6)
        torch.manual_seed(0)
        plain = RowClassifier(cell, input_size=5, hidden_size=6)
        # only weight_hh changes; the rest is PyTorch's default draw
        torch.testing.assert_close(model.rnn.weight_ih_l0, plain.rnn.weight_ih_l0)
        assert not torch.allclose(model.rnn.weight_hh_l0, plain.rnn.weight_hh_l0)


# -- hardening: downloads, resumes of another run -----------------------------------------------


def _closed_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/"


def test_failed_download_leaves_no_folder_and_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from netlens import datasets

    monkeypatch.setattr(datasets, "MNIST_MIRRORS", (_closed_url(), _closed_url()))
    data, out = tmp_path / "new" / "mnist", tmp_path / "out"
    code, _, stderr = _run_cli(["--data-dir", str(data), "--out", str(out), "--quick"], capsys)
    assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("error: ")
    assert "could not be downloaded" in stderr and "every one failed: (1) " in stderr
    assert list(tmp_path.iterdir()) == []  # neither new/mnist nor out
    # a local cause (the data dir lies under a file) is said once, and no mirror is tried
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    argv = ["--data-dir", str(blocker / "mnist"), "--out", str(out), "--quick"]
    code, _, stderr = _run_cli(argv, capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert stderr.count("not a folder") == 1 and "no other mirror was tried" in stderr
    assert "(1) " not in stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file"]


def test_download_into_an_unrelated_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    out = tmp_path / "out"
    code, _, stderr = _run_cli(["--data-dir", str(tmp_path), "--out", str(out)], capsys)
    assert code == 2 and "holds other files (notes.txt); refused to download MNIST" in stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_quick_checkpoint_is_not_resumed_by_a_full_run(
    quick_run: tuple[Path, str], data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = quick_run
    copy = tmp_path / "out" / "lstm"
    copy.mkdir(parents=True)
    (copy / "checkpoint.pt").write_bytes((out / "lstm" / "checkpoint.pt").read_bytes())
    argv = ["--data-dir", str(data_dir), "--out", str(copy.parent), "--models", "lstm"]
    argv += ["--batch-size", "32", "--seed", "1", "--resume", "--no-progress"]
    code, stdout, stderr = _run_cli(argv, capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert "other settings (quick)" in stderr and "--resume" in stderr
    assert "epoch" not in stdout


# -- a new user's first hour: one recipe name, reruns into the same --out, Ctrl-C, help ---------


def test_the_recipe_is_called_improved_and_tuned_still_works(tmp_path: Path) -> None:
    parse = example.parse_args
    assert parse(["--data-dir", str(tmp_path)]).recipe == "improved"
    assert parse(["--data-dir", str(tmp_path), "--recipe", "tuned"]).recipe == "improved"
    assert parse(["--data-dir", str(tmp_path), "--recipe", "report"]).recipe == "report"
    with pytest.raises(harness.ExampleError, match="invalid choice: 'tune'"):
        parse(["--data-dir", str(tmp_path), "--recipe", "tune"])
    text = " ".join(example.build_parser().format_help().split())
    assert "{improved,report}" in text and "tuned" not in text  # a hidden alias
    assert "module docstring" not in text
    assert "course report this library grew from" in text and "about 97%" in text
    assert "--quick takes about" in text


def _fake_checkpoint(path: Path, name: str, done: int, epochs: int) -> bytes:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    rows = [{"epoch": epoch} for epoch in range(1, done + 1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    harness.save_checkpoint(
        path, name, harness.TrainConfig(epochs=epochs), model, optimizer, scheduler,
        harness.History(rows),
    )  # fmt: skip
    return path.read_bytes()


def test_a_rerun_does_not_replace_another_runs_checkpoint(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    checkpoint = out / "gru" / "checkpoint.pt"
    before = _fake_checkpoint(checkpoint, "gru", done=4, epochs=10)
    argv = ["--data-dir", str(data_dir), "--out", str(out), "--quick", "--no-progress"]
    argv += ["--batch-size", "32", "--no-lenses", "--models", "rnn,gru"]
    code, stdout, stderr = _run_cli(argv, capsys)
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert f"{checkpoint} holds the checkpoint of another run (gru, 4 of 10 epochs" in stderr
    assert "--resume to continue" in stderr and "--overwrite to start afresh" in stderr
    assert "epoch" not in stdout  # refused before anything was trained
    assert checkpoint.read_bytes() == before
    assert sorted(str(path.relative_to(out)) for path in out.rglob("*")) == [
        "gru",
        "gru/checkpoint.pt",
    ]
    example.print = lambda *args: None  # the example logs with print
    try:
        assert example.main([*argv, "--models", "gru", "--overwrite"]) == 0
    finally:
        del example.print
    state = torch.load(checkpoint, weights_only=True)
    assert state["name"] == "gru" and len(state["history"]) == 1


def test_ctrl_c_writes_the_history_and_curves_of_the_epochs_done(
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    interrupt_in_training_step(monkeypatch, 8 + 3)  # 512 digits in batches of 64: epoch 2
    out = tmp_path / "out"
    argv = ["--data-dir", str(data_dir), "--out", str(out), "--epochs", "2", "--no-progress"]
    argv += ["--batch-size", "64", "--no-lenses", "--no-atlas", "--models", "rnn"]
    code, stdout, stderr = _run_cli(argv, capsys)
    assert code == 130
    assert stderr == "interrupted; rerun with --resume to continue from the last epoch\n"
    assert "epoch 1/2 took" in stdout and "to go for training" in stdout
    assert "interrupted in rnn's training after epoch 1 of 2: wrote rnn/history.csv" in stdout
    written = {str(path.relative_to(out)) for path in out.rglob("*") if path.is_file()}
    assert written == {
        "rnn/checkpoint.pt",
        "rnn/history.csv",
        "rnn/history.json",
        "rnn/curves.png",
        "comparison.csv",
        "comparison.md",
        "comparison.png",
    }
    assert [row["epoch"] for row in json.loads((out / "rnn" / "history.json").read_text())] == [1]
    with open(out / "comparison.csv", newline="") as file:
        assert [row["epochs"] for row in csv.DictReader(file)] == ["1"]


def test_the_digit_panels_say_predicted_and_true(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from netlens.datasets import MNIST
    from netlens.models import RowClassifier

    figures: dict[str, Any] = {}

    def keep(figure: Any, path: Path) -> None:
        figures[path.name] = figure

    monkeypatch.setattr(harness, "save_figure", keep)
    test = MNIST(data_dir, train=False, standardize=True)
    torch.manual_seed(0)
    models = {"gru": RowClassifier("gru").eval()}
    sizes = example.LensSizes(occlusion_digits=4, occlusion_window=3, maximize_steps=2)
    example.row_occlusion(models, (test.data, test.targets), tmp_path, sizes)
    titles = [axes.get_title() for axes in figures["row_occlusion_digits.png"].axes]
    with torch.no_grad():
        predicted = models["gru"](test.data[:3]).argmax(1).tolist()
    expected = [
        f"GRU: predicted {guess} (true: {int(label)})"
        for guess, label in zip(predicted, test.targets[:3], strict=True)
    ]
    assert [title for title in titles if title.startswith("GRU")] == expected
