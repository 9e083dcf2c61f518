from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _models import (
    CountsInputs,
    FixedFilter,
    TanhBetweenConvs,
    ToChannelsLast,
    TokenBlock,
    WindowGeometry,
    WindowGeometry1d,
    seeded_lenet,
)
from torch import nn

import netlens as nl
from netlens.models import LeNet5
from netlens.testing import (
    FunctionalReluNet,
    GRUClassifier,
    ResidualNet,
    TinyConvNet,
    ZooModel,
    model_unchanged,
)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-9)


# -- the model is left alone, bad input ----------------------------------------------------------


def test_model_unchanged_over_the_zoo(zoo_model: ZooModel) -> None:
    model, inputs, layer = zoo_model.model, zoo_model.inputs, zoo_model.feature_layer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the recurrent models warn about their nonlinearity
        with model_unchanged(model):
            top = nl.top_activations(model, [inputs, inputs], layer, channels=[0, 1], k=2)
        with model_unchanged(model), pytest.raises(nl.NetlensValueError, match="channels"):
            nl.top_activations(model, [inputs], layer, channels=[10_000], k=1)
    assert top.patches.shape[:2] == (2, 2)
    assert torch.isfinite(top.projections).all()


def test_bad_input_to_top_activations() -> None:
    model = TinyConvNet().eval()
    data = torch.randn(5, 1, 8, 8)
    with model_unchanged(model):
        with pytest.raises(nl.NetlensValueError, match="at least k=9 inputs"):
            nl.top_activations(model, data, "conv2")
        with pytest.raises(nl.NetlensValueError, match="k >= 1"):
            nl.top_activations(model, data, "conv2", k=0)
        with pytest.raises(nl.NetlensTypeError, match="iterable of batches"):
            nl.top_activations(model, 3, "conv2", k=1)  # type: ignore[arg-type]
        with pytest.raises(nl.NetlensTypeError, match="floating"):
            nl.top_activations(model, [data.long()], "conv2", k=1)
        with pytest.raises(nl.NetlensValueError, match=r"channels in \[0, 6\)"):
            nl.top_activations(model, data, "conv2", channels=[6], k=1)
        with pytest.raises(nl.NetlensValueError, match="each of channels >= 0"):
            nl.top_activations(model, data, "conv2", channels=[-2], k=1)
        with pytest.raises(nl.NetlensTypeError, match="channels to be an int or a list"):
            nl.top_activations(model, data, "conv2", channels=1.0, k=1)  # type: ignore[arg-type]
        with pytest.raises(nl.NetlensTypeError, match="k to be an int"):
            nl.top_activations(model, data, "conv2", k=2.0)  # type: ignore[arg-type]
        with pytest.raises(nl.NetlensTypeError, match="each item of data"):
            nl.top_activations(model, [[1.0, 2.0]], "conv2", k=1)
        with pytest.raises(nl.NetlensValueError, match="batch dimension"):
            nl.top_activations(model, torch.randn(1, 8, 8), "conv2", k=1)
        with pytest.raises(nl.NetlensValueError, match="channel_dim in"):
            nl.top_activations(model, data, "conv2", k=1, channel_dim=5)
        with torch.inference_mode(), pytest.raises(nl.NetlensValueError, match="inference mode"):
            nl.top_activations(model, data, "conv2", k=1)
    convolutional = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    with model_unchanged(convolutional), pytest.raises(nl.NetlensValueError, match="every batch"):
        nl.top_activations(convolutional, [data, torch.randn(3, 1, 6, 6)], "0", k=1)


def test_top_activations_warns_once_too() -> None:
    model = TanhBetweenConvs().eval()
    with pytest.warns(UserWarning, match="Tanh") as caught:
        nl.top_activations(model, [torch.randn(4, 1, 8, 8)] * 3, "conv2", k=2)
    assert len(caught) == 1


# -- against a brute-force search; receptive fields ---------------------------------------------


