"""Nothing a result or grid draws is cut off: every drawn text lies inside its figure.

For every public type with a ``plot...`` method (found from ``netlens.__all__``, so that a new
one fails :func:`test_every_plot_method_has_a_case` until it has a case here), each method is
drawn with a long layer name and long labels, and every text the renderer drew (titles, tick
labels, legends, colour bar labels, texts on the Axes) must lie inside the figure, to a pixel.
The same holds for the file ``.save()`` writes, which has the size of the figure laid out.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import netlens as nl
from netlens import objectives

ONE_THREAD = True

LONG = "block_with_a_really_long_descriptive_name"
LAYER = f"{LONG}.conv"
LONG_LABELS = [f"a rather long label number {i}" for i in range(12)]
WORDS = ["the", "film", "was", "extraordinarily", "moving", "and", "the", "cast"]
WORDS += ["superb", "unforgettable", "ending", "indeed"]


class LongNamed(nn.Module):
    """A conv block with a long name and a linear head on ``(N, 1, 8, 8)``."""

    def __init__(self) -> None:
        super().__init__()
        block = OrderedDict(conv=nn.Conv2d(1, 16, 3, padding=1), relu=nn.ReLU())
        setattr(self, LONG, nn.Sequential(block))
        self.head = nn.Linear(16 * 4 * 4, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = F.max_pool2d(getattr(self, LONG)(x), 2)
        return self.head(features.flatten(1))  # type: ignore[no-any-return]


class LongNamedTokens(nn.Module):
    """Token ids ``(N, 12)`` through an embedding, a long-named linear layer and a mean."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(30, 6)
        block = OrderedDict(conv=nn.Linear(6, 5))
        setattr(self, LONG, nn.Sequential(block))
        self.head = nn.Linear(5, 12)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(getattr(self, LONG)(self.embedding(ids)))
        return self.head(hidden.mean(1))  # type: ignore[no-any-return]


