from __future__ import annotations

import copy
import dataclasses
import itertools
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from _models import Colour, CountsBatches, FlatSignal, PackedOnly, WritesIntoItsInputLinear
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import netlens as nl
from netlens.testing import ZooModel, contract_zoo, model_unchanged, model_zoo

RECURRENT = {"lstm", "gru"}


# One intra-op thread for this file's tests (tests/conftest.py): Hundreds of tiny forward passes:
# thread start-up would dominate on a shared machine.
ONE_THREAD = True


# -- the slow, obvious reference ----------------------------------------------------------------


def _score_function(scores: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    if scores == "softmax":
        return lambda out: torch.softmax(out, 1)
    if scores == "logits":
        return lambda out: out
    return scores  # type: ignore[no-any-return]


def reference(
    model: nn.Module,
    inputs: torch.Tensor,
    window: tuple[int, ...],
    stride: tuple[int, ...],
    *,
    baseline: Any = 0.0,
    target: Any = "pred",
    scores: Any = "softmax",
    layer: str | None = None,
    channel: Any = None,
    sums: Callable[[Any], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """One forward pass per occluder position, in float64, on an eval-mode copy of the model.

    ``sums`` maps the layer's raw output to its ``(N, channels)`` sums; by default the channel is
    dim 1, or the hidden unit of a batch-first recurrent layer.
    """
    model = copy.deepcopy(model).double().eval()
    x = inputs.detach().clone()
    x = x.double() if x.is_floating_point() else x
    score = _score_function(scores)
    count, shape = x.shape[0], x.shape[1:]
    lead = len(shape) - len(window)
    if isinstance(baseline, str):
        base_values = x.mean(dim=tuple(range(1, x.dim())), keepdim=True).expand_as(x)
    else:
        base_values = torch.as_tensor(baseline, dtype=x.dtype).expand_as(x)
    activations: list[torch.Tensor] = []
    handle = None
    if layer is not None:
        module = dict(model.named_modules())[layer]

        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            if sums is not None:
                activations.append(sums(out))
                return
            out = out[0] if isinstance(out, tuple) else out
            if isinstance(mod, nn.RNNBase):
                activations.append(out.sum(1))  # batch_first: (N, T, H) -> per hidden unit
            else:
                activations.append(out.reshape(out.shape[0], out.shape[1], -1).sum(2))

        handle = module.register_forward_hook(hook)
    rows = torch.arange(count)
    try:
        with torch.no_grad():
            activations.clear()
            base = score(model(x.clone()))
            base_act = activations[-1] if activations else None
            targets = (
                base.argmax(1)
                if isinstance(target, str)
                else torch.as_tensor(target).long().expand(count)
            )
            # (N, K) channels per input: the strongest one, the given one, or the listed ones
            picks = torch.zeros(count, 1, dtype=torch.long)
            if base_act is not None:
                if channel is None:
                    picks = base_act.argmax(1)[:, None]
                else:
                    picks = torch.as_tensor(channel).long().reshape(1, -1).expand(count, -1)
            base_score = base[rows, targets]
            grid = [
                (size - w) // s + 1 for size, w, s in zip(shape[lead:], window, stride, strict=True)
            ]
            probability = torch.zeros(count, *grid, dtype=torch.float64)
            predicted = torch.zeros(count, *grid, dtype=torch.long)
            feature = torch.zeros(count, 1 if channel is None else picks.shape[1], *grid)
            feature = feature.double()
            total = torch.zeros(x.shape, dtype=torch.float64)
            covered = torch.zeros(shape, dtype=torch.float64)
            for index in itertools.product(*(range(n) for n in grid)):
                where = (slice(None),) * lead + tuple(
                    slice(i * s, i * s + w) for i, w, s in zip(index, window, stride, strict=True)
                )
                occluded = x.clone()
                occluded[(slice(None), *where)] = base_values[(slice(None), *where)]
                activations.clear()
                out = score(model(occluded))
                probability[(slice(None), *index)] = out[rows, targets]
                predicted[(slice(None), *index)] = out.argmax(1)
                if base_act is not None:
                    feature[(slice(None), slice(None), *index)] = activations[-1].gather(1, picks)
                drop = base_score - out[rows, targets]
                total[(slice(None), *where)] += drop.reshape(count, *[1] * len(shape))
                covered[where] += 1
    finally:
        if handle is not None:
            handle.remove()
    attribution = torch.where(covered > 0, total / covered.clamp(min=1), torch.zeros_like(total))
    if not isinstance(channel, (list, tuple)):  # one channel per input: no channel dim
        feature = feature[:, 0]
    return {
        "probability": probability,
        "predicted_class": predicted,
        "attribution": attribution,
        "feature_activation": feature,
        "channels": picks[:, 0] if channel is None else torch.as_tensor(channel).reshape(-1),
        "target": targets,
        "base_score": base_score,
    }


def _compare(result: nl.OcclusionMap, expected: dict[str, torch.Tensor], atol: float) -> None:
    torch.testing.assert_close(result.probability, expected["probability"], atol=atol, rtol=0)
    torch.testing.assert_close(result.attribution, expected["attribution"], atol=atol, rtol=0)
    torch.testing.assert_close(result.base_score, expected["base_score"], atol=atol, rtol=0)
    assert torch.equal(result.target, expected["target"])
    assert torch.equal(result.predicted_class, expected["predicted_class"])
    if result.feature_activation is not None:
        torch.testing.assert_close(
            result.feature_activation, expected["feature_activation"], atol=atol, rtol=0
        )


def _zoo64(name: str, batch: int = 2) -> ZooModel:
    return model_zoo(dtype=torch.float64, batch=batch)[name]


# -- against the reference -----------------------------------------------------------------------

CASES = [
    # name, window, stride, keyword arguments
    ("conv", (3, 3), (2, 2), {}),  # ragged edge: (8 - 3) % 2 == 1
    ("conv", (2, 2), (1, 1), {"baseline": "mean", "target": 1}),
    ("functional", (3, 3), (4, 4), {"baseline": "tensor"}),  # stride > window: gaps
    ("residual", (1, 3, 3), (1, 2, 2), {"layer": "conv_b"}),  # window over the channel dim too
    ("shared", (4, 2), (2, 3), {"scores": "logits", "target": [2, 0], "layer": "block.0"}),
    ("inplace", (2, 4), (2, 2), {"layer": "conv2", "channel": 5}),
    ("lstm", (2, 8), (1, 8), {"layer": "rnn"}),  # row windows on (N, T, F)
    ("gru", (3, 8), (2, 8), {"scores": "log_softmax", "layer": "rnn", "channel": [1, 4]}),
]


@pytest.mark.parametrize("incremental", [False, True])
@pytest.mark.parametrize("batch_size", [None, 5])
@pytest.mark.parametrize(("name", "window", "stride", "kwargs"), CASES)
def test_matches_loop_reference(
    name: str,
    window: tuple[int, ...],
    stride: tuple[int, ...],
    kwargs: dict[str, Any],
    batch_size: int | None,
    incremental: Any,
) -> None:
    zoo = _zoo64(name)
    if name in RECURRENT:
        incremental = "auto"  # a recurrent layer: incremental inference does not apply
    kwargs = dict(kwargs)
    if kwargs.get("baseline") == "tensor":
        kwargs["baseline"] = torch.randn(1, *zoo.inputs.shape[1:], dtype=torch.float64)
    if kwargs.get("scores") == "log_softmax":
        kwargs["scores"] = lambda out: torch.log_softmax(out, 1)
    expected = reference(zoo.model, zoo.inputs, window, stride, **kwargs)
    with model_unchanged(zoo.model):
        result = nl.occlusion(
            zoo.model,
            zoo.inputs,
            window=window,
            stride=stride,
            batch_size=batch_size,
            incremental=incremental,
            **kwargs,
        )
    _compare(result, expected, atol=1e-10)
    assert result.incremental is (incremental is True)
    assert result.window == window
    # (a stride along a dim with one position may be reported clamped)
    assert all(s == t for s, t, n in zip(result.stride, stride, result.grid, strict=True) if n > 1)
    assert (result.feature_activation is None) == ("layer" not in kwargs)
    if "layer" in kwargs:
        assert result.channels is not None and result.channels.dim() == 1
        assert torch.equal(result.channels, expected["channels"])


@pytest.mark.parametrize("batch_size", [None, 2, 6])
def test_model_writing_into_its_input(batch_size: int | None) -> None:
    torch.manual_seed(1)
    model = WritesIntoItsInputLinear().double().eval()
    inputs = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    expected = reference(model, inputs, (3, 3), (1, 1), baseline=-1.0)
    result = nl.occlusion(
        model, inputs, window=(3, 3), stride=1, baseline=-1.0, batch_size=batch_size
    )
    _compare(result, expected, atol=1e-10)
    assert bool((result.inputs < -0.3).any())  # the caller's inputs were not touched


def test_uncovered_elements_get_zero_attribution() -> None:
    zoo = _zoo64("conv")
    result = nl.occlusion(zoo.model, zoo.inputs, window=(2, 2), stride=(3, 3))
    # Windows at 0, 3 and 6 cover rows/columns 0-1, 3-4 and 6-7: 2 and 5 are never hidden.
    assert result.grid == (3, 3)
    assert bool((result.attribution[..., 2, :] == 0).all())
    assert bool((result.attribution[..., :, 5] == 0).all())
    assert bool((result.attribution[..., 0, 0] != 0).all())


def test_ragged_edge_is_never_occluded() -> None:
    zoo = _zoo64("conv")
    result = nl.occlusion(zoo.model, zoo.inputs, window=(3, 3), stride=(2, 2))
    # Positions 0, 2, 4 (grid 3): windows end at index 6, so index 7 is never hidden.
    assert result.grid == (3, 3)
    assert bool((result.attribution[..., 7, :] == 0).all())
    assert bool((result.attribution[..., :, 7] == 0).all())


def test_one_dimensional_signals() -> None:
    torch.manual_seed(3)
    model = FlatSignal().double().eval()
    inputs = torch.randn(3, 2, 10, dtype=torch.float64)
    expected = reference(model, inputs, (3,), (2,), layer="conv")
    result = nl.occlusion(model, inputs, window=3, stride=2, layer="conv")
    _compare(result, expected, atol=1e-10)
    assert result.probability.shape == (3, 4)


def test_int_window_covers_dims_after_the_channel_dim() -> None:
    zoo = _zoo64("conv")
    result = nl.occlusion(zoo.model, zoo.inputs, window=4)
    assert result.window == (4, 4) and result.stride == (4, 4)
    assert result.probability.shape == (2, 2, 2)


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(3, 7),
    width=st.integers(3, 7),
    data=st.data(),
)
def test_property_random_geometry(height: int, width: int, data: st.DataObject) -> None:
    window = (data.draw(st.integers(1, height)), data.draw(st.integers(1, width)))
    stride = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    batch_size = data.draw(st.one_of(st.none(), st.integers(1, 9)))
    generator = torch.Generator().manual_seed(height * 10 + width)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * height * width, 3)).double().eval()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64))
    inputs = torch.randn(2, 2, height, width, generator=generator, dtype=torch.float64)
    expected = reference(model, inputs, window, stride, baseline=0.5)
    result = nl.occlusion(
        model, inputs, window=window, stride=stride, baseline=0.5, batch_size=batch_size
    )
    _compare(result, expected, atol=1e-10)


