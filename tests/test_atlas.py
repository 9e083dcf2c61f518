"""The atlas: one pass equals the techniques run apart, resume, escaping, the site, the command.

Every number an atlas shows is compared with the technique that computes it alone
(:func:`netlens.activation_stats`, :func:`netlens.top_activations`,
:func:`netlens.maximize_activation`) and the histograms with a float64 loop over the values.
"""

from __future__ import annotations

import html
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import netlens as nl
from netlens._atlas import histogram as histogram_module
from netlens._atlas.site import slug
from netlens.testing import RowRecurrentNet, TinyConvNet, model_unchanged

# One intra-op thread (tests/conftest.py): results compared bit for bit across calls.
ONE_THREAD = True

LAYERS = ["conv1", "relu1", "conv2", "fc"]


def _model() -> TinyConvNet:
    torch.manual_seed(0)
    return TinyConvNet().eval()


def _images(count: int = 40) -> torch.Tensor:
    return torch.randn(count, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _loader(images: torch.Tensor, size: int = 16) -> list[torch.Tensor]:
    return [images[start : start + size] for start in range(0, images.shape[0], size)]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[nl.Atlas, Path]:
    out = tmp_path_factory.mktemp("atlas")
    model = _model()
    with model_unchanged(model):
        book = nl.atlas(model, _loader(_images()), LAYERS, out=out, k=3, steps=6, diverse=2)
    return book, out


# -- the one pass equals each technique run apart ---------------------------------------------


def test_statistics_equal_activation_stats(built: tuple[nl.Atlas, Path]) -> None:
    book, _ = built
    expected = nl.activation_stats(_model(), _loader(_images()), LAYERS)
    for name in LAYERS:
        found = book[name].stats
        for field in ("mean", "std", "min", "max", "zero_fraction", "count"):
            torch.testing.assert_close(
                getattr(found, field), getattr(expected[name], field), rtol=1e-12, atol=1e-12
            )


def test_examples_equal_top_activations(built: tuple[nl.Atlas, Path]) -> None:
    book, _ = built
    for name in ("conv1", "conv2", "fc"):
        expected = nl.top_activations(_model(), _loader(_images()), name, k=3)
        found = book[name].top
        assert found is not None
        for field in ("activations", "indices", "positions", "boxes", "patches", "projections"):
            assert torch.equal(getattr(found, field), getattr(expected, field)), (name, field)
        card = book[name][1]
        assert torch.equal(card.indices, expected.indices[1])
        assert card.patches is not None and torch.equal(card.patches, expected.patches[1])


def test_a_layer_projected_in_parts_is_the_layer_projected_at_once(
    built: tuple[nl.Atlas, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from netlens._atlas import api

    monkeypatch.setattr(api, "PART", 4)  # conv2's 6 channels in two parts, fc's 3 in one
    book = nl.atlas(_model(), _loader(_images()), LAYERS, out=tmp_path, k=3, steps=6, diverse=2)
    assert len(book["conv2"].parts) == 2 and len(book["fc"].parts) == 1
    expected = nl.top_activations(_model(), _loader(_images()), "conv2", k=3)
    joined = book["conv2"].top
    assert joined is not None
    for field in ("activations", "indices", "positions", "boxes", "patches", "projections"):
        assert torch.equal(getattr(joined, field), getattr(expected, field)), field
    card = book["conv2"][5]  # in the second part
    assert card.patches is not None and torch.equal(card.patches, expected.patches[5])
    assert _files(tmp_path) == _files(built[1])  # the same site


def test_feature_visualisations_equal_maximize_activation(built: tuple[nl.Atlas, Path]) -> None:
    book, _ = built
    images = _images()
    value_range = (float(images.min()), float(images.max()))
    expected = nl.maximize_activation(
        _model(),
        "conv2",
        input_shape=(1, 8, 8),
        steps=6,
        param="fourier",  # the atlas' choice for images
        value_range=value_range,
        seed=0,
    )
    features = book["conv2"].features
    assert features is not None
    assert torch.equal(features, expected.images)
    diverse = book["conv2"].diverse
    assert diverse is not None and diverse.shape == (6, 2, 1, 8, 8)
    assert not torch.equal(diverse[0, 0], diverse[0, 1])  # pushed apart


def test_one_forward_pass_per_batch() -> None:
    """The data pass runs the model once per batch (and once on one input, to count calls)."""
    model = _model()
    batches: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        nl.atlas(model, _loader(_images(), size=5), LAYERS, k=3, maximize=False)
    finally:
        handle.remove()
    # Batches of 5: no other call runs 5 inputs (projections run the 4 x 3, 6 x 3 or 3 x 3
    # winners of a layer, the count of calls one input, receptive fields one or a few).
    assert batches.count(5) == 8  # 40 inputs: one forward per batch


def test_histograms_count_every_value_in_its_fine_bin() -> None:
    """Fine bins: [2**e * (1 + m/32), 2**e * (1 + (m+1)/32)) of the magnitude, mirrored."""
    values = torch.tensor(
        [[0.0, -0.0, 1e-9, -3.0, 3.0, 2.5, 2.5, 1e7, -1e7, float("nan"), float("inf"), 0.75]]
    ).reshape(1, 1, 12)
    counts = histogram_module.count(values).counts[0].numpy()
    side = histogram_module.FINE // 2
    positive = histogram_module._fine_edges()[side + 1 :]  # 2**-20 ... 2**20
    expected = np.zeros(histogram_module.FINE, dtype=np.int64)
    for value in values.flatten().double().tolist():
        if not math.isfinite(value):
            continue
        magnitude = abs(value)
        if magnitude < 2.0**-20:
            expected[side] += 1
            continue
        step = max(j for j in range(side) if positive[j] <= magnitude)  # the last bin beyond
        expected[side + 1 + step if value > 0 else side - 1 - step] += 1
    assert (counts == expected).all()
    assert counts.sum() == 10  # every finite value, once
    shown_edges, shown = histogram_module.display(torch.from_numpy(counts), -1e7, 1e7)
    assert shown.sum() == pytest.approx(counts.sum())
    assert shown_edges[0] == -1e7 and shown_edges[-1] == 1e7


def test_a_card_shows_its_histogram_over_its_range(built: tuple[nl.Atlas, Path]) -> None:
    book, _ = built
    card = book["relu1"][2]
    assert card.counts.sum().item() == pytest.approx(card.count)
    assert card.edges[0].item() == pytest.approx(card.min)
    assert card.edges[-1].item() == pytest.approx(card.max)
    assert card.zero_fraction > 0  # a ReLU's zeros


# -- the object ---------------------------------------------------------------------------------


def test_the_atlas_is_a_mapping_of_layers_of_cards(built: tuple[nl.Atlas, Path]) -> None:
    book, out = built
    assert list(book) == LAYERS and len(book) == 4
    assert book.out == out and book.site_bytes > 0
    assert book.samples == 40 and book.input_shape == (1, 8, 8) and book.k == 3
    layer = book["conv1"]
    assert len(layer) == 4 and list(layer) == [0, 1, 2, 3] and 3 in layer and 4 not in layer
    card = layer[0]
    assert card.layer == "conv1" and card.channel == 0 and card.channels == 4
    assert card.weights is not None and card.weights.shape == (1, 3, 3)  # a first-layer filter
    assert book["conv2"][0].weights is None  # 4 input channels: no picture
    assert "ChannelCard(layer='conv1', channel=0" in repr(card)
    assert "Atlas(model=TinyConvNet" in repr(book)
    with pytest.raises(nl.LayerNotFoundError, match="conv3"):
        book["conv3"]
    with pytest.raises(nl.NetlensValueError, match=r"channel in \[0, 4\)"):
        layer[4]
    with pytest.raises(nl.NetlensTypeError, match="channel index"):
        layer["0"]  # type: ignore[index]


def test_cards_plot_save_and_show_in_a_notebook(
    built: tuple[nl.Atlas, Path], tmp_path: Path
) -> None:
    book, _ = built
    card = book["conv2"][4]
    _, axes = card.plot()
    assert "channel 4" in axes.get_title()
    card.save(tmp_path / "card.png")
    assert (tmp_path / "card.png").read_bytes()[:4] == b"\x89PNG"
    assert card._repr_png_()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in card._repr_html_()
    assert "<table" in book._repr_html_() and "conv2" in book._repr_html_()
    assert book["conv2"]._repr_html_().count("<img") == 6
    _, axes = book["conv2"].plot()
    assert "6 channels" in axes.get_title()


def test_recurrent_units_work_through_the_layer_contract() -> None:
    torch.manual_seed(0)
    model = RowRecurrentNet("lstm").eval()
    rows = torch.randn(20, 8, 8, generator=torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match="nonlinearities other than ReLU"):  # the LSTM's gates
        book = nl.atlas(model, _loader(rows, 10), ["rnn"], k=2, steps=4)
    layer = book["rnn"]
    assert len(layer) == 6 and layer.kind == "LSTM"
    card = layer[5]
    assert card.weights is not None and card.weights.shape == (4, 8)  # four gates x features
    assert card.saturated is not None  # an LSTM's output is tanh-bounded
    assert card.feature is not None and card.feature.shape == (8, 8)
    with pytest.warns(UserWarning, match="nonlinearities other than ReLU"):
        expected = nl.top_activations(model, _loader(rows, 10), "rnn", k=2)
    assert layer.top is not None and torch.equal(layer.top.indices, expected.indices)


def test_bad_arguments_say_what_was_expected() -> None:
    model, data = _model(), _loader(_images())
    with pytest.raises(nl.NetlensTypeError, match="Expected k to be an int"):
        nl.atlas(model, data, "conv1", k="9")  # type: ignore[arg-type]
    with pytest.raises(nl.NetlensValueError, match="Expected k >= 1"):
        nl.atlas(model, data, "conv1", k=0)
    with pytest.raises(nl.NetlensTypeError, match="Expected out to be a str"):
        nl.atlas(model, data, "conv1", out=3)  # type: ignore[arg-type]
    with pytest.raises(nl.LayerNotFoundError):
        nl.atlas(model, data, "conv9")
    with pytest.raises(nl.NetlensValueError, match="at least k=50 inputs"):
        nl.atlas(model, data, "conv1", k=50, maximize=False)


# -- the site -----------------------------------------------------------------------------------


def test_the_site_has_a_page_per_layer_and_channel(built: tuple[nl.Atlas, Path]) -> None:
    book, out = built
    assert (out / "index.html").exists() and (out / "atlas.css").exists()
    for name in LAYERS:
        assert (out / slug(name) / "index.html").exists()
        for channel in book[name]:
            page = out / slug(name) / f"{channel}.html"
            assert page.exists(), page
    page = (out / "conv2" / "3.html").read_text()
    assert 'href="2.html"' in page and 'href="4.html"' in page  # the neighbours
    assert page.count('src="data:image/png;base64,') == 4  # visualisations, patches, projections
    assert len(list((out / "conv2").iterdir())) == 1 + 6  # the layer's page, one per channel
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    state = sum(path.stat().st_size for path in (out / ".atlas-state").rglob("*") if path.is_file())
    assert book.site_bytes == size - state


HOSTILE = "<img src=x onerror=alert(1)>"


class _Hostile(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.add_module(HOSTILE, nn.Conv2d(1, 2, 3))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(getattr(self, HOSTILE)(x)).flatten(1)


def test_names_from_the_model_are_escaped(tmp_path: Path) -> None:
    torch.manual_seed(0)
    book = nl.atlas(_Hostile().eval(), _loader(_images(12)), HOSTILE, out=tmp_path, k=2, steps=2)
    folder = tmp_path / slug(HOSTILE)
    assert slug(HOSTILE) != HOSTILE and "<" not in slug(HOSTILE)
    pages = [tmp_path / "index.html", folder / "index.html", folder / "0.html"]
    for page in pages:
        text = page.read_text()
        assert HOSTILE not in text
        assert html.escape(HOSTILE) in text
    assert HOSTILE not in book._repr_html_() and HOSTILE not in book[HOSTILE][0]._repr_html_()


def test_chosen_inputs_get_occlusion_pages(tmp_path: Path) -> None:
    chosen = _images(3)
    names = ["ring", "bar", "cross"]
    book = nl.atlas(
        _model(),
        _loader(_images()),
        "conv2",
        out=tmp_path,
        k=2,
        maximize=False,
        inputs_for_occlusion=chosen,
        class_names=names,
    )
    assert book.occluded is not None
    # a quarter of each side, moved by half of itself
    expected = nl.occlusion(_model(), chosen, window=2, stride=1)
    for field in ("probability", "predicted_class", "attribution", "target"):
        assert torch.equal(getattr(book.occluded.occlusion, field), getattr(expected, field))
    probabilities, classes = _model()(chosen).softmax(dim=1).topk(3, dim=1)
    assert torch.equal(book.occluded.classes, classes)
    torch.testing.assert_close(book.occluded.probabilities, probabilities.detach())
    index = (tmp_path / "index.html").read_text()
    for number in range(3):
        page = (tmp_path / "inputs" / f"{number}.html").read_text()
        assert 'src="data:image/png;base64,' in page
        assert names[int(classes[number, 0])] in page
        assert f'href="inputs/{number}.html"' in index
    with pytest.raises(nl.NetlensValueError, match=r"inputs_for_occlusion of shape \(n, 1, 8, 8\)"):
        nl.atlas(
            _model(),
            _loader(_images()),
            "conv2",
            maximize=False,
            inputs_for_occlusion=chosen[:, :, :4],
        )
    with pytest.raises(nl.NetlensTypeError, match="class_names"):
        nl.atlas(_model(), _loader(_images()), "conv2", maximize=False, class_names="abc")


# -- resuming -----------------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and ".atlas-state" not in path.parts
    }


def test_an_interrupted_build_resumes_to_the_same_site(
    built: tuple[nl.Atlas, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, complete = built
    from netlens._atlas import api

    calls = {"features": 0}
    real = api.feature_visualisations

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls["features"] += 1
        if calls["features"] == 3:
            raise KeyboardInterrupt  # in the third layer's feature visualisations
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "feature_visualisations", interrupted)
    with pytest.raises(KeyboardInterrupt):
        nl.atlas(_model(), _loader(_images()), LAYERS, out=tmp_path, k=3, steps=6, diverse=2)

    def no_pass(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the pass over the data ran again")

    monkeypatch.setattr(api, "data_pass", no_pass)
    monkeypatch.setattr(api, "feature_visualisations", real)
    counted: list[str] = []
    monkeypatch.setattr(
        api,
        "feature_visualisations",
        lambda model, view, *a, **k: counted.append(view.name) or real(model, view, *a, **k),
    )
    nl.atlas(_model(), _loader(_images()), LAYERS, out=tmp_path, k=3, steps=6, diverse=2)
    assert counted == ["conv2", "fc"]  # conv1 and relu1 were kept
    assert _files(tmp_path) == _files(complete)


def test_other_options_start_afresh(tmp_path: Path) -> None:
    first = nl.atlas(_model(), _loader(_images()), "conv1", out=tmp_path, k=2, maximize=False)
    second = nl.atlas(_model(), _loader(_images()), "conv1", out=tmp_path, k=3, maximize=False)
    assert first["conv1"].top is not None and second["conv1"].top is not None
    assert first["conv1"].top.indices.shape[1] == 2 and second["conv1"].top.indices.shape[1] == 3


# -- the command ------------------------------------------------------------------------------


def test_the_command_builds_an_atlas(tmp_path: Path) -> None:
    (tmp_path / "atlas_inputs.py").write_text(
        "import torch\n"
        "from netlens.testing import TinyConvNet\n"
        "def model():\n"
        "    torch.manual_seed(0)\n"
        "    return TinyConvNet()\n"
        "def data():\n"
        "    return torch.randn(24, 1, 8, 8, generator=torch.Generator().manual_seed(1))\n"
    )
    torch.manual_seed(0)
    torch.save(TinyConvNet().state_dict(), tmp_path / "model.pt")
    command = [
        sys.executable,
        "-m",
        "netlens",
        "atlas",
        "atlas_inputs:model",
        "--data",
        "atlas_inputs:data",
        "--checkpoint",
        "model.pt",
        "--layers",
        "conv1",
        "conv2",
        "--out",
        "site",
        "--k",
        "2",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--quiet",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "atlas of TinyConvNet" in done.stdout
    assert (tmp_path / "site" / "conv2" / "5.html").exists()
    wrong = subprocess.run(
        [*command[:4], "no_such_module:model", *command[5:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert wrong.returncode != 0 and "cannot import 'no_such_module'" in wrong.stderr


# -- two processes ------------------------------------------------------------------------------

SHARDS = (slice(0, 24), slice(24, 40))  # uneven: three batches of 8, then two


def _shard_batches(rank: int) -> list[torch.Tensor]:
    return _loader(_images()[SHARDS[rank]], 8)


def _two_ranks(rank: int, world: int, out: str) -> None:
    from netlens._atlas import pictures

    pictures.CHUNK = 2  # several chunks per layer, split between the ranks
    book = nl.atlas(
        _model(),
        _shard_batches(rank),
        LAYERS,
        out=Path(out) / "site",
        k=3,
        steps=4,
        group="default",
    )
    torch.save(_numbers(book), Path(out) / f"rank{rank}.pt")


def _numbers(book: nl.Atlas) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for name, layer in book.items():
        assert layer.top is not None and layer.features is not None
        for field in ("mean", "std", "min", "max", "zero_fraction", "count"):
            found[f"{name}.{field}"] = getattr(layer.stats, field)
        found[f"{name}.histogram"] = layer.histogram.counts
        for field in ("activations", "indices", "patches", "projections"):
            found[f"{name}.{field}"] = getattr(layer.top, field)
        found[f"{name}.features"] = layer.features
    return found


@pytest.mark.slow
def test_two_processes_build_the_site_of_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from _spawn import spawn

    from netlens._atlas import pictures

    spawn(_two_ranks, 2, str(tmp_path), timeout=300)
    monkeypatch.setattr(pictures, "CHUNK", 2)
    one = nl.atlas(
        _model(),
        _shard_batches(0) + _shard_batches(1),
        LAYERS,
        out=tmp_path / "one",
        k=3,
        steps=4,
    )
    expected = _numbers(one)
    for rank in range(2):
        found = torch.load(tmp_path / f"rank{rank}.pt")
        assert found.keys() == expected.keys()
        for key, tensor in expected.items():
            if key.endswith((".mean", ".std")):
                # sums merged in another order (the std's per-batch sums in float32, as in
                # activation_stats over ranks): equal to float32's precision
                torch.testing.assert_close(found[key], tensor, rtol=1e-6, atol=1e-9)
            else:
                assert torch.equal(found[key], tensor), (rank, key)
    assert _files(tmp_path / "site") == _files(tmp_path / "one")


# -- a model nobody here wrote --------------------------------------------------------------------


def test_an_atlas_of_torchvisions_resnet18_equals_its_techniques(tmp_path: Path) -> None:
    from _torchvision import import_torchvision

    torchvision = import_torchvision()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    images = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    data = _loader(images, 6)
    layers = ["layer1", "layer2"]
    with model_unchanged(model):
        book = nl.atlas(model, data, layers, out=tmp_path, k=2, maximize=["layer1"], steps=2)
    stats = nl.activation_stats(model, data, layers)
    for name in layers:
        torch.testing.assert_close(book[name].stats.mean, stats[name].mean, rtol=1e-9, atol=1e-9)
        assert torch.equal(book[name].histogram.counts.sum(1), stats[name].count)
    expected = nl.top_activations(model, data, "layer2", k=2)
    found = book["layer2"].top
    assert found is not None
    for field in ("indices", "positions", "boxes", "patches", "projections"):
        assert torch.equal(getattr(found, field), getattr(expected, field)), field
    assert book["layer1"].features is not None and book["layer2"].features is None
    assert book["layer1"][0].weights is None  # 64 input channels: no picture
    assert (tmp_path / "layer2" / "127.html").exists()
