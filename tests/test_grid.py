from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import netlens as nl
from netlens._core.model import evaluating
from netlens._grid import grid_shape, image_grid, tile_grid
from netlens.testing import ZooModel, contract_zoo, model_unchanged


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return module


def expected_tile(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """The slow, obvious colour of each value: a linear map of [low, high] to 0..255."""
    out = np.empty(values.shape, dtype=np.uint8)
    for index, value in np.ndenumerate(values):
        out[index] = round(min(max((value - low) / (high - low), 0.0), 1.0) * 255)
    return out


def tile_at(
    array: np.ndarray, row: int, col: int, height: int, width: int, band: int = 0
) -> np.ndarray:
    top, left = row * (band + height + 1) + band, col * (width + 1)
    return array[top : top + height, left : left + width]


# -- layout -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "tile", "ncols", "expected"),
    [
        (1, (5, 5), None, (1, 1)),
        (6, (5, 5), None, (2, 3)),
        (32, (5, 5), None, (6, 6)),
        (64, (5, 5), None, (8, 8)),
        (4, (128, 28), None, (1, 4)),
        (10, (5, 5), 4, (3, 4)),
        (3, (5, 5), 10, (1, 3)),
    ],
)
def test_grid_shape_is_near_square(
    count: int, tile: tuple[int, int], ncols: int | None, expected: tuple[int, int]
) -> None:
    assert grid_shape(count, *tile, ncols=ncols) == expected


def test_tile_grid_places_tiles_with_thin_borders() -> None:
    tiles = np.stack([np.full((2, 3, 3), value, dtype=np.uint8) for value in (10, 20, 30)])
    array = tile_grid(tiles, [(0, 0), (0, 1), (1, 0)], 2, 2, scale=2, border=1)
    assert array.shape == (2 * 4 + 1, 2 * 6 + 1, 3)
    assert (
        (array[:4, :6] == 10).all() and (array[:4, 7:] == 20).all() and (array[5:, :6] == 30).all()
    )
    assert (array[4] == 255).all() and (array[:, 6] == 255).all()  # one-pixel borders
    assert (array[5:, 7:] == 255).all()  # the empty cell


# -- FilterGrid ---------------------------------------------------------------------------------


def test_grey_filters_each_on_its_own_range() -> None:
    conv = seeded(nn.Conv2d(1, 5, 3))
    grid = nl.FilterGrid(conv)
    weights = conv.weight.detach().double().numpy()[:, 0]
    assert grid.shape == (2, 3) and grid.value_range is None
    torch.testing.assert_close(grid.tiles, torch.from_numpy(weights))
    array = grid.to_array(scale=1)
    assert array.dtype == np.uint8 and array.shape == (2 * 3 + 1, 3 * 3 + 2, 3)
    for index in range(5):
        row, col = divmod(index, 3)
        tile = tile_at(array, row, col, 3, 3)
        w = weights[index]
        expected = expected_tile(w, w.min(), w.max())
        assert (tile[..., 0] == expected).all() and (tile[..., 1] == expected).all()
        assert tile.min() == 0 and tile.max() == 255


def test_global_and_fixed_ranges() -> None:
    conv = seeded(nn.Conv2d(1, 4, 2))
    weights = conv.weight.detach().double().numpy()[:, 0]
    grid = nl.FilterGrid(conv, normalize="global", ncols=4)
    assert grid.value_range == (weights.min(), weights.max())
    array = grid.to_array(scale=1)
    for index in range(4):
        tile = tile_at(array, 0, index, 2, 2)[..., 0]
        assert (tile == expected_tile(weights[index], weights.min(), weights.max())).all()
    fixed = nl.FilterGrid(conv, normalize=(-1.0, 1.0), ncols=4).to_array(scale=1)
    assert (tile_at(fixed, 0, 0, 2, 2)[..., 0] == expected_tile(weights[0], -1.0, 1.0)).all()