# -- against Captum ------------------------------------------------------------------------------


def _captum_case(kind: str) -> tuple[nn.Module, torch.Tensor]:
    if kind == "colour":
        torch.manual_seed(5)
        return Colour().eval(), torch.randn(3, 3, 8, 8)
    zoo = model_zoo(batch=3)[kind]
    zoo.model.eval()
    return zoo.model, zoo.inputs


@pytest.mark.parametrize("scores", ["softmax", "logits"])
@pytest.mark.parametrize(
    ("kind", "window", "stride", "baseline"),
    [
        ("conv", (4, 4), (2, 2), 0.0),
        ("conv", (2, 2), (2, 2), "mean"),
        ("colour", (3, 3), (1, 1), "tensor"),
        ("colour", (5, 5), (3, 3), -0.5),
        ("colour", (2, 4), (2, 4), "mean"),
        ("lstm", (2, 8), (2, 8), 0.0),  # rows of a sequence
        ("gru", (3, 8), (1, 8), "mean"),
    ],
)
def test_attribution_equals_captum(
    kind: str, window: tuple[int, int], stride: tuple[int, int], baseline: Any, scores: str
) -> None:
    captum_attr = pytest.importorskip("captum.attr")  # only these comparisons need Captum
    model, inputs = _captum_case(kind)
    if baseline == "tensor":
        baseline = torch.randn(1, *inputs.shape[1:])
    result = nl.occlusion(
        model, inputs, window=window, stride=stride, baseline=baseline, scores=scores
    )
    if isinstance(baseline, str):
        captum_baseline: Any = inputs.mean(dim=tuple(range(1, inputs.dim())), keepdim=True)
    else:
        captum_baseline = baseline

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        return torch.softmax(out, 1) if scores == "softmax" else out

    lead = inputs.dim() - 1 - len(window)
    with torch.no_grad():
        expected = captum_attr.Occlusion(forward).attribute(
            inputs,
            sliding_window_shapes=tuple(inputs.shape[1 : 1 + lead]) + window,
            strides=(1,) * lead + stride,
            baselines=captum_baseline,
            target=result.target,
            perturbations_per_eval=4,
        )
    torch.testing.assert_close(result.attribution, expected, atol=1e-5, rtol=0)


