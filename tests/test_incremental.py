"""Incremental inference inside ``occlusion``: exactly the plain path's results, computed less.

Every comparison runs the same call with ``incremental=True`` and ``incremental=False`` (every
occluded copy through the whole model, itself checked against a loop in test_occlusion.py) and
asks for the same maps: 1e-9 relative in float64, 1e-4 in float32, relative to the largest
value of the map.
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from typing import Any

import pytest
import torch
from _models import (
    AliasedInPlace,
    Assorted,
    CountsItsCalls,
    DataDependent,
    InPlaceSine,
    Recurrent,
    ResNetStyle,
    Signal,
    SqueezeExcite,
    TensorMadeInForward,
    VGGStyle,
    Volume,
    WritesIntoItsInput,
    randomize_batchnorm,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import netlens as nl
from netlens._occlusion import choose as _choose
from netlens._occlusion import plain as _plain
from netlens._occlusion.incremental import classify as _classify
from netlens._occlusion.incremental import engine as _incremental
from netlens._occlusion.incremental import passes as _passes
from netlens._occlusion.incremental import plan as _plan
from netlens.models import LeNet5
from netlens.testing import ZooModel, contract_zoo, model_unchanged, model_zoo

# One intra-op thread for this file's tests (tests/conftest.py): tiny models: intra-op threads only
# add contention on a shared machine.
ONE_THREAD = True


# -- models ------------------------------------------------------------------------------------


def _build(
    name: str, dtype: torch.dtype = torch.float64, batch: int = 2
) -> tuple[nn.Module, torch.Tensor]:
    builders: dict[str, tuple[Any, tuple[int, ...]]] = {
        "lenet": (LeNet5, (1, 28, 28)),
        "lenet16": (lambda: LeNet5(3, 4, 16), (3, 16, 16)),
        "resnet": (ResNetStyle, (3, 11, 9)),
        "resnet_mean": (lambda: ResNetStyle("mean"), (3, 12, 12)),
        "resnet_max": (lambda: ResNetStyle("max"), (3, 10, 10)),
        "vgg": (lambda: VGGStyle((4, 4, "M", 6, 6, "M"), 12), (3, 12, 12)),
        "assorted": (Assorted, (2, 13, 16)),
        "squeeze": (SqueezeExcite, (3, 10, 10)),
        "signal": (Signal, (3, 11)),
        "volume": (Volume, (1, 6, 7, 8)),
    }
    build, shape = builders[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(len(name))
        model = build()
        inputs = torch.randn(batch, *shape)
    randomize_batchnorm(model, len(name))
    return model.to(dtype).eval(), inputs.to(dtype)


def _both(model: nn.Module, inputs: torch.Tensor, **kwargs: Any) -> tuple[nl.OcclusionMap, ...]:
    with model_unchanged(model):
        fast = nl.occlusion(model, inputs, incremental=True, **kwargs)
        plain = nl.occlusion(model, inputs, incremental=False, **kwargs)
    assert fast.incremental and not plain.incremental
    return fast, plain


def _assert_same(fast: nl.OcclusionMap, plain: nl.OcclusionMap) -> None:
    tolerance = 1e-9 if plain.probability.dtype == torch.float64 else 1e-4
    for name in ("probability", "attribution", "base_score", "feature_activation"):
        found, expected = getattr(fast, name), getattr(plain, name)
        if expected is None:
            assert found is None
            continue
        scale = max(float(expected.abs().max()), float(plain.probability.abs().max()))
        torch.testing.assert_close(found, expected, rtol=tolerance, atol=tolerance * scale)
    assert torch.equal(fast.target, plain.target)
    if plain.probability.dtype == torch.float64:  # float32 ties may break either way
        assert torch.equal(fast.predicted_class, plain.predicted_class)
    if plain.channels is not None:
        assert fast.channels is not None and torch.equal(fast.channels, plain.channels)


# -- exactness ---------------------------------------------------------------------------------

CASES = [
    # model, window, stride, keyword arguments
    ("lenet", (4, 4), (6, 6), {}),
    ("lenet", (5, 3), (4, 5), {"baseline": "mean", "target": 3}),
    ("lenet16", (1, 1), (3, 2), {}),  # a window of 1
    ("lenet16", (16, 16), (1, 1), {}),  # the whole input
    ("lenet16", (3, 4, 4), (1, 3, 3), {}),  # a window over the channels too
    ("lenet16", (5, 5), (4, 4), {"scores": "logits"}),  # ragged edge: (16 - 5) % 4 == 3
    ("resnet", (3, 3), (2, 2), {}),  # odd sizes: 11 x 9
    ("resnet", (2, 4), (3, 1), {"baseline": "tensor"}),
    ("resnet_mean", (4, 4), (4, 4), {}),
    ("resnet_max", (3, 3), (3, 3), {}),
    ("vgg", (3, 3), (1, 1), {}),
    ("vgg", (2, 5), (5, 2), {}),  # stride > window: gaps
    ("assorted", (3, 3), (2, 2), {}),
    ("assorted", (4, 1), (3, 5), {}),
    ("assorted", (13, 2), (1, 3), {}),
    ("squeeze", (3, 3), (2, 2), {}),
    ("signal", (3,), (2,), {}),
    ("signal", (2, 2), (1, 1), {}),
    ("volume", (2, 3, 3), (2, 2, 3), {}),
]


@pytest.mark.parametrize(("name", "window", "stride", "kwargs"), CASES)
def test_equals_the_plain_path_in_float64(
    name: str, window: tuple[int, ...], stride: tuple[int, ...], kwargs: dict[str, Any]
) -> None:
    model, inputs = _build(name)
    kwargs = dict(kwargs)
    if kwargs.get("baseline") == "tensor":
        kwargs["baseline"] = torch.randn(1, *inputs.shape[1:], dtype=inputs.dtype)
    fast, plain = _both(model, inputs, window=window, stride=stride, **kwargs)
    _assert_same(fast, plain)


@pytest.mark.parametrize("name", ["lenet", "resnet", "vgg", "assorted"])
def test_equals_the_plain_path_in_float32(name: str) -> None:
    model, inputs = _build(name, torch.float32)
    fast, plain = _both(model, inputs, window=3, stride=4 if name == "lenet" else 2)
    _assert_same(fast, plain)


@settings(max_examples=15, deadline=None)
@given(
    height=st.integers(5, 12),
    width=st.integers(5, 12),
    kernel=st.integers(1, 4),
    conv_stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    pool=st.sampled_from(["max", "avg", "none"]),
    data=st.data(),
)
def test_property_random_convolutions(
    height: int,
    width: int,
    kernel: int,
    conv_stride: int,
    padding: int,
    dilation: int,
    pool: str,
    data: st.DataObject,
) -> None:
    reach = dilation * (kernel - 1) + 1
    out_h = (height + 2 * padding - reach) // conv_stride + 1
    out_w = (width + 2 * padding - reach) // conv_stride + 1
    if out_h < 2 or out_w < 2 or padding > reach // 2:
        return  # no valid convolution of this shape
    layers: list[nn.Module] = [
        nn.Conv2d(2, 3, kernel, conv_stride, padding, dilation),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=1),
    ]
    if pool != "none":
        layers.append(nn.MaxPool2d(2, ceil_mode=True) if pool == "max" else nn.AvgPool2d(2))
        out_h, out_w = (
            (-(-out_h // 2), -(-out_w // 2)) if pool == "max" else (out_h // 2, out_w // 2)
        )
    layers += [nn.Flatten(), nn.Linear(4 * out_h * out_w, 3)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(height * 100 + width)
        model = nn.Sequential(*layers).double().eval()
        inputs = torch.randn(2, 2, height, width, dtype=torch.float64)
    window = (data.draw(st.integers(1, height)), data.draw(st.integers(1, width)))
    stride = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    batch_size = data.draw(st.one_of(st.none(), st.integers(1, 9)))
    fast, plain = _both(model, inputs, window=window, stride=stride, batch_size=batch_size)
    _assert_same(fast, plain)


# -- the layer= panel -----------------------------------------------------------------------------

LAYERS = [
    # model, layer, keyword arguments
    ("lenet16", "conv2", {}),  # a patched map: the kept sums plus the change of the box
    ("lenet16", "relu1", {"channel": [3, 0, 7]}),
    ("lenet16", "pool2", {"channel": 5}),
    ("lenet16", "flatten", {}),  # the flatten runs, and the linear layers plainly
    ("lenet16", "fc1", {}),  # after the flatten: computed from the change
    ("lenet16", "conv2", {"channel_dim": -1}),  # another axis: summed from the pasted maps
    ("resnet", "layer2", {}),  # a block: one call, the plain pass from there on
    ("resnet", "layer2.bn2", {"channel": 1}),
    ("assorted", "grouped", {}),
]


@pytest.mark.parametrize(("name", "layer", "kwargs"), LAYERS)
def test_feature_panel_equals_the_plain_path(name: str, layer: str, kwargs: dict[str, Any]) -> None:
    model, inputs = _build(name)
    fast, plain = _both(model, inputs, window=4, stride=3, layer=layer, **kwargs)
    _assert_same(fast, plain)
    assert fast.feature_activation is not None


# -- when it runs, and when it says why not -----------------------------------------------------


def test_auto_is_the_default_and_never_changes_the_maps() -> None:
    # Which path "auto" takes depends on measured times (see the tests below, which make one
    # path slow on purpose); what it returns does not.
    assert inspect.signature(nl.occlusion).parameters["incremental"].default == "auto"
    model, inputs = _build("lenet", torch.float32)
    default = nl.occlusion(model, inputs, window=4, stride=2)
    plain = nl.occlusion(model, inputs, window=4, stride=2, incremental=False)
    assert not plain.incremental
    _assert_same(default, plain)
    # A window as large as the input changes everything: nothing to save, never incremental.
    whole = nl.occlusion(model, inputs, window=28)
    assert not whole.incremental


def test_auto_leaves_small_jobs_to_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    zoo = model_zoo()["conv"]  # 36 positions of a tiny model: tracing would cost more
    built = []
    original = _choose.build

    def counted(*args: Any, **kwargs: Any) -> Any:
        built.append(True)
        return original(*args, **kwargs)

    monkeypatch.setattr(_choose, "build", counted)
    assert not nl.occlusion(zoo.model, zoo.inputs, window=3, stride=1).incremental
    assert not built  # not even tried
    assert nl.occlusion(zoo.model, zoo.inputs, window=3, stride=1, incremental=True).incremental
    assert len(built) == 1
    monkeypatch.setattr(_plan, "TRY_SHARE", math.inf)  # building it deemed free
    expected = nl.occlusion(zoo.model, zoo.inputs, window=3, stride=1, incremental=False)
    tried = nl.occlusion(zoo.model, zoo.inputs, window=3, stride=1)
    assert len(built) == 2  # tried; kept or not by the timing of its first batches
    _assert_same(tried, expected)


class CountMultiplyAdds(TorchDispatchMode):
    """Count the multiply-adds of convolutions and matrix products as they run.

    (``FlopCounterMode`` would do, but it registers global module hooks, under which
    incremental inference rightly refuses to run.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        aten = torch.ops.aten
        packet = func._overloadpacket
        if packet is aten.convolution:
            self.total += out.numel() * math.prod(args[1].shape[1:])
        elif packet in (aten.mm, aten.bmm):
            self.total += out.numel() * args[0].shape[-1]
        elif packet is aten.addmm:
            self.total += out.numel() * args[1].shape[-1]
        return out


def test_it_computes_far_fewer_multiply_adds() -> None:
    model, inputs = _build("vgg", torch.float32)
    counted = {}
    for mode in (True, False):
        with CountMultiplyAdds() as counter:
            result = nl.occlusion(model, inputs, window=2, stride=2, incremental=mode)
        assert result.incremental == mode
        counted[mode] = counter.total
    # conv 3x3 on 12x12 (3 -> 4, 4 -> 4), pool, on 6x6 (4 -> 6, 6 -> 6), pool, linear 54 -> 5
    per_copy = 144 * 4 * 27 + 144 * 4 * 36 + 36 * 6 * 36 + 36 * 6 * 54 + 54 * 5
    plain = per_copy * 2 * (36 + 1)
    assert plain <= counted[False] < 1.01 * plain  # (and the attribution's small products)
    assert counted[True] < 0.6 * counted[False]


def _hooked() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 2)).eval()
    model[1].register_forward_hook(lambda module, args, out: out * 2)
    return model


