"""All drawing goes through here: new figures, saving, notebook display, image montages, maps.

matplotlib is imported lazily, inside the functions, so ``import netlens`` stays free of it.
Figures are ``matplotlib.figure.Figure`` objects made directly: pyplot's global state is never
touched, nothing is shown or printed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch

from .errors import NetlensTypeError, NetlensValueError, describe

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage
    from matplotlib.text import Text

__all__ = [
    "Along",
    "Plottable",
    "axes_grid",
    "axes_stack",
    "category_colours",
    "colour_bar",
    "display",
    "draw_bars",
    "draw_categories",
    "draw_category_strip",
    "draw_cells",
    "draw_input",
    "draw_profile",
    "draw_signed_overlay",
    "draw_strip",
    "figure_axes",
    "fit_text",
    "frame_plane",
    "grid",
    "integer_ticks",
    "label_room",
    "montage",
    "new_figure",
    "position_ticks",
    "save_figure",
    "set_title",
    "set_xlabel",
    "text_width",
]

#: The axis of a plot along which a sequence's positions run.
Along = Literal["x", "y"]

SAVE_FORMATS = ("png", "svg", "pdf")
# The largest side of a figure, in inches: bigger ones are hard to look at and slow to save.
_LARGEST = 16.0


def new_figure(width: float, height: float) -> Figure:
    """A new constrained-layout ``Figure`` of at most 16 x 16 inches, outside pyplot.

    Its layout also keeps the titles set by :func:`set_title` within their Axes.
    """
    from matplotlib.figure import Figure

    size = (min(max(width, 1.0), _LARGEST), min(max(height, 1.0), _LARGEST))
    return Figure(figsize=size, layout=_new_fitting_layout())


def figure_axes(
    ax: Any, *, width: float, height: float, title: tuple[str, Any] | None = None
) -> tuple[Figure, Axes]:
    """``(ax.figure, ax)`` for a given ``Axes``, else a new figure of that size with one Axes.

    ``title`` (its text and font size) widens a new figure, up to 8 inches, so that the title
    takes two lines at most.
    """
    if ax is not None:
        from matplotlib.axes import Axes

        if not isinstance(ax, Axes):
            raise NetlensTypeError(
                f"Expected ax to be a matplotlib Axes or None, but got {describe(ax)}."
            )
        return cast("Figure", ax.figure), ax
    if title is not None:
        width = max(width, min(text_width(*title) / 2 + 0.4, 8.0))
    figure = new_figure(width, height)
    return figure, figure.add_subplot()


def save_figure(figure: Figure, path: str | os.PathLike[str], *, dpi: float | None = None) -> None:
    """Write ``figure`` to a PNG, SVG or PDF file, the format chosen by the path's suffix."""
    if not isinstance(path, (str, os.PathLike)):
        raise NetlensTypeError(f"Expected path to be a str or a path, but got {describe(path)}.")
    suffix = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if suffix not in SAVE_FORMATS:
        raise NetlensValueError(
            f"Expected a path ending in .png, .svg or .pdf, but got {os.fspath(path)!r}."
        )
    figure.savefig(path, format=suffix, dpi=dpi if dpi is not None else "figure")


class Plottable:
    """``save`` and notebook display for results and grids, both drawn by their ``plot``."""

    def plot(self, ax: Any = None) -> tuple[Figure, Axes]:
        """Draw on ``ax`` or a new figure; returns ``(Figure, Axes)``."""
        raise NotImplementedError

    def save(self, path: str | os.PathLike[str], *, dpi: float | None = None) -> None:
        """Write the figure of :meth:`plot` to a PNG, SVG or PDF file, chosen by the suffix.

        Args:
            path: Where to write; its suffix (``.png``, ``.svg``, ``.pdf``) picks the format.
            dpi: Resolution of a PNG (the figure's own when None).
        """
        figure, _ = self.plot()
        save_figure(figure, path, dpi=dpi)

    def _repr_png_(self) -> bytes:
        """The figure of :meth:`plot` as PNG bytes, so that notebooks show the result."""
        figure, _ = self.plot()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()