def test_symmetric_is_centred_at_zero_with_a_diverging_map() -> None:
    from matplotlib import colormaps

    weight = torch.tensor([[[[0.0, 2.0], [-1.0, 0.5]]]], dtype=torch.float64)
    grid = nl.FilterGrid(weight, normalize="symmetric")
    assert grid.value_range == (-2.0, 2.0)
    array = grid.to_array(scale=1)
    centre = np.round(np.asarray(colormaps["RdBu_r"](0.5))[:3] * 255)
    assert (array[0, 0] == centre).all()  # zero is the middle of the map
    top = np.round(np.asarray(colormaps["RdBu_r"](1.0))[:3] * 255)
    assert (array[0, 1] == top).all()
    figure, _ = grid.plot()
    assert len(figure.axes) == 2  # the image and its colorbar


def test_rgb_filters() -> None:
    conv = seeded(nn.Conv2d(3, 4, 3))
    grid = nl.FilterGrid(conv)
    assert grid.tiles.shape == (4, 3, 3, 3)
    weights = conv.weight.detach().double().numpy()
    array = grid.to_array(scale=1)
    w = weights[1].transpose(1, 2, 0)
    assert (tile_at(array, 0, 1, 3, 3) == expected_tile(w, w.min(), w.max())).all()


def test_many_input_channels_mean_or_separate() -> None:
    conv = seeded(nn.Conv2d(4, 6, 3))
    weights = conv.weight.detach().double()
    mean = nl.FilterGrid(conv)
    torch.testing.assert_close(mean.tiles, weights.mean(1))
    separate = nl.FilterGrid(conv, in_channels="separate")
    assert separate.shape == (4, 6)  # one row per input channel, one column per filter
    torch.testing.assert_close(separate.tiles[1 * 6 + 5], weights[5, 1])
    array = separate.to_array(scale=1)
    w = weights[5, 1].numpy()
    assert (tile_at(array, 1, 5, 3, 3)[..., 0] == expected_tile(w, w.min(), w.max())).all()
    separate.plot()


def test_linear_weight_is_one_heatmap() -> None:
    linear = seeded(nn.Linear(7, 3))
    grid = nl.FilterGrid(linear)
    assert grid.shape == (1, 1)
    torch.testing.assert_close(grid.tiles[0], linear.weight.detach().double())
    assert grid.to_array().shape == (3, 7, 3)
    w = linear.weight.detach().double().numpy()
    assert grid.value_range == (w.min(), w.max())


@pytest.mark.parametrize(
    ("module", "weight", "gates", "rows"),
    [
        (nn.LSTM(5, 3), None, ["i", "f", "g", "o"], (3, 5)),
        (nn.LSTM(5, 3), "weight_hh_l0", ["i", "f", "g", "o"], (3, 3)),
        (nn.GRU(5, 3), None, ["r", "z", "n"], (3, 5)),
        (nn.LSTMCell(5, 3), "weight_hh", ["i", "f", "g", "o"], (3, 3)),
        (nn.RNN(5, 3), None, None, (3, 5)),
    ],
    ids=["lstm-ih", "lstm-hh", "gru", "lstm-cell", "rnn"],
)
def test_recurrent_gate_blocks(
    module: nn.Module, weight: str | None, gates: list[str] | None, rows: tuple[int, int]
) -> None:
    grid = nl.FilterGrid(module, weight=weight)
    assert grid._titles == gates
    full = getattr(
        module, weight or ("weight_ih" if isinstance(module, nn.LSTMCell) else "weight_ih_l0")
    )
    count = len(gates) if gates else 1
    assert grid.tiles.shape == (count, *rows)
    torch.testing.assert_close(grid.tiles.reshape(full.shape), full.detach().double())
    assert grid.shape == (count, 1)  # stacked in PyTorch's order
    _, ax = grid.plot()
    if gates:
        assert [label.get_text() for label in ax.get_yticklabels()] == gates


def test_gates_for_a_bare_tensor() -> None:
    grid = nl.FilterGrid(torch.randn(6, 2), gates=["r", "z", "n"], ncols=3)
    assert grid.shape == (1, 3) and grid.tiles.shape == (3, 2, 2)
    _, ax = grid.plot()
    assert [t.get_text() for t in ax.texts] == ["r", "z", "n"]
    with pytest.raises(nl.NetlensValueError, match="split evenly"):
        nl.FilterGrid(torch.randn(7, 2), gates=["r", "z", "n"])