REFUSALS = [
    # name, model, inputs, what the message names
    ("recurrent", lambda: Recurrent(), (2, 5, 6), "module 'rnn'"),
    ("tokens", None, None, "integers"),
    ("data-dependent", lambda: DataDependent(), (2, 1, 8, 8), "torch.fx cannot trace"),
    ("side effects", lambda: CountsItsCalls(), (2, 1, 8, 8), "model.batches, model.calls"),
    ("unknown in-place", lambda: InPlaceSine(), (2, 1, 8, 8), "in-place operation Tensor.sin_"),
    ("hooks", _hooked, (2, 1, 8, 8), "module '1' (ReLU) has forward hooks"),
    ("aliasing", lambda: AliasedInPlace(), (2, 1, 8, 8), "differs from the model's"),
    ("flat inputs", lambda: nn.Linear(6, 2), (3, 6), "no dims after (N, C)"),
]


@pytest.mark.parametrize(
    ("build", "shape", "named"), [case[1:] for case in REFUSALS], ids=[c[0] for c in REFUSALS]
)
def test_true_names_what_prevents_it_and_auto_falls_back(
    build: Any, shape: tuple[int, ...] | None, named: str
) -> None:
    if build is None:
        member = contract_zoo()["token_classifier"]
        model, inputs, kwargs = member.model, member.inputs, {"baseline": 0, "window": (1,)}
    else:
        torch.manual_seed(0)
        model, inputs = build().eval(), torch.randn(shape)
        kwargs = {"window": (2,) * (len(shape) - 2) or (2,)}
    with model_unchanged(model), pytest.raises(nl.NetlensValueError) as info:
        nl.occlusion(model, inputs, incremental=True, **kwargs)
    message = str(info.value)
    assert message.startswith("Expected") and "incremental=True" in message
    assert named in message
    with model_unchanged(model):
        auto = nl.occlusion(model, inputs, **kwargs)
        plain = nl.occlusion(model, inputs, incremental=False, **kwargs)
    assert not auto.incremental
    torch.testing.assert_close(auto.probability, plain.probability, rtol=0, atol=1e-6)