# -- text that fits ---------------------------------------------------------------------------
#
# Constrained layout makes room for the height of a title or an x label, not for its width: a
# title wider than its Axes (a long layer name) runs over its neighbours or off the figure. Such
# text is broken into lines that fit, when the figure is laid out, so that nothing a result
# draws is cut off, in a saved file or in a notebook.

# Agg draws text a little wider than the outlines measure (hinting): a margin for that.
_TEXT_MARGIN = 1.06
# Labels along x up to this wide (inches) stay level when there are too many: they are thinned.
_SHORT_LABEL = 0.45
# Where a word too long for a line is best broken: after one of these.
_BREAKS = "._/-:,"


def text_width(text: str, fontsize: Any) -> float:
    """Width in inches of one line of ``text`` at ``fontsize`` (points, or a name: "small")."""
    from matplotlib.font_manager import FontProperties

    font = FontProperties(size=fontsize)  # the default font, as titles and labels use it
    return sum(_advance(letter, font) for letter in text) / 72 * _TEXT_MARGIN


@lru_cache(maxsize=4096)
def _advance(letter: str, font: Any) -> float:
    """The width in points of one letter of ``font``.

    Text is measured letter by letter: without kerning, which the margin covers.
    """
    from matplotlib.textpath import text_to_path

    width, _, _ = text_to_path.get_text_width_height_descent(letter, font, ismath=False)
    return float(width)


def fit_text(text: str, room: float, fontsize: Any, *, max_lines: int | None = None) -> str:
    """``text`` broken into lines no wider than ``room`` inches at ``fontsize``.

    Lines break between words; a word wider than a line (a long layer name) breaks after its
    last ``.``, ``_``, ``/``, ``-``, ``:`` or ``,`` that fits, else after its last character
    that fits. Beyond ``max_lines`` lines, the middle of the text gives way to an ellipsis.
    Text that fits is returned as it is.
    """
    if text_width(text, fontsize) <= room:
        return text
    lines = _wrapped(text, room, fontsize)
    if max_lines is None or len(lines) <= max_lines:
        return "\n".join(lines)
    # the longest shortening that fits: more of the end (a layer's own name, "channel 3")
    shortest, longest, best = 1, len(text) - 1, ["\u2026"]
    while shortest <= longest:
        kept = (shortest + longest) // 2
        head = kept // 3
        candidate = _wrapped(
            text[:head] + "\u2026" + text[len(text) - (kept - head) :], room, fontsize
        )
        if len(candidate) <= max_lines:
            best, shortest = candidate, kept + 1
        else:
            longest = kept - 1
    return "\n".join(best)