def _brute_force_top(
    model: nn.Module, data: torch.Tensor, layer: str, channels: list[int], k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with nl.record(model, layer) as rec, torch.no_grad():
        model(data)
    maps = rec[layer][:, channels].flatten(2)  # (N, C, positions)
    best, where = maps.max(dim=2)
    values, indices, positions = [], [], []
    for c in range(len(channels)):
        order = sorted(range(data.shape[0]), key=lambda n: (-float(best[n, c]), n))[:k]
        values.append(best[order, c])
        indices.append(torch.tensor(order))
        positions.append(where[order, c])
    return torch.stack(values), torch.stack(indices), torch.stack(positions)


def test_top_activations_equals_a_brute_force_search_and_its_projections() -> None:
    model = seeded_lenet(10, size=20)
    data = torch.randn(45, 1, 20, 20, dtype=torch.float64)
    loader = [(data[i : i + 7], torch.zeros(7)) for i in range(0, 45, 7)]  # uneven batches
    top = nl.top_activations(model, loader, "conv2", channels=[3, 40, 7], k=5)
    values, indices, flat = _brute_force_top(model, data, "conv2", [3, 40, 7], 5)
    _close(top.activations, values)
    assert torch.equal(top.indices, indices)
    assert torch.equal(top.positions[..., 0] * 10 + top.positions[..., 1], flat)
    assert top.patches.shape == top.projections.shape == (3, 5, 1, 14, 14)
    for c, channel in enumerate([3, 40, 7]):
        for rank in range(5):
            n = int(indices[c, rank])
            i, j = top.positions[c, rank].tolist()
            # conv2's receptive field in LeNet5: rows 2i-6 .. 2i+7 (5x5 conv, pool 2, 5x5 conv).
            rows = (max(0, 2 * i - 6), min(20, 2 * i + 8))
            columns = (max(0, 2 * j - 6), min(20, 2 * j + 8))
            assert top.boxes[c, rank].tolist() == [[0, 1], list(rows), list(columns)]
            image = data[n : n + 1]
            # Clipped at the top/left: the patch is padded before the image content.
            top_pad = 14 - (rows[1] - rows[0]) if rows[0] == 0 else 0
            left_pad = 14 - (columns[1] - columns[0]) if columns[0] == 0 else 0
            window = (slice(None), slice(rows[0], rows[1]), slice(columns[0], columns[1]))
            inside = (
                slice(None),
                slice(top_pad, top_pad + rows[1] - rows[0]),
                slice(left_pad, left_pad + columns[1] - columns[0]),
            )
            _close(top.patches[c, rank][inside], image[0][window])
            if rank in (0, 4):  # the slow reference for the projections, on a few
                projection = nl.deconvnet(model, image, "conv2", channel, position=(i, j)).images
                _close(top.projections[c, rank][inside], projection[0][window])
                # The projection lies inside the receptive field.
                outside = projection[0].clone()
                outside[window] = 0
                assert outside.abs().max() == 0


def test_receptive_fields_follow_pooling_strides_and_residual_paths() -> None:
    torch.manual_seed(11)
    functional = FunctionalReluNet().eval()  # F.max_pool2d, torch.relu
    top = nl.top_activations(functional, torch.randn(12, 1, 8, 8), "conv2", k=3)
    for (i, j), box in zip(
        top.positions.reshape(-1, 2).tolist(), top.boxes.reshape(-1, 3, 2).tolist(), strict=True
    ):
        # 3x3 conv (pad 1), 2x2 pool, 3x3 conv (pad 1): rows 2i-3 .. 2i+4
        assert box[1:] == [
            [max(0, 2 * i - 3), min(8, 2 * i + 5)],
            [max(0, 2 * j - 3), min(8, 2 * j + 5)],
        ]
    # The largest receptive field inside the 8x8 input is 7x7 (every one is clipped).
    assert top.patches.shape[-2:] == (7, 7)
    residual = ResidualNet()  # in training mode, with BatchNorm: projected in eval mode
    with model_unchanged(residual):
        top = nl.top_activations(residual, torch.randn(10, 1, 8, 8), "conv_b", k=3)
    for (i, j), box in zip(
        top.positions.reshape(-1, 2).tolist(), top.boxes.reshape(-1, 3, 2).tolist(), strict=True
    ):
        # three 3x3 convs (pad 1) on the long path; the skip path's field lies inside
        assert box[1:] == [[max(0, i - 3), min(8, i + 4)], [max(0, j - 3), min(8, j + 4)]]
    strided = nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2), nn.ReLU(inplace=True), nn.Conv2d(2, 2, 3, stride=2)
    ).eval()
    top = nl.top_activations(strided, torch.randn(6, 1, 11, 11), "2", k=2)
    for (i, j), box in zip(
        top.positions.reshape(-1, 2).tolist(), top.boxes.reshape(-1, 3, 2).tolist(), strict=True
    ):
        assert box[1:] == [[4 * i, 4 * i + 7], [4 * j, 4 * j + 7]]  # 3 + (3 - 1) * 2 = 7