def test_tracing_leaves_no_trace_on_the_model() -> None:
    model = CountsItsCalls().eval()
    inputs = torch.randn(3, 1, 8, 8)
    nl.occlusion(model, inputs, window=4)
    # Only the real forward passes counted (the plain path's, after the trace was refused).
    assert all(isinstance(size, int) for size in model.batches)
    assert model.calls == len(model.batches) and sum(model.batches) == 3 * (1 + 4)
    constant = TensorMadeInForward().eval()
    result = nl.occlusion(constant, inputs, window=3, stride=1, incremental=True)
    assert result.incremental
    assert not any(name.startswith("_tensor_constant") for name in vars(constant))
    plain = nl.occlusion(constant, inputs, window=3, stride=1, incremental=False)
    torch.testing.assert_close(result.probability, plain.probability, rtol=0, atol=1e-6)


def test_hooks_of_the_user_keep_working() -> None:
    model = _hooked()
    calls = []
    model[0].register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    result = nl.occlusion(model, torch.randn(2, 1, 8, 8), window=3)
    assert not result.incremental  # the hooks would not run on boxes
    assert sum(calls) == 2 * (1 + 4) and len(model[1]._forward_hooks) == 1


@pytest.mark.parametrize(
    ("value", "error"),
    [("yes", nl.NetlensValueError), (1, nl.NetlensTypeError), (None, nl.NetlensTypeError)],
)
def test_bad_incremental_values(value: Any, error: type[Exception]) -> None:
    zoo = model_zoo()["conv"]
    with pytest.raises(error, match="incremental"):
        nl.occlusion(zoo.model, zoo.inputs, window=2, incremental=value)


