"""Sphinx configuration for netlens.

The build works offline: no intersphinx, no remote assets, no downloads in the gallery. One
command builds everything, gallery included, with warnings as errors and every cross-reference
checked::

    sphinx-build -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE / "_ext"))
os.environ.setdefault("MPLBACKEND", "Agg")
# The gallery's models are tiny: one thread is as fast as several, and on a shared CI runner
# several threads contend (25 times slower per training step on a loaded 2-core machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from sphinx.util.inspect import TypeAliasForwardRef  # noqa: E402

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
    "sphinx_copybutton",
    "sphinx_gallery.gen_gallery",
    "short_types",
]
autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
# Signatures show the alias, linked to its entry, instead of the union it stands for.
autodoc_type_aliases = {"LayerSpec": "netlens.LayerSpec"}


def _alias_repr(self: object) -> str:
    return str(self.name)  # type: ignore[attr-defined]


# Sphinx spells an alias inside a union (``LayerSpec | None``) with the repr of its placeholder,
# "TypeAliasForwardRef('netlens.LayerSpec')"; its name is what the reader (and the link) needs.
TypeAliasForwardRef.__repr__ = _alias_repr  # type: ignore[method-assign]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "_ext",
    "_extra",
    "api/generated/*.md",
    # The gallery's sources; sphinx-gallery turns them into pages under gallery/.
    "gallery_src",
    "gallery/*.ipynb",
    "gallery/*.py",
    "gallery/*.zip",
]

# -- Cross-references ------------------------------------------------------------------------
# Every reference must resolve (``-W`` turns a broken one into an error). Without network there is
# no intersphinx, so names of other projects cannot link anywhere; they are listed here, by
# project, rather than left as broken links. Everything under ``netlens`` must resolve.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|numpy|np|matplotlib|typing_extensions|collections|os|pathlib)(\..*)?"),
    (r"py:.*", r"(nn|Tensor|Module|Figure|Axes|NDArray|Path|PathLike|Iterable|Iterator)(\..*)?"),
    (r"py:.*", r"(Sequence|Mapping|Callable|Generator|ModuleType|TypeAlias|Literal)(\..*)?"),
    (r"py:.*", r"(DataLoader|Dataset|ProcessGroup|PackedSequence|TorchFunctionMode)"),
]
# Private names that public signatures mention: literal aliases whose values each parameter's
# description spells out, and internal helper classes.
nitpick_ignore = [
    ("py:class", "Normalize"),
    ("py:class", "MapName"),
    ("py:class", "LayerView"),
    ("py:class", "_Term"),
    ("py:class", "netlens.testing._State"),
    # An atlas' parts: described in the attributes that hold them (Atlas.occluded,
    # AtlasLayer.histogram).
    ("py:class", "netlens._atlas.inputs.Occluded"),
    ("py:class", "netlens._atlas.histogram.Histogram"),
    # Written in modules being reworked now; to be made resolvable there (see the release list).
    ("py:data", "netlens._color.IMAGENET_COLOR_SQRT"),
    ("py:meth", "Maximization.plot"),
]

# -- HTML --------------------------------------------------------------------------------------
# pydata-sphinx-theme: the theme of NumPy, SciPy, pandas, Matplotlib, scikit-learn and (as its
# base) PyTorch's own docs, so netlens reads like the sites its users compare it with. It also
# styles sphinx-gallery pages out of the box, keeps a page outline on the right, has a dark
# mode, and scrolls long code lines instead of cutting them. Everything it needs is bundled: the
# site works offline.
html_theme = "pydata_sphinx_theme"
html_title = f"netlens {release}"
html_static_path = ["_static"]
# Files the build makes and copies into the site as they are: the gallery's atlas
# (gallery_src/plot_09_atlas.py writes docs/_extra/atlas/). Created here so that the path
# exists before the gallery runs.
(HERE / "_extra").mkdir(exist_ok=True)
html_extra_path = ["_extra"]
html_css_files = ["netlens.css"]
html_show_sourcelink = False
html_theme_options = {
    "logo": {"text": "netlens"},
    "navbar_align": "left",
    "header_links_before_dropdown": 6,
    "show_toc_level": 2,
    "navigation_with_keys": False,
    # One sidebar on the left (the section's pages, then this page's outline) instead of one on
    # each side: at 1280 px the text column is then about 900 px wide instead of 630, room for a
    # 100-character code line and for wide figures at their own size.
    "secondary_sidebar_items": [],
    "primary_sidebar_end": [],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
    # No repository URL exists yet, so no "edit this page" or GitHub icon links.
    "use_edit_page_button": False,
    "icon_links": [],
}
html_sidebars = {
    "**": ["sidebar-nav-bs", "page-toc"],
    # The landing page and the gallery's index use the full width: their pictures are the content.
    "index": [],
    "gallery/index": [],
    # Pages without pages below them: "Section Navigation" would be an empty heading.
    "getting_started": ["page-toc"],
    "migrating": ["page-toc"],
    "architecture": ["page-toc"],
    "releasing": ["page-toc"],
    "changelog": ["page-toc"],
}

# -- Copy buttons ------------------------------------------------------------------------------
# Copying a doctest or a shell line copies only what one types, without prompts or output.
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True
copybutton_exclude = ".linenos, .gp, .go"

# -- Gallery -----------------------------------------------------------------------------------
# The example scripts live in docs/gallery_src (docs content, next to what builds them, and not
# mistaken for the experiments in examples/); each is executed on every build and becomes a page
# under docs/gallery with its figures, a .py and a .ipynb download.
sphinx_gallery_conf = {
    "examples_dirs": "gallery_src",
    "gallery_dirs": "gallery",
    "filename_pattern": r"plot_",
    "within_subsection_order": "FileNameSortKey",
    # netlens draws on Figures without pyplot; this scraper finds them in the script's globals.
    "image_scrapers": ("gallery_scraper.scrape_figures",),
    "reset_modules": ("gallery_scraper.reset",),
    # A trailing ``fig`` shows the figure in a notebook; in the page the scraper shows it once.
    "capture_repr": ("_repr_html_",),
    "abort_on_example_error": True,
    "remove_config_comments": True,
    "download_all_examples": False,
    "show_signature": False,
    "min_reported_time": 1,
    # Its page of timings loads scripts from CDNs; the site must work offline.
    "write_computation_times": False,
    # The notebooks begin by installing nothing: they run where netlens is installed.
    "first_notebook_cell": None,
    # Each API page ends with the gallery examples that call it, as thumbnails (the "Examples
    # using ..." of scikit-learn and Matplotlib): a picture of what the function makes.
    "doc_module": ("netlens",),
    "backreferences_dir": "api/backreferences",
}

# -- API reference, generated from ``netlens.__all__`` ----------------------------------------
# Sections of the API page, in reading order. A public name missing here still gets a page,
# under "More", so that nothing in ``__all__`` goes undocumented.
_API_SECTIONS = [
    ("Finding and recording layers", ["find_layers", "record", "Recorder"]),
    ("Pictures of weights and activations", ["FilterGrid", "ActivationGrid"]),
    (
        "Statistics over a data set",
        ["activation_stats", "ActivationStats", "ChannelStats", "color_stats", "ColorStats"],
    ),
    (
        "Deconvnet projections",
        ["deconvnet", "Projection", "top_activations", "TopActivations"],
    ),
    ("Occlusion sensitivity", ["occlusion", "OcclusionMap"]),
    ("Activation maximisation", ["maximize_activation", "Maximization", "objectives"]),
    ("An atlas of a model", ["atlas", "Atlas", "AtlasLayer", "ChannelCard"]),
    (
        "Errors",
        [
            "NetlensError",
            "NetlensTypeError",
            "NetlensValueError",
            "LayerNotFoundError",
            "NotRecordedError",
            "UnsupportedModelError",
        ],
    ),
]
_SUBMODULES = ["testing", "models", "datasets"]


def _layer_spec_entry() -> list[str]:
    """``LayerSpec`` is a type alias: document it as one, with its value and its own comment."""
    from sphinx.pycode import ModuleAnalyzer

    comments = ModuleAnalyzer.for_module("netlens._core.layers").find_attr_docs()
    doc = [line for line in comments.get(("", "LayerSpec"), []) if line.strip()]
    value = "str | type[nn.Module] | nn.Module | Sequence[str | type[nn.Module] | nn.Module]"
    return [
        ".. py:type:: LayerSpec",
        f"   :canonical: {value}",
        "",
        *[f"   {line}" for line in doc],
        "",
        "   Every function that takes ``layer`` or ``layers`` accepts it;",
        "   :func:`find_layers` shows what each form selects.",
        "",
    ]


def _write_api_page() -> None:
    """Write api/index.rst from ``netlens.__all__``, so that it covers every public name."""
    public = [name for name in netlens.__all__ if not name.startswith("_")]
    placed = {name for _, names in _API_SECTIONS for name in names} | {"LayerSpec"}
    sections = [(title, [n for n in names if n in public]) for title, names in _API_SECTIONS]
    rest = [name for name in public if name not in placed]
    if rest:
        sections.append(("More", rest))
    lines = [
        "API reference",
        "=============",
        "",
        "Every public name of ``netlens`` (generated from ``netlens.__all__``), grouped by what it",
        "is for. Each page shows the signature, what every parameter means, and runnable examples;",
        "a class's page lists its methods and properties.",
        "",
        ".. currentmodule:: netlens",
        "",
    ]
    for title, names in sections:
        if not names:
            continue
        lines += [title, "-" * len(title), "", ".. autosummary::", "   :toctree: generated", ""]
        lines += [f"   {name}" for name in names]
        lines.append("")
        if title == "Finding and recording layers" and "LayerSpec" in public:
            lines += _layer_spec_entry()
    submodules = [
        name
        for name in _SUBMODULES
        if (HERE.parent / "src" / "netlens" / f"{name}.py").exists()
        or (HERE.parent / "src" / "netlens" / name).is_dir()
    ]
    lines += ["Submodules", "----------", "", ".. autosummary::", "   :toctree: generated", ""]
    lines += [f"   {name}" for name in submodules]
    text = "\n".join(lines) + "\n"
    target = HERE / "api" / "index.rst"
    target.parent.mkdir(exist_ok=True)
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


_write_api_page()


def _is_private(base: type) -> bool:
    """A netlens class that ``netlens`` does not export (a shared base such as ``_Grid``)."""
    module = getattr(base, "__module__", "")
    return module.startswith("netlens") and getattr(netlens, base.__name__, None) is not base


def _public_bases(app: object, name: str, obj: object, options: object, bases: list[type]) -> None:
    """Show a class's public bases: a private netlens base gives way to its own bases."""
    index = 0
    while index < len(bases):
        base = bases[index]
        if isinstance(base, type) and _is_private(base):
            bases[index : index + 1] = [b for b in base.__bases__ if b is not object]
            continue
        index += 1