# -- the model stays as it was ------------------------------------------------------------------


def _window(zoo: ZooModel) -> tuple[int, int]:
    return (2, zoo.inputs.shape[-1]) if zoo.name in RECURRENT else (3, 3)


def test_model_unchanged_normal(zoo_model: ZooModel) -> None:
    model = zoo_model.model
    model.zero_grad()
    with torch.enable_grad():  # give the parameters gradients that must survive
        model(zoo_model.inputs).sum().backward()
    training = model.training
    with model_unchanged(model):
        result = nl.occlusion(
            model,
            zoo_model.inputs,
            window=_window(zoo_model),
            stride=2 if zoo_model.name not in RECURRENT else (1, 8),
            layer=zoo_model.feature_layer,
            progress=False,
        )
    assert model.training == training
    assert result.feature_activation is not None
    assert not result.probability.requires_grad


def test_model_unchanged_when_raising(zoo_model: ZooModel) -> None:
    model = zoo_model.model
    with model_unchanged(model), pytest.raises(nl.NetlensValueError, match="target classes"):
        # The target's range is only known after the first forward pass.
        nl.occlusion(model, zoo_model.inputs, window=_window(zoo_model), target=3)


def test_model_unchanged_when_scores_raise_mid_run(zoo_model: ZooModel) -> None:
    calls = []

    def scores(out: torch.Tensor) -> torch.Tensor:
        calls.append(out.shape[0])
        if len(calls) == 3:
            raise RuntimeError("boom")
        return out

    with model_unchanged(zoo_model.model), pytest.raises(RuntimeError, match="boom"):
        nl.occlusion(
            zoo_model.model,
            zoo_model.inputs,
            window=_window(zoo_model),
            stride=1,
            scores=scores,
            batch_size=4,
            layer=zoo_model.feature_layer,
        )
    assert len(calls) == 3


# -- bad input -----------------------------------------------------------------------------------

