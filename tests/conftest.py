from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

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


# -- A real browser, for the atlas' site and the docs ------------------------------------------
# No browser is downloaded: Playwright launches the Chromium that the system has (Debian's
# ``chromium-headless-shell``; ``.ci/run`` installs it). Without one the tests that take this
# fixture skip, except where ``NETLENS_REQUIRE_BROWSER`` is set (as CI sets it): they fail.
_CANDIDATES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def _executable() -> str | None:
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _executable()
    required = bool(os.environ.get("NETLENS_REQUIRE_BROWSER"))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            raise
        pytest.skip("playwright is not installed")
    if executable is None:
        if required:
            pytest.fail(f"no Chromium found (looked for {', '.join(_CANDIDATES)})")
        pytest.skip("no Chromium on this machine")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()