def test_float64_and_requires_grad_weights() -> None:
    conv = nn.Conv2d(1, 2, 3).double()
    with model_unchanged(conv):
        grid = nl.FilterGrid(conv, normalize="global")
        grid.plot()
    assert grid.tiles.dtype == torch.float64


def test_filter_grid_over_the_zoo(zoo_model: ZooModel) -> None:
    model = zoo_model.model
    layer = nl.find_layers(model, zoo_model.feature_layer)[zoo_model.feature_layer]
    with model_unchanged(model):
        grid = nl.FilterGrid(layer, normalize="symmetric")
        grid.to_array()
        grid.plot()
    with model_unchanged(model), pytest.raises(nl.NetlensTypeError, match="no weight"):
        nl.FilterGrid(nn.ReLU())
    with model_unchanged(model), pytest.raises(nl.NetlensValueError, match="normalize"):
        nl.FilterGrid(layer, normalize="per-channel")  # type: ignore[arg-type]


def test_colormaps_and_gates_are_checked_before_drawing() -> None:
    from matplotlib import colormaps

    conv = nn.Conv2d(1, 2, 3)
    with pytest.raises(nl.NetlensValueError, match=r"cmap.*'viridis'"):
        nl.FilterGrid(conv, cmap="viridsi")  # close matches are listed
    with pytest.raises(nl.NetlensValueError, match="cmap"):
        nl.ActivationGrid(torch.rand(2, 4, 4), cmap="no such map")
    with pytest.raises(nl.NetlensTypeError, match="cmap"):
        nl.ActivationGrid(torch.rand(2, 4, 4), cmap=3)
    by_name = nl.FilterGrid(conv, cmap="magma").to_array()
    by_object = nl.FilterGrid(conv, cmap=colormaps["magma"]).to_array()
    np.testing.assert_array_equal(by_name, by_object)
    for gates in ("ifgo", ["i", 1], 4):
        with pytest.raises(nl.NetlensTypeError, match="gates"):
            nl.FilterGrid(torch.randn(4, 2), gates=gates)  # type: ignore[arg-type]
    with pytest.raises(nl.NetlensTypeError, match="weight"):
        nl.FilterGrid(conv, weight=0)  # type: ignore[arg-type]


def test_bad_sources_and_options() -> None:
    with pytest.raises(nl.NetlensValueError, match="4-D conv weight"):
        nl.FilterGrid(nn.Conv1d(2, 3, 3))
    with pytest.raises(nl.NetlensValueError, match="4-D conv weight"):
        nl.FilterGrid(torch.randn(2, 3, 4, 5, 6))
    with pytest.raises(nl.NetlensTypeError, match="no weight"):
        nl.FilterGrid(nn.MaxPool2d(2))
    with pytest.raises(nl.NetlensValueError, match=r"weight to name .*'weight_hh'"):
        nl.FilterGrid(nn.Linear(2, 2), weight="weight_hh")
    with pytest.raises(nl.NetlensTypeError, match="module with a weight"):
        nl.FilterGrid([[1.0]])  # type: ignore[arg-type]
    for bad in ("per-filter", (1.0, 0.0), (0.0,), (0.0, float("inf"))):
        with pytest.raises(nl.NetlensValueError, match="normalize"):
            nl.FilterGrid(nn.Conv2d(1, 2, 3), normalize=bad)  # type: ignore[arg-type]
    for wrong_type in (None, [0.0, 1.0], (0.0, "1")):
        with pytest.raises(nl.NetlensTypeError, match="normalize"):
            nl.FilterGrid(nn.Conv2d(1, 2, 3), normalize=wrong_type)  # type: ignore[arg-type]
    with pytest.raises(nl.NetlensValueError, match="in_channels"):
        nl.FilterGrid(nn.Conv2d(2, 2, 3), in_channels="sum")  # type: ignore[arg-type]
    with pytest.raises(nl.NetlensTypeError, match="in_channels"):
        nl.FilterGrid(nn.Conv2d(2, 2, 3), in_channels=1)  # type: ignore[arg-type]
    with pytest.raises(nl.NetlensValueError, match="3 input channels"):
        nl.FilterGrid(nn.Conv2d(2, 2, 3), in_channels="rgb")
    with pytest.raises(nl.NetlensValueError, match="ncols"):
        nl.FilterGrid(nn.Conv2d(1, 2, 3), ncols=0)
    with pytest.raises(nl.NetlensValueError, match="2 titles"):
        nl.FilterGrid(nn.Conv2d(1, 2, 3), titles=["a"])
    with pytest.raises(nl.NetlensValueError, match="scale"):
        nl.FilterGrid(nn.Conv2d(1, 2, 3)).to_array(scale=0)
    with pytest.raises(nl.NetlensTypeError, match="scale"):
        nl.FilterGrid(nn.Conv2d(1, 2, 3)).to_array(scale=1.5)  # type: ignore[arg-type]
    with pytest.raises(nl.NetlensTypeError, match="ncols"):
        nl.FilterGrid(nn.Conv2d(1, 2, 3), ncols="2")  # type: ignore[arg-type]
    with pytest.raises(nl.NetlensValueError, match="border"):
        nl.FilterGrid(nn.Conv2d(1, 2, 3)).to_array(border=-1)