# -- the contract: the model, inputs, devices and dtypes -----------------------------------------


def _zoo_window(zoo: ZooModel) -> tuple[int, int]:
    return (2, zoo.inputs.shape[-1]) if zoo.name in ("lstm", "gru") else (3, 3)


def test_model_unchanged(zoo_model: ZooModel) -> None:
    model = zoo_model.model
    model.zero_grad()
    with torch.enable_grad():  # gradients that must survive
        model(zoo_model.inputs).sum().backward()
    kwargs: dict[str, Any] = {"window": _zoo_window(zoo_model), "layer": zoo_model.feature_layer}
    recurrent = zoo_model.name in ("lstm", "gru")
    with model_unchanged(model):
        auto = nl.occlusion(model, zoo_model.inputs, stride=1, **kwargs)
        if recurrent:
            with pytest.raises(nl.NetlensValueError, match="'rnn'"):
                nl.occlusion(model, zoo_model.inputs, incremental=True, **kwargs)
        else:
            fast = nl.occlusion(model, zoo_model.inputs, stride=1, incremental=True, **kwargs)
            plain = nl.occlusion(model, zoo_model.inputs, stride=1, incremental=False, **kwargs)
            _assert_close_float32(fast, plain)
    assert auto.feature_activation is not None


def _assert_close_float32(fast: nl.OcclusionMap, plain: nl.OcclusionMap) -> None:
    for name in ("probability", "attribution", "feature_activation"):
        expected = getattr(plain, name)
        scale = float(expected.abs().max())
        torch.testing.assert_close(getattr(fast, name), expected, rtol=1e-4, atol=1e-4 * scale)


