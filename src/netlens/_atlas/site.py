"""The atlas as a static site: an index, a page per layer, a page per channel.

Pages come from the small templates beside this module (``templates/*.html``), filled with
:class:`string.Template`: the templates are few and short, and the standard library keeps the
atlas free of a templating dependency. Every value that comes from the model or the user (layer
names, class names, numbers) goes in through :func:`_fill`, which escapes everything except
fragments this module built itself (:class:`_Html`), so a layer named
``<img src=x onerror=alert(1)>`` shows as text. The site needs no server: links are relative
and name ``index.html`` explicitly (a browser opening files does not look for it), and the
only script (``atlas.js``) sorts a layer's channels and follows the arrow keys. Pictures are
inline PNG data addresses: a channel is one file.

Addresses are stable: layer ``conv2``'s channel 17 is ``conv2/17.html`` whatever else
the atlas holds. A layer name that is not a safe path segment is spelled with its safe
characters and a short hash of the name (``_img_src_x_..-3f2a9c1e``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import shutil
from importlib import resources
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

import numpy as np

from .cards import thumbnail
from .images import png_bytes

if TYPE_CHECKING:
    from .cards import Atlas, AtlasLayer, ChannelCard

__all__ = [
    "atlas_html",
    "card_html",
    "clear_layer",
    "layer_html",
    "slug",
    "write_channels",
    "write_front",
    "write_layer",
    "write_layer_page",
    "write_site",
]

_SAFE = re.compile(r"[A-Za-z0-9_.\-]+")


class _Html(str):
    """Markup this module built: inserted into templates as it is."""


def _fill(template: str, **values: object) -> _Html:
    """``template`` with its ``$names`` replaced: escaped text, or ``_Html`` as it is."""
    escaped = {
        name: value if isinstance(value, _Html) else html.escape(str(value), quote=True)
        for name, value in values.items()
    }
    return _Html(Template(template).substitute(escaped))


def _template(name: str) -> str:
    return (resources.files(__package__) / "templates" / name).read_text(encoding="utf-8")


def slug(name: str) -> str:
    """A layer name as a path segment: itself where that is safe, else made safe and hashed."""
    if _SAFE.fullmatch(name) and name not in (".", "..") and not name.startswith("."):
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    safe = re.sub(r"[^A-Za-z0-9_\-]", "_", name)[:40] or "layer"
    return f"{safe}-{digest}"


def _number(value: float) -> str:
    return f"{value:.4g}"


# -- the pictures of a channel ------------------------------------------------------------------


def _histogram_svg(card: ChannelCard) -> _Html:
    """The channel's histogram as an inline SVG (bars, its range, the counts outside)."""
    counts = card.counts.double()
    width, height = 320, 90
    highest = float(counts.max()) if counts.numel() and float(counts.max()) > 0 else 1.0
    bar = width / max(1, counts.numel())
    bars = "".join(
        f'<rect x="{index * bar:.2f}" y="{height - value / highest * height:.2f}" '
        f'width="{max(bar - 1, 0.5):.2f}" height="{value / highest * height:.2f}"/>'
        for index, value in enumerate(counts.tolist())
    )
    low, high = float(card.edges[0]), float(card.edges[-1])
    return _fill(
        '<figure class="histogram"><svg viewBox="0 0 $w $h" role="img" '
        'aria-label="histogram of activations">$bars</svg>'
        "<figcaption>$low to $high</figcaption></figure>",
        w=width,
        h=height,
        bars=_Html(bars),
        low=_number(low),
        high=_number(high),
    )


def _stats_table(card: ChannelCard) -> _Html:
    rows = [
        ("mean", _number(card.mean)),
        ("std", _number(card.std)),
        ("min", _number(card.min)),
        ("max", _number(card.max)),
        ("zero fraction", _number(card.zero_fraction)),
        ("values", str(card.count)),
        ("dead", "yes" if card.dead else "no"),
    ]
    if card.saturated is not None:
        rows.append(("saturated", "yes" if card.saturated else "no"))
    cells = "".join(_fill("<tr><th>$k</th><td>$v</td></tr>", k=k, v=v) for k, v in rows)
    return _Html(f'<table class="stats">{cells}</table>')


