from __future__ import annotations

import csv
import io
import itertools
import math
import socket
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from _models import Log, WithUnusedLayer
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import netlens as nl
from netlens.testing import ZooModel, contract_zoo, model_unchanged

# -- the slow, obvious reference ----------------------------------------------------------------


def reference(tensors: list[torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
    """Per channel, in float64: the mean, then the mean squared deviation from it (two passes)."""
    channels = tensors[0].shape[dim]
    result: dict[str, list[float]] = {
        k: [] for k in ("mean", "std", "min", "max", "zeros", "count")
    }
    for c in range(channels):
        values = torch.cat([t.select(dim, c).reshape(-1) for t in tensors]).double()
        values = values[torch.isfinite(values)].tolist()
        n = len(values)
        mean = sum(values) / n
        result["mean"].append(mean)
        result["std"].append(math.sqrt(sum((v - mean) ** 2 for v in values) / n))
        result["min"].append(min(values))
        result["max"].append(max(values))
        result["zeros"].append(sum(v == 0 for v in values) / n)
        result["count"].append(n)
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in result.items()}


def assert_matches(stats: nl.ChannelStats, ref: dict[str, torch.Tensor], rtol: float) -> None:
    # a mean near zero is only as accurate as the spread of the values allows
    torch.testing.assert_close(
        stats.mean, ref["mean"], rtol=rtol, atol=rtol * float(ref["std"].max())
    )
    torch.testing.assert_close(stats.std, ref["std"], rtol=rtol, atol=0.0)
    torch.testing.assert_close(stats.min, ref["min"], rtol=0.0, atol=0.0)
    torch.testing.assert_close(stats.max, ref["max"], rtol=0.0, atol=0.0)
    torch.testing.assert_close(stats.zero_fraction, ref["zeros"], rtol=0.0, atol=1e-15)
    assert stats.count.tolist() == ref["count"].long().tolist()


def batches_of(
    shape: tuple[int, ...], sizes: list[int], dtype: torch.dtype, seed: int = 0
) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn((n, *shape), generator=generator, dtype=torch.float64) * 3 + 1.5).to(dtype)
        for n in sizes
    ]


# -- ActivationStats ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "dim"),
    [((4, 5, 6), 1), ((7,), 1), ((7,), -1), ((9, 5), -1), ((9, 5), 2), ((3, 2, 2), 0)],
    ids=["conv", "linear", "linear-neg", "recurrent", "recurrent-pos", "batch-dim"],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_streaming_matches_two_pass_reference(
    shape: tuple[int, ...], dim: int, dtype: torch.dtype
) -> None:
    tensors = batches_of(shape, [4, 4, 4] if dim == 0 else [3, 1, 8, 5], dtype)
    stats = nl.ActivationStats(channel_dim=dim)
    for tensor in tensors:
        stats.update(tensor)
    assert_matches(
        stats.compute(), reference(tensors, dim), rtol=1e-12 if dtype == torch.float64 else 1e-6
    )


def test_large_offset_does_not_cancel() -> None:
    # mean / std = 1e4: a float32 sum of squares minus the squared sum would lose everything
    generator = torch.Generator().manual_seed(1)
    tensors = [(1e4 + torch.randn(64, 3, 100, generator=generator)).float() for _ in range(4)]
    stats = nl.ActivationStats()
    for tensor in tensors:
        stats.update(tensor)
    ref = reference(tensors, 1)
    torch.testing.assert_close(stats.compute().std, ref["std"], rtol=1e-6, atol=0.0)
    torch.testing.assert_close(stats.compute().mean, ref["mean"], rtol=1e-7, atol=0.0)


def test_sample_std_with_correction() -> None:
    data = torch.randn(50, 4, dtype=torch.float64)
    stats = nl.ActivationStats().update(data)
    torch.testing.assert_close(stats.compute(correction=1).std, data.std(0))
    torch.testing.assert_close(stats.compute().std, data.std(0, correction=0))