def _wrapped(text: str, room: float, fontsize: Any) -> list[str]:
    """The lines of :func:`fit_text`, before any shortening."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            joined = f"{line} {word}" if line else word
            if text_width(joined, fontsize) <= room:
                line = joined
                continue
            if line:
                lines.append(line)
            while len(word) > 1 and text_width(word, fontsize) > room:
                cut = _cut(word, room, fontsize)
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _cut(word: str, room: float, fontsize: Any) -> int:
    """Where to break a word wider than ``room``: after a separator that fits, or a character."""
    shortest, longest = 1, len(word) - 1
    while shortest < longest:  # the longest start of the word that fits (at least a letter)
        middle = (shortest + longest + 1) // 2
        if text_width(word[:middle], fontsize) <= room:
            shortest = middle
        else:
            longest = middle - 1
    fits = shortest
    breaks = [index + 1 for index, letter in enumerate(word[:fits]) if letter in _BREAKS]
    # a break point near the start would leave a short line: cut at the edge instead
    return breaks[-1] if breaks and breaks[-1] > fits // 2 else fits


def _room(axis: Axes) -> float:
    """Width in inches that a title or an x label of ``axis`` may take.

    Constrained layout makes room for their height but not for their width. They are centred
    on the Axes, and may reach halfway to the nearest Axes on either side (a neighbour in the
    same row), or to the figure's edge where there is none; at least the Axes' own width.
    """
    figure = axis.get_figure()
    assert figure is not None
    box = axis.get_position()
    left, right = 0.0, 1.0
    for other in figure.axes:
        if other is axis or not other.get_visible() or other.get_label() == "<colorbar>":
            continue  # a colour bar is lower than the Axes it belongs to: a title passes over it
        near = other.get_position()
        if near.y1 <= box.y0 or near.y0 >= box.y1:
            continue  # another row
        if near.x1 <= box.x0:
            left = max(left, (float(near.x1) + float(box.x0)) / 2)
        elif near.x0 >= box.x1:
            right = min(right, (float(near.x0) + float(box.x1)) / 2)
    centre = (float(box.x0) + float(box.x1)) / 2
    share = max(float(box.width), 2 * min(centre - left, right - centre))
    inches = float(figure.bbox.width) / float(figure.dpi)
    return max(share * inches - 0.06, 0.3)


@dataclass
class _Fitted:
    """A text drawn by netlens, the whole of it, and the lines it was last broken into."""

    text: Text
    axis: Axes
    whole: str
    shown: str
    max_lines: int = 3

    def refit(self) -> bool:
        """Break the text again for its Axes' width; whether its lines changed.

        A text the user has set since (another title) is left alone.
        """
        if self.text.get_text() != self.shown:
            return False
        lines = fit_text(
            self.whole, _room(self.axis), self.text.get_fontsize(), max_lines=self.max_lines
        )
        if lines == self.shown:
            return False
        self.text.set_text(lines)
        self.shown = lines
        return True


@cache
def _fitting_layout() -> Any:
    """The class of the layout of netlens' figures (matplotlib is imported when first asked)."""
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    class FittingLayout(ConstrainedLayoutEngine):
        """Constrained layout that breaks netlens' titles into lines that fit their Axes.

        The texts are fitted to the Axes as they are, laid out, and, where the layout moved
        the Axes so that the lines change, laid out once more with the new lines.
        """

        def __init__(self) -> None:
            super().__init__()
            self.fitted: list[_Fitted] = []

        def execute(self, fig: Any) -> Any:
            self._refit()
            result = super().execute(fig)
            if self._refit():
                result = super().execute(fig)
            return result

        def _refit(self) -> bool:
            return any([item.refit() for item in self.fitted])

        def __reduce__(self) -> tuple[Any, ...]:
            # a class made in a function pickles through a function of the module
            return _new_fitting_layout, (), self.__dict__

    return FittingLayout


def _new_fitting_layout() -> Any:
    """A new layout of netlens' figures (also how a pickled one is made again)."""
    return _fitting_layout()()


def _fit(text: Text, axis: Axes) -> None:
    """Keep ``text`` (a title, a label) broken into lines that fit ``axis``.

    On netlens' own figures, when they are laid out (drawn, saved): the text stays whole until
    then. On another figure, at once, for the Axes as they are.
    """
    item = _Fitted(text, axis, text.get_text(), text.get_text())
    figure = axis.get_figure()
    fitted = getattr(figure.get_layout_engine() if figure else None, "fitted", None)
    if isinstance(fitted, list):
        fitted.append(item)
    else:
        item.refit()


def set_title(axis: Axes, text: str, *, fontsize: Any = "medium", **options: Any) -> None:
    """Title ``axis`` with ``text``, broken into lines that fit the Axes (:func:`fit_text`)."""
    _fit(axis.set_title(text, fontsize=fontsize, **options), axis)


def set_xlabel(axis: Axes, text: str, **options: Any) -> None:
    """Label the x axis of ``axis`` with ``text``, broken into lines that fit the Axes."""
    axis.set_xlabel(text, **options)
    _fit(axis.xaxis.label, axis)


def display(
    sample: torch.Tensor,
    *,
    centred: bool,
    value_range: tuple[float, float] | None = None,
    flat: float = 0.5,
) -> np.ndarray:
    """An input-shaped tensor as an RGB image in [0, 1].

    Three-channel inputs are drawn in colour, others as the mean over their leading dims; a
    vector is one row. Scaled on its own (``centred``: zero at 0.5) unless ``value_range``
    gives a common range; an input without range (constant, not ``centred``) is ``flat``.
    """
    values = sample.detach().to("cpu", torch.float64)
    if values.dim() == 0:
        values = values.reshape(1, 1)
    if values.dim() == 1:
        values = values.unsqueeze(0)
    if values.dim() >= 3:
        values = values.reshape(-1, *values.shape[-2:])
        values = values.permute(1, 2, 0) if values.shape[0] == 3 else values.mean(dim=0)
    if centred:
        extent = float(values.abs().max())
        values = values / (2 * extent) + 0.5 if extent > 0 else torch.full_like(values, 0.5)
    else:
        low, high = value_range or (float(values.min()), float(values.max()))
        values = (values - low) / (high - low) if high > low else torch.full_like(values, flat)
    array = values.clamp(0, 1).numpy()
    return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array


