"""Sphinx configuration for netlens. The build works offline: no intersphinx, no remote assets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "src"))
os.environ.setdefault("MPLBACKEND", "Agg")

import netlens  # noqa: E402

project = "netlens"
author = "The netlens developers"
copyright = "2026, The netlens developers"
release = netlens.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
]
autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# The docs must build without network: no intersphinx mapping is configured on purpose.
html_theme = "alabaster"
html_static_path = ["_static"]
templates_path = ["_templates"]
exclude_patterns = ["_build", "api/generated/*.md"]
nitpicky = False


def _write_api_page() -> None:
    """Generate the API reference from ``netlens.__all__`` so that it covers every public name."""
    names = [name for name in netlens.__all__ if not name.startswith("_")]
    lines = [
        "API reference",
        "=============",
        "",
        "Every public name of ``netlens`` (generated from ``netlens.__all__``).",
        "",
        ".. currentmodule:: netlens",
        "",
        ".. autosummary::",
        "   :toctree: generated",
        "",
    ]
    lines += [f"   {name}" for name in names]
    lines += ["", "Submodules", "----------", "", ".. autosummary::", "   :toctree: generated", ""]
    lines += ["   testing", "   models"]
    for extra in ("datasets",):
        if (HERE.parent / "src" / "netlens" / f"{extra}.py").exists() or (
            HERE.parent / "src" / "netlens" / extra
        ).is_dir():
            lines.append(f"   {extra}")
    text = "\n".join(lines) + "\n"
    target = HERE / "api" / "index.rst"
    target.parent.mkdir(exist_ok=True)
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


_write_api_page()