def test_integer_and_half_inputs() -> None:
    ints = torch.arange(24).reshape(4, 6)
    torch.testing.assert_close(
        nl.ActivationStats().update(ints).compute().mean, ints.double().mean(0)
    )
    half = torch.randn(30, 3).half()
    result = nl.ActivationStats().update(half).compute()
    torch.testing.assert_close(result.mean, half.double().mean(0), rtol=1e-6, atol=1e-6)
    assert result.mean.dtype == torch.float64


def test_zero_fraction_and_dead_channels() -> None:
    data = torch.relu(torch.randn(20, 3, 4, 4))
    data[:, 1] = 0.0
    data[0, 2, 0, 0] = -0.0  # negative zero is zero too
    result = nl.ActivationStats().update(data).compute()
    expected = (data == 0).double().mean(dim=(0, 2, 3))
    torch.testing.assert_close(result.zero_fraction, expected, rtol=0, atol=1e-15)
    assert result.dead.tolist() == [False, True, False]


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=9), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=6), max_size=4),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_merge_of_shards_equals_one_pass(sizes: list[int], cuts: list[int], seed: int) -> None:
    tensors = batches_of((3, 4), sizes, torch.float64, seed=seed)
    if sum(sizes) == 0:
        return
    one_pass = nl.ActivationStats()
    for tensor in tensors:
        one_pass.update(tensor)
    bounds = sorted({min(c, len(tensors)) for c in cuts} | {0, len(tensors)})
    shards = []
    for start, stop in itertools.pairwise(bounds):
        shard = nl.ActivationStats()
        for tensor in tensors[start:stop]:
            shard.update(tensor)
        shards.append(shard)
    merged = nl.ActivationStats()
    for shard in reversed(shards):  # any order
        merged.merge(shard)
    a, b = merged.compute(), one_pass.compute()
    for name in ("mean", "std", "min", "max", "zero_fraction"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-12, atol=1e-12)
    assert a.count.tolist() == b.count.tolist()


def test_state_follows_the_input_device_and_merges_across_empty() -> None:
    stats = nl.ActivationStats().update(torch.empty(0, 3))
    assert stats.num_channels == 3
    stats.merge(nl.ActivationStats())
    stats.update(torch.ones(2, 3))
    assert stats.compute().count.tolist() == [2, 2, 2]
    assert stats.compute().mean.device == torch.ones(1).device


def test_nan_and_inf_are_counted_not_averaged() -> None:
    data = torch.tensor([[1.0, math.nan], [3.0, math.inf], [math.nan, -math.inf], [5.0, 2.0]])
    stats = nl.ActivationStats().update(data).update(torch.tensor([[0.0, 4.0]]))
    with pytest.warns(RuntimeWarning, match="NaN or inf"):
        result = stats.compute()
    torch.testing.assert_close(result.mean, torch.tensor([9 / 4, 3.0], dtype=torch.float64))
    assert result.min.tolist() == [0.0, 2.0]
    assert result.max.tolist() == [5.0, 4.0]
    assert result.count.tolist() == [4, 2]
    assert result.nan_count.tolist() == [1, 1]
    assert result.inf_count.tolist() == [0, 2]
    assert result.zero_fraction.tolist() == [0.25, 0.0]
    assert "| NaN | inf |" in result.to_markdown()


def test_channel_without_any_finite_value() -> None:
    data = torch.tensor([[1.0, math.nan], [2.0, math.nan]])
    with pytest.warns(RuntimeWarning):
        result = nl.ActivationStats().update(data).compute()
    assert result.count.tolist() == [2, 0]
    assert math.isnan(result.mean[1]) and math.isnan(result.std[1]) and math.isnan(result.max[1])


def test_memory_does_not_grow() -> None:
    stats = nl.ActivationStats()
    stats.update(torch.randn(10, 4, 3, 3))
    sizes = [t.numel() for t in stats._state]  # type: ignore[union-attr]
    for _ in range(5):
        stats.update(torch.randn(10, 4, 3, 3))
    assert [t.numel() for t in stats._state] == sizes  # type: ignore[union-attr]