def test_receptive_fields_of_a_model_that_keeps_its_own_dtype() -> None:
    top = nl.top_activations(FixedFilter().eval(), torch.randn(6, 1, 9, 9), "conv", k=2)
    for (i, j), box in zip(
        top.positions.reshape(-1, 2).tolist(), top.boxes.reshape(-1, 3, 2).tolist(), strict=True
    ):
        assert box[1:] == [[i, i + 5], [j, j + 5]]


def test_running_top_memory_does_not_grow_with_the_data() -> None:
    from netlens._deconvnet.ranking import RunningTop as _RunningTop

    model = TinyConvNet().eval()
    top = _RunningTop("conv2", 4, [0, 5])
    with nl.record(model, "conv2") as rec, torch.no_grad():
        for _ in range(10):
            x = torch.randn(16, 1, 8, 8)
            model(x)
            top.update(x, rec["conv2"])
    assert top.images.shape == (2, 4, 1, 8, 8) and top.values.shape == (2, 4)
    assert top.seen == 160


# -- the layer contract ----------------------------------------------------------------------------


def test_an_int_channel_drops_the_channel_dim_and_a_list_keeps_it() -> None:
    model = seeded_lenet(19, size=16)
    data = torch.randn(12, 1, 16, 16, dtype=torch.float64)
    single = nl.top_activations(model, data, "conv2", channels=7, k=3)
    pair = nl.top_activations(model, data, "conv2", channels=[2, 7], k=3)
    everything = nl.top_activations(model, data, "conv2", k=3)
    assert single.channels.tolist() == [7] and pair.channels.tolist() == [2, 7]
    assert everything.channels.tolist() == list(range(64))
    for field in ("activations", "indices", "positions", "boxes", "patches", "projections"):
        one, two, every = getattr(single, field), getattr(pair, field), getattr(everything, field)
        assert two.shape == (2, *one.shape) and every.shape == (64, *one.shape), field
        _close(two[1].to(one.dtype), one)
        _close(every[7].to(one.dtype), one)
    assert single.activations.shape == (3,) and single.patches.shape[0] == 3


def test_float64_data_on_a_float32_model_gives_float64_results_with_the_exact_inputs() -> None:
    torch.manual_seed(20)
    model = TinyConvNet().eval()
    data = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    with model_unchanged(model):
        top = nl.top_activations(model, data, "conv1", channels=[0, 3], k=2)
    for field in ("activations", "patches", "projections"):
        assert getattr(top, field).dtype == torch.float64, field
    assert top.indices.dtype == top.positions.dtype == top.boxes.dtype == torch.long
    # The patches are the inputs as given, not rounded to the model's float32.
    for c in range(2):
        for rank in range(2):
            n = int(top.indices[c, rank])
            (_, _), (r0, r1), (c0, c1) = top.boxes[c, rank].tolist()
            patch = top.patches[c, rank, 0]
            window = data[n, 0, r0:r1, c0:c1]
            rows = slice(3 - (r1 - r0), 3) if r0 == 0 else slice(0, r1 - r0)
            columns = slice(3 - (c1 - c0), 3) if c0 == 0 else slice(0, c1 - c0)
            assert torch.equal(patch[rows, columns], window)
    reference = nl.top_activations(model, data.float(), "conv1", channels=[0, 3], k=2)
    assert reference.projections.dtype == torch.float32
    torch.testing.assert_close(top.projections, reference.projections.double())