def test_constant_and_non_finite_tiles_do_not_break() -> None:
    weight = torch.zeros(3, 1, 2, 2)
    weight[1, 0, 0, 0] = float("nan")
    weight[2] = float("inf")
    grid = nl.FilterGrid(weight, ncols=3)
    array = grid.to_array(scale=1)
    assert (tile_at(array, 0, 0, 2, 2) == 128).all()  # a constant tile is mid-grey
    # never drawn silently: counted, and said under the picture
    assert grid.non_finite == 5
    _, ax = grid.plot()
    assert ax.get_xlabel() == "5 NaN or inf values, drawn grey"
    assert nl.FilterGrid(torch.zeros(3, 1, 2, 2)).non_finite == 0


# -- ActivationGrid -----------------------------------------------------------------------------


def test_feature_maps_of_one_input() -> None:
    maps = torch.rand(16, 7, 7)
    grid = nl.ActivationGrid(maps)
    assert grid.shape == (4, 4)
    array = grid.to_array(scale=1)
    m = maps[5].double().numpy()
    assert (tile_at(array, 1, 1, 7, 7)[..., 0] == expected_tile(m, m.min(), m.max())).all()
    assert nl.ActivationGrid(maps[None]).shape == (4, 4)  # (1, C, H, W) is the same


def test_pictures_grey_and_rgb() -> None:
    grey = nl.ActivationGrid(torch.rand(5, 1, 8, 8), normalize=(0.0, 1.0))
    assert grey.tiles.shape == (5, 8, 8)
    rgb = nl.ActivationGrid(torch.rand(5, 3, 8, 8), titles=[f"ch {i}" for i in range(5)])
    assert rgb.tiles.shape == (5, 8, 8, 3)
    _, ax = rgb.plot()
    assert [t.get_text() for t in ax.texts] == [f"ch {i}" for i in range(5)]
    maps = nl.ActivationGrid(torch.rand(5, 3, 8, 8), rgb=False)
    assert maps.shape == (5, 3) and maps.tiles.shape == (15, 8, 8)


def test_batch_of_feature_maps_one_row_per_input() -> None:
    data = torch.randn(2, 4, 6, 6)
    grid = nl.ActivationGrid(data)
    assert grid.shape == (2, 4)
    torch.testing.assert_close(grid.tiles[1 * 4 + 2], data[1, 2].double())
    _, ax = grid.plot()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["input 0", "input 1"]


def test_linear_activations_heatmap_and_bad_shapes() -> None:
    assert nl.ActivationGrid(torch.randn(4, 10)).to_array().shape == (4, 10, 3)
    for bad in (torch.randn(5), torch.randn(1, 2, 3, 4, 5)):
        with pytest.raises(nl.NetlensValueError, match="Expected activations of shape"):
            nl.ActivationGrid(bad)
    with pytest.raises(nl.NetlensValueError, match=r"empty tensor of shape \(0, 3, 3\)"):
        nl.ActivationGrid(torch.randn(0, 3, 3))
    with pytest.raises(nl.NetlensTypeError):
        nl.ActivationGrid(np.zeros((3, 4, 4)))  # type: ignore[arg-type]


def _drawn(figure: object) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure).draw()