def test_bad_inputs() -> None:
    stats = nl.ActivationStats(channel_dim=2)
    with pytest.raises(nl.NetlensValueError, match="channel_dim 2, so with at least 3 dims"):
        stats.update(torch.ones(4, 5))
    with pytest.raises(nl.NetlensValueError, match="at least 3 dims"):
        nl.ActivationStats(channel_dim=-3).update(torch.ones(4, 5))
    with pytest.raises(nl.NetlensValueError, match="before compute"):
        stats.compute()
    with pytest.raises(nl.NetlensValueError, match="before compute"):
        nl.ActivationStats().update(torch.empty(0, 3)).compute()
    with pytest.raises(nl.NetlensTypeError, match=r"Expected a torch\.Tensor"):
        stats.update([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(nl.NetlensTypeError, match="real tensor"):
        nl.ActivationStats().update(torch.ones(2, 2, dtype=torch.complex64))
    with pytest.raises(nl.NetlensTypeError, match="channel_dim to be an int"):
        nl.ActivationStats(channel_dim=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        nl.ActivationStats(dim=1)  # type: ignore[call-arg]  # the old name is gone
    three = nl.ActivationStats().update(torch.ones(2, 3))
    with pytest.raises(nl.NetlensValueError, match="Expected 3 channels"):
        three.update(torch.ones(2, 4))
    with pytest.raises(nl.NetlensValueError, match=r"Expected 3 channels .* but got 4 to merge"):
        three.merge(nl.ActivationStats().update(torch.ones(2, 4)))
    with pytest.raises(nl.NetlensTypeError, match="ActivationStats to merge"):
        three.merge(torch.ones(2))  # type: ignore[arg-type]
    assert three.compute().count.tolist() == [2, 2, 2]  # unchanged by the failures
    with pytest.raises(nl.NetlensValueError, match=r"initialised torch\.distributed"):
        three.all_reduce()
    assert isinstance(nl.NetlensValueError("x"), ValueError)


# -- all_reduce across two gloo processes -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _all_reduce_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        data = batches_of((3, 2), [5, 4, 7], torch.float64, seed=7)
        mine = nl.ActivationStats()
        for tensor in data[rank::world]:
            mine.update(tensor)
        mine.all_reduce()
        result = mine.compute()
        # a rank without data takes part with an empty state
        empty = nl.ActivationStats() if rank == 0 else nl.ActivationStats().update(data[0])
        empty.all_reduce()
        # disagreeing channel counts fail on every rank
        shape = (2, 3) if rank == 0 else (2, 4)
        try:
            nl.ActivationStats().update(torch.ones(shape)).all_reduce()
            mismatch = "no error"
        except nl.NetlensValueError as error:
            mismatch = str(error)
        torch.save(
            {
                "mean": result.mean,
                "std": result.std,
                "min": result.min,
                "max": result.max,
                "count": result.count,
                "empty_count": empty.compute().count,
                "mismatch": mismatch,
            },
            f"{out}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(sys.platform == "win32", reason="gloo over TCP on 127.0.0.1")
def test_all_reduce_with_two_gloo_processes(tmp_path: Path) -> None:
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    mp.spawn(_all_reduce_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    data = batches_of((3, 2), [5, 4, 7], torch.float64, seed=7)
    one_pass = nl.ActivationStats()
    for tensor in data:
        one_pass.update(tensor)
    expected = one_pass.compute()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for found in ranks:
        for name in ("mean", "std", "min", "max"):
            torch.testing.assert_close(found[name], getattr(expected, name), rtol=1e-12, atol=1e-12)
        assert found["count"].tolist() == expected.count.tolist()
        assert found["empty_count"].tolist() == [10, 10, 10]  # 5 x 2 values per channel
        assert "same number of channels" in found["mismatch"]
    for name in ("mean", "std"):
        assert torch.equal(ranks[0][name], ranks[1][name])  # bitwise the same on every rank


# -- ChannelStats -------------------------------------------------------------------------------


def small_stats() -> nl.ChannelStats:
    data = torch.relu(torch.tensor([[1.0, -1.0, 0.5], [3.0, -2.0, 0.0]]))
    return nl.ActivationStats().update(data).compute()


def test_to_markdown_table() -> None:
    text = small_stats().to_markdown()
    lines = text.splitlines()
    assert lines[0] == "| channel | mean | std | min | max | zero fraction | count |"
    assert lines[1] == "|--:|--:|--:|--:|--:|--:|--:|"
    assert lines[2] == "| 0 | 2 | 1 | 1 | 3 | 0 | 2 |"
    assert lines[3] == "| 1 | 0 | 0 | 0 | 0 | 1 | 2 |"
    assert len(lines) == 5 and "NaN" not in text


def test_to_csv_round_trip(tmp_path: Path) -> None:
    stats = nl.ActivationStats().update(torch.randn(40, 3, dtype=torch.float64)).compute()
    path = tmp_path / "stats.csv"
    text = stats.to_csv(path)
    assert path.read_text() == text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(row["channel"]) for row in rows] == [0, 1, 2]
    assert [float(row["mean"]) for row in rows] == stats.mean.tolist()  # full precision
    assert [float(row["std"]) for row in rows] == stats.std.tolist()
    assert [int(row["count"]) for row in rows] == [40, 40, 40]


def test_plot_marks_dead_channels() -> None:
    from matplotlib.figure import Figure

    figure, ax = small_stats().plot()
    assert isinstance(figure, Figure)
    labels = [line.get_label() for line in ax.get_lines()]
    assert "dead" in labels
    dead_line = ax.get_lines()[labels.index("dead")]
    assert dead_line.get_xdata().tolist() == [1]
    other = Figure()
    axes = other.add_subplot()
    assert small_stats().plot(ax=axes) == (other, axes)


@pytest.mark.parametrize("channels", [16, 1])
def test_plot_ticks_channels_at_whole_numbers(channels: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    data = torch.randn(50, channels, dtype=torch.float64)
    stats = nl.ActivationStats().update(data).compute()
    figure, ax = stats.plot()
    FigureCanvasAgg(figure).draw()
    low, high = ax.get_xlim()
    ticks = [tick for tick in ax.get_xticks() if low <= tick <= high]
    # no channel 2.5 among 16, and one channel's axis is not ticked -0.06 ... 0.06
    assert len(ticks) >= 1 and all(tick == int(tick) for tick in ticks)
    assert len(ticks) >= 3 or channels == 1


def test_repr_is_a_summary() -> None:
    data = torch.tensor([[0.0, 1.0, -2.0], [0.0, 3.0, 4.0]], dtype=torch.float64)
    stats = nl.ActivationStats().update(data).compute()
    assert repr(stats) == (
        "ChannelStats(channels=3, count=2, mean=[0, 2], std=[0, 3], min=-2, max=4, dead=1)"
    )
    named = nl.activation_stats(nn.Sequential(nn.Linear(3, 40)), torch.randn(4, 3), "0")["0"]
    text = repr(named)
    assert text.startswith("ChannelStats(layer='0', channels=40, count=4, mean=[")
    assert "tensor" not in text and len(text) < 200
    with pytest.warns(RuntimeWarning):
        counted = nl.ActivationStats().update(torch.tensor([[math.nan, 1.0]])).compute()
    assert repr(counted).endswith("dead=0, nan=1, inf=0)")


def test_result_is_frozen_compared_by_identity_with_channels() -> None:
    stats = small_stats()
    with pytest.raises(AttributeError):
        stats.mean = torch.zeros(3)  # type: ignore[misc]
    assert stats == stats and stats != small_stats()  # eq=False: no tensor comparison
    assert stats.channels.tolist() == [0, 1, 2] and stats.channels.dtype == torch.int64
    assert stats.channels.dim() == 1


@pytest.mark.parametrize(
    ("suffix", "magic"), [("png", b"\x89PNG"), ("svg", b"<?xml"), ("pdf", b"%PDF")]
)
def test_save_and_notebook_display(tmp_path: Path, suffix: str, magic: bytes) -> None:
    path = tmp_path / f"stats.{suffix}"
    small_stats().save(path)
    assert path.read_bytes().startswith(magic)
    assert small_stats()._repr_png_().startswith(b"\x89PNG")
    with pytest.raises(nl.NetlensValueError, match=r"\.png, \.svg or \.pdf"):
        small_stats().save(tmp_path / "stats.jpg")
    with pytest.raises(nl.NetlensTypeError, match="Axes"):
        small_stats().plot(ax="not axes")


# -- activation_stats ---------------------------------------------------------------------------


def zoo_batches(zoo: ZooModel, count: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return [
        torch.randn(zoo.inputs.shape, generator=generator, dtype=zoo.inputs.dtype)
        for _ in range(count)
    ]


def test_activation_stats_over_the_zoo(zoo_model: ZooModel) -> None:
    model, layer = zoo_model.model, zoo_model.feature_layer
    data = zoo_batches(zoo_model)
    with model_unchanged(model):
        found = nl.activation_stats(model, data, layer)[layer]
    recurrent = zoo_model.name in ("lstm", "gru")
    # reference: the outputs of every call of the layer, recorded in eval mode
    training = {name: m.training for name, m in model.named_modules()}
    model.eval()
    outputs = []
    with torch.no_grad(), nl.record(model, layer) as recorder:
        for batch in data:
            model(batch)
            outputs += recorder.calls(layer)
    for name, m in model.named_modules():
        m.training = training[name]
    assert_matches(found, reference(outputs, -1 if recurrent else 1), rtol=1e-6)
    assert found.layer == layer


def test_activation_stats_model_unchanged_when_raising(zoo_model: ZooModel) -> None:
    model = zoo_model.model
    good = zoo_model.inputs

    def data():  # the second batch has the wrong shape: the model itself raises
        yield good
        yield good[..., :3]

    with model_unchanged(model), pytest.raises(RuntimeError):
        nl.activation_stats(model, data(), zoo_model.feature_layer)
    with model_unchanged(model), pytest.raises(nl.NetlensTypeError, match="first item is a tensor"):
        nl.activation_stats(model, [good, "not a batch"], zoo_model.feature_layer)
    with model_unchanged(model), pytest.raises(nl.NetlensValueError, match="at least one batch"):
        nl.activation_stats(model, [], zoo_model.feature_layer)
    with model_unchanged(model), pytest.raises(nl.LayerNotFoundError):
        nl.activation_stats(model, [good], "no_such_layer")


def test_data_forms_and_all_layers_in_one_pass() -> None:
    from netlens.models import LeNet5

    torch.manual_seed(0)
    model = LeNet5().eval()
    inputs = torch.randn(12, 1, 28, 28)
    targets = torch.arange(12)
    expected = nl.activation_stats(model, list(inputs.split(4)), ["conv1", "relu2", "fc1"])
    forms = [
        DataLoader(TensorDataset(inputs, targets), batch_size=5),
        [(x, y) for x, y in zip(inputs.split(3), targets.split(3), strict=True)],
        (x for x in inputs.split(6)),
        inputs,  # one batch
    ]
    for data in forms:
        found = nl.activation_stats(model, data, ["conv1", "relu2", "fc1"], progress=True)
        assert list(found) == ["conv1", "relu2", "fc1"]
        for name in found:
            # other batch sizes change the float32 rounding of the model's own outputs
            torch.testing.assert_close(found[name].mean, expected[name].mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(found[name].std, expected[name].std, rtol=1e-5, atol=1e-6)
    assert expected["fc1"].num_channels == 1024 and int(expected["fc1"].count[0]) == 12
    assert int(expected["conv1"].count[0]) == 12 * 28 * 28
    assert bool((expected["relu2"].zero_fraction > 0).all())


def test_shared_module_counts_every_call_and_channel_dim_override() -> None:
    from netlens.testing import model_zoo

    zoo = model_zoo()["shared"]
    found = nl.activation_stats(zoo.model, [zoo.inputs], "block.0")["block.0"]
    assert int(found.count[0]) == 2 * zoo.inputs.shape[0] * 8 * 8
    by_width = nl.activation_stats(zoo.model, [zoo.inputs], "block.0", channel_dim={"block.0": 3})
    assert by_width["block.0"].num_channels == 8
    assert int(by_width["block.0"].count[0]) == 2 * zoo.inputs.shape[0] * 4 * 8  # x C x H
    for_all = nl.activation_stats(zoo.model, [zoo.inputs], ["stem", "block.0"], channel_dim=-1)
    assert [found.num_channels for found in for_all.values()] == [8, 8]
    with pytest.raises(nl.NetlensValueError, match="channel_dim's keys"):
        nl.activation_stats(zoo.model, [zoo.inputs], "block.0", channel_dim={"stem": 1})
    with pytest.raises(nl.NetlensTypeError, match=r"channel_dim\['block.0'\] to be None or an int"):
        nl.activation_stats(zoo.model, [zoo.inputs], "block.0", channel_dim={"block.0": "w"})


def test_layer_that_never_runs() -> None:
    model = WithUnusedLayer()
    with model_unchanged(model), pytest.raises(nl.NotRecordedError, match="never ran"):
        nl.activation_stats(model, [torch.ones(2, 3)], ["used", "unused"])


def test_float64_model_and_inputs_follow_the_model_dtype() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU()).double()
    data = [torch.randn(5, 3), torch.randn(2, 3)]  # float32 inputs are cast to the model's dtype
    found = nl.activation_stats(model, data, "1")["1"]
    outputs = [model(x.double()).detach() for x in data]
    assert_matches(found, reference(outputs, 1), rtol=1e-12)


def test_eval_mode_is_used_and_restored() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.9))
    model.train()
    model[0].eval()  # a submodule in its own mode must keep it
    data = [torch.ones(64, 3)]
    with model_unchanged(model), warnings.catch_warnings():
        warnings.simplefilter("error")
        found = nl.activation_stats(model, data, "1")["1"]
    assert float(found.zero_fraction.max()) == 0.0  # dropout was off
    assert model.training and not model[0].training


def test_activation_stats_counts_non_finite_activations_when_asked() -> None:
    model = nn.Sequential(Log())
    data = [torch.tensor([[1.0, -1.0], [0.0, 2.0]]), torch.tensor([[4.0, 1.0]])]
    with model_unchanged(model), pytest.warns(RuntimeWarning, match="NaN or inf"):
        found = nl.activation_stats(model, data, "0", nonfinite="count")["0"]
    assert found.nan_count.tolist() == [0, 1]
    assert found.inf_count.tolist() == [1, 0]
    torch.testing.assert_close(
        found.mean, torch.tensor([math.log(4.0) / 2, math.log(2.0) / 2], dtype=torch.float64)
    )


def test_activation_stats_refuses_non_finite_activations_at_the_batch_that_gives_them() -> None:
    model = nn.Sequential(Log(), nn.Identity())
    consumed: list[int] = []

    def data() -> Iterator[torch.Tensor]:
        batches = [
            torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
            torch.tensor([[1.0, -1.0, 0.0], [0.0, -2.0, 2.0]]),  # 2 NaN, 2 -inf in 3 channels
            torch.tensor([[1.0, 1.0, 1.0]]),
        ]
        for number, batch in enumerate(batches):
            consumed.append(number)
            yield batch

    with model_unchanged(model), pytest.raises(nl.NetlensValueError) as raised:
        nl.activation_stats(model, data(), ["0", "1"])
    message = str(raised.value)
    assert "layer '0'" in message and "batch 1 " in message
    assert "2 NaN and 2 infinite values, in 3 of its 3 channels (0, 1, 2)" in message
    assert 'nonfinite="count"' in message
    assert consumed == [0, 1]  # checked batch by batch: the third batch was never read
    with pytest.raises(nl.NetlensValueError, match="nonfinite"):
        nl.activation_stats(model, data(), "0", nonfinite="ignore")  # type: ignore[arg-type]
    # the accumulator fed by hand keeps counting them, as documented
    stats = nl.ActivationStats().update(torch.tensor([[math.nan, 1.0]]))
    with pytest.warns(RuntimeWarning, match="NaN or inf"):
        assert stats.compute().nan_count.tolist() == [1, 0]


@pytest.mark.parametrize("offset", [0.0, 50.0], ids=["unshifted", "shifted"])
def test_slices_and_both_sum_of_squares_paths(
    monkeypatch: pytest.MonkeyPatch, offset: float
) -> None:
    from netlens import _stats

    monkeypatch.setattr(_stats, "_CPU_SLICE_VALUES", 40)  # several slices per batch
    generator = torch.Generator().manual_seed(3)
    tensors = [torch.randn(n, 3, 7, generator=generator) for n in (5, 9, 4)]
    for tensor in tensors:
        tensor[:, 1] += offset  # a mean far from zero needs the shifted sums of squares
        tensor[:, 2].clamp_(min=0)  # zeros to count
    stats = nl.ActivationStats()
    for tensor in tensors:
        stats.update(tensor)
    assert_matches(stats.compute(), reference(tensors, 1), rtol=1e-6)


def test_huge_values_do_not_overflow() -> None:
    data = torch.tensor(
        [[3e25, -1.0], [1e25, 1.0]], dtype=torch.float32
    )  # squares overflow float32
    result = nl.ActivationStats().update(data).compute()
    torch.testing.assert_close(
        result.std, torch.tensor([1e25, 1.0], dtype=torch.float64), rtol=1e-6, atol=0
    )
    assert result.nan_count.tolist() == [0, 0] and result.inf_count.tolist() == [0, 0]


# -- the layer contract ---------------------------------------------------------------------------


def _layer_outputs(model: nn.Module, layer: str, data: list[torch.Tensor]) -> list[object]:
    """Every raw output of ``layer`` over ``data``, with a plain hook (the reference)."""
    found: list[object] = []
    module = model.get_submodule(layer)
    handle = module.register_forward_hook(lambda _m, _a, output: found.append(output))
    try:
        with torch.no_grad():
            for batch in data:
                model(batch)
    finally:
        handle.remove()
    return found


@pytest.mark.parametrize("name", list(contract_zoo()))
def test_contract_zoo_channels_and_values(name: str) -> None:
    member = contract_zoo()[name]
    model, layer = member.model, member.layer
    data = [member.inputs, member.inputs.flip(0)]
    with model_unchanged(model):
        found = nl.activation_stats(
            model, data, layer, select=member.select, channel_dim=member.channel_dim
        )[layer]
    assert found.num_channels == member.channels
    assert found.channels.tolist() == list(range(member.channels))
    outputs = []
    for output in _layer_outputs(model, layer, data):
        if isinstance(output, dict):
            output = output["hidden"]
        elif isinstance(output, tuple):
            output = output[0]
        if isinstance(output, nn.utils.rnn.PackedSequence):
            output = nn.utils.rnn.pad_packed_sequence(output, batch_first=True)[0]
        outputs.append(output)
    assert_matches(
        found, reference(outputs, -1 if output.shape[-1] == member.channels else 1), 1e-6
    )


def test_time_first_and_batch_first_twins_agree() -> None:
    zoo = contract_zoo()
    time_first, batch_first = zoo["gru_time_first"], zoo["gru_batch_first"]
    generator = torch.Generator().manual_seed(2)
    data = [time_first.inputs, torch.randn(3, 4, 5, generator=generator)]  # T == N, then not
    a = nl.activation_stats(time_first.model, data, "rnn")["rnn"]
    b = nl.activation_stats(batch_first.model, data, "rnn")["rnn"]
    assert a.count.tolist() == b.count.tolist() == [4 * 4 + 3 * 4] * 6
    for field in ("mean", "std", "min", "max", "zero_fraction"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=1e-6, atol=1e-7)
    # the hidden state (select=1), (layers, N, H) in both: batch axis 1
    h = nl.activation_stats(time_first.model, data, "rnn", select=1)["rnn"]
    assert h.num_channels == 6 and h.count.tolist() == [4 + 3] * 6


def test_bert_style_linear_has_the_features_as_channels() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16))
    tokens = torch.randn(2, 5, 8, dtype=torch.float64)
    found = nl.activation_stats(model.double(), [tokens], ["0", "1", "2"])
    assert [stats.num_channels for stats in found.values()] == [16, 16, 16]
    assert int(found["0"].count[0]) == 2 * 5
    assert_matches(found["0"], reference([model[0](tokens).detach()], -1), rtol=1e-12)


def test_dict_block_and_select() -> None:
    member = contract_zoo()["dict_block"]
    model, block = member.model, member.model.block
    with torch.no_grad():
        output = block(member.inputs)
    hidden = nl.activation_stats(model, member.inputs, "block")["block"]
    assert_matches(hidden, reference([output["hidden"]], 1), rtol=1e-6)
    gate = nl.activation_stats(model, member.inputs, "block", select="gate")["block"]
    assert gate.num_channels == block.gate_channels
    assert_matches(gate, reference([output["gate"]], 1), rtol=1e-6)
    picked = nl.activation_stats(model, member.inputs, "block", select=lambda out: out["gate"])
    torch.testing.assert_close(picked["block"].mean, gate.mean, rtol=0, atol=0)
    with pytest.raises(nl.NetlensValueError, match=r"select='nope'"):
        nl.activation_stats(model, member.inputs, "block", select="nope")


def test_works_under_inference_mode() -> None:
    from netlens.models import LeNet5

    torch.manual_seed(0)
    model = LeNet5().eval()
    data = [torch.randn(4, 1, 28, 28) for _ in range(2)]
    expected = nl.activation_stats(model, data, ["conv1", "fc1"])
    with model_unchanged(model), torch.inference_mode():
        found = nl.activation_stats(model, data, ["conv1", "fc1"])
    for name in expected:
        torch.testing.assert_close(found[name].mean, expected[name].mean, rtol=0, atol=0)
        torch.testing.assert_close(found[name].std, expected[name].std, rtol=0, atol=0)
    # an accumulator fed inside inference mode keeps working outside it, and the other way
    stats = nl.ActivationStats()
    with torch.inference_mode():
        stats.update(torch.randn(300, 3, 1000))
    stats.update(torch.randn(300, 3, 1000))
    with torch.inference_mode():
        stats.update(torch.randn(300, 3, 1000))
    assert stats.compute().count.tolist() == [900_000] * 3


def test_inputs_without_their_batch_dimension_are_refused() -> None:
    from netlens.models import LeNet5

    model = LeNet5().eval()
    with model_unchanged(model), pytest.raises(nl.NetlensValueError, match=r"batch dimension"):
        nl.activation_stats(model, [torch.randn(1, 28, 28)], "conv1")


def test_channel_dim_out_of_range_or_on_the_batch_axis() -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 3))
    data = [torch.randn(2, 1, 5, 5)]
    with pytest.raises(nl.NetlensValueError, match=r"channel_dim in \[-4, 4\)"):
        nl.activation_stats(model, data, "0", channel_dim=4)
    with pytest.raises(nl.NetlensValueError, match="differ from its batch axis"):
        nl.activation_stats(model, data, "0", channel_dim=0)
    with pytest.raises(nl.NetlensTypeError, match="select to be None"):
        nl.activation_stats(model, data, "0", select=2.5)  # type: ignore[arg-type]