class LongNamedRows(nn.Module):
    """A GRU reading ``(N, 12, 5)`` row sequences, with a long-named linear head on its steps."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(5, 6, batch_first=True)
        setattr(self, LONG, nn.Sequential(OrderedDict(conv=nn.Linear(6, 4))))
        self.head = nn.Linear(4, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = getattr(self, LONG)(self.rnn(x)[0])
        return self.head(steps[:, -1])  # type: ignore[no-any-return]


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return build().eval()


def _images(count: int = 2) -> torch.Tensor:
    return torch.randn(count, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@cache
def _atlas() -> nl.Atlas:
    return nl.atlas(_seeded(LongNamed), _images(6), LAYER, k=4, steps=4, seed=0)


def _occlusion_images() -> nl.OcclusionMap:
    return nl.occlusion(_seeded(LongNamed), _images(), window=3, stride=1, layer=LAYER)


def _occlusion_tokens() -> nl.OcclusionMap:
    ids = torch.randint(1, 30, (2, 12), generator=torch.Generator().manual_seed(2))
    return nl.occlusion(_seeded(LongNamedTokens), ids, window=(1,), baseline=0, layer=LAYER)


def _occlusion_rows() -> nl.OcclusionMap:
    rows = torch.randn(2, 12, 5, generator=torch.Generator().manual_seed(3))
    return nl.occlusion(_seeded(LongNamedRows), rows, window=(2, 5), stride=(1, 5), layer=LAYER)


def _recorded(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with nl.record(model, LAYER) as recorder:
        model(inputs)
    return recorder[LAYER]


def _maximization() -> nl.Maximization:
    return nl.maximize_activation(
        _seeded(LongNamed), LAYER, [0, 1, 2], input_shape=(1, 8, 8), steps=3, seed=0
    )


def _channel_stats() -> nl.ChannelStats:
    return nl.activation_stats(_seeded(LongNamed), _images(4), LAYER)[LAYER]


# ``"Type.method"``: named drawings, each a function returning the figure it drew on.
Drawing = Callable[[], Any]
CASES: dict[str, dict[str, Drawing]] = {
    "OcclusionMap.plot": {
        "image": lambda: _occlusion_images().plot(),
        "feature": lambda: _occlusion_images().plot(map="feature_activation"),
        "tokens": lambda: _occlusion_tokens().plot(labels=WORDS),
        "token probability": lambda: _occlusion_tokens().plot(map="probability", labels=WORDS),
        "rows": lambda: _occlusion_rows().plot(labels=LONG_LABELS),
    },
    "OcclusionMap.plot_panels": {
        "images": lambda: _occlusion_images().plot_panels(class_names=LONG_LABELS),
        "tokens": lambda: _occlusion_tokens().plot_panels(labels=WORDS, class_names=LONG_LABELS),
        "token ids": lambda: _occlusion_tokens().plot_panels(),
        "rows": lambda: _occlusion_rows().plot_panels(labels=LONG_LABELS, class_names=LONG_LABELS),
    },
    "Projection.plot": {
        "one channel": lambda: nl.deconvnet(_seeded(LongNamed), _images(), LAYER, 3).plot(),
        "channels": lambda: nl.deconvnet(_seeded(LongNamed), _images(3), LAYER, [0, 1]).plot(),
    },
    "TopActivations.plot": {
        "one channel": lambda: nl.top_activations(
            _seeded(LongNamed), _images(4), LAYER, channels=2, k=4
        ).plot(),
        "channels": lambda: nl.top_activations(
            _seeded(LongNamed), _images(4), LAYER, channels=[0, 1, 2], k=4
        ).plot(),
    },
    "ChannelStats.plot": {"16 channels": lambda: _channel_stats().plot()},
    "FilterGrid.plot": {
        "conv": lambda: nl.FilterGrid(getattr(_seeded(LongNamed), LONG).conv).plot(),
        "long titles": lambda: nl.FilterGrid(torch.randn(12, 1, 3, 3), titles=LONG_LABELS).plot(),
        "linear": lambda: nl.FilterGrid(_seeded(LongNamed).head, normalize="symmetric").plot(),
        "lstm gates": lambda: nl.FilterGrid(nn.LSTM(4, 3)).plot(),
    },
    "ActivationGrid.plot": {
        "maps": lambda: nl.ActivationGrid(_recorded(_seeded(LongNamed), _images(1))[0]).plot(),
        "table": lambda: nl.ActivationGrid(_recorded(_seeded(LongNamed), _images(2))).plot(),
        "tokens": lambda: nl.ActivationGrid(
            torch.randn(12, 5, generator=torch.Generator().manual_seed(4)), labels=WORDS
        ).plot(),
        "long titles": lambda: nl.ActivationGrid(
            torch.rand(12, 5, 5), titles=LONG_LABELS, normalize="global"
        ).plot(),
        "non-finite values": lambda: nl.ActivationGrid(
            torch.tensor([[1.0, float("nan")], [float("inf"), 0.0]])
        ).plot(),
    },
    "Maximization.plot": {
        "channels": lambda: _maximization().plot(),
        "objectives": lambda: nl.maximize_activation(
            _seeded(LongNamed),
            objective=[objectives.channel(LAYER, 0), objectives.channel(LAYER, 1)],
            input_shape=(1, 8, 8),
            steps=2,
            seed=0,
        ).plot(),
    },
    "Maximization.plot_curves": {"channels": lambda: _maximization().plot_curves()},
    "AtlasLayer.plot": {"layer": lambda: _atlas()[LAYER].plot()},
    "ChannelCard.plot": {"card": lambda: _atlas()[LAYER][0].plot()},
}


def _plot_methods() -> Iterator[str]:
    """``"Type.method"`` for every public ``plot...`` method of the types in ``netlens``."""
    for name in nl.__all__:
        value = getattr(nl, name)
        if not inspect.isclass(value):
            continue
        for attribute, member in inspect.getmembers(value):
            if attribute.startswith("plot") and callable(member):
                yield f"{name}.{attribute}"


def test_every_plot_method_has_a_case() -> None:
    found = set(_plot_methods())
    assert "OcclusionMap.plot_panels" in found and "ChannelStats.plot" in found
    missing = sorted(found - set(CASES))
    assert not missing, f"plot methods without a case in CASES: {missing}"
    assert not set(CASES) - found, "cases of methods that no longer exist"


def _drawn_texts(figure: Any) -> tuple[list[Any], Any]:
    """Draw ``figure`` once, as saving it does, and return the Text artists the renderer drew.

    The first draw lays the figure out (constrained layout) as ``savefig`` does on a new
    figure; a later draw may settle elsewhere, so that it is the first one that is checked.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    canvas = FigureCanvasAgg(figure)  # the figure's canvas from now on
    drawn: list[Any] = []
    draw = Text.draw

    def recording(text: Text, renderer: Any) -> None:
        if text.get_visible() and text.get_text().strip():
            drawn.append(text)
        draw(text, renderer)

    # Text.draw sees every text drawn, multi-line ones too (the renderer's draw_text does not
    # say which Text a line of several belongs to); put back at once.
    Text.draw = recording  # type: ignore[method-assign]
    try:
        canvas.draw()
    finally:
        Text.draw = draw  # type: ignore[method-assign]
    return list({id(text): text for text in drawn}.values()), canvas.get_renderer()


def _clipped(figure: Any) -> list[str]:
    """The texts drawn (partly) outside the figure, with how far out they go."""
    texts, renderer = _drawn_texts(figure)
    bounds = figure.bbox
    out = []
    for text in texts:
        extent = text.get_window_extent(renderer)
        beyond = max(
            bounds.x0 - extent.x0,
            extent.x1 - bounds.x1,
            bounds.y0 - extent.y0,
            extent.y1 - bounds.y1,
        )
        if beyond > 1.0:
            out.append(f"{text.get_text()!r} ({beyond:.0f} px out)")
    return out


def _cases() -> list[Any]:
    return [
        pytest.param(method, label, id=f"{method}-{label}")
        for method, drawings in CASES.items()
        for label in drawings
    ]


@pytest.mark.parametrize(("method", "label"), _cases())
def test_nothing_drawn_is_clipped(method: str, label: str) -> None:
    figure = CASES[method][label]()[0]
    clipped = _clipped(figure)
    assert not clipped, f"{method} ({label}) draws outside its figure: {clipped}"


