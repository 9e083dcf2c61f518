"""Data-set-wide lenses on torch.distributed (gloo on 127.0.0.1), and DDP-wrapped models.

Two ranks over gloo must give exactly what one pass over the shards concatenated in rank order
gives: the same values, indices, positions, boxes and patches (projections too, here), and the
same statistics up to float64 rounding, bitwise identical on every rank. All the two-rank cases
run in one spawn of two processes, each starting Python and torch afresh.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from _examples import EXAMPLES, load_example
from _models import seeded_lenet
from _spawn import LOOPBACK, free_port, spawn
from torch import nn

import netlens as nl
from netlens.models import LeNet5
from netlens.testing import ResidualNet, model_unchanged

pytestmark = pytest.mark.skipif(
    not dist.is_available() or sys.platform == "win32", reason="gloo over TCP on 127.0.0.1"
)

FIELDS = ("activations", "indices", "positions", "boxes", "patches", "projections")


# One intra-op thread for this file's tests (tests/conftest.py): The ranks run one thread each;
# float32 reductions (the per-batch sums of the statistics) come out the same only with the same
# number of threads.
ONE_THREAD = True


# -- shared data: the same on every rank and in the parent ---------------------------------------


def _lenet() -> LeNet5:
    return seeded_lenet(3, dtype=torch.float32)


def _images() -> torch.Tensor:
    images = torch.randn(37, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    images[3] *= 3  # strong: among the top-4 of most channels
    # exact ties: the same input within rank 0's shard and in rank 1's
    images[10] = images[3]
    images[25] = images[3]
    return images


SHARDS = (slice(0, 20), slice(20, 37))  # uneven: 20 and 17 inputs


def _batches(part: torch.Tensor, size: int = 8) -> list[torch.Tensor]:
    return [part[start : start + size] for start in range(0, part.shape[0], size)]


def _one_pass() -> list[torch.Tensor]:
    """The batches of both shards in rank order: what one process would read."""
    images = _images()
    return [batch for shard in SHARDS for batch in _batches(images[shard])]


def _residual() -> ResidualNet:
    torch.manual_seed(5)
    return ResidualNet()  # in training mode, with BatchNorm buffers


def _residual_images() -> torch.Tensor:
    return torch.randn(22, 1, 8, 8, generator=torch.Generator().manual_seed(6))


RESIDUAL_SHARDS = (slice(0, 12), slice(12, 22))  # three and two batches of at most 5


def _stats_fields(stats: dict[str, nl.ChannelStats]) -> dict[str, dict[str, torch.Tensor]]:
    names = ("mean", "std", "min", "max", "zero_fraction", "count")
    return {layer: {name: getattr(s, name) for name in names} for layer, s in stats.items()}


def _message(call: Callable[[], object]) -> str:
    try:
        call()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return "no error"


# -- the two-rank worker ---------------------------------------------------------------------------


def _two_ranks(rank: int, world: int, out: str) -> None:
    model = _lenet()
    mine = _batches(_images()[SHARDS[rank]])
    found: dict[str, Any] = {}

    def top(data: list[torch.Tensor], **kwargs: Any) -> nl.TopActivations:
        return nl.top_activations(model, data, "conv2", channels=[0, 5, 9], k=4, **kwargs)

    with model_unchanged(model):
        found["top"] = top(mine, group="default")
        found["int_channel"] = nl.top_activations(
            model, mine, "conv1", channels=2, k=3, group=dist.group.WORLD
        )
        local = top(mine)
        found["all_reduce"] = reduced = local.all_reduce()
        found["again_is_same"] = reduced.all_reduce() is reduced
        found["mixed"] = _message(lambda: reduced.merge(local).all_reduce())
        found["stats"] = _stats_fields(
            nl.activation_stats(model, mine, ["conv1", "relu2", "fc2"], group="default")
        )
        # a rank without data takes part, and adds nothing
        found["top_one_shard"] = top(mine if rank == 0 else [], group="default")
        found["stats_one_shard"] = _stats_fields(
            nl.activation_stats(model, mine if rank == 0 else [], "conv2", group="default")
        )
        # an error on one rank is raised on every rank, and no rank waits forever
        bad = [mine[0].long()] if rank == 1 else mine
        found["top_failure"] = _message(lambda: top(bad, group="default"))
        wrong = [torch.randn(3, 1, 9, 9)] if rank == 1 else mine
        found["stats_failure"] = _message(
            lambda: nl.activation_stats(model, wrong, "fc1", group="default")
        )
        few = [mine[0][:2]] if rank == 0 else []
        found["too_few"] = _message(lambda: top(few, group="default"))

    # ActivationStats.all_reduce twice: a no-op; after an update: refused, on every rank
    accumulator = nl.ActivationStats().update(_images()[SHARDS[rank]].flatten(1))
    accumulator.all_reduce()
    counts = [accumulator.count]
    accumulator.all_reduce()
    counts.append(accumulator.count)
    accumulator.update(torch.ones(2, 256))
    found["stats_counts"] = counts
    found["stats_twice"] = _message(accumulator.all_reduce)
    found["stats_pickled"] = _message(pickle.loads(pickle.dumps(accumulator)).all_reduce)

    # DistributedDataParallel: layer names with or without "module.", the wrapped model's
    # passes (no buffer broadcast per forward, which would hang with uneven batch counts)
    residual = nn.parallel.DistributedDataParallel(_residual())
    inner = residual.module
    found["ddp_names"] = [
        nl.find_layers(residual, "conv_b")["conv_b"] is inner.conv_b,
        list(nl.find_layers(residual, ["module.stem", "bn_*"])) == ["stem", "bn_a", "bn_b"],
        nl.find_layers(residual, residual) == {"": inner},
    ]
    shard = _batches(_residual_images()[RESIDUAL_SHARDS[rank]], 5)
    with model_unchanged(residual):
        found["ddp_stats"] = _stats_fields(
            nl.activation_stats(residual, shard, ["module.conv_b", "relu"], group="default")
        )
        found["ddp_top"] = nl.top_activations(
            residual, shard, "module.conv_b", k=3, group="default"
        )
    torch.save(found, Path(out) / f"rank{rank}.pt")


def _same_top(found: nl.TopActivations, expected: nl.TopActivations) -> None:
    assert found.layer == expected.layer
    assert torch.equal(found.channels, expected.channels)
    assert found.samples == expected.samples
    for field in FIELDS[:-1]:
        assert torch.equal(getattr(found, field), getattr(expected, field)), field
    # Projections run in chunks of other inputs on other ranks: the same up to rounding
    # (bitwise the same here, but convolution kernels may depend on the batch size).
    torch.testing.assert_close(found.projections, expected.projections)


def _same_stats(found: dict[str, Any], expected: dict[str, nl.ChannelStats]) -> None:
    assert list(found) == list(expected)
    for layer, values in found.items():
        for name, tensor in values.items():
            reference = getattr(expected[layer], name)
            if name == "mean":  # float64 sums, merged in another order
                torch.testing.assert_close(tensor, reference, rtol=1e-12, atol=1e-12)
            elif name == "std":
                # float32 sums of squares around a shift that follows the data seen before
                # (on a rank: its own shard only), then float64: equal to float32's precision
                torch.testing.assert_close(tensor, reference, rtol=1e-6, atol=1e-9)
            else:  # counts, extremes and fractions of zeros do not depend on the order
                assert torch.equal(tensor, reference), (layer, name)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("two_ranks")
    spawn(_two_ranks, 2, str(out))
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


def test_two_ranks_find_the_top_activations_of_one_pass(two_ranks: list[dict[str, Any]]) -> None:
    model = _lenet()
    expected = nl.top_activations(model, _one_pass(), "conv2", channels=[0, 5, 9], k=4)
    int_channel = nl.top_activations(model, _one_pass(), "conv1", channels=2, k=3)
    for found in two_ranks:
        _same_top(found["top"], expected)
        _same_top(found["all_reduce"], expected)
        _same_top(found["int_channel"], int_channel)
        assert found["top"].samples == 37
    # the tied copies of input 3 (at 10 and 25) follow it, by index, in every channel that
    # keeps them
    for channel in expected.indices.tolist():
        tied = [index for index in channel if index in (3, 10, 25)]
        assert tied == sorted(tied)
    assert (expected.indices == 3).any()


def test_all_reduce_twice_and_merged_reduced_results(two_ranks: list[dict[str, Any]]) -> None:
    for found in two_ranks:
        assert found["again_is_same"]
        assert "already holds data of other ranks" in found["mixed"]
        assert found["stats_counts"][0] == found["stats_counts"][1] == 37
        assert "all_reduce ran before, and values were added since" in found["stats_twice"]
        assert "already hold every rank's data" in found["stats_pickled"]


def test_two_ranks_compute_the_statistics_of_one_pass(two_ranks: list[dict[str, Any]]) -> None:
    model = _lenet()
    expected = nl.activation_stats(model, _one_pass(), ["conv1", "relu2", "fc2"])
    for found in two_ranks:
        _same_stats(found["stats"], expected)
    for layer, values in two_ranks[0]["stats"].items():
        for name, tensor in values.items():  # bitwise the same on both ranks
            assert torch.equal(tensor, two_ranks[1]["stats"][layer][name]), (layer, name)


def test_a_rank_without_data(two_ranks: list[dict[str, Any]]) -> None:
    model = _lenet()
    shard = _batches(_images()[SHARDS[0]])
    expected = nl.top_activations(model, shard, "conv2", channels=[0, 5, 9], k=4)
    stats = nl.activation_stats(model, shard, "conv2")
    for found in two_ranks:
        _same_top(found["top_one_shard"], expected)
        _same_stats(found["stats_one_shard"], stats)


def test_an_error_on_one_rank_is_raised_on_every_rank(two_ranks: list[dict[str, Any]]) -> None:
    first, second = two_ranks
    assert first["top_failure"].startswith("NetlensValueError: Expected every rank")
    assert "rank 1 raised NetlensTypeError" in first["top_failure"]
    assert second["top_failure"].startswith("NetlensTypeError: Expected floating-point")
    assert "rank 1 raised" in first["stats_failure"]
    assert second["stats_failure"] != "no error"
    for found in two_ranks:
        assert "Expected at least k=4 inputs in data (over the 2 ranks" in found["too_few"]


def test_ddp_models_resolve_layers_and_reduce(two_ranks: list[dict[str, Any]]) -> None:
    plain = _residual()
    images = _residual_images()
    one_pass = [batch for shard in RESIDUAL_SHARDS for batch in _batches(images[shard], 5)]
    stats = nl.activation_stats(plain, one_pass, ["conv_b", "relu"])
    top = nl.top_activations(plain, one_pass, "conv_b", k=3)
    for found in two_ranks:
        assert found["ddp_names"] == [True, True, True]
        _same_stats(found["ddp_stats"], stats)
        _same_top(found["ddp_top"], top)


# -- one process: DDP, DataParallel and the group argument ---------------------------------------


@pytest.fixture
def one_rank() -> Iterator[None]:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", LOOPBACK)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_with_one_process_equals_the_plain_model(one_rank: None) -> None:
    plain = _residual()
    wrapped = nn.parallel.DistributedDataParallel(_residual())
    data = _batches(_residual_images(), 5)
    for spec in ("conv_b", "module.conv_b"):
        assert nl.find_layers(wrapped, spec) == {"conv_b": wrapped.module.conv_b}
    with model_unchanged(wrapped):
        stats = nl.activation_stats(wrapped, data, ["module.stem", "conv_b"], group="default")
        top = nl.top_activations(wrapped, data, "conv_b", channels=[1, 2], k=4, group="default")
        local = nl.top_activations(wrapped, data, "conv_b", channels=[1, 2], k=4)
    _same_stats(_stats_fields(stats), nl.activation_stats(plain, data, ["stem", "conv_b"]))
    _same_top(top, nl.top_activations(plain, data, "conv_b", channels=[1, 2], k=4))
    assert top.all_reduce() is top  # reduced already, over the same group
    _same_top(local.all_reduce(), top)
    with pytest.raises(nl.NetlensValueError, match="all-reduced over another group"):
        top.all_reduce(dist.new_group([0]))
    with nl.record(wrapped, "module.relu") as recorded, torch.no_grad():
        wrapped(data[0])
    assert list(recorded) == ["relu"]


def test_data_parallel_layers_resolve_with_or_without_the_prefix() -> None:
    plain = _lenet()
    wrapped = nn.DataParallel(_lenet())  # on the CPU: runs the wrapped model as it is
    assert nl.find_layers(wrapped, "conv2") == {"conv2": wrapped.module.conv2}
    assert nl.find_layers(wrapped, "module.conv2") == {"conv2": wrapped.module.conv2}
    assert list(nl.find_layers(wrapped, "module.conv*")) == ["conv1", "conv2"]
    assert list(nl.find_layers(wrapped, nn.Conv2d)) == ["conv1", "conv2"]
    # a checkpoint's names work on the plain model too
    assert nl.find_layers(plain, "module.conv2") == {"conv2": plain.conv2}
    with pytest.raises(nl.LayerNotFoundError, match=r"'module\.conv9'"):
        nl.find_layers(wrapped, "module.conv9")
    data = _batches(_images())
    with model_unchanged(wrapped):
        top = nl.top_activations(wrapped, data, "module.conv2", channels=[4], k=3)
    _same_top(top, nl.top_activations(plain, data, "conv2", channels=[4], k=3))


def test_the_group_argument() -> None:
    model, data = _lenet(), _batches(_images())
    with pytest.raises(nl.NetlensValueError, match="init_process_group"):
        nl.top_activations(model, data, "conv2", k=2, group="default")
    with pytest.raises(nl.NetlensValueError, match="init_process_group"):
        nl.activation_stats(model, data, "conv2", group="default")
    with pytest.raises(nl.NetlensValueError, match="init_process_group"):
        nl.top_activations(model, data, "conv2", k=2).all_reduce()
    with pytest.raises(nl.NetlensValueError, match="\"default\", but got 'world'"):
        nl.top_activations(model, data, "conv2", k=2, group="world")
    with pytest.raises(nl.NetlensTypeError, match="ProcessGroup, but got int 3"):
        nl.activation_stats(model, data, "conv2", group=3)


# -- the example under torchrun ----------------------------------------------------------------


def _write_cifar(root: Path, test_images: int) -> Path:
    """A tiny CIFAR-10 in the official layout (random pixels)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]:
        count = test_images if name == "test_batch" else 2
        pixels = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        labels = [int(label) for label in rng.integers(0, 10, size=count)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": pixels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def test_the_example_under_torchrun_equals_one_process(tmp_path: Path) -> None:
    data_dir = _write_cifar(tmp_path / "cifar", test_images=64)
    out = tmp_path / "out"
    # 32 test images per rank: two batches of 16 each, the very batches one process reads
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    command += [str(EXAMPLES / "distributed_lenses.py"), "--data-dir", str(data_dir)]
    command += ["--out", str(out), "--batch-size", "16"]
    environment = {**os.environ, "GLOO_SOCKET_IFNAME": LOOPBACK, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=180, env=environment, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    example = load_example("distributed_lenses")
    expected = example.lenses(
        example.load_model(None, 0),
        example.CIFAR10(data_dir, train=False),
        batch_size=16,
    )
    names = {path.name for path in out.iterdir()}
    assert names == {
        "run.json",
        *(
            f"{kind}_{layer}.{suffix}"
            for layer in ("conv1", "conv2")
            for kind, suffix in (("stats", "csv"), ("top", "pt"), ("top", "png"))
        ),
    }
    for layer in ("conv1", "conv2"):
        top = torch.load(out / f"top_{layer}.pt", weights_only=False)
        _same_top(top, expected.tops[layer])
        assert top.activations.shape == (32 if layer == "conv1" else 64, 9)
        written = np.loadtxt(out / f"stats_{layer}.csv", delimiter=",", skiprows=1)
        one_process = np.loadtxt(expected.stats[layer].to_csv().splitlines()[1:], delimiter=",")
        # channel, mean, std, min, max, zero fraction, count, NaN count, inf count: the means
        # and stds as in _same_stats, the rest exactly
        np.testing.assert_allclose(written[:, 1], one_process[:, 1], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(written[:, 2], one_process[:, 2], rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(
            written[:, [0, 3, 4, 5, 6, 7, 8]], one_process[:, [0, 3, 4, 5, 6, 7, 8]]
        )