def montage(
    rows: list[list[np.ndarray]], gap: int = 1
) -> tuple[np.ndarray, list[float], list[float]]:
    """Tile equally shaped RGB images on a white canvas; also the tile centres (x, y)."""
    height, width = rows[0][0].shape[:2]
    columns = max(len(row) for row in rows)
    canvas = np.ones((len(rows) * (height + gap) - gap, columns * (width + gap) - gap, 3))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            top, left = r * (height + gap), c * (width + gap)
            canvas[top : top + height, left : left + width] = tile
    centres_x = [c * (width + gap) + (width - 1) / 2 for c in range(columns)]
    centres_y = [r * (height + gap) + (height - 1) / 2 for r in range(len(rows))]
    return canvas, centres_x, centres_y


def grid(tiles: list[np.ndarray], ncols: int, gap: int = 1) -> np.ndarray:
    """Tile equally shaped RGB images row by row, ``ncols`` per row."""
    rows = [tiles[start : start + ncols] for start in range(0, len(tiles), ncols)]
    return montage(rows, gap)[0]


# -- maps over an input's plane -------------------------------------------------------------
#
# A map drawn over an input shares the input's plane: ``(height, width)`` of its last two dims
# (one row for a vector), the image's pixels centred on integer coordinates. A map with other
# cells (one per position of a sliding window) is placed by an ``extent`` so that its cells sit
# where they belong on the input.


def frame_plane(axis: Axes, height: int, width: int) -> None:
    """Show exactly a plane of ``height x width`` pixels on ``axis``, without ticks.

    The aspect is equal unless one side is over eight times the other (a long signal).
    """
    axis.set_xlim(-0.5, width - 0.5)
    axis.set_ylim(height - 0.5, -0.5)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_aspect("auto" if height * 8 < width or width * 8 < height else "equal")


def draw_input(axis: Axes, sample: torch.Tensor, *, grey: bool = False) -> None:
    """Draw one input (an input-shaped tensor) as an image over its plane (see :func:`display`).

    Three-channel inputs are drawn in colour unless ``grey``; others, and grey ones, as the
    mean over their leading dims with the ``"gray"`` colour map.
    """
    values = sample.detach()
    if grey and values.dim() >= 3:
        values = values.float().reshape(-1, *values.shape[-2:]).mean(0)
    picture = display(values, centred=False, flat=0.0)  # a constant input is black
    height, width = picture.shape[:2]
    if values.dim() >= 3 and values.numel() == 3 * height * width:
        axis.imshow(picture, interpolation="nearest")
    else:
        axis.imshow(picture[..., 0], cmap="gray", interpolation="nearest")
    frame_plane(axis, height, width)


def draw_signed_overlay(axis: Axes, values: torch.Tensor, *, cmap: Any, alpha: float) -> None:
    """Draw a map of signed values, one per pixel, over what ``axis`` shows.

    Diverging colours centred at zero: the colour map spans ``[-m, m]`` for the largest
    magnitude ``m`` (1 for an all-zero map).
    """
    limit = float(values.abs().max()) or 1.0
    axis.imshow(
        values.detach().float().cpu().numpy(),
        cmap=cmap,
        vmin=-limit,
        vmax=limit,
        alpha=alpha,
        interpolation="nearest",
    )


