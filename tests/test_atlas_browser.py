"""The atlas' site in a real browser: Playwright driving the system's headless Chromium.

The ``browser`` fixture (conftest.py) launches the system's Chromium; without one the tests
skip, except where ``NETLENS_REQUIRE_BROWSER`` is set (as CI sets it), where they fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import netlens as nl
from netlens._atlas.site import slug
from netlens.testing import TinyConvNet

ONE_THREAD = True

HOSTILE = "<img src=x onerror=alert(1)>"


class _Named(nn.Module):
    """TinyConvNet's first layers, the second one under a hostile name."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.add_module(HOSTILE, nn.Conv2d(3, 4, 3, padding=1))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(getattr(self, HOSTILE)(torch.relu(self.conv1(x)))).flatten(1)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    images = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    nl.atlas(
        TinyConvNet().eval(), [images[:10], images[10:]], ["conv1", "conv2"], out=out, k=3, steps=4
    )
    return out


def _open(browser: Any, url: str, width: int = 1280) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": width, "height": 900})
    problems: list[str] = []
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss())
    )
    page.goto(url)
    page.wait_for_load_state("load")
    return page, problems


def _images_loaded(page: Any) -> list[int]:
    # lazy images outside the viewport load on scrolling: bring every one into view first
    page.evaluate("Array.from(document.images).forEach(image => image.loading = 'eager')")
    page.wait_for_function("Array.from(document.images).every(image => image.complete)")
    return list(page.evaluate("Array.from(document.images).map(image => image.naturalWidth)"))


def _no_horizontal_scroll(page: Any) -> bool:
    return bool(
        page.evaluate(
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
    )


@pytest.mark.parametrize(
    "address",
    ["index.html", "conv2/index.html", "conv2/2.html"],
    ids=["index", "layer", "channel"],
)
def test_pages_load_without_errors_on_a_desk_and_a_phone(
    browser: Any, site: Path, address: str
) -> None:
    for width in (1280, 390):
        page, problems = _open(browser, (site / address).as_uri(), width)
        widths = _images_loaded(page)
        assert all(width > 0 for width in widths), widths
        if address != "index.html":
            assert widths, "a layer or channel page without pictures"
        assert _no_horizontal_scroll(page), f"{address} scrolls sideways at {width} px"
        assert problems == []
        page.close()


def test_arrow_keys_move_between_channels(browser: Any, site: Path) -> None:
    page, problems = _open(browser, (site / "conv2" / "2.html").as_uri())
    page.keyboard.press("ArrowRight")
    page.wait_for_url("**/conv2/3.html")
    page.keyboard.press("ArrowLeft")
    page.wait_for_url("**/conv2/2.html")
    page.keyboard.press("ArrowLeft")
    page.wait_for_url("**/conv2/1.html")
    assert problems == []
    page.close()


def test_a_layer_sorts_its_channels(browser: Any, site: Path) -> None:
    book_page, problems = _open(browser, (site / "conv2" / "index.html").as_uri())
    order = "Array.from(document.querySelectorAll('#tiles .tile')).map(t => t.dataset.index)"
    assert book_page.evaluate(order) == [str(channel) for channel in range(6)]
    book_page.click("button[data-sort=mean]")
    means = book_page.evaluate(
        "Array.from(document.querySelectorAll('#tiles .tile')).map(t => parseFloat(t.dataset.mean))"
    )
    assert means == sorted(means, reverse=True)
    book_page.click("button[data-sort=index]")
    assert book_page.evaluate(order) == [str(channel) for channel in range(6)]
    assert problems == []
    book_page.close()


def test_a_hostile_layer_name_runs_nothing(browser: Any, tmp_path: Path) -> None:
    images = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    nl.atlas(_Named().eval(), [images], ["conv1", HOSTILE], out=tmp_path, k=2, steps=2)
    folder = slug(HOSTILE)
    for address in ("index.html", f"{folder}/index.html", f"{folder}/1.html"):
        page, problems = _open(browser, (tmp_path / address).as_uri())
        _images_loaded(page)
        assert problems == [], address  # no alert dialog, no error from a broken <img>
        assert HOSTILE in page.inner_text("body")  # shown as text
        page.close()
