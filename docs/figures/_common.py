"""What the figure scripts share: the trained reference checkpoints they draw from."""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def require(*paths: Path) -> None:
    """Exit with a one-line error when a checkpoint is missing, before any long work."""
    for path in paths:
        if not path.is_file():
            sys.exit(f"error: checkpoint {path} is missing; train it first (see examples/).")


def load(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """``model`` with the weights in ``path``, in eval mode, on the CPU."""
    require(path)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