def test_a_time_first_gru_with_as_many_steps_as_inputs_equals_its_batch_first_twin() -> None:
    torch.manual_seed(21)
    time_first = GRUClassifier(batch_first=False).eval()
    batch_first = GRUClassifier(batch_first=True).eval()
    batch_first.load_state_dict(time_first.state_dict())
    data = [torch.randn(4, 4, 5), torch.randn(4, 4, 5)]  # T == N
    results = []
    for model in (time_first, batch_first):
        with model_unchanged(model), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the GRU has no deconvnet rule
            results.append(nl.top_activations(model, data, "rnn", channels=[0, 5], k=3))
    first, reference = results
    assert torch.equal(first.indices, reference.indices)
    assert torch.equal(first.positions, reference.positions)
    assert torch.equal(first.boxes, reference.boxes)
    torch.testing.assert_close(first.activations, reference.activations)
    torch.testing.assert_close(first.patches, reference.patches)
    torch.testing.assert_close(first.projections, reference.projections)
    assert (first.projections.abs().flatten(2).sum(dim=2) > 0).all()
    # The brute-force top-3 of unit 5 over the 8 sequences, from the batch-first outputs.
    with torch.no_grad():
        best = torch.cat([batch_first.rnn(x)[0][..., 5].amax(dim=1) for x in data])
    assert first.indices[1].tolist() == best.argsort(descending=True)[:3].tolist()
    # A unit at step t depends on steps 0..t of its sequence and all of its features.
    steps = first.positions.reshape(-1).tolist()
    for t, box in zip(steps, first.boxes.reshape(-1, 2, 2).tolist(), strict=True):
        assert box == [[0, t + 1], [0, 5]]


def test_a_linear_layer_on_tokens_has_its_units_on_the_last_dim() -> None:
    torch.manual_seed(22)
    model = TokenBlock().double().eval()
    data = torch.randn(5, 8, 32, dtype=torch.float64)
    with model_unchanged(model):
        top = nl.top_activations(model, data, "intermediate", channels=[20, 63], k=2)
    hidden = model.intermediate(data).detach()  # (N, T, 64)
    for c, unit in enumerate([20, 63]):
        best, where = hidden[..., unit].max(dim=1)
        order = best.argsort(descending=True)[:2]
        assert top.indices[c].tolist() == order.tolist()
        assert top.positions[c, :, 0].tolist() == where[order].tolist()
        for rank, n in enumerate(order.tolist()):
            t = int(where[n])
            assert top.boxes[c, rank].tolist() == [[t, t + 1], [0, 32]]  # one token
            _close(top.patches[c, rank, 0], data[n, t])
            weight = model.intermediate.weight.detach()[unit]
            _close(top.projections[c, rank, 0], hidden[n, t, unit] * weight)
    assert nl.top_activations(model, data, "intermediate", k=1).channels.shape == (64,)


def test_channel_dim_and_select_reach_the_layer() -> None:
    torch.manual_seed(23)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), ToChannelsLast()).eval()
    data = torch.randn(6, 1, 8, 8)
    last = nl.top_activations(model, data, "1", channels=[1, 3], k=2, channel_dim=-1)
    first = nl.top_activations(model, data, "0", channels=[1, 3], k=2)
    for field in ("activations", "indices", "positions", "boxes", "patches", "projections"):
        torch.testing.assert_close(getattr(last, field), getattr(first, field))
    with pytest.raises(nl.NetlensValueError, match=r"in \[0, 4\)"):
        nl.top_activations(model, data, "1", channels=[4], k=2, channel_dim=-1)

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = self.conv(x)
            return features.mean(dim=(2, 3)), features

    paired = nn.Sequential(Pair()).eval()
    paired[0].conv.load_state_dict(model[0].state_dict())
    picked = nl.top_activations(paired, data, "0", channels=[1, 3], k=2, select=1)
    for field in ("activations", "indices", "positions", "boxes", "patches", "projections"):
        torch.testing.assert_close(getattr(picked, field), getattr(first, field))