def _channel_body(card: ChannelCard, sources: dict[str, str]) -> _Html:
    """The body of a channel's page; ``sources`` gives each picture's address."""

    def image(stem: str, alt: str) -> str:
        return _fill('<img src="$src" alt="$alt">', src=sources[stem], alt=alt)

    sections = []
    if "feature" in sources:
        extra = image("diverse", "diverse feature visualisations") if "diverse" in sources else ""
        sections.append(
            _fill(
                '<section><h2>Feature visualisation</h2><div class="pictures">$one$more</div>'
                "</section>",
                one=_Html(image("feature", "feature visualisation")),
                more=_Html(extra),
            )
        )
    if "patches" in sources:
        indices = ", ".join(str(int(index)) for index in card.indices.tolist())
        values = ", ".join(_number(float(value)) for value in card.activations.tolist())
        sections.append(
            _fill(
                "<section><h2>Strongest data-set examples</h2>"
                '<p class="note">inputs $indices; activations $values</p>'
                '<div class="examples"><figure>$patches<figcaption>the inputs under the receptive '
                "field</figcaption></figure><figure>$projections<figcaption>their deconvnet "
                "projections (red positive, blue negative)</figcaption></figure></div></section>",
                indices=indices,
                values=values,
                patches=_Html(image("patches", "patches under the receptive field")),
                projections=_Html(image("projections", "deconvnet projections")),
            )
        )
    sections.append(
        _fill(
            '<section><h2>Activations</h2><div class="pictures">$table$histogram</div></section>',
            table=_stats_table(card),
            histogram=_histogram_svg(card),
        )
    )
    if "weights" in sources:
        sections.append(
            _fill(
                "<section><h2>Weights</h2>$img</section>",
                img=_Html(image("weights", "the channel's weights")),
            )
        )
    return _Html("".join(sections))


