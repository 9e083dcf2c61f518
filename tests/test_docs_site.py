"""The built documentation as a reader meets it: API pages, first screens, phones.

These tests read the site that ``sphinx-build -b html docs docs/_build/html`` writes (CI builds
it before the tests). Without a built site they skip, except where ``NETLENS_REQUIRE_DOCS`` is
set (as CI sets it), where they fail.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any

import pytest

SITE = Path(__file__).resolve().parents[1] / "docs" / "_build" / "html"

# The pages that teach one technique each, and getting started: each opens with its picture.
GUIDES = [
    "getting_started.html",
    "guide/recording.html",
    "guide/grids.html",
    "guide/statistics.html",
    "guide/deconvnet.html",
    "guide/occlusion.html",
    "guide/maximization.html",
    "guide/atlas.html",
]

# A qualified name with Sphinx's "last component only" tilde left in: ``~torch.Tensor``.
_TILDE_NAME = re.compile(r"~[A-Za-z_]\w*\.")


@pytest.fixture(scope="module")
def site() -> Path:
    if not (SITE / "index.html").is_file():
        if os.environ.get("NETLENS_REQUIRE_DOCS"):
            pytest.fail(f"no built documentation at {SITE}; build it first")
        pytest.skip("the documentation is not built (sphinx-build -b html docs docs/_build/html)")
    return SITE


def _text(page: str) -> str:
    """What a reader sees of a page's HTML, code blocks left out (a doctest may show ``~x``)."""
    page = re.sub(r"<pre>.*?</pre>", " ", page, flags=re.DOTALL)
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def test_no_api_page_shows_a_tilde_in_a_type(site: Path) -> None:
    pages = sorted((site / "api" / "generated").glob("*.html"))
    assert len(pages) > 20
    shown = {
        page.name: _TILDE_NAME.findall(_text(page.read_text(encoding="utf-8"))) for page in pages
    }
    assert {name: found for name, found in shown.items() if found} == {}


def test_occlusion_lists_its_parameters_before_the_algorithm(site: Path) -> None:
    text = _text((site / "api" / "generated" / "netlens.occlusion.html").read_text("utf-8"))
    assert text.index("Parameters") < text.index("Notes") < text.index("Nakandala")


@pytest.mark.parametrize("address", GUIDES)
def test_a_guide_opens_with_its_picture(browser: Any, site: Path, address: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto((site / address).as_uri())
        first = page.evaluate(
            """() => {
              const image = document.querySelector('article img');
              if (!image) return null;
              const box = image.getBoundingClientRect();
              return {top: box.top, bottom: box.bottom, height: box.height,
                      loaded: image.complete && image.naturalWidth > 0};
            }"""
        )
    finally:
        page.close()
    assert first is not None, f"{address} has no picture"
    assert first["loaded"]
    assert first["height"] > 120
    assert first["bottom"] <= 900, f"{address}: the first picture ends at {first['bottom']} px"


def test_the_landing_page_fits_a_phone(browser: Any, site: Path) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        page.goto((site / "index.html").as_uri())
        shown = page.evaluate(
            """() => {
              const visible = [...document.querySelectorAll('article figure')]
                .filter(f => f.offsetParent !== null);
              const image = visible[0].querySelector('img');
              return {figures: visible.length, width: image.getBoundingClientRect().width,
                      natural: image.naturalWidth,
                      scrolls: document.documentElement.scrollWidth > window.innerWidth};
            }"""
        )
    finally:
        page.close()
    assert not shown["scrolls"]
    # One picture, the one-column one, drawn at no less than 80% of its pixels: its labels keep
    # at least 80% of their size.
    assert shown["figures"] == 1
    assert shown["width"] >= 0.8 * shown["natural"]