def test_contract_zoo_layers() -> None:
    member = contract_zoo()["channels_last"]
    model, inputs = copy.deepcopy(member.model).double(), member.inputs.double()
    kwargs = {"window": 3, "stride": 2, "layer": member.layer}
    fast, plain = _both(model, inputs, channel_dim=-1, **kwargs)
    _assert_same(fast, plain)
    # A layer= block is one call of the traced graph; here it is the model's first operation.
    member = contract_zoo()["dict_block"]
    model, inputs = copy.deepcopy(member.model).double(), member.inputs.double()
    kwargs["layer"] = member.layer
    with pytest.raises(nl.NetlensValueError, match="module 'block'"):
        nl.occlusion(model, inputs, incremental=True, **kwargs)
    auto = nl.occlusion(model, inputs, select="gate", **kwargs)
    plain = nl.occlusion(model, inputs, select="gate", incremental=False, **kwargs)
    assert not auto.incremental
    _assert_same(auto, plain)


def test_in_place_elementwise_operations() -> None:
    torch.manual_seed(1)
    model = WritesIntoItsInput().double().eval()
    inputs = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    before = inputs.clone()
    fast, plain = _both(model, inputs, window=3, stride=1, baseline=-1.0)
    _assert_same(fast, plain)
    assert torch.equal(inputs, before)  # the caller's inputs were not written into


def test_inference_mode() -> None:
    model, inputs = _build("resnet")
    kwargs: dict[str, Any] = {"window": 3, "stride": 2, "layer": "layer1.conv2"}
    expected = nl.occlusion(model, inputs, incremental=True, **kwargs)
    with torch.inference_mode(), model_unchanged(model):
        inside = nl.occlusion(model, inputs, incremental=True, **kwargs)
        made_inside = nl.occlusion(model, inputs.clone(), incremental=True, **kwargs)
    for result in (inside, made_inside):
        assert result.incremental
        for name in ("probability", "attribution", "feature_activation", "predicted_class"):
            assert torch.equal(getattr(result, name), getattr(expected, name)), name


def test_float64_inputs_on_a_float32_model() -> None:
    model, inputs = _build("vgg", torch.float32)
    kwargs: dict[str, Any] = {"window": 3, "stride": 2, "layer": "features.1", "incremental": True}
    result = nl.occlusion(model, inputs.double(), **kwargs)
    assert result.incremental
    as_float = nl.occlusion(model, inputs, **kwargs)
    for name in ("probability", "attribution", "feature_activation", "base_score"):
        value = getattr(result, name)
        assert value.dtype == torch.float64, name
        assert torch.equal(value, getattr(as_float, name).double()), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda() -> None:  # pragma: no cover - runs only where a GPU is present
    model, inputs = _build("resnet", torch.float32)
    expected = nl.occlusion(model, inputs, window=3, stride=2, incremental=False)
    result = nl.occlusion(copy.deepcopy(model).cuda(), inputs, window=3, stride=2)
    assert result.incremental and result.probability.device.type == "cpu"
    torch.testing.assert_close(result.probability, expected.probability, rtol=1e-4, atol=1e-5)