def _ticks(axis: object, along: str) -> dict[float, str]:
    """The ticks drawn along ``along``: position -> label."""
    target = axis.xaxis if along == "x" else axis.yaxis  # type: ignore[attr-defined]
    low, high = sorted(target.get_view_interval())
    formatter = target.get_major_formatter()
    locations = [loc for loc in target.get_majorticklocs() if low <= loc <= high]
    return {float(loc): formatter(loc, i) for i, loc in enumerate(locations)}


def test_heatmaps_name_their_axes_by_what_they_show() -> None:
    # activations (tokens, features) are not a weight (outputs, inputs)
    tokens = ["the", "film", "was", "great", "!"]
    grid = nl.ActivationGrid(torch.randn(5, 16), labels=tokens)
    fig, ax = grid.plot()
    _drawn(fig)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("feature", "input or position")
    assert _ticks(ax, "y") == {float(i): token for i, token in enumerate(tokens)}
    assert all(position == int(position) for position in _ticks(ax, "x"))  # unit indices
    _, ax = nl.ActivationGrid(torch.randn(5, 16)).plot()
    assert ax.get_ylabel() == "input or position"
    fig, ax = nl.FilterGrid(seeded(nn.Linear(16, 5))).plot()
    _drawn(fig)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("input", "output")
    assert all(position == int(position) for position in _ticks(ax, "y"))
    # the rows of a table of inputs' feature maps take names too
    _, ax = nl.ActivationGrid(torch.rand(2, 5, 4, 4), labels=["cat", "dog"]).plot()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog"]


def test_activation_grid_labels_errors() -> None:
    with pytest.raises(nl.NetlensValueError, match="Expected 5 labels, one per row"):
        nl.ActivationGrid(torch.randn(5, 16), labels=["a", "b"])
    with pytest.raises(nl.NetlensValueError, match="titles="):
        nl.ActivationGrid(torch.rand(4, 5, 5), labels=["a"] * 4)
    with pytest.raises(nl.NetlensTypeError, match="labels"):
        nl.ActivationGrid(torch.randn(5, 16), labels="abcde")  # type: ignore[arg-type]


def test_channels_last_maps_with_channel_dim() -> None:
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(2, 4, 6, 6, generator=generator, dtype=torch.float64)
    last = first.permute(0, 2, 3, 1).contiguous()  # (N, H, W, C)
    reference = nl.ActivationGrid(first)
    grid = nl.ActivationGrid(last, channel_dim=-1)
    assert grid.shape == reference.shape == (2, 4)
    torch.testing.assert_close(grid.tiles, reference.tiles, rtol=0, atol=0)
    assert (grid.to_array() == reference.to_array()).all()
    # one input (H, W, C), and a heatmap whose units are on dim 0
    one = nl.ActivationGrid(last[0], channel_dim=2)
    torch.testing.assert_close(one.tiles, nl.ActivationGrid(first[0]).tiles, rtol=0, atol=0)
    units = torch.randn(3, 5, generator=generator)
    torch.testing.assert_close(
        nl.ActivationGrid(units.T, channel_dim=0).tiles, nl.ActivationGrid(units).tiles
    )
    # channels-last RGB pictures are pictures
    assert nl.ActivationGrid(torch.rand(5, 8, 8, 3), channel_dim=-1).tiles.shape == (5, 8, 8, 3)
    # the default is unchanged: dim 1 of a 4-D tensor
    assert nl.ActivationGrid(last).shape == (2, 6)
    with pytest.raises(nl.NetlensValueError, match=r"channel_dim in \[-4, 4\)"):
        nl.ActivationGrid(last, channel_dim=4)
    with pytest.raises(nl.NetlensTypeError, match="channel_dim"):
        nl.ActivationGrid(last, channel_dim="last")  # type: ignore[arg-type]
    with pytest.raises(nl.NetlensTypeError, match="rgb"):
        nl.ActivationGrid(last, rgb="yes")  # type: ignore[arg-type]


def test_recorded_channels_last_stage() -> None:
    member = contract_zoo()["channels_last"]
    with torch.no_grad(), nl.record(member.model, member.layer) as recorder:
        member.model(member.inputs)
    maps = recorder[member.layer]  # (N, 8, 8, 6)
    grid = nl.ActivationGrid(maps, channel_dim=member.channel_dim)
    assert grid.shape == (member.inputs.shape[0], member.channels)
    torch.testing.assert_close(grid.tiles[1 * member.channels + 5], maps[1, :, :, 5].double())