def draw_cells(
    axis: Axes,
    cells: torch.Tensor,
    *,
    extent: tuple[float, float, float, float],
    plane: tuple[int, int],
    cmap: Any,
    **options: Any,
) -> AxesImage:
    """Draw a 2-D map of cells stretched over ``extent`` of a plane of ``plane`` pixels.

    Args:
        axis: Where to draw.
        cells: ``(rows, columns)`` values.
        extent: ``(left, right, bottom, top)`` of the cells in the plane's pixel coordinates.
        plane: ``(height, width)`` of the plane, which the Axes then shows.
        cmap: Colour map.
        **options: More options of ``imshow`` (``alpha``, ``vmin``, ``vmax``).

    Returns:
        The image, for a colour bar.
    """
    image = axis.imshow(
        cells.detach().cpu().numpy(),
        cmap=cmap,
        extent=extent,
        interpolation="nearest",
        **options,
    )
    frame_plane(axis, *plane)
    return image


def colour_bar(figure: Figure, image: AxesImage, axis: Axes, *, low: bool = False) -> None:
    """A colour bar for ``image`` beside ``axis``; beside a low strip, as high as it, 3 ticks."""
    if not low:
        figure.colorbar(image, ax=axis, shrink=0.8)
        return
    from matplotlib.ticker import MaxNLocator

    bar = figure.colorbar(image, ax=axis, shrink=1.0, aspect=5, pad=0.01)
    bar.ax.yaxis.set_major_locator(MaxNLocator(3))
    bar.ax.tick_params(labelsize="small")


def category_colours(categories: list[int]) -> list[Any]:
    """One colour per category number: ``tab10``'s, or ``tab20``'s for numbers from 10 on."""
    from matplotlib import colormaps

    table = colormaps["tab10" if max(categories, default=0) < 10 else "tab20"]
    return [table(c % table.N) for c in categories]


def draw_categories(
    axis: Axes,
    codes: torch.Tensor,
    *,
    colours: list[Any],
    labels: list[str],
    extent: tuple[float, float, float, float],
    plane: tuple[int, int],
) -> None:
    """Draw a map of categories as :func:`draw_cells` does, with a legend beside the Axes.

    Args:
        axis: Where to draw.
        codes: ``(rows, columns)`` category codes: indices into ``colours`` and ``labels``.
        colours: The colour of each code.
        labels: The legend's label of each code.
        extent: As for :func:`draw_cells`.
        plane: As for :func:`draw_cells`.
    """
    from matplotlib.colors import ListedColormap

    draw_cells(
        axis,
        codes,
        extent=extent,
        plane=plane,
        cmap=ListedColormap(colours),
        vmin=-0.5,
        vmax=len(colours) - 0.5,
    )
    _category_legend(axis, colours, labels)


