"""The scripts under ``examples/``, loaded as modules for the tests that drive them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str, *, reuse: bool = False) -> ModuleType:
    """Run ``examples/<name>.py`` as the module ``name`` and register it in ``sys.modules``.

    Each call runs the script afresh, unless ``reuse`` and a module of that name is loaded.
    """
    if reuse and name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def interrupt_in_training_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Ctrl-C at the ``step``-th training step (counted over epochs), as a user would press it."""
    real = torch.nn.functional.cross_entropy
    steps = []

    def cross_entropy(*args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.get("reduction", "mean") == "mean":  # training; evaluation sums
            steps.append(1)
            if len(steps) == step:
                raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", cross_entropy)