def _png_size(path: Path) -> tuple[int, int]:
    from matplotlib.image import imread

    height, width = imread(path).shape[:2]
    return width, height


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda: nl.deconvnet(_seeded(LongNamed), _images(), LAYER, 3), id="projection"
        ),
        pytest.param(
            lambda: nl.top_activations(_seeded(LongNamed), _images(4), LAYER, channels=[0, 1], k=4),
            id="top",
        ),
        pytest.param(_occlusion_tokens, id="occlusion"),
        pytest.param(_channel_stats, id="stats"),
        pytest.param(lambda: _atlas()[LAYER][0], id="card"),
    ],
)
def test_what_save_writes_is_the_figure_laid_out(make: Callable[[], Any], tmp_path: Path) -> None:
    result = make()
    figure, _ = result.plot()
    assert not _clipped(figure)
    expected = tuple(round(side) for side in figure.get_size_inches() * figure.dpi)
    result.save(tmp_path / "picture.png")
    assert _png_size(tmp_path / "picture.png") == expected
    shown = tmp_path / "shown.png"
    shown.write_bytes(result._repr_png_())
    assert _png_size(shown) == expected
    # and the figure saved at another resolution, checked at that resolution
    figure.savefig(tmp_path / "again.png", dpi=2 * figure.dpi)
    assert np.allclose(_png_size(tmp_path / "again.png"), 2 * np.asarray(expected), atol=1)
    figure.set_dpi(2 * figure.dpi)
    assert not _clipped(figure)


def test_titles_fit_again_when_drawn_and_a_users_title_stays() -> None:
    figure, ax = nl.deconvnet(_seeded(LongNamed), _images(), LAYER, 3).plot()
    whole = f"deconvnet projections, layer {LAYER!r}"
    assert ax.get_title() == whole  # until it is laid out
    assert not _clipped(figure)
    fitted = ax.get_title()
    assert "\n" in fitted and fitted.split() != whole.split()  # broken, also inside the name
    assert "".join(fitted.split()) == "".join(whole.split())  # and nothing lost
    figure.set_size_inches(12, 4)  # wide enough for one line now
    assert not _clipped(figure)
    assert ax.get_title() == f"deconvnet projections, layer {LAYER!r}"
    ax.set_title("my own title, which netlens leaves as it is")
    figure.set_size_inches(2, 3)
    _clipped(figure)
    assert ax.get_title() == "my own title, which netlens leaves as it is"


def test_a_figure_pickles_with_its_layout() -> None:
    import pickle

    figure, _ = _occlusion_images().plot_panels(class_names=LONG_LABELS)
    again = pickle.loads(pickle.dumps(figure))
    assert type(again.get_layout_engine()) is type(figure.get_layout_engine())
    assert not _clipped(again)


# -- the architectures users bring -------------------------------------------------------------
# Layer names of torchvision's and Hugging Face's models are long dotted paths, and their token
# models return output objects: the same pictures, on their definitions (random weights).


def _resnet18() -> nn.Module:
    from _torchvision import import_torchvision

    torchvision = import_torchvision()
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def _tiny_bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config).eval()


CLASS_NAMES = [f"a class with a long name {i}" for i in range(10)]


def test_nothing_drawn_for_torchvisions_resnet18_is_clipped() -> None:
    model = _resnet18()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    layer = "layer3.1.bn2"
    maps = nl.occlusion(model, images, window=(16, 16), stride=8, layer=layer)
    top = nl.top_activations(model, images, layer, channels=[0, 1], k=2)
    stats = nl.activation_stats(model, [images], layer)[layer]
    projection = nl.deconvnet(model, images, layer, [0, 1])
    figures = {
        "occlusion panels": maps.plot_panels(class_names=CLASS_NAMES)[0],
        "occlusion": maps.plot(sample=1, map="feature_activation")[0],
        "top": top.plot()[0],
        "stats": stats.plot()[0],
        "projection": projection.plot()[0],
    }
    clipped = {name: _clipped(figure) for name, figure in figures.items()}
    assert {name: found for name, found in clipped.items() if found} == {}


def test_nothing_drawn_for_a_hugging_face_token_model_is_clipped() -> None:
    model = _tiny_bert()
    ids = torch.randint(1, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    maps = nl.occlusion(model, ids, window=(1,), baseline=0, scores=lambda out: out.logits)
    figures = {
        "plot": maps.plot(sample=0, labels=WORDS)[0],
        "panels": maps.plot_panels(labels=WORDS, class_names=CLASS_NAMES[:3])[0],
        "score": maps.plot(sample=1, map="probability", labels=WORDS)[0],
    }
    clipped = {name: _clipped(figure) for name, figure in figures.items()}
    assert {name: found for name, found in clipped.items() if found} == {}
    # the words name the positions, not the ids
    axis = figures["plot"].axes[0]
    assert {label.get_text() for label in axis.get_xticklabels()} <= set(WORDS) | {""}
    assert "extraordinarily" in {label.get_text() for label in axis.get_xticklabels()}
