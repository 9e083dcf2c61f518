from __future__ import annotations

import os
from collections.abc import Iterator

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


@pytest.fixture(autouse=True, scope="module")
def _one_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    """One intra-op thread for the tests of a module that sets ``ONE_THREAD = True``.

    Tiny models gain nothing from intra-op threads and lose much on a shared machine; the
    distributed tests need it for reductions that agree across ranks. The thread count is
    restored after the module.
    """
    if not getattr(request.module, "ONE_THREAD", False):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