def test_top_activations_is_a_frozen_plottable_result(tmp_path: Path) -> None:
    model = TinyConvNet().eval()
    top = nl.top_activations(model, torch.randn(6, 1, 8, 8), "conv2", channels=4, k=4)
    params = top.__dataclass_params__  # type: ignore[attr-defined]
    assert params.frozen and not params.eq
    with pytest.raises(dataclasses.FrozenInstanceError):
        top.layer = "conv1"  # type: ignore[misc]
    _, ax = top.plot()
    assert [text.get_text() for text in ax.texts] == ["channel 4"]
    for suffix in ("png", "svg", "pdf"):
        top.save(tmp_path / f"top.{suffix}")
        assert (tmp_path / f"top.{suffix}").stat().st_size > 0
    assert top._repr_png_().startswith(b"\x89PNG")
    assert "TopActivations(" in repr(top) and "k=4" in repr(top)


def test_plots_draw_on_a_new_figure_or_a_given_axes() -> None:
    from matplotlib.figure import Figure

    model = seeded_lenet(0, size=16)
    x = torch.randn(10, 1, 16, 16, dtype=torch.float64)
    top = nl.top_activations(model, x, "conv2", channels=[0, 1, 2], k=9)
    fig, ax = top.plot()
    assert isinstance(fig, Figure) and len(ax.texts) == 3 and len(ax.images) == 1
    given = Figure().add_subplot()
    fig2, ax2 = top.plot(ax=given, ncols=3)
    assert ax2 is given and fig2 is given.figure


# -- merging shards ------------------------------------------------------------------------------


def _shards_and_whole() -> tuple[LeNet5, list[torch.Tensor], torch.Tensor]:
    model = seeded_lenet(30, size=16)
    data = torch.randn(
        23, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(31)
    )
    data[2] *= 3  # strong, and tied with its copies in both shards
    data[7] = data[2]
    data[15] = data[2]
    return model, [data[:9], data[9:]], data


def test_merge_equals_one_pass_over_the_shards_in_order() -> None:
    model, (first, second), _ = _shards_and_whole()
    channels = [0, 3, 17, 40]

    def top(data: torch.Tensor, channel: int | list[int] = channels) -> nl.TopActivations:
        batches = [data[start : start + 4] for start in range(0, data.shape[0], 4)]
        return nl.top_activations(model, batches, "conv2", channels=channel, k=5)

    merged = top(first).merge(top(second))
    batches = [first[s : s + 4] for s in range(0, 9, 4)] + [
        second[s : s + 4] for s in range(0, 14, 4)
    ]
    expected = nl.top_activations(model, batches, "conv2", channels=channels, k=5)
    assert merged.samples == expected.samples == 23
    for field in ("activations", "indices", "positions", "boxes", "patches", "projections"):
        assert torch.equal(getattr(merged, field), getattr(expected, field)), field
    # ties go to the smaller index: input 2 before its copies 7 and 15
    for row in expected.indices.tolist():
        assert [index for index in row if index in (2, 7, 15)] == sorted(
            index for index in row if index in (2, 7, 15)
        )
    assert (expected.indices == 2).any()
    # the other way round: the second shard's inputs count first
    swapped = top(second).merge(top(first))
    batches = [second[s : s + 4] for s in range(0, 14, 4)] + [
        first[s : s + 4] for s in range(0, 9, 4)
    ]
    alone = nl.top_activations(model, batches, "conv2", channels=channels, k=5)
    assert torch.equal(swapped.indices, alone.indices)
    assert torch.equal(swapped.activations, alone.activations)
    # an int channel has no channel dim, merged or not
    single = top(first, 17).merge(top(second, 17))
    assert single.activations.shape == (5,) and torch.equal(single.indices, expected.indices[2])
    assert torch.equal(single.patches, expected.patches[2])