def test_a_channel_dim_no_tensor_has_is_refused_before_running() -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 3))
    data = [torch.randn(2, 1, 5, 5)]
    assert nl.ActivationStats(channel_dim=63).channel_dim == 63  # as far as torch's dims go
    assert nl.ActivationStats(channel_dim=-64).channel_dim == -64
    for dim in (64, -65):
        with pytest.raises(nl.NetlensValueError, match=r"channel_dim to be a dim index in \[-64"):
            nl.ActivationStats(channel_dim=dim)
        with pytest.raises(nl.NetlensValueError, match="channel_dim"):
            nl.activation_stats(model, data, "0", channel_dim=dim)
        with pytest.raises(nl.NetlensValueError, match=r"channel_dim\['0'\]"):
            nl.activation_stats(model, data, "0", channel_dim={"0": dim})
    for flag in (1, "yes", torch.tensor(True)):
        with pytest.raises(nl.NetlensTypeError, match="progress to be a bool"):
            nl.activation_stats(model, data, "0", progress=flag)  # type: ignore[arg-type]
    found = nl.activation_stats(model, data, "0", progress=np.bool_(False))  # numpy's bool is one
    assert found["0"].num_channels == 3


def test_integer_token_inputs() -> None:
    member = contract_zoo()["token_classifier"]
    found = nl.activation_stats(member.model, member.inputs, ["embed", "proj"])
    assert found["embed"].num_channels == 6 and found["proj"].num_channels == 10
    assert int(found["proj"].count[0]) == member.inputs.numel()