def _data_uri(rgb: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")


def card_html(card: ChannelCard) -> str:
    """A card for a notebook: the channel page's body with its pictures inline."""
    sources = {stem: _data_uri(rgb) for stem, rgb in card.pictures().items()}
    title = _fill("<h3>layer $layer, channel $channel</h3>", layer=card.layer, channel=card.channel)
    return f'<div class="netlens-atlas">{title}{_channel_body(card, sources)}</div>'


def _layer_rows(layer: AtlasLayer) -> list[tuple[int, float, float]]:
    stats = layer.stats
    return [
        (channel, float(stats.mean[channel]), float(stats.zero_fraction[channel]))
        for channel in range(len(layer))
    ]


def layer_html(layer: AtlasLayer) -> str:
    """A layer for a notebook: its channels' thumbnails inline, in channel order."""
    tiles = "".join(
        _fill(
            '<figure><img src="$src" alt="channel $c" width="48"><figcaption>$c</figcaption>'
            "</figure>",
            src=_data_uri(thumbnail(layer[channel])),
            c=channel,
        )
        for channel in range(len(layer))
    )
    title = _fill("<h3>layer $name ($kind)</h3>", name=layer.name, kind=layer.kind)
    return f'<div class="netlens-atlas">{title}<div class="channels">{tiles}</div></div>'


def _summary_rows(atlas: Atlas, link: bool) -> _Html:
    rows = []
    for name, layer in atlas.layers.items():
        saturated = "-" if layer.saturated is None else str(int(layer.saturated.sum()))
        cell = (
            _fill('<a href="$href">$name</a>', href=f"{slug(name)}/index.html", name=name)
            if link
            else _fill("$name", name=name)
        )
        rows.append(
            _fill(
                "<tr><td>$cell</td><td>$kind</td><td>$shape</td><td>$channels</td>"
                "<td>$params</td><td>$dead</td><td>$saturated</td></tr>",
                cell=cell,
                kind=layer.kind,
                shape=" x ".join(str(size) for size in layer.output_shape),
                channels=len(layer),
                params=f"{layer.parameters:,}",
                dead=int(layer.stats.dead.sum()),
                saturated=saturated,
            )
        )
    return _Html("".join(rows))


def _index_body(atlas: Atlas, link: bool) -> _Html:
    return _fill(
        _template("index_body.html"),
        model=atlas.model,
        samples=f"{atlas.samples:,}",
        input_shape=" x ".join(str(size) for size in atlas.input_shape),
        k=atlas.k,
        rows=_summary_rows(atlas, link),
        inputs=_inputs_section(atlas) if link else _Html(""),
    )


def atlas_html(atlas: Atlas) -> str:
    """The atlas for a notebook: the index's table of layers."""
    return f'<div class="netlens-atlas">{_index_body(atlas, link=False)}</div>'


# -- the site -------------------------------------------------------------------------------


def _page(title: str, root: str, crumbs: _Html, body: _Html) -> str:
    return _fill(_template("page.html"), title=title, root=root, crumbs=crumbs, body=body)


def _layer_body(layer: AtlasLayer) -> _Html:
    tiles = "".join(
        _fill(
            '<a class="tile" href="$c.html" data-index="$c" data-mean="$mean" data-zero="$zero">'
            '<img src="$src" alt="channel $c" width="64" height="64"><span>$c</span></a>',
            c=channel,
            mean=f"{mean:.6g}",  # for sorting: rounded, the same whatever the merge order
            zero=f"{zero:.6g}",
            src=_data_uri(thumbnail(layer[channel])),
        )
        for channel, mean, zero in _layer_rows(layer)
    )
    return _fill(
        _template("layer_body.html"),
        name=layer.name,
        kind=layer.kind,
        shape=" x ".join(str(size) for size in layer.output_shape),
        channels=len(layer),
        dead=int(layer.stats.dead.sum()),
        tiles=_Html(tiles),
    )


def _write(path: Path, data: bytes | str) -> int:
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path.write_bytes(payload)
    return len(payload)


def write_site(atlas: Atlas, out: Path) -> int:
    """Write every page of ``atlas`` under ``out``; returns the bytes written.

    A page carries its pictures inline (PNG data addresses): a channel is one file, and a layer
    of a thousand channels a thousand and one, not five thousand.
    """
    total = sum(write_layer(atlas.model, layer, out) for layer in atlas.layers.values())
    return total + write_front(atlas, out)


def write_front(atlas: Atlas, out: Path) -> int:
    """The stylesheet, the script, the index and the inputs' pages; returns the bytes written."""
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for asset in ("atlas.css", "atlas.js"):
        total += _write(out / asset, _template(asset))
    index_crumbs = _Html("")
    total += _write(
        out / "index.html",
        _page(f"atlas of {atlas.model}", "", index_crumbs, _index_body(atlas, True)),
    )
    if atlas.occluded is not None:
        total += write_inputs(atlas, out)
    return total


def write_layer(model: str, layer: AtlasLayer, out: Path) -> int:
    """A layer's page and its channels' pages, replacing any earlier ones; the bytes written."""
    clear_layer(out, layer.name)
    total = write_channels(model, layer, range(len(layer)), out)
    return total + write_layer_page(model, layer, out)


def clear_layer(out: Path, name: str) -> None:
    """An empty folder for a layer's pages: no stale channel of an earlier build remains."""
    folder = out / slug(name)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def write_channels(model: str, layer: AtlasLayer, channels: range, out: Path) -> int:
    """The pages of some of a layer's channels (its folder made by :func:`clear_layer`)."""
    folder, total = out / slug(layer.name), 0
    for channel in channels:
        card = layer[channel]
        sources = {stem: _data_uri(rgb) for stem, rgb in card.pictures().items()}
        total += _write(folder / f"{channel}.html", _channel_page(model, card, sources))
    return total


def write_layer_page(model: str, layer: AtlasLayer, out: Path) -> int:
    """A layer's own page: its channels' thumbnails, sortable."""
    crumbs = _fill('<a href="../index.html">$model</a> / $name', model=model, name=layer.name)
    page = _page(f"{layer.name} - atlas", "../", crumbs, _layer_body(layer))
    return _write(out / slug(layer.name) / "index.html", page)


def _class_name(atlas: Atlas, index: int) -> str:
    names = atlas.class_names
    return names[index] if names is not None and 0 <= index < len(names) else f"class {index}"


def _inputs_section(atlas: Atlas) -> _Html:
    """The index's list of the inputs with occlusion pages."""
    occluded = atlas.occluded
    if occluded is None:
        return _Html("")
    items = []
    for index in range(occluded.occlusion.inputs.shape[0]):
        predicted = ""
        if occluded.classes.shape[1]:
            best = int(occluded.classes[index, 0])
            share = float(occluded.probabilities[index, 0])
            predicted = f": predicted {_class_name(atlas, best)} ({share:.0%})"
        items.append(
            _fill(
                '<li><a href="inputs/$i.html">input $i</a>$predicted</li>',
                i=index,
                predicted=predicted,
            )
        )
    return _fill(
        '<h2>Inputs</h2><p class="note">Occlusion maps (Zeiler &amp; Fergus\' Figure 7) and the '
        "most probable classes of chosen inputs.</p><ul>$items</ul>",
        items=_Html("".join(items)),
    )


def write_inputs(atlas: Atlas, out: Path) -> int:
    """A page per chosen input: its occlusion panels and most probable classes."""
    import io

    occluded = atlas.occluded
    assert occluded is not None
    folder = out / "inputs"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    total = 0
    count = occluded.occlusion.inputs.shape[0]
    for index in range(count):
        figure, _ = occluded.occlusion.plot_panels(samples=[index], class_names=atlas.class_names)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        source = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        rows = "".join(
            _fill(
                "<tr><th>$name</th><td>$share</td></tr>",
                name=_class_name(atlas, int(label)),
                share=f"{float(share):.1%}",
            )
            for label, share in zip(
                occluded.classes[index].tolist(),
                occluded.probabilities[index].tolist(),
                strict=True,
            )
        )
        links = "".join(
            _fill('<a id="$id" href="$i.html" rel="$rel">$label</a>', id=i, i=j, rel=r, label=lab)
            for i, j, r, lab in (
                ("previous", index - 1, "prev", f"< input {index - 1}"),
                ("next", index + 1, "next", f"input {index + 1} >"),
            )
            if 0 <= j < count
        )
        body = _fill(
            '<h1>input $i</h1><nav class="neighbours">$links</nav>'
            '<section><h2>Occlusion</h2><img src="$src" alt="occlusion maps of input $i">'
            "</section><section><h2>Most probable classes</h2>"
            '<table class="stats">$rows</table></section>',
            i=index,
            links=_Html(links),
            src=source,
            rows=_Html(rows),
        )
        crumbs = _fill('<a href="../index.html">$model</a> / input $i', model=atlas.model, i=index)
        total += _write(
            folder / f"{index}.html", _page(f"input {index} - atlas", "../", crumbs, body)
        )
    return total


def _channel_page(model: str, card: ChannelCard, sources: dict[str, str]) -> str:
    previous = card.channel - 1 if card.channel > 0 else None
    following = card.channel + 1 if card.channel + 1 < card.channels else None
    links = "".join(
        _fill('<a id="$id" href="$c.html" rel="$rel">$label</a>', id=i, c=c, rel=r, label=lab)
        for i, c, r, lab in (
            ("previous", previous, "prev", f"< channel {previous}"),
            ("next", following, "next", f"channel {following} >"),
        )
        if c is not None
    )
    crumbs = _fill(
        '<a href="../index.html">$model</a> / <a href="index.html">$layer</a> / $channel',
        model=model,
        layer=card.layer,
        channel=card.channel,
    )
    body = _fill(
        '<h1>$layer <span class="channel">channel $channel</span></h1>'
        '<nav class="neighbours">$links</nav>$body',
        layer=card.layer,
        channel=card.channel,
        links=_Html(links),
        body=_channel_body(card, sources),
    )
    return _page(f"{card.layer} / {card.channel} - atlas", "../", crumbs, body)