def _has_public_base(cls: type) -> bool:
    bases = [b for b in getattr(cls, "__orig_bases__", cls.__bases__) if b is not object]
    while any(isinstance(b, type) and _is_private(b) for b in bases):
        bases = [
            parent
            for b in bases
            for parent in ((b.__bases__) if isinstance(b, type) and _is_private(b) else (b,))
            if parent is not object
        ]
    return bool(bases)


# The class template shows "Bases: ..." only for classes with a public base to name (the errors,
# Recorder as a Mapping); for the others it would read "Bases: object".
autosummary_context = {
    "show_bases": sorted(
        name
        for name in netlens.__all__
        if isinstance(getattr(netlens, name), type) and _has_public_base(getattr(netlens, name))
    )
}


def _no_inline_types(
    app: object, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Keep napoleon from reading "Words: more words" as "type: description".

    For properties and data, napoleon takes everything before the first colon of the first line
    as a type ("Boolean per channel: ..." would become the type "Boolean per channel"). netlens
    writes types as annotations only, so a first line that is an empty reST comment (napoleon
    skips blank lines, not comments) turns that reading off.
    """
    if what in ("attribute", "property", "data") and lines and ":" in lines[0]:
        lines[:0] = ["..", ""]


def setup(app: object) -> None:
    """Connect the hooks above."""
    app.connect("autodoc-process-bases", _public_bases)  # type: ignore[attr-defined]
    # Before napoleon (priority 500), which reads the docstring's first line.
    app.connect("autodoc-process-docstring", _no_inline_types, priority=400)  # type: ignore[attr-defined]
