"""Image scraper for the sphinx-gallery examples.

netlens draws on :class:`matplotlib.figure.Figure` objects without pyplot, so sphinx-gallery's
matplotlib scraper (which asks pyplot for its open figures) would see none of them. This one
looks for figures in the example's global variables after each code block and shows each new
one once, in the order the block created them; figures made with pyplot are found as well.
"""

from __future__ import annotations

import sys
import weakref
from pathlib import Path
from typing import Any

# Figures already shown in the current example; reset before each example.
_SHOWN: weakref.WeakSet[Any] = weakref.WeakSet()


def reset(gallery_conf: dict[str, Any], fname: str) -> None:
    """Forget the figures of the previous example (sphinx-gallery's ``reset_modules`` hook)."""
    _SHOWN.clear()


def _figures_in(value: Any, found: list[Any]) -> None:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

    if isinstance(value, Figure):
        found.append(value)
    elif isinstance(value, (Axes, SubFigure)):
        found.append(value.get_figure(root=True))
    elif isinstance(value, tuple) and len(value) <= 4:
        # ``fig, ax = result.plot()`` stores both; a returned tuple may also sit in one name.
        for item in value:
            _figures_in(item, found)


def scrape_figures(block: Any, block_vars: dict[str, Any], gallery_conf: dict[str, Any]) -> str:
    """Save the figures the last code block created and return the reST that shows them."""
    from sphinx_gallery.scrapers import figure_rst

    if "matplotlib.figure" not in sys.modules:
        return ""
    found: list[Any] = []
    for value in list(block_vars["example_globals"].values()):
        _figures_in(value, found)
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        found += [plt.figure(number) for number in plt.get_fignums()]
        plt.close("all")
    new = []
    for figure in found:
        if figure not in _SHOWN and figure not in new:
            new.append(figure)
    # The order of first assignment of the variables that hold them: the order of the code.
    paths = []
    image_paths = block_vars["image_path_iterator"]
    for figure in new:
        _SHOWN.add(figure)
        path = Path(next(image_paths))
        figure.savefig(path, dpi=figure.get_dpi(), facecolor="white")
        paths.append(str(path))
    return figure_rst(paths, gallery_conf["src_dir"])