def _category_legend(
    axis: Axes, colours: list[Any], labels: list[str], *, below: bool = False
) -> None:
    """A legend of coloured patches beside ``axis`` (or below it, in a few columns).

    Each label is fitted to a width of its own (two lines at most).
    """
    from matplotlib.patches import Patch

    handles = [
        Patch(color=colour, label=fit_text(label, 1.25, "small", max_lines=2))
        for label, colour in zip(labels, colours, strict=True)
    ]
    place: dict[str, Any] = {"loc": "upper left", "bbox_to_anchor": (1.0, 1.0)}
    if below:
        columns = max(1, min(len(handles), int(_axis_length(axis, "x") // 1.6)))
        place = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.05), "ncols": columns}
    axis.legend(handles=handles, fontsize="small", frameon=False, **place)


# -- maps along a sequence -------------------------------------------------------------------
#
# A map that is one-dimensional (one value per token, per time step or per row) is drawn as a
# strip of cells or as a chart along one axis of the plot, never stretched into a square; its
# positions are ticked with integers or named by labels (the tokens).


def _axis_length(axis: Axes, along: Along) -> float:
    """The length in inches of ``axis`` along x or y, as laid out so far."""
    figure = axis.get_figure()
    assert figure is not None
    box = axis.get_position()
    if along == "x":
        return float(box.width) * float(figure.bbox.width) / float(figure.dpi)
    return float(box.height) * float(figure.bbox.height) / float(figure.dpi)


def integer_ticks(axis: Axes, along: Along) -> None:
    """Ticks at whole numbers only along x or y: for axes of indices (channels, positions)."""
    from matplotlib.ticker import MaxNLocator

    (axis.xaxis if along == "x" else axis.yaxis).set_major_locator(
        MaxNLocator(integer=True, min_n_ticks=1)
    )


def _widest(labels: Sequence[str], fontsize: float) -> float:
    """The width in inches a label takes along x, with room between neighbours."""
    return max((text_width(label, fontsize) for label in labels), default=0.0) + 0.08


def label_room(labels: Sequence[str] | None, width: float, *, fontsize: float = 8.0) -> float:
    """Height in inches that labels along x of an Axes about ``0.8 * width`` long take.

    Non-zero only where :func:`position_ticks` turns them upright.
    """
    if not labels:
        return 0.0
    widest = _widest(labels, fontsize)
    upright = len(labels) * widest > 0.8 * width and widest > _SHORT_LABEL
    return min(widest, 2.0) if upright else 0.0


def position_ticks(
    axis: Axes, along: Along, labels: Sequence[str] | None, *, fontsize: float = 8.0
) -> None:
    """Integer ticks along x or y at the positions of a sequence, named by ``labels``.

    Without labels, the ticks are numbers. With labels (one per position), as many are shown as
    fit the axis' length: every one, or every 2nd, 5th, 10th, ...; labels along x are turned
    upright when they are too wide to stand side by side.
    """
    if labels is None:
        integer_ticks(axis, along)
        return
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    names = list(labels)
    length = _axis_length(axis, along)
    widest = _widest(names, fontsize)
    line = 1.6 * fontsize / 72
    # upright when long labels do not fit side by side; short ones are thinned instead
    upright = along == "x" and len(names) * widest > length and widest > _SHORT_LABEL
    spacing = widest if along == "x" and not upright else line
    most = max(1, int(length / spacing))

    def name(value: float, _: int) -> str:
        index = round(value)
        return names[index] if abs(value - index) < 1e-6 and 0 <= index < len(names) else ""

    target = axis.xaxis if along == "x" else axis.yaxis
    target.set_major_locator(
        MaxNLocator(nbins=most, integer=True, steps=[1, 2, 5, 10], min_n_ticks=1)
    )
    target.set_major_formatter(FuncFormatter(name))
    axis.tick_params(axis=along, labelsize=fontsize, labelrotation=90 if upright else 0)


def _strip_limits(axis: Axes, along: Along, length: int) -> None:
    """Show positions ``0 .. length - 1`` along ``along`` and one cell across."""
    if along == "x":
        axis.set_xlim(-0.5, length - 0.5)
        axis.set_ylim(0.5, -0.5)
        axis.set_yticks([])
    else:
        axis.set_ylim(length - 0.5, -0.5)
        axis.set_xlim(-0.5, 0.5)
        axis.set_xticks([])


def draw_strip(
    axis: Axes,
    values: torch.Tensor,
    *,
    along: Along,
    span: tuple[float, float],
    length: int,
    cmap: Any,
    **options: Any,
) -> AxesImage:
    """Draw a 1-D map as one row (``along="x"``) or one column (``"y"``) of coloured cells.

    Args:
        axis: Where to draw.
        values: One value per cell.
        along: The axis the sequence runs along.
        span: Where the first cell starts and the last one ends, in positions of the sequence
            (``-0.5`` to ``length - 0.5`` when there is a cell per position).
        length: How many positions the sequence has; the strip shows them all.
        cmap: Colour map.
        **options: More options of ``imshow`` (``alpha``, ``vmin``, ``vmax``).

    Returns:
        The image, for a colour bar.
    """
    cells = values.detach().to("cpu", torch.float64).reshape(-1).numpy()
    first, last = span
    if along == "x":
        picture, extent = cells[None, :], (first, last, 0.5, -0.5)
    else:
        picture, extent = cells[:, None], (-0.5, 0.5, last, first)
    image = axis.imshow(
        picture, extent=extent, cmap=cmap, aspect="auto", interpolation="nearest", **options
    )
    _strip_limits(axis, along, length)
    return image


def draw_category_strip(
    axis: Axes,
    codes: torch.Tensor,
    *,
    colours: list[Any],
    labels: list[str],
    along: Along,
    span: tuple[float, float],
    length: int,
) -> None:
    """Draw a 1-D map of categories as :func:`draw_strip` does, with a legend beside it."""
    from matplotlib.colors import ListedColormap

    draw_strip(
        axis,
        codes,
        along=along,
        span=span,
        length=length,
        cmap=ListedColormap(colours),
        vmin=-0.5,
        vmax=len(colours) - 0.5,
    )
    _category_legend(axis, colours, labels, below=along == "x")


def draw_bars(axis: Axes, values: torch.Tensor, *, cmap: Any, alpha: float = 1.0) -> None:
    """One bar per position ``0 .. n - 1``, coloured by its value on a scale centred at zero."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    heights = values.detach().to("cpu", torch.float64).reshape(-1).numpy()
    limit = float(np.abs(heights).max()) or 1.0
    table = colormaps[cmap] if isinstance(cmap, str) else cmap
    colours = table(Normalize(-limit, limit)(heights))
    positions = np.arange(len(heights))
    axis.bar(positions, heights, width=0.8, color=colours, alpha=alpha, edgecolor="0.35", lw=0.5)
    axis.axhline(0.0, color="0.4", lw=0.6)
    axis.set_xlim(-0.5, len(heights) - 0.5)


def draw_profile(
    axis: Axes,
    centres: torch.Tensor,
    values: torch.Tensor,
    *,
    length: int,
    cmap: Any,
    reference: float | None = None,
) -> None:
    """Values at positions of a sequence as a line of dots coloured by value.

    ``reference`` (the unoccluded score) is drawn as a dashed line with a legend entry.
    """
    x = centres.detach().to("cpu", torch.float64).numpy()
    y = values.detach().to("cpu", torch.float64).reshape(-1).numpy()
    axis.plot(x, y, color="0.6", lw=1, zorder=1)
    axis.scatter(x, y, c=y, cmap=cmap, s=22, zorder=2, edgecolors="0.3", linewidths=0.4)
    if reference is not None:
        axis.axhline(reference, color="0.3", lw=0.8, ls="--", label="unoccluded")
        axis.legend(loc="best", fontsize="small", frameon=False)
    axis.set_xlim(-0.5, length - 0.5)


def axes_stack(
    axes: Any, ratios: list[float], *, size: tuple[float, float], what: str
) -> tuple[Figure, np.ndarray]:
    """Axes one above the other, new ones on a figure of ``size``, or those given.

    Args:
        axes: None for a new figure, or ``len(ratios)`` Axes (any array-like shape).
        ratios: The relative heights of new Axes (their titles and tick labels come on top).
        size: ``(width, height)`` in inches of a new figure.
        what: What the panels are, for the message of a wrong number of Axes.

    Returns:
        The figure and the Axes, a 1-D array, top first.

    Raises:
        NetlensValueError: Another number of Axes.
    """
    if axes is None:
        figure = new_figure(*size)
        stacked = figure.subplots(len(ratios), 1, squeeze=False, height_ratios=ratios)
        return figure, np.asarray(stacked).reshape(-1)
    figure, arranged = axes_grid(axes, len(ratios), 1, size=size, what=what)
    return figure, arranged.reshape(-1)


def axes_grid(
    axes: Any, rows: int, columns: int, *, size: tuple[float, float], what: str
) -> tuple[Figure, np.ndarray]:
    """A ``(rows, columns)`` array of Axes: new ones on a figure of ``size``, or those given.

    Args:
        axes: None for a new figure, or ``rows * columns`` Axes (any array-like shape).
        rows: Rows of panels.
        columns: Panels per row.
        size: ``(width, height)`` in inches of a new figure.
        what: What the panels are, for the message of a wrong number of Axes
            (``"2 inputs times 5 panels"``).

    Returns:
        The figure (that of the first Axes given) and the Axes.

    Raises:
        NetlensValueError: Another number of Axes.
    """
    if axes is None:
        figure = new_figure(*size)
        return figure, np.asarray(figure.subplots(rows, columns, squeeze=False))
    given = np.asarray(axes, dtype=object).reshape(-1)
    if given.size != rows * columns:
        raise NetlensValueError(f"Expected {rows * columns} Axes ({what}), but got {given.size}.")
    arranged = given.reshape(rows, columns)
    return cast("Figure", arranged[0, 0].figure), arranged