def test_merge_refuses_results_that_do_not_match() -> None:
    model, (first, second), _ = _shards_and_whole()
    base = nl.top_activations(model, first, "conv2", channels=[0, 1], k=3)
    others = {
        "layer": nl.top_activations(model, second, "conv1", channels=[0, 1], k=3),
        "channels": nl.top_activations(model, second, "conv2", channels=[0, 2], k=3),
        "k": nl.top_activations(model, second, "conv2", channels=[0, 1], k=2),
        "patch size": nl.top_activations(
            model, torch.randn(4, 1, 16, 16, dtype=torch.float64), "conv2", channels=[0, 1], k=3
        ),
    }
    for what, other in others.items():
        if what == "patch size":
            other = dataclasses.replace(other, patches=other.patches[..., :5, :5])
        with pytest.raises(nl.NetlensValueError, match=f"the same {what}"):
            base.merge(other)
    with pytest.raises(nl.NetlensTypeError, match="TopActivations to merge"):
        base.merge(torch.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(nl.NetlensValueError, match=r"initialised torch\.distributed"):
        base.all_reduce()


def test_a_result_pickles_and_merges_after() -> None:
    import pickle

    model, (first, second), _ = _shards_and_whole()
    one = nl.top_activations(model, first, "conv2", channels=[3], k=4)
    again = pickle.loads(pickle.dumps(one))
    for field in ("activations", "indices", "positions", "boxes", "patches", "projections"):
        assert torch.equal(getattr(again, field), getattr(one, field)), field
    two = nl.top_activations(model, second, "conv2", channels=[3], k=4)
    assert torch.equal(again.merge(two).indices, one.merge(two).indices)


def test_each_kept_input_is_stored_once() -> None:
    from netlens._deconvnet.ranking import RunningTop as _RunningTop

    top = _RunningTop("conv2", 4, None)
    model = TinyConvNet().eval()
    with nl.record(model, "conv2") as rec, torch.no_grad():
        for _ in range(5):
            x = torch.randn(8, 1, 8, 8)
            model(x)
            top.update(x, rec["conv2"])
    assert set(top.kept) == set(top.indices.flatten().tolist())  # nothing else is kept
    assert len(top.kept) <= 6 * 4
    assert top.images.shape == (6, 4, 1, 8, 8)


# -- receptive fields without copying the model or running past the layer ------------------------


def test_only_the_first_forward_pass_of_one_input_goes_past_the_layer() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3), CountsInputs(), nn.Flatten()
    ).eval()
    data = [torch.randn(6, 1, 9, 9) for _ in range(4)]
    top = nl.top_activations(model, data, "2", k=3)
    # one input, once, to count how often the layer runs; data passes, projections and
    # receptive fields all stop at the layer
    assert model[3].seen == 1
    assert top.boxes.shape == (4, 3, 3, 2)