# -- batches and memory ------------------------------------------------------------------------


def _no_check(first: int, stop: int, output: Any, sums: torch.Tensor | None) -> None:
    pass


def _engine(
    model: nn.Module, inputs: torch.Tensor, window: int, stride: int, **kwargs: Any
) -> _incremental.Engine:
    """The engine occlusion would build (positions in order, baseline 0)."""
    count = (inputs.shape[-1] - window) // stride + 1
    axis = torch.arange(count) * stride
    origins = torch.cartesian_prod(axis, axis)
    baseline = torch.zeros(1, *inputs.shape[1:], dtype=inputs.dtype)
    with torch.no_grad():
        analysis = _incremental.trace(model, inputs, None)
        return _incremental.build(
            analysis, inputs, baseline, origins, (window, window), None, check=_no_check, **kwargs
        )


def test_positions_run_in_groups_of_equal_box_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    model, inputs = _build("lenet", torch.float32)
    monkeypatch.setattr(_plan, "_SECONDS_PER_STEP", 0.0)  # no merging
    monkeypatch.setattr(_plan, "_SECONDS_PER_SHAPE_WEIGHT", 0.0)
    engine = _engine(model, inputs, 4, 2, budget=2**30, batch_size=None)
    _, sizes = engine._sizes_matrix()
    assert len(engine.groups) > 1
    seen = torch.zeros(engine.origins.shape[0], dtype=torch.long)
    for group in engine.groups:
        group_sizes = sizes[group.positions]
        assert bool((group_sizes == group_sizes[0]).all())  # one size per map in a group
        seen[group.positions] += 1
    assert bool((seen == 1).all())  # every position in exactly one group
    for batch in engine.batches():
        group = engine.groups[batch.group]
        assert bool(torch.isin(batch.positions, group.positions).all())


def test_merged_groups_take_the_largest_boxes() -> None:
    model, inputs = _build("lenet", torch.float32)
    engine = _engine(model, inputs, 4, 2, budget=2**30, batch_size=None)
    patched, sizes = engine._sizes_matrix()
    for group in engine.groups:
        largest = sizes[group.positions].amax(0)
        assert engine._split_sizes(patched, largest) == group.sizes


