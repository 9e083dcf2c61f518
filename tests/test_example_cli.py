"""The examples' command lines and install hints, beside the end-to-end tests of each script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from _examples import load_example

ONE_THREAD = True


def test_distributed_lenses_has_quick_as_the_other_examples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_example_cifar import write_cifar  # CIFAR-10 in its official layout, small

    example = load_example("distributed_lenses")
    data = tmp_path / "data"
    parse = example.parse
    assert parse(["--data-dir", str(data), "--out", "o", "--quick"]).limit == 1000
    assert parse(["--data-dir", str(data), "--out", "o", "--quick", "--limit", "7"]).limit == 7
    assert parse(["--data-dir", str(data), "--out", "o", "--limit", "7"]).limit == 7
    assert parse(["--data-dir", str(data), "--out", "o"]).limit is None
    with pytest.raises(SystemExit):
        parse(["--data-dir", str(data), "--out", "o", "--limit", "0"])
    # one process, end to end: --quick reads only the first QUICK_IMAGES test images
    write_cifar(data)
    monkeypatch.setattr(example, "QUICK_IMAGES", 40)
    out = tmp_path / "out"
    argv = ["--data-dir", str(data), "--out", str(out), "--quick", "--batch-size", "20"]
    assert example.main(argv) == 0
    assert json.loads((out / "run.json").read_text())["images"] == 40


def test_progress_without_tqdm_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from netlens._core.model import progress_bar

    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import tqdm.auto raises ImportError
    with pytest.warns(UserWarning, match="pip install tqdm") as caught:
        assert list(progress_bar([1, 2], enabled=True)) == [1, 2]
    message = str(caught[0].message)
    assert "pip install -e '.[progress]'" in message and "netlens[" not in message