def _previous_boxes(
    model: nn.Module, layer: str, sample: torch.Tensor, keys: torch.Tensor, **read: Any
) -> torch.Tensor:
    """The previous method, slow and obvious: a linearised float64 copy of every parameter, the
    whole model run on one row per activation, the bounding box of the input gradient's support.
    """
    from torch.overrides import TorchFunctionMode

    from netlens._core.ops import NONLINEAR_ELEMENTWISE_NAMES as ELEMENTWISE
    from netlens._core.ops import RELU_NAMES
    from netlens._core.outputs import layer_view

    class Linear(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            if name in RELU_NAMES or name in ELEMENTWISE:
                return args[0].clone()
            if name.startswith("adaptive_max_pool"):
                pooled = getattr(F, name.replace("max", "avg").replace("_with_indices", ""))(
                    args[0], *args[1:2], **{k: v for k, v in kwargs.items() if k == "output_size"}
                )
                return (
                    (pooled, None) if "indices" in name or kwargs.get("return_indices") else pooled
                )
            if name.startswith("max_pool"):

                def parts(
                    x,
                    kernel_size,
                    stride=None,
                    padding=0,
                    dilation=1,
                    ceil_mode=False,
                    return_indices=False,
                ):  # type: ignore[no-untyped-def]
                    return kernel_size, stride or kernel_size, padding, ceil_mode, return_indices

                kernel, stride, padding, ceil, indices = parts(*args, **kwargs)
                pooled = getattr(F, name.replace("max", "avg").replace("_with_indices", ""))(
                    args[0], kernel, stride, padding, ceil
                )
                return (pooled, None) if "indices" in name or indices else pooled
            return func(*args, **kwargs)

    view = layer_view(model, layer, **read)
    parameters = {
        key: torch.full(p.shape, 1.0 / (p[0].numel() if p.dim() > 1 else 1), dtype=torch.float64)
        for key, p in model.named_parameters()
    }
    buffers = {key: b.double() if b.is_floating_point() else b for key, b in model.named_buffers()}
    leaf = sample.double().expand(keys.shape[0], *sample.shape[1:]).clone().requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        with nl.record(model, layer, detach=False, **read) as rec, Linear():
            torch.func.functional_call(model, (parameters, buffers), (leaf.clone(),))
    finally:
        model.train(was_training)
    output = rec.calls(view.name)[-1]
    arranged = view.arrange(output, keys.shape[0])
    seed = torch.zeros_like(arranged)
    seed[(torch.arange(keys.shape[0]), *keys.unbind(1))] = 1
    (grad,) = torch.autograd.grad(output, leaf, view.unarrange(seed, output))
    support = grad != 0
    boxes = []
    for dim in range(1, support.dim()):
        hit = support.movedim(dim, 1).flatten(2).any(dim=2)  # (M, size)
        positions = torch.arange(hit.shape[1]).expand_as(hit)
        start = torch.where(hit, positions, hit.shape[1]).amin(dim=1)
        stop = torch.where(hit, positions + 1, 0).amax(dim=1)
        nothing = ~hit.any(dim=1)  # depends on no input element: the whole input
        start[nothing], stop[nothing] = 0, hit.shape[1]
        boxes.append(torch.stack([start, stop], dim=1))
    return torch.stack(boxes, dim=1)


def _every_key(model: nn.Module, layer: str, sample: torch.Tensor, **read: Any) -> torch.Tensor:
    from netlens._core.model import evaluating
    from netlens._core.outputs import layer_view

    view = layer_view(model, layer, **read)
    with evaluating(model), nl.record(model, layer, **read) as rec, torch.no_grad():
        model(sample)
    arranged = view.arrange(rec.calls(view.name)[-1], 1)
    grids = torch.meshgrid(*[torch.arange(size) for size in arranged.shape[1:]], indexing="ij")
    return torch.stack([grid.reshape(-1) for grid in grids], dim=1)


def _new_boxes(
    model: nn.Module, layer: str, sample: torch.Tensor, keys: torch.Tensor, how: str, **read: Any
) -> tuple[torch.Tensor, bool]:
    from netlens._core.model import evaluating
    from netlens._core.outputs import layer_view
    from netlens._deconvnet.probe import gradient_probe as _probe
    from netlens._deconvnet.receptive import _geometry, receptive_fields

    view = layer_view(model, layer, **read)
    with evaluating(model):
        with nl.record(model, layer, **read) as rec, torch.no_grad():
            model(sample)
        calls = len(rec.calls(view.name))
        known = _geometry(model, view, sample, calls) is not None
        if how == "probe":
            return _probe(model, view, sample, keys, calls), known
        return receptive_fields(model, view, sample, keys, calls), known


def test_receptive_fields_equal_the_previous_method_on_the_zoo_and_lenet(
    zoo_model: ZooModel,
) -> None:
    model, sample = zoo_model.model, zoo_model.inputs[:1]
    cases = [(model, zoo_model.feature_layer, sample)]
    if zoo_model.name == "conv":
        lenet = seeded_lenet(40, size=16)
        sample16 = torch.randn(1, 1, 16, 16, dtype=torch.float64)
        cases += [
            (lenet, layer, sample16) for layer in ("conv1", "relu1", "pool1", "conv2", "pool2")
        ]
    for network, layer, inputs in cases:
        keys = _every_key(network, layer, inputs)
        # every position, of the first and the last channel (all channels of the tiny zoo)
        keys = keys[(keys[:, 0] == 0) | (keys[:, 0] == keys[:, 0].max())]
        expected = _previous_boxes(network, layer, inputs, keys)
        with model_unchanged(network):
            found, known = _new_boxes(network, layer, inputs, keys, "default")
            probed, _ = _new_boxes(network, layer, inputs, keys, "probe")
        assert known == (zoo_model.name not in ("lstm", "gru")), (zoo_model.name, layer)
        assert torch.equal(found, expected), (zoo_model.name, layer)
        assert torch.equal(probed, expected), (zoo_model.name, layer)


def test_receptive_fields_on_the_contract_zoo_equal_the_previous_method() -> None:
    from netlens.testing import contract_zoo

    for name, member in contract_zoo().items():
        if name == "token_classifier":
            continue  # integer inputs: no gradient to probe (top_activations refuses them)
        read = {"select": member.select, "channel_dim": member.channel_dim}
        sample = member.inputs[:1]
        keys = _every_key(member.model, member.layer, sample, **read)
        expected = _previous_boxes(member.model, member.layer, sample, keys, **read)
        found, _ = _new_boxes(member.model, member.layer, sample, keys, "default", **read)
        assert torch.equal(found, expected), name


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_receptive_fields_from_the_geometry_equal_the_probe() -> None:
    torch.manual_seed(41)
    cases = [
        (
            WindowGeometry().eval(),
            torch.randn(1, 3, 23, 19),
            ["a", "pool", "b", "c", "avg", "dilated", "adaptive"],
        ),
        (WindowGeometry1d().eval(), torch.randn(1, 2, 40), ["a", "b", "pool"]),
    ]
    for model, sample, layers in cases:
        for layer in layers:
            keys = _every_key(model, layer, sample)
            found, known = _new_boxes(model, layer, sample, keys, "default")
            probed, _ = _new_boxes(model, layer, sample, keys, "probe")
            assert known, layer
            assert torch.equal(found, probed), layer
    # a dilated max pool's window, not only its switch (which the previous method followed)
    model = WindowGeometry().eval()
    keys = torch.tensor([[0, 0, 0]])
    box, _ = _new_boxes(model, "dilated", torch.randn(1, 3, 23, 19), keys, "default")
    undilated, _ = _new_boxes(
        model, "avg", torch.randn(1, 3, 23, 19), torch.tensor([[0, 0, 0], [0, 2, 2]]), "default"
    )
    assert box[0, 1:, 1].tolist() == undilated[1, 1:, 1].tolist()


def test_unknown_operations_on_the_path_fall_back_to_the_probe() -> None:
    class Reshaping(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.after = nn.Conv2d(2, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv(x)
            x = x.flip(-1)  # mirrors the columns: the geometry does not know flip
            return self.after(x)

    torch.manual_seed(42)
    model = Reshaping().eval()
    sample = torch.randn(1, 1, 9, 9)
    keys = _every_key(model, "after", sample)
    found, known = _new_boxes(model, "after", sample, keys, "default")
    assert not known
    assert torch.equal(found, _previous_boxes(model, "after", sample, keys))
    # a side computation that the layer's output does not depend on does not matter
    _, known_conv = _new_boxes(model, "conv", sample, _every_key(model, "conv", sample), "default")
    assert known_conv