def _record_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the rows of every incremental pass."""
    rows: list[int] = []
    evaluate = _incremental.Engine.evaluate

    def recording(engine: _incremental.Engine, batch: _incremental.Batch) -> Any:
        rows.append(len(batch.positions) * (batch.stop - batch.first))
        return evaluate(engine, batch)

    monkeypatch.setattr(_incremental.Engine, "evaluate", recording)
    return rows


@pytest.mark.parametrize("batch_size", [1, 3, 4, 7, 1000])
def test_batch_size_bounds_every_pass(monkeypatch: pytest.MonkeyPatch, batch_size: int) -> None:
    model, inputs = _build("vgg", torch.float32, batch=4)
    rows = _record_rows(monkeypatch)
    result = nl.occlusion(
        model, inputs, window=3, stride=2, batch_size=batch_size, incremental=True
    )
    assert result.incremental
    assert max(rows) <= batch_size and sum(rows) == 4 * 25
    expected = nl.occlusion(model, inputs, window=3, stride=2, incremental=False)
    torch.testing.assert_close(result.probability, expected.probability, rtol=0, atol=1e-6)


def test_memory_budget_sizes_the_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    model, inputs = _build("lenet16", torch.float32, batch=3)
    for budget in (2**16, 2**20, 2**26):
        engine = _engine(model, inputs, 4, 3, budget=budget, batch_size=None)
        _, sizes = engine._sizes_matrix()
        row_bytes = float(engine.costs.row_bytes(sizes.amax(0, keepdim=True))[0])
        used = engine.retained_bytes + engine.rows * row_bytes
        assert engine.rows == 1 or used <= budget
    # No linear layer taking its input's change, whose weight copy only a large budget allows:
    # the same kinds under both budgets.
    monkeypatch.setattr(_classify, "DELTA_LINEAR_WEIGHTS", 2**62)
    small = _engine(model, inputs, 4, 3, budget=2**19, batch_size=None)
    large = _engine(model, inputs, 4, 3, budget=2**26, batch_size=None)
    assert small.rows < large.rows
    # The kept activations of one input at a time, or of all three.
    assert small.chunk == 1 and large.chunk == 3
    assert small.retained_bytes * 3 == large.retained_bytes
    rows = _record_rows(monkeypatch)
    kwargs: dict[str, Any] = {"window": 4, "stride": 3, "incremental": True, "layer": "conv2"}
    lean = nl.occlusion(model, inputs, memory_budget=2**19, **kwargs)
    assert lean.incremental and max(rows) <= small.rows
    roomy = nl.occlusion(model, inputs, **kwargs)
    plain = nl.occlusion(model, inputs, memory_budget=2**19, **{**kwargs, "incremental": False})
    for result in (lean, roomy):
        _assert_close_float32(result, plain)


def test_plain_multiply_adds_are_counted_right() -> None:
    model, inputs = _build("lenet", torch.float32, batch=1)
    engine = _engine(model, inputs, 4, 2, budget=2**26, batch_size=None)
    per_copy = 28 * 28 * 32 * 25 + 14 * 14 * 64 * 32 * 25 + 3136 * 1024 + 1024 * 10
    assert engine.plain_macs == per_copy * 13 * 13
    assert 0 < engine.incremental_macs < 0.5 * engine.plain_macs
    assert math.isfinite(engine.incremental_macs)


# -- "auto" times both paths; the planner is bounded -----------------------------------------


def _slowed(monkeypatch: pytest.MonkeyPatch, target: Any, name: str, seconds: float) -> None:
    """Make ``target.name`` take ``seconds`` longer per call (the results stay the same)."""
    original = getattr(target, name)

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, slow)


def test_auto_carries_on_with_the_faster_path(monkeypatch: pytest.MonkeyPatch) -> None:
    model, inputs = _build("lenet", torch.float32)  # 169 positions, where incremental pays
    plain = nl.occlusion(model, inputs, window=4, stride=2, incremental=False)
    # Which path is faster unforced depends on the machine's load (a busy CI machine once chose
    # the plain path here): each path is made slow on purpose instead, one way, then the other.
    with monkeypatch.context() as patch:  # incremental passes made slow: auto leaves them
        _slowed(patch, _passes.IncrementalPass, "run", 0.05)
        chosen = nl.occlusion(model, inputs, window=4, stride=2, batch_size=16)
    assert not chosen.incremental
    _assert_same(chosen, plain)  # what the timed batches computed is kept, and exact
    with monkeypatch.context() as patch:  # plain passes made slow: auto keeps incremental
        _slowed(patch, _plain.PlainPasses, "run", 0.05)
        chosen = nl.occlusion(model, inputs, window=4, stride=2, batch_size=16)
    assert chosen.incremental
    _assert_same(chosen, plain)


def test_the_planner_costs_a_logarithmic_number_of_cuts(monkeypatch: pytest.MonkeyPatch) -> None:
    model, inputs = _build("resnet", torch.float32)
    calls = []
    original = _plan.CostModel.seconds

    def counted(self: Any, flats: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        calls.append(flats.shape[0])
        return original(self, flats, positions)

    monkeypatch.setattr(_plan.CostModel, "seconds", counted)
    engine = _engine(model, inputs, 2, 1, budget=2**30, batch_size=None)
    _, sizes = engine._sizes_matrix()
    signatures = torch.unique(sizes, dim=0).shape[0]
    assert signatures > 8  # many groups to plan
    # every group alone, then 1, 2, 4, ... runs: at most log2(groups) + 2 candidates
    assert len(calls) <= math.log2(signatures) + 2
    assert max(calls) == signatures
