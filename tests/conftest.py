from __future__ import annotations

import os

import matplotlib
import pytest
import torch

from netlens.testing import ZooModel, model_zoo

os.environ.setdefault("MPLBACKEND", "Agg")
matplotlib.use("Agg")

ZOO_NAMES = sorted(model_zoo())


@pytest.fixture(params=ZOO_NAMES)
def zoo_model(request: pytest.FixtureRequest) -> ZooModel:
    """Each tiny model of netlens.testing.model_zoo, built fresh for every test."""
    return model_zoo()[request.param]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