def test_recorded_activations_of_the_zoo(zoo_model: ZooModel) -> None:
    model = zoo_model.model
    with model_unchanged(model), evaluating(model), torch.no_grad():
        with nl.record(model, zoo_model.feature_layer) as recorder:
            model(zoo_model.inputs)
        activations = recorder[zoo_model.feature_layer]
        grid = nl.ActivationGrid(activations if activations.dim() == 4 else activations[0].T[None])
        grid.plot()


def test_image_grid_lays_out_pictures() -> None:
    images = torch.rand(5, 3, 8, 8)
    array = image_grid(images, ncols=5, scale=2, border=2)
    assert array.shape == (16, 5 * 16 + 4 * 2, 3)
    with pytest.raises(nl.NetlensValueError, match="pictures"):
        image_grid(torch.rand(5, 2, 8, 8))


# -- drawing and files --------------------------------------------------------------------------


def test_plot_on_given_axes_without_pyplot_and_nearest() -> None:
    from matplotlib.figure import Figure

    figure = Figure()
    ax = figure.add_subplot()
    grid = nl.FilterGrid(nn.Conv2d(1, 4, 5))
    assert grid.plot(ax=ax) == (figure, ax)
    image = ax.get_images()[0]
    assert image.get_interpolation() == "nearest"
    assert image.get_array().shape[0] >= 2 * 32  # upscaled tiles, not 5 pixels each
    new_figure, new_ax = grid.plot()
    assert isinstance(new_figure, Figure) and new_ax.figure is new_figure
    assert [t.get_text() for t in new_ax.texts] == ["0", "1", "2", "3"]
    assert len(nl.FilterGrid(nn.Conv2d(1, 4, 5), titles=False).plot()[1].texts) == 0


@pytest.mark.parametrize(
    ("suffix", "magic"), [("png", b"\x89PNG"), ("svg", b"<?xml"), ("pdf", b"%PDF")]
)
def test_save_by_extension(tmp_path: Path, suffix: str, magic: bytes) -> None:
    path = tmp_path / f"filters.{suffix}"
    nl.FilterGrid(nn.Conv2d(1, 4, 5)).save(path)
    assert path.read_bytes().startswith(magic)


def test_save_rejects_other_extensions(tmp_path: Path) -> None:
    with pytest.raises(nl.NetlensValueError, match=r"\.png, \.svg or \.pdf"):
        nl.FilterGrid(nn.Conv2d(1, 4, 5)).save(tmp_path / "filters.jpg")
    assert not (tmp_path / "filters.jpg").exists()


def test_activation_grid_saves_and_shows_itself_in_notebooks(tmp_path: Path) -> None:
    grid = nl.ActivationGrid(torch.rand(2, 4, 6, 6))
    grid.save(tmp_path / "maps.svg")
    assert (tmp_path / "maps.svg").read_bytes().startswith(b"<?xml")
    png = grid._repr_png_()
    assert png.startswith(b"\x89PNG")
    assert nl.FilterGrid(nn.Conv2d(1, 4, 5))._repr_png_().startswith(b"\x89PNG")
    with pytest.raises(nl.NetlensTypeError, match="Axes"):
        grid.plot(ax=[1])  # type: ignore[arg-type]


def test_no_figure_is_made_outside_the_render_module() -> None:
    import inspect

    from netlens import _grid

    assert "Figure(" not in inspect.getsource(_grid)


def test_to_array_and_plot_leave_matplotlib_state_alone() -> None:
    code = (
        "import sys, torch, netlens as nl\n"
        "grid = nl.FilterGrid(torch.nn.Conv2d(1, 4, 3))\n"
        "grid.to_array()\n"
        "nl.ActivationGrid(torch.rand(2, 3, 4, 4)).to_array()\n"
        "assert 'matplotlib' not in sys.modules, 'to_array imported matplotlib'\n"
        "grid.plot(); nl.FilterGrid(torch.nn.Conv2d(1, 4, 3), normalize='symmetric').plot()\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'plot imported pyplot'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
