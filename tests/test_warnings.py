"""Every warning netlens gives points at the line that called netlens, not inside the library.

A warning is only useful where it names the user's line (``warnings.filterwarnings(module=)``
filters by it too): whatever depth of the library it comes from, its filename is this file's.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from _models import TanhBetweenConvs, seeded

import netlens as nl
from netlens.testing import model_zoo

SOURCE = Path(nl.__file__).parent


def _caught(call: Callable[[], Any], category: type[Warning]) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [w for w in caught if issubclass(w.category, category)]


def _nan_batches() -> list[torch.Tensor]:
    batch = torch.randn(4, 1, 8, 8)
    batch[0, 0, 0, 0] = float("nan")
    return [batch]


CASES: dict[str, tuple[Callable[[], Any], type[Warning]]] = {
    "deconvnet through a tanh": (
        lambda: nl.deconvnet(seeded(TanhBetweenConvs), torch.randn(2, 1, 6, 6), "conv2", 0),
        UserWarning,
    ),
    "top_activations through a tanh": (
        lambda: nl.top_activations(seeded(TanhBetweenConvs), torch.randn(3, 1, 6, 6), "conv2", k=2),
        UserWarning,
    ),
    "activation_stats counting NaN": (
        lambda: nl.activation_stats(
            model_zoo()["conv"].model, _nan_batches(), "conv1", nonfinite="count"
        ),
        RuntimeWarning,
    ),
    "ActivationStats.compute": (
        lambda: nl.ActivationStats().update(torch.tensor([[float("nan"), 1.0]])).compute(),
        RuntimeWarning,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_warning_names_the_callers_line(name: str) -> None:
    call, category = CASES[name]
    caught = _caught(call, category)
    assert caught, f"{name} gave no {category.__name__}"
    for warning in caught:
        assert warning.filename == __file__, (name, warning.filename, warning.lineno)


def test_a_missing_progress_bar_is_reported_at_the_callers_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import tqdm.auto now fails
    zoo = model_zoo()["conv"]
    calls: list[Callable[[], Any]] = [
        lambda: nl.occlusion(zoo.model, zoo.inputs, window=4, progress=True, incremental=False),
        lambda: nl.activation_stats(zoo.model, zoo.inputs, "conv1", progress=True),
    ]
    for call in calls:
        caught = _caught(call, UserWarning)
        assert caught and all("tqdm" in str(w.message) for w in caught)
        assert {w.filename for w in caught} == {__file__}


def test_every_warning_goes_through_the_one_helper() -> None:
    """A direct ``warnings.warn`` would need its stacklevel counted by hand, and goes stale."""
    direct = [
        f"{path.relative_to(SOURCE)}:{number}"
        for path in sorted(SOURCE.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bwarnings\.warn\(", line) and path.name != "errors.py"
    ]
    assert not direct, f"warnings.warn outside netlens._core.errors.warn: {direct}"