BAD = [
    ("window larger than the input", {"window": (9, 9)}, nl.NetlensValueError, "no larger"),
    ("window of the wrong rank", {"window": (2, 2, 2, 2)}, nl.NetlensValueError, "window of 1"),
    ("empty window", {"window": ()}, nl.NetlensValueError, "window of 1"),
    ("zero window", {"window": (0, 2)}, nl.NetlensValueError, "window >= 1"),
    ("float window", {"window": 2.5}, nl.NetlensTypeError, "int"),
    ("zero stride", {"window": (2, 2), "stride": 0}, nl.NetlensValueError, "stride >= 1"),
    ("negative stride", {"window": (2, 2), "stride": (1, -1)}, nl.NetlensValueError, "stride >="),
    ("stride type", {"window": (2, 2), "stride": "1"}, nl.NetlensTypeError, "stride"),
    ("window size type", {"window": (2, 2.0)}, nl.NetlensTypeError, "window"),
    ("stride rank", {"window": (2, 2), "stride": (1, 1, 1)}, nl.NetlensValueError, "one stride"),
    ("target too large", {"window": 2, "target": 3}, nl.NetlensValueError, "target classes"),
    ("negative target", {"window": 2, "target": -1}, nl.NetlensValueError, "target >= 0"),
    (
        "target length",
        {"window": 2, "target": torch.tensor([0, 1, 2])},
        nl.NetlensValueError,
        "one target",
    ),
    ("target list length", {"window": 2, "target": [0]}, nl.NetlensValueError, "one target"),
    (
        "float target",
        {"window": 2, "target": torch.tensor([0.0, 1.0])},
        nl.NetlensTypeError,
        "integers",
    ),
    ("target word", {"window": 2, "target": "max"}, nl.NetlensValueError, "'pred'"),
    (
        "baseline shape",
        {"window": 2, "baseline": torch.zeros(1, 1, 7, 7)},
        nl.NetlensValueError,
        "broadcastable",
    ),
    (
        "baseline batch",
        {"window": 2, "baseline": torch.zeros(3, 1, 8, 8)},
        nl.NetlensValueError,
        "broadcastable",
    ),
    ("baseline word", {"window": 2, "baseline": "median"}, nl.NetlensValueError, "'mean'"),
    ("baseline nan", {"window": 2, "baseline": float("nan")}, nl.NetlensValueError, "finite"),
    ("baseline type", {"window": 2, "baseline": [0.0]}, nl.NetlensTypeError, "number"),
    ("scores word", {"window": 2, "scores": "probs"}, nl.NetlensValueError, "softmax"),
    ("scores type", {"window": 2, "scores": 3}, nl.NetlensTypeError, "scores"),
    ("batch size", {"window": 2, "batch_size": 0}, nl.NetlensValueError, "batch_size"),
    ("batch size type", {"window": 2, "batch_size": 2.0}, nl.NetlensTypeError, "batch_size"),
    ("memory budget", {"window": 2, "memory_budget": 0}, nl.NetlensValueError, "memory_budget"),
    ("incremental word", {"window": 2, "incremental": "on"}, nl.NetlensValueError, "'auto'"),
    ("incremental type", {"window": 2, "incremental": 1}, nl.NetlensTypeError, "incremental"),
    (
        "memory budget type",
        {"window": 2, "memory_budget": 1e6},
        nl.NetlensTypeError,
        "memory_budget",
    ),
    ("channel without layer", {"window": 2, "channel": 1}, nl.NetlensValueError, "layer="),
    ("select without layer", {"window": 2, "select": 0}, nl.NetlensValueError, "layer="),
    ("channel_dim without layer", {"window": 2, "channel_dim": -1}, nl.NetlensValueError, "layer="),
    (
        "negative channel",
        {"window": 2, "layer": "conv2", "channel": -1},
        nl.NetlensValueError,
        ">= 0",
    ),
    (
        "channel_dim type",
        {"window": 2, "layer": "conv2", "channel_dim": "last"},
        nl.NetlensTypeError,
        "channel_dim",
    ),
    (
        "channel_dim range",
        {"window": 2, "layer": "conv2", "channel_dim": 4},
        nl.NetlensValueError,
        "channel_dim",
    ),
    (
        "channel range",
        {"window": 2, "layer": "conv2", "channel": 6},
        nl.NetlensValueError,
        "channels",
    ),
    ("several layers", {"window": 2, "layer": nn.Conv2d}, nl.NetlensValueError, "exactly one"),
    ("unknown layer", {"window": 2, "layer": "conv9"}, nl.LayerNotFoundError, "conv9"),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"), [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    zoo = model_zoo()["conv"]
    with model_unchanged(zoo.model), pytest.raises(error, match=match) as info:
        nl.occlusion(zoo.model, zoo.inputs, **kwargs)
    assert isinstance(info.value, nl.NetlensError)
    assert str(info.value).startswith("Expected")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_inputs(value: float) -> None:
    zoo = model_zoo()["conv"]
    inputs = zoo.inputs.clone()
    inputs[1, 0, 3, 4] = value
    with model_unchanged(zoo.model), pytest.raises(nl.NetlensValueError, match="finite"):
        nl.occlusion(zoo.model, inputs, window=2)


@pytest.mark.parametrize(
    ("inputs", "error"),
    [
        (torch.zeros(2, 1, 8, 8, dtype=torch.long), nl.NetlensTypeError),  # float baseline
        (torch.zeros(2), nl.NetlensValueError),
        (torch.zeros(0, 1, 8, 8), nl.NetlensValueError),
        (torch.zeros(2, 1, 8, 8, dtype=torch.bool), nl.NetlensTypeError),
        (torch.zeros(2, 1, 8, 8, dtype=torch.complex64), nl.NetlensTypeError),
        ([[0.0]], nl.NetlensTypeError),
    ],
    ids=["int", "no rank", "empty batch", "bool", "complex", "list"],
)
def test_bad_inputs(inputs: Any, error: type[Exception]) -> None:
    zoo = model_zoo()["conv"]
    with model_unchanged(zoo.model), pytest.raises(error, match="Expected"):
        nl.occlusion(zoo.model, inputs, window=(2, 2))


def test_model_output_must_be_scores() -> None:
    model = nn.Conv2d(1, 2, 3)  # returns a feature map, not (N, classes)
    with model_unchanged(model), pytest.raises(nl.NetlensValueError, match=r"\(batch, classes\)"):
        nl.occlusion(model, torch.randn(2, 1, 8, 8), window=2)
    # ... unless scores= maps it to (N, classes).
    result = nl.occlusion(
        model, torch.randn(2, 1, 8, 8), window=2, scores=lambda out: out.mean((2, 3))
    )
    assert result.probability.shape == (2, 4, 4)


def test_not_a_model() -> None:
    with pytest.raises(nl.NetlensTypeError, match=r"nn\.Module"):
        nl.occlusion(lambda x: x, torch.zeros(1, 1, 4, 4), window=2)  # type: ignore[arg-type]


# -- batching ------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 3, 4, 7, 1000])
def test_batch_size_bounds_every_forward_pass(batch_size: int) -> None:
    zoo = model_zoo(batch=4)["conv"]
    model = CountsBatches(zoo.model)
    result = nl.occlusion(
        model, zoo.inputs, window=(2, 2), stride=2, batch_size=batch_size, incremental=False
    )
    positions = 16
    # The unoccluded inputs ride along in the first pass: one copy more per input.
    assert sum(model.batches) == (positions + 1) * 4
    assert max(model.batches) <= batch_size
    slots = positions + 1
    if batch_size >= 4:
        assert len(model.batches) == -(-slots // (batch_size // 4))
    else:  # each slot split over the inputs
        assert len(model.batches) == slots * -(-4 // batch_size)
    expected = nl.occlusion(zoo.model, zoo.inputs, window=(2, 2), stride=2)
    torch.testing.assert_close(result.attribution, expected.attribution, atol=1e-6, rtol=0)


def test_memory_budget_sizes_chunks_from_measured_activations() -> None:
    zoo = model_zoo(batch=2)["conv"]
    model = CountsBatches(zoo.model)
    expected = nl.occlusion(zoo.model, zoo.inputs, window=(2, 2), stride=1)
    # conv1 (4x8x8), relu, pool (4x4x4), conv2 (6x4x4), relu, pool (6x2x2), flatten, fc (3):
    # 256 + 256 + 64 + 96 + 96 + 24 + 24 + 3 floats per copy, plus 3 copies of the 64 inputs.
    per_copy = 4 * (256 + 256 + 64 + 96 + 96 + 24 + 24 + 3 + 3 * 64)
    result = nl.occlusion(
        model, zoo.inputs, window=(2, 2), stride=1, memory_budget=per_copy * 10, incremental=False
    )
    assert sum(model.batches) == (49 + 1) * 2
    # The first pass guesses (here one copy, the first unoccluded input); once measured, every
    # pass holds at most 10 copies: 5 positions of 2 inputs.
    assert model.batches[:2] == [1, 1]
    assert set(model.batches[2:-1]) == {10} and model.batches[-1] <= 10
    torch.testing.assert_close(result.probability, expected.probability, atol=1e-6, rtol=0)


def test_small_jobs_take_one_forward_pass() -> None:
    zoo = model_zoo(batch=2)["conv"]
    model = CountsBatches(zoo.model)
    nl.occlusion(model, zoo.inputs, window=(2, 2), stride=2, incremental=False)
    assert model.batches == [(16 + 1) * 2]  # the unoccluded inputs ride along


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    zoo = model_zoo()["conv"]
    result = nl.occlusion(zoo.model, zoo.inputs, window=2, stride=1, batch_size=8, progress=True)
    assert "occlusion" in capsys.readouterr().err
    assert result.probability.shape == (2, 7, 7)


def test_result_is_frozen() -> None:
    zoo = model_zoo()["conv"]
    result = nl.occlusion(zoo.model, zoo.inputs, window=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.probability = torch.zeros(1)  # type: ignore[misc]


def test_dtype_follows_model_and_inputs() -> None:
    zoo = _zoo64("conv")
    result = nl.occlusion(zoo.model, zoo.inputs, window=4, layer="conv2")
    assert result.probability.dtype == torch.float64
    assert result.attribution.dtype == torch.float64
    assert result.feature_activation is not None
    assert result.feature_activation.dtype == torch.float64
    assert result.predicted_class.dtype == torch.long


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda() -> None:  # pragma: no cover - runs only where a GPU is present
    zoo = model_zoo()["conv"]
    model, inputs = zoo.model.cuda(), zoo.inputs.cuda()
    result = nl.occlusion(model, inputs, window=2, layer="conv2")
    assert result.attribution.device.type == "cuda"
    expected = nl.occlusion(zoo.model.cpu(), zoo.inputs, window=2, layer="conv2")
    torch.testing.assert_close(result.attribution.cpu(), expected.attribution, atol=1e-5, rtol=0)


# -- pictures ------------------------------------------------------------------------------------


def test_plot_panels_and_legend() -> None:
    import matplotlib.pyplot as plt

    zoo = model_zoo()["conv"]
    result = nl.occlusion(zoo.model, zoo.inputs, window=(3, 3), stride=1, layer="conv2")
    fig, axes = result.plot_panels(class_names=["cat", "dog", "frog"])
    assert axes.shape == (2, 5)
    legend_texts = {t.get_text() for ax in axes[:, 2] for t in ax.get_legend().get_texts()}
    assert legend_texts <= {"cat", "dog", "frog"} and legend_texts
    assert "conv2 channel" in axes[0, 3].get_title()
    assert plt.get_fignums() == []  # no pyplot state
    fig.savefig(__import__("io").BytesIO(), format="png")


def test_plot_panels_without_layer_and_on_given_axes() -> None:
    from matplotlib.figure import Figure

    zoo = model_zoo()["conv"]
    result = nl.occlusion(zoo.model, zoo.inputs, window=(2, 2))
    figure = Figure()
    given = figure.subplots(1, 4)
    fig, axes = result.plot_panels(given, samples=[1])
    assert fig is figure and axes.shape == (1, 4)
    with pytest.raises(nl.NetlensValueError, match="Axes"):
        result.plot_panels(given)  # two inputs need 8 panels
    with pytest.raises(nl.NetlensValueError, match="sample"):
        result.plot_panels(samples=[5])


@pytest.mark.parametrize("map_name", ["attribution", "probability", "feature_activation"])
def test_plot_draws_one_map_on_one_axes(map_name: str) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    zoo = model_zoo()["lstm"]
    result = nl.occlusion(zoo.model, zoo.inputs, window=(2, 8), stride=(1, 8), layer="rnn")
    fig, ax = result.plot(sample=1, map=map_name)  # type: ignore[arg-type]
    assert isinstance(fig, Figure) and isinstance(ax, Axes) and ax.figure is fig
    assert fig.axes == [ax]
    assert len(ax.get_images()) == 2  # the input and the map
    assert "input 1" in ax.get_title()
    figure = Figure()
    given = figure.add_subplot()
    assert result.plot(given) == (figure, given)
    assert plt.get_fignums() == []


def test_plot_draws_the_chosen_sample() -> None:
    zoo = model_zoo()["conv"]
    result = nl.occlusion(zoo.model, zoo.inputs, window=(2, 2))
    for sample in (0, 1, -1):
        _, ax = result.plot(sample=sample)
        image = ax.get_images()[1].get_array()
        expected = result.attribution[sample % 2].mean(0)
        assert torch.allclose(torch.as_tensor(image.data).double(), expected.double(), atol=1e-6)


def test_plot_errors() -> None:
    zoo = model_zoo()["conv"]
    result = nl.occlusion(zoo.model, zoo.inputs, window=(2, 2))
    with pytest.raises(nl.NetlensValueError, match="layer="):
        result.plot(map="feature_activation")
    with pytest.raises(nl.NetlensValueError, match="map"):
        result.plot(map="drop")  # type: ignore[arg-type]
    with pytest.raises(nl.NetlensValueError, match="sample"):
        result.plot(sample=2)
    with pytest.raises(nl.NetlensTypeError, match="sample"):
        result.plot(sample=0.5)  # type: ignore[arg-type]
    with pytest.raises(nl.NetlensTypeError, match="ax"):
        result.plot(ax="left")


def test_plot_one_dimensional_and_channel_windows() -> None:
    torch.manual_seed(0)
    signal = nl.occlusion(FlatSignal().eval(), torch.randn(2, 2, 10), window=3, stride=1)
    _, axes = signal.plot_panels()
    assert axes.shape == (2, 4)
    model, inputs = _captum_case("colour")
    full = nl.occlusion(model, inputs, window=(3, 2, 2), stride=(3, 2, 2))
    _, axes = full.plot_panels(samples=[0])
    assert axes.shape == (1, 4)
    moving = nl.occlusion(model, inputs, window=(1, 2, 2), stride=(1, 2, 2))
    with pytest.raises(nl.NetlensValueError, match="last two dims"):
        moving.plot_panels()
    with pytest.raises(nl.NetlensValueError, match="last two dims"):
        moving.plot()


def _laid_out(figure: Any) -> None:
    """Draw ``figure`` (constrained layout, ticks) as saving it would."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure).draw()


def _shown_ticks(axis: Any, along: str) -> dict[float, str]:
    """The ticks drawn along ``along`` of ``axis``: position -> label (after a draw)."""
    target = axis.xaxis if along == "x" else axis.yaxis
    low, high = sorted(target.get_view_interval())
    formatter = target.get_major_formatter()
    locations = [loc for loc in target.get_majorticklocs() if low <= loc <= high]
    return {float(loc): formatter(loc, i) for i, loc in enumerate(locations)}


def _token_map(**kwargs: Any) -> tuple[nl.OcclusionMap, list[str]]:
    member = contract_zoo()["token_classifier"]
    result = nl.occlusion(
        member.model, member.inputs, window=(1,), baseline=member.model.mask_id, **kwargs
    )
    return result, ["the", "film", "was", "a", "wonderful", "surprise", "!"]


def test_token_plot_is_a_bar_chart_named_by_the_labels() -> None:
    result, words = _token_map()
    fig, ax = result.plot(sample=1, labels=words)
    _laid_out(fig)
    assert ax.get_images() == []  # ids are no picture
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == pytest.approx(result.attribution[1].tolist())
    assert _shown_ticks(ax, "x") == {float(i): word for i, word in enumerate(words)}
    width, height = fig.get_size_inches()
    assert width > 1.3 * height  # a chart along the tokens, not a square
    # the score: one dot per window at its centre, beside the unoccluded score
    _, ax = result.plot(map="probability", labels=words)
    dots = ax.collections[0].get_offsets()
    assert dots[:, 0].tolist() == list(range(7))
    assert dots[:, 1].tolist() == pytest.approx(result.probability[0].tolist())
    reference = [line for line in ax.get_lines() if line.get_label() == "unoccluded"]
    assert reference and reference[0].get_ydata()[0] == pytest.approx(float(result.base_score[0]))
    # without labels: positions, integers
    _, ax = result.plot()
    _laid_out(ax.figure)
    assert all(position == int(position) for position in _shown_ticks(ax, "x"))
    assert ax.get_xlabel() == "position"


def test_token_panels_write_the_tokens_and_draw_strips() -> None:
    result, words = _token_map(layer="proj")
    fig, axes = result.plot_panels(labels=words)
    assert axes.shape == (2, 5)
    _laid_out(fig)
    # one column of panels, each input's one above the other, all as wide
    boxes = [axis.get_position() for axis in axes.reshape(-1)]
    assert all(b.x0 == pytest.approx(boxes[0].x0) for b in boxes)
    assert all(upper.y0 > lower.y0 for upper, lower in itertools.pairwise(boxes))
    for line in axes:
        assert line[0].get_images() == []  # the input: its tokens, written
        assert list(_shown_ticks(line[0], "x").values()) == words
        for strip in line[1:4]:
            (image,) = strip.get_images()
            assert image.get_array().shape == (1, 7)  # one row of cells, one per window
            box = strip.get_window_extent()
            assert box.width > 4 * box.height  # a strip, not a square
        assert list(_shown_ticks(line[-1], "x").values()) == words
    # without labels, the ids are written
    _, axes = result.plot_panels(samples=[0])
    _laid_out(axes[0, 0].figure)
    ids = [str(int(i)) for i in result.inputs[0].tolist()]
    assert list(_shown_ticks(axes[0, 0], "x").values()) == ids


def test_many_labels_are_thinned_and_long_ones_stand_upright() -> None:
    member = contract_zoo()["token_classifier"]
    ids = torch.randint(1, 20, (1, 90), generator=torch.Generator().manual_seed(0))
    result = nl.occlusion(member.model, ids, window=(3,), baseline=0)
    words = [f"token_number_{i}" for i in range(90)]
    fig, ax = result.plot(labels=words)
    _laid_out(fig)
    shown = _shown_ticks(ax, "x")
    assert 2 <= len(shown) <= 46
    step = sorted(shown)[1] - sorted(shown)[0]
    assert step in (2, 5, 10, 20, 50) and all(shown[p] == words[int(p)] for p in shown)
    assert all(label.get_rotation() == 90 for label in ax.get_xticklabels() if label.get_text())
    short = [str(i % 10) for i in range(90)]
    _, ax = result.plot(labels=short[:90])
    _laid_out(ax.figure)
    assert all(label.get_rotation() == 0 for label in ax.get_xticklabels())


def test_row_sequences_are_labelled_along_their_rows() -> None:
    zoo = model_zoo()["lstm"]  # (N, 8, 8) read row by row
    result = nl.occlusion(zoo.model, zoo.inputs, window=(2, 8), stride=(1, 8), layer="rnn")
    rows = [f"row {i}" for i in range(8)]
    fig, ax = result.plot(labels=rows)
    _laid_out(fig)
    assert len(ax.get_images()) == 2  # the map over the input, as before
    assert _shown_ticks(ax, "y") == {float(i): row for i, row in enumerate(rows)}
    fig, axes = result.plot_panels(labels=rows)
    _laid_out(fig)
    shown = _shown_ticks(axes[0, 0], "y")  # as many as fit the panel's height
    assert len(shown) >= 4 and all(label == rows[int(p)] for p, label in shown.items())
    for strip in axes[0, 1:4]:
        (image,) = strip.get_images()
        assert image.get_array().shape == (7, 1)  # a column of cells, one per window
        box = strip.get_window_extent()
        assert box.height > 2 * box.width
        assert all(tick == int(tick) for tick in _shown_ticks(strip, "y"))
    # a signal (N, C, L) under a (k,) window is a sequence along its time axis
    signal = nl.occlusion(FlatSignal().eval(), torch.randn(2, 2, 10), window=3, stride=1)
    times = [f"t{i}" for i in range(10)]
    fig, axes = signal.plot_panels(labels=times)
    _laid_out(fig)
    assert list(_shown_ticks(axes[0, -1], "x").values()) == times
    assert axes[0, 1].get_images()[0].get_array().shape == (1, 8)


def test_labels_errors() -> None:
    result, words = _token_map()
    with pytest.raises(nl.NetlensValueError, match="Expected 7 labels"):
        result.plot(labels=words[:3])
    with pytest.raises(nl.NetlensTypeError, match="labels"):
        result.plot(labels="the film")  # type: ignore[arg-type]
    with pytest.raises(nl.NetlensTypeError, match="labels"):
        result.plot_panels(labels=3)  # type: ignore[arg-type]
    zoo = model_zoo()["conv"]
    image = nl.occlusion(zoo.model, zoo.inputs, window=(2, 2))
    with pytest.raises(nl.NetlensValueError, match="labels=None for maps over two dims"):
        image.plot(labels=["a"] * 8)
    # tensors and arrays of names are sequences too
    result.plot(labels=np.array(words))


@pytest.mark.parametrize("suffix", ["png", "svg", "pdf"])
def test_save_and_notebook_display(tmp_path: Any, suffix: str) -> None:
    import matplotlib.pyplot as plt

    zoo = model_zoo()["conv"]
    result = nl.occlusion(zoo.model, zoo.inputs, window=(2, 2), layer="conv2")
    path = tmp_path / f"map.{suffix}"
    result.save(path)
    head = path.read_bytes()[:8]
    assert head.startswith({"png": b"\x89PNG", "svg": b"<?xml", "pdf": b"%PDF"}[suffix])
    assert result._repr_png_().startswith(b"\x89PNG")
    with pytest.raises(nl.NetlensValueError, match=r"\.png"):
        result.save(tmp_path / "map.jpg")
    assert plt.get_fignums() == []


def test_result_compares_by_identity() -> None:
    zoo = model_zoo()["conv"]
    first = nl.occlusion(zoo.model, zoo.inputs, window=4, layer="conv2")
    second = nl.occlusion(zoo.model, zoo.inputs, window=4, layer="conv2")
    assert first == first
    assert first != second  # no "Boolean value of Tensor is ambiguous"
    assert len({first, second}) == 2  # hashable
    assert first.channels is not None and first.channels.shape == (2,)  # one per input
    assert first.channels.dtype == torch.long


def test_import_does_not_load_matplotlib() -> None:
    code = "import sys, netlens; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the layer contract: one reading rule (netlens._core.outputs) ----------------------------------


def _pad(output: Any) -> torch.Tensor:
    return nn.utils.rnn.pad_packed_sequence(output[0], batch_first=True)[0]


# name in contract_zoo, window, keyword arguments, channels, the layer's (N, C) sums by hand
CONTRACT: list[tuple[str, tuple[int, ...], dict[str, Any], int, Callable[[Any], torch.Tensor]]] = [
    # BERT-style Linear on (N, T, D): units on the last dim, summed over the tokens
    ("token_classifier", (1,), {"baseline": 0}, 10, lambda out: out.sum(1)),
    # GPT-2 Conv1D, weight (in, out): 12 output units, not the 8 time steps
    ("conv1d_gpt", (2, 5), {}, 12, lambda out: out.sum(1)),
    # a channels-last stage (N, H, W, C)
    ("channels_last", (3, 3), {"channel_dim": -1}, 6, lambda out: out.sum((1, 2))),
    # a dict output: its first tensor value, or the one select= names
    ("dict_block", (2, 2), {}, 5, lambda out: out["hidden"].sum((2, 3))),
    ("dict_block", (2, 2), {"select": "gate"}, 3, lambda out: out["gate"]),
    # a time-first GRU whose output is (T, N, H) with T == N
    ("gru_time_first", (2, 5), {}, 6, lambda out: out[0].sum(0)),
    # an LSTM fed a PackedSequence: its padded tensor
    ("lstm_packed", (1, 4), {}, 6, lambda out: _pad(out).sum(1)),
]


@pytest.mark.parametrize(
    ("name", "window", "kwargs", "channels", "sums"),
    CONTRACT,
    ids=[f"{case[0]}-{'-'.join(case[2]) or 'default'}" for case in CONTRACT],
)
def test_layer_contract_matches_reference(
    name: str,
    window: tuple[int, ...],
    kwargs: dict[str, Any],
    channels: int,
    sums: Callable[[Any], torch.Tensor],
) -> None:
    member = contract_zoo()[name]
    model, inputs = copy.deepcopy(member.model).double(), member.inputs
    inputs = inputs.double() if inputs.is_floating_point() else inputs  # token ids stay ids
    reference_kwargs = {k: v for k, v in kwargs.items() if k == "baseline"}
    expected = reference(
        model, inputs, window, window, layer=member.layer, sums=sums, **reference_kwargs
    )
    with model_unchanged(model):
        result = nl.occlusion(model, inputs, window=window, layer=member.layer, **kwargs)
    _compare(result, expected, atol=1e-10)
    assert result.layer == member.layer
    # every channel of the layer is accepted, and none beyond
    with model_unchanged(model):
        last = nl.occlusion(
            model, inputs, window=window, layer=member.layer, channel=channels - 1, **kwargs
        )
    assert last.channels is not None and last.channels.tolist() == [channels - 1]
    with model_unchanged(model), pytest.raises(nl.NetlensValueError, match=f"{channels} channels"):
        nl.occlusion(model, inputs, window=window, layer=member.layer, channel=channels, **kwargs)


def test_time_first_gru_equals_its_batch_first_twin() -> None:
    # T == N: reading the (T, N, H) output as batch-first would mix up samples and time steps.
    zoo = contract_zoo()
    time_first, batch_first = zoo["gru_time_first"], zoo["gru_batch_first"]
    assert time_first.inputs.shape[0] == time_first.inputs.shape[1]
    results = [
        nl.occlusion(member.model, time_first.inputs, window=(1, 5), layer="rnn")
        for member in (time_first, batch_first)
    ]
    assert results[0].feature_activation is not None and results[1].feature_activation is not None
    torch.testing.assert_close(
        results[0].feature_activation, results[1].feature_activation, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(results[0].probability, results[1].probability, atol=1e-6, rtol=0)
    assert results[0].channels is not None and results[1].channels is not None
    assert torch.equal(results[0].channels, results[1].channels)


def test_channel_dim_picks_the_axis() -> None:
    member = contract_zoo()["channels_last"]  # the stage outputs (N, 8, 8, 6)
    model, inputs = copy.deepcopy(member.model).double(), member.inputs.double()
    for channel_dim, sums, count in [
        (-1, lambda out: out.sum((1, 2)), 6),
        (1, lambda out: out.sum((2, 3)), 8),  # the rows, taken as channels
    ]:
        expected = reference(model, inputs, (3, 3), (3, 3), layer="stage", sums=sums)
        result = nl.occlusion(model, inputs, window=(3, 3), layer="stage", channel_dim=channel_dim)
        _compare(result, expected, atol=1e-10)
        nl.occlusion(
            model, inputs, window=3, layer="stage", channel_dim=channel_dim, channel=count - 1
        )
        with pytest.raises(nl.NetlensValueError, match=f"{count} channels"):
            nl.occlusion(
                model, inputs, window=3, layer="stage", channel_dim=channel_dim, channel=count
            )


def test_packed_sequence_of_a_time_first_layer() -> None:
    torch.manual_seed(2)
    model = PackedOnly().double().eval()
    inputs = torch.randn(3, 3, 3, dtype=torch.float64)  # T == N again
    expected = reference(
        model,
        inputs,
        (1, 3),
        (1, 3),
        layer="rnn",
        sums=lambda out: nn.utils.rnn.pad_packed_sequence(out[0])[0].sum(0),
    )
    result = nl.occlusion(model, inputs, window=(1, 3), layer="rnn")
    _compare(result, expected, atol=1e-10)


def test_layer_returning_no_tensor_says_select() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> Any:
            return "features", [self.conv(x)]

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair()
            self.fc = nn.Linear(2 * 64, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.pair(x)[1][0], 1))  # type: ignore[no-any-return]

    model = Net().eval()
    inputs = torch.randn(2, 1, 8, 8)
    picked = nl.occlusion(
        model, inputs, window=4, layer="pair", select=lambda out: out[1][0], channel=1
    )
    default = nl.occlusion(model, inputs, window=4, layer="pair", channel=1)  # first tensor
    assert picked.feature_activation is not None and default.feature_activation is not None
    assert torch.equal(picked.feature_activation, default.feature_activation)
    with model_unchanged(model), pytest.raises(nl.NetlensTypeError, match="select="):
        nl.occlusion(model, inputs, window=4, layer="pair", select=0)  # the string


# -- inputs: batch dim, device and dtype, token ids ----------------------------------------------


@pytest.mark.parametrize("kind", ["conv", "colour", "lstm"])
def test_one_input_without_its_batch_dim(kind: str) -> None:
    model, inputs = _captum_case(kind)
    one = inputs[0]
    with model_unchanged(model), pytest.raises(nl.NetlensValueError) as info:
        nl.occlusion(model, one, window=one.shape[-1])
    message = str(info.value)
    assert message.startswith("Expected inputs with a batch dimension")
    assert str(tuple(one.shape)) in message and "unsqueeze(0)" in message
    nl.occlusion(model, one.unsqueeze(0), window=one.shape[-1])  # as the message says


def test_float64_inputs_on_a_float32_model() -> None:
    zoo = model_zoo()["conv"]  # float32
    inputs = zoo.inputs.double()
    with model_unchanged(zoo.model):
        result = nl.occlusion(zoo.model, inputs, window=4, stride=2, layer="conv2")
    as_float = nl.occlusion(zoo.model, zoo.inputs, window=4, stride=2, layer="conv2")
    for field in ("probability", "attribution", "feature_activation", "base_score"):
        value = getattr(result, field)
        assert value.dtype == torch.float64, field
        assert torch.equal(value, getattr(as_float, field).double()), field
    assert result.inputs is not None and result.inputs.dtype == torch.float64
    assert result.predicted_class.dtype == torch.long and result.target.dtype == torch.long


def test_float32_inputs_on_a_float64_model() -> None:
    zoo = _zoo64("conv")
    result = nl.occlusion(zoo.model, zoo.inputs.float(), window=4, baseline="mean")
    expected = reference(zoo.model, zoo.inputs.float(), (4, 4), (4, 4), baseline="mean")
    assert result.probability.dtype == torch.float32 and result.attribution.dtype == torch.float32
    _compare(
        result, {k: v.float() if v.is_floating_point() else v for k, v in expected.items()}, 1e-6
    )


def test_token_ids_with_an_integer_baseline() -> None:
    member = contract_zoo()["token_classifier"]
    model, ids = copy.deepcopy(member.model).double(), member.inputs
    mask = model.mask_id
    expected = reference(model, ids, (2,), (1,), baseline=mask)
    with model_unchanged(model):
        result = nl.occlusion(model, ids, window=(2,), stride=1, baseline=mask)
    _compare(result, expected, atol=1e-10)
    assert result.attribution.shape == ids.shape and result.attribution.is_floating_point()
    assert torch.equal(result.inputs, ids)
    # an int window covers the tokens; a tensor of ids works as a baseline too
    same = nl.occlusion(model, ids, window=2, stride=1, baseline=torch.tensor(mask))
    assert torch.equal(same.probability, result.probability)


@pytest.mark.parametrize(
    "baseline", [0.0, 0.5, "mean", torch.zeros(7), torch.tensor(True)], ids=repr
)
def test_token_ids_refuse_a_non_integer_baseline(baseline: Any) -> None:
    member = contract_zoo()["token_classifier"]
    with model_unchanged(member.model), pytest.raises(nl.NetlensTypeError) as info:
        nl.occlusion(member.model, member.inputs, window=(1,), baseline=baseline)
    assert "integer" in str(info.value) and str(info.value).startswith("Expected")


@pytest.mark.parametrize("baseline", [0, -1, torch.tensor(1), torch.zeros(1, 8, dtype=torch.long)])
def test_floating_inputs_take_any_numeric_baseline(baseline: Any) -> None:
    zoo = _zoo64("conv")
    result = nl.occlusion(zoo.model, zoo.inputs, window=(3, 3), baseline=baseline)
    value = torch.as_tensor(baseline, dtype=torch.float64)
    expected = reference(zoo.model, zoo.inputs, (3, 3), (3, 3), baseline=value)
    _compare(result, expected, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inputs_and_model_on_different_devices() -> None:  # pragma: no cover - GPU only
    zoo = model_zoo()["conv"]
    expected = nl.occlusion(zoo.model, zoo.inputs, window=2, layer="conv2")
    on_gpu = copy.deepcopy(zoo.model).cuda()
    result = nl.occlusion(on_gpu, zoo.inputs, window=2, layer="conv2")  # inputs on the CPU
    assert result.attribution.device.type == "cpu" and result.channels is not None
    assert result.channels.device.type == "cpu" and result.predicted_class.device.type == "cpu"
    torch.testing.assert_close(result.attribution, expected.attribution, atol=1e-5, rtol=0)
    back = nl.occlusion(zoo.model, zoo.inputs.cuda(), window=2, layer="conv2")  # model on the CPU
    assert back.attribution.device.type == "cuda" and back.target.device.type == "cuda"
    torch.testing.assert_close(back.attribution.cpu(), expected.attribution, atol=1e-5, rtol=0)


# -- inference mode ------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [None, 3])
def test_inference_mode_gives_the_same_results(batch_size: int | None) -> None:
    zoo = _zoo64("inplace")
    kwargs: dict[str, Any] = {"window": (2, 2), "stride": 1, "layer": "conv2"}
    expected = nl.occlusion(zoo.model, zoo.inputs, batch_size=batch_size, **kwargs)
    with torch.inference_mode(), model_unchanged(zoo.model):
        inside = nl.occlusion(zoo.model, zoo.inputs, batch_size=batch_size, **kwargs)
        made_inside = nl.occlusion(zoo.model, zoo.inputs.clone(), batch_size=batch_size, **kwargs)
    for result in (inside, made_inside):
        for field in ("probability", "attribution", "feature_activation", "predicted_class"):
            assert torch.equal(getattr(result, field), getattr(expected, field)), field


def test_inference_mode_with_a_model_writing_into_its_input() -> None:
    torch.manual_seed(1)
    model = WritesIntoItsInputLinear().double().eval()
    inputs = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    expected = reference(model, inputs, (3, 3), (1, 1), baseline=-1.0)
    with torch.inference_mode():
        result = nl.occlusion(model, inputs, window=(3, 3), stride=1, baseline=-1.0, batch_size=4)
    _compare(result, expected, atol=1e-10)


def test_an_int_channel_drops_the_channel_dim_and_a_list_keeps_it() -> None:
    zoo = _zoo64("conv")
    kwargs: dict[str, Any] = {"window": (3, 3), "stride": 2, "layer": "conv2"}
    pair = nl.occlusion(zoo.model, zoo.inputs, channel=[5, 0], **kwargs)
    assert pair.feature_activation is not None and pair.channels is not None
    assert pair.feature_activation.shape == (2, 2, 3, 3)
    assert pair.channels.tolist() == [5, 0]
    for k, channel in enumerate([5, 0]):
        one = nl.occlusion(zoo.model, zoo.inputs, channel=channel, **kwargs)
        assert one.feature_activation is not None and one.channels is not None
        assert one.feature_activation.shape == (2, 3, 3) and one.channels.tolist() == [channel]
        assert torch.equal(pair.feature_activation[:, k], one.feature_activation)
    as_tensor = nl.occlusion(zoo.model, zoo.inputs, channel=torch.tensor([5, 0]), **kwargs)
    assert as_tensor.feature_activation is not None
    assert torch.equal(as_tensor.feature_activation, pair.feature_activation)
    # drawing: one of the listed channels at a time
    _, ax = pair.plot(map="feature_activation", channel=0, sample=1)
    drawn = torch.as_tensor(ax.get_images()[1].get_array().data).double()
    assert torch.allclose(drawn, pair.feature_activation[1, 1])
    _, axes = pair.plot_panels()
    assert "channel 5" in axes[0, 3].get_title()
    with pytest.raises(nl.NetlensValueError, match="tracked channels"):
        pair.plot(map="feature_activation", channel=3)
    strongest = nl.occlusion(zoo.model, zoo.inputs, **kwargs)
    assert strongest.channels is not None
    number = int(strongest.channels[1])
    with pytest.raises(nl.NetlensValueError, match="tracked for input 1"):
        strongest.plot(map="feature_activation", sample=1, channel=number + 1)
    _, axes = strongest.plot_panels()
    assert f"channel {number}" in axes[1, 3].get_title()
