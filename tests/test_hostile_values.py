"""Hostile values: NaN, Inf, empty, complex, meta and odd dtypes, each met with a clear error.

The rule (issue 21): a technique never returns NaN or Inf without saying so. Where the inputs,
the data, an argument or the model produce a non-finite value in something the technique
computes or reports, it raises a ``NetlensValueError`` naming where and how many, as early as it
can; a value of the wrong kind (a complex tensor) is a ``NetlensTypeError``.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np
import pytest
import torch
from _models import (
    NanBackward,
    PoisonFromCall,
    RGBConvs,
    SpareConv,
    SqrtOfZero,
    TemperedConvs,
    seeded,
)
from torch import nn

import netlens as nl
from netlens import objectives as obj
from netlens._color import ColorStats, color_matrix
from netlens._core.checks import check_position
from netlens.testing import model_unchanged

# One intra-op thread for this file's tests (tests/conftest.py): tiny models: intra-op threads only
# add contention on a shared machine.
ONE_THREAD = True


@pytest.fixture
def rgb() -> nn.Module:
    return seeded(RGBConvs)


_SHAPE = (3, 8, 8)


# -- color_stats ----------------------------------------------------------------------------------


def test_color_stats_skips_empty_batches() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 4, 4, generator=generator, dtype=torch.float64)
    empty = images[:0]
    with_empties = nl.color_stats([empty, images[:2], empty, images[2:], empty])
    plain = nl.color_stats(images)
    assert with_empties.count == plain.count == 6 * 16
    for field in ("mean", "std", "covariance"):
        value = getattr(with_empties, field)
        assert bool(torch.isfinite(value).all()), field
        torch.testing.assert_close(value, getattr(plain, field), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("data", [[], [torch.rand(0, 3, 4, 4)], [torch.rand(0, 3, 4, 4)] * 3])
def test_color_stats_of_no_pixels_is_refused(data: list[torch.Tensor]) -> None:
    with pytest.raises(nl.NetlensValueError, match="at least 2 pixels"):
        nl.color_stats(data)


@pytest.mark.parametrize(("bad", "word"), [(float("nan"), "NaN"), (float("inf"), "infinite")])
def test_color_stats_names_the_batch_with_non_finite_pixels(bad: float, word: str) -> None:
    poisoned = torch.rand(2, 3, 4, 4)
    poisoned[1, 0, 0, 0] = bad
    poisoned[0, 2, 3, 1] = bad
    with pytest.raises(nl.NetlensValueError, match=rf"batch 1 .*2 {word}"):
        nl.color_stats([torch.rand(2, 3, 4, 4), poisoned, torch.rand(2, 3, 4, 4)])
    with pytest.raises(nl.NetlensValueError, match=rf"batch 0 .*2 {word}"):
        nl.color_stats(poisoned)


def test_color_stats_that_overflow_are_refused() -> None:
    huge = torch.full((2, 3, 4, 4), 1e200, dtype=torch.float64)
    huge[0] = -1e200
    with pytest.raises(nl.NetlensValueError, match="overflow"):
        nl.color_stats(huge)


def test_color_stats_refuses_complex_and_meta_images() -> None:
    with pytest.raises(nl.NetlensTypeError, match="complex"):
        nl.color_stats(torch.rand(2, 3, 4, 4, dtype=torch.complex64))
    with pytest.raises(nl.NetlensValueError, match="meta"):
        nl.color_stats(torch.empty(2, 3, 4, 4, device="meta"))


# -- decorrelate= ---------------------------------------------------------------------------------


def _stats(covariance: torch.Tensor) -> ColorStats:
    diagonal = covariance.diagonal()
    return ColorStats(torch.zeros(3), diagonal.abs().sqrt(), covariance, 100)


def test_decorrelate_with_non_finite_stats_is_refused_before_running(rgb: nn.Module) -> None:
    nan = _stats(torch.full((3, 3), float("nan"), dtype=torch.float64))
    with model_unchanged(rgb), pytest.raises(nl.NetlensValueError, match="9 NaN"):
        nl.maximize_activation(rgb, "conv2", 0, input_shape=_SHAPE, steps=2, decorrelate=nan)
    with pytest.raises(nl.NetlensValueError, match="covariance"):
        _ = nan.basis


def test_decorrelate_with_a_huge_finite_covariance_works() -> None:
    # finite but large enough to overflow inside an eigendecomposition (LinAlgError before)
    covariance = 1e300 * torch.tensor(
        [[1.0, 0.5, 0.2], [0.5, 1.0, 0.3], [0.2, 0.3, 1.0]], dtype=torch.float64
    )
    stats = _stats(covariance)
    basis = stats.basis
    assert bool(torch.isfinite(basis).all())
    torch.testing.assert_close(basis @ basis.T / 1e300, covariance / 1e300)
    matrix = color_matrix(stats)
    assert matrix is not None and bool(torch.isfinite(matrix).all())
    reference = color_matrix(_stats(covariance / 1e300))
    assert reference is not None
    torch.testing.assert_close(matrix, reference, rtol=1e-12, atol=1e-12)
    # a huge finite matrix is scaled, not called infinite
    scaled = color_matrix(torch.full((3, 3), 1e300, dtype=torch.float64))
    assert scaled is not None
    torch.testing.assert_close(scaled, torch.full((3, 3), 3**-0.5, dtype=torch.float64))


@pytest.mark.parametrize(
    "matrix",
    [
        torch.eye(3, dtype=torch.complex64),
        np.eye(3, dtype=np.complex128),
    ],
    ids=["tensor", "array"],
)
def test_decorrelate_refuses_complex_matrices(rgb: nn.Module, matrix: Any) -> None:
    with model_unchanged(rgb), pytest.raises(nl.NetlensTypeError, match="complex"):
        nl.maximize_activation(rgb, "conv2", 0, input_shape=_SHAPE, steps=2, decorrelate=matrix)


def test_decorrelate_names_the_non_finite_entries() -> None:
    matrix = torch.eye(3)
    matrix[0, 1] = float("inf")
    with pytest.raises(nl.NetlensValueError, match="1 infinite"):
        color_matrix(matrix)


# -- normalize= -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("normalize", "message"),
    [
        ((0.5, 1e-50), "std.*float32"),  # 0 in float32
        ((0.5, 1e-40), "std.*float32"),  # subnormal: 1 / std is infinite in float32
        ((1e300, 1.0), "mean.*float32"),  # infinite in float32
        ((0.5, (0.5, 1e-50, 0.5)), "std.*float32"),
    ],
)
def test_normalize_is_checked_in_the_dtype_it_is_used_in(
    rgb: nn.Module, normalize: Any, message: str
) -> None:
    with model_unchanged(rgb), pytest.raises(nl.NetlensValueError, match=message):
        nl.maximize_activation(rgb, "conv2", 0, input_shape=_SHAPE, steps=2, normalize=normalize)


def test_normalize_that_float16_inputs_cannot_hold_is_refused() -> None:
    model = seeded(RGBConvs).half()
    with model_unchanged(model), pytest.raises(nl.NetlensValueError, match=r"normalize.*float16"):
        nl.maximize_activation(
            model, "conv2", 0, input_shape=_SHAPE, steps=2, normalize=(0.5, 1e-6)
        )


def test_normalize_refuses_complex_values(rgb: nn.Module) -> None:
    with pytest.raises(nl.NetlensTypeError, match="complex"):
        nl.maximize_activation(
            rgb,
            "conv2",
            0,
            input_shape=_SHAPE,
            steps=2,
            normalize=(torch.tensor(0.5 + 1j), 0.5),
        )


# -- maximize_activation: a NaN or Inf in the run ---------------------------------------------


@pytest.mark.parametrize("form", ["layer", "objective"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_objective_stops_the_run_at_its_step(form: str, value: float) -> None:
    poison = PoisonFromCall(at=5, value=value)  # call 1 is the probe: step 4 is poisoned
    model = seeded(lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), poison))
    kwargs: dict[str, Any] = {"input_shape": _SHAPE, "steps": 50, "seed": 0}
    if form == "layer":
        kwargs.update(layer="1", channels=[0, 1])
    else:
        kwargs.update(objective=[obj.channel("1", 0), obj.channel("1", 1)])
    with model_unchanged(model), pytest.raises(nl.NetlensValueError, match=r"step 4 of 50") as info:
        nl.maximize_activation(model, **kwargs)
    assert poison.calls == 5  # stopped at once, not after 50 steps
    assert "objective" in str(info.value)
    assert "NaN" in str(info.value) or "infinite" in str(info.value)


def test_off_the_cpu_the_check_is_batched_but_names_the_first_bad_step() -> None:
    from netlens._maximize.optimise import _CHECK_EVERY
    from netlens._maximize.optimise import FiniteWatch as _FiniteWatch

    # A CUDA device only sets how often the flags are read; the flags themselves are tensors.
    watch = _FiniteWatch(50, 2, ["channel 3"], torch.float32, torch.device("cuda"))
    assert watch.every == _CHECK_EVERY > 1
    pixels, gradient = torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    history: list[torch.Tensor] = []
    with pytest.raises(nl.NetlensValueError) as info:
        for step in range(50):
            bad = step >= 5
            history.append(torch.tensor([0.0, float("nan") if bad else 0.0]))
            watch.check(step, pixels, history, gradient)
            assert step < _CHECK_EVERY, "not stopped at the first check"
    message = str(info.value)
    assert "at step 6 of 50" in message and "1 of the 2 inputs (channel 3)" in message
    assert "1 NaN" in message
    watch = _FiniteWatch(3, 1, ["objective 0"], torch.float32, torch.device("cuda"))
    history = []
    for step in range(3):  # fewer steps than a check's period: flush() at the end reads them
        if step == 2:
            gradient[0, 0, 1, 1] = float("inf")
        history.append(torch.tensor([0.0]))
        watch.check(step, pixels[:1], history, gradient[:1])
    with pytest.raises(nl.NetlensValueError, match=r"gradient.*step 3 of 3.*objective 0"):
        watch.flush(history)


def test_a_non_finite_gradient_stops_the_run_at_its_step() -> None:
    model = seeded(NanBackward)
    with (
        model_unchanged(model),
        pytest.raises(nl.NetlensValueError, match=r"gradient.*step 1 of 30"),
    ):
        nl.maximize_activation(model, "conv", 0, input_shape=_SHAPE, steps=30, seed=0)


def test_a_callable_objective_that_returns_inf_is_named(rgb: nn.Module) -> None:
    def infinite(maps: torch.Tensor) -> torch.Tensor:
        return maps.flatten(1).mean(1) + float("inf")

    with pytest.raises(
        nl.NetlensValueError, match=r"step 1 of 20.*2 of the 2 inputs .channel 1, channel 2"
    ):
        nl.maximize_activation(
            rgb, "conv2", [1, 2], input_shape=_SHAPE, steps=20, objective=infinite
        )


# -- objectives -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vector",
    [[float("nan"), 1.0, 1.0, 1.0], [1.0, float("inf"), 1.0, 1.0], np.array([1.0, -np.inf, 0, 0])],
)
def test_a_non_finite_direction_is_refused_at_construction(vector: Any) -> None:
    with pytest.raises(nl.NetlensValueError, match=r"vector.*1 (NaN|infinite)"):
        obj.direction("conv1", vector)


def test_a_direction_too_large_for_the_layer_dtype_is_refused_before_the_first_step(
    rgb: nn.Module,
) -> None:
    model = seeded(RGBConvs)  # float32: 1e300 is infinite there
    vector = torch.tensor([1e300, 1.0, 1.0, 1.0], dtype=torch.float64)
    calls: list[int] = []
    model.conv1.register_forward_hook(lambda m, a, o: calls.append(1))
    with pytest.raises(nl.NetlensValueError, match="float32"):
        nl.maximize_activation(
            model, objective=obj.direction("conv1", vector), input_shape=_SHAPE, steps=20
        )
    assert len(calls) == 1  # the probe only


def test_complex_or_boolean_direction_is_a_type_error() -> None:
    with pytest.raises(nl.NetlensTypeError, match="complex"):
        obj.direction("conv1", torch.ones(4, dtype=torch.complex64))
    with pytest.raises(nl.NetlensTypeError, match="bool"):
        obj.direction("conv1", torch.ones(4, dtype=torch.bool))


def test_objective_parts_are_checked() -> None:
    with pytest.raises(nl.NetlensValueError, match="at least one"):
        obj.Objective(())
    with pytest.raises(nl.NetlensTypeError, match="pairs"):
        obj.Objective([(1.0, "conv1")])  # type: ignore[arg-type]
    term = obj.channel("conv1", 0).terms[0][1]
    with pytest.raises(nl.NetlensValueError, match="finite"):
        obj.Objective(((float("nan"), term),))
    rebuilt = obj.Objective(((torch.tensor(2.0), term),))  # type: ignore[arg-type]
    assert repr(rebuilt) == "2 * channel('conv1', 0)"


def test_zero_d_tensors_scale_objectives_like_numbers() -> None:
    base = obj.channel("conv1", 0)
    for factor in (torch.tensor(2.0), torch.tensor(2), np.float32(2.0), torch.tensor(2.0).double()):
        assert repr(base * factor) == "2 * channel('conv1', 0)"
        assert repr(factor * base) == "2 * channel('conv1', 0)"
        assert repr(base / factor) == "0.5 * channel('conv1', 0)"
    with pytest.raises(nl.NetlensValueError, match="finite"):
        base * torch.tensor(float("nan"))
    with pytest.raises(nl.NetlensTypeError, match="number"):
        base * torch.tensor([2.0])
    with pytest.raises(nl.NetlensTypeError, match="number"):
        base * torch.tensor(True)
    with pytest.raises(nl.NetlensTypeError, match="number"):
        base * torch.tensor(1 + 1j)


def test_weights_that_overflow_are_refused() -> None:
    base = 1e200 * obj.channel("conv1", 0)
    with pytest.raises(nl.NetlensValueError, match="finite"):
        base * 1e200
    with pytest.raises(nl.NetlensValueError, match="finite"):
        obj.channel("conv1", 0) / 5e-324


def test_a_layer_that_does_not_run_is_named_as_the_user_wrote_it() -> None:
    model = seeded(SpareConv)
    objective = obj.channel("conv", 0) + obj.channel("spare", 1)
    with model_unchanged(model), pytest.raises(nl.NetlensValueError) as info:
        nl.maximize_activation(model, objective=objective, input_shape=_SHAPE, steps=2)
    message = str(info.value)
    assert "'spare'" in message
    assert "1:spare" not in message and "0:conv" not in message


# -- positions ----------------------------------------------------------------------------------


def test_one_rule_for_positions() -> None:
    assert check_position("position", (1, 2)) == (1, 2)
    assert check_position("position", [0]) == (0,)
    assert check_position("position", 3) == (3,)
    assert check_position("position", torch.Size([2, 2])) == (2, 2)
    assert check_position("position", (np.int64(1), torch.tensor(2))) == (1, 2)
    for bad in ((-1, -1), -1, (0, -2)):
        with pytest.raises(nl.NetlensValueError, match="non-negative"):
            check_position("position", bad)
    for wrong in ((True, 1), True, (1.0, 2), "centre", None, {1, 2}):
        with pytest.raises(nl.NetlensTypeError, match="position"):
            check_position("position", wrong)
    with pytest.raises(nl.NetlensValueError, match="non-negative"):
        obj.neuron("conv1", 0, (-1, -1))
    with pytest.raises(nl.NetlensTypeError, match="position"):
        obj.neuron("conv1", 0, (True, 1))


# -- grids ---------------------------------------------------------------------------------------


def test_filter_grid_of_meta_weights_says_so() -> None:
    with torch.device("meta"):
        conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(nl.NetlensValueError, match="meta"):
        nl.FilterGrid(conv)
    with pytest.raises(nl.NetlensValueError, match="meta"):
        nl.ActivationGrid(torch.empty(2, 4, 5, 5, device="meta"))


@pytest.mark.parametrize(
    "weight",
    [torch.randn(4, 1, 0, 0), torch.randn(4, 1, 3, 0), torch.randn(0, 1, 3, 3), torch.randn(0, 3)],
    ids=["no kernel", "no width", "no filters", "no rows"],
)
def test_filter_grid_of_an_empty_weight_is_refused(weight: torch.Tensor) -> None:
    with pytest.raises(nl.NetlensValueError, match="empty"):
        nl.FilterGrid(weight)


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 3, 4, 4), (3, 0, 4)])
def test_activation_grid_of_nothing_is_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(nl.NetlensValueError, match="empty"):
        nl.ActivationGrid(torch.randn(shape))


@pytest.mark.parametrize(
    "bounds",
    [(0, float("inf")), (float("-inf"), 0), (float("nan"), 1.0), (1.0, 1.0), (2.0, 1.0)],
)
def test_grid_normalize_bounds_must_be_finite_and_increasing(bounds: tuple[float, float]) -> None:
    with pytest.raises(nl.NetlensValueError, match="normalize"):
        nl.ActivationGrid(torch.rand(3, 5, 5), normalize=bounds)


def test_grid_normalize_takes_zero_d_tensors_as_numbers() -> None:
    maps = torch.rand(3, 5, 5)
    grid = nl.ActivationGrid(maps, normalize=(maps.min(), maps.max()))
    assert grid.value_range == (float(maps.min()), float(maps.max()))
    with pytest.raises(nl.NetlensTypeError, match="normalize"):
        nl.ActivationGrid(maps, normalize=(0.0, "1"))  # type: ignore[arg-type]


def test_grids_refuse_complex_values() -> None:
    with pytest.raises(nl.NetlensTypeError, match="complex"):
        nl.ActivationGrid(torch.rand(3, 5, 5, dtype=torch.complex64))
    with pytest.raises(nl.NetlensTypeError, match="complex"):
        nl.FilterGrid(torch.rand(3, 1, 5, 5, dtype=torch.complex64))


# -- dtypes and threads ----------------------------------------------------------------------------


def test_a_float64_temperature_among_float32_weights() -> None:
    model = seeded(TemperedConvs)
    for kwargs in (
        {"layer": "conv2", "channels": [0, 3]},
        {"layer": "conv1", "channels": [0, 3]},
        {"objective": [obj.channel("conv2", 0), obj.channel("conv1", 3)]},
    ):
        with model_unchanged(model):
            result = nl.maximize_activation(model, input_shape=_SHAPE, steps=3, seed=0, **kwargs)
        assert result.images.dtype == torch.float32
        assert bool(torch.isfinite(result.images).all())
    with torch.no_grad():
        reached = model(result.images[:1]) * model.temperature.float()
    torch.testing.assert_close(result.activations[0], reached[0, 0].mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", ["sliced", "layer", "objective"])
def test_plain_forwards_in_another_thread_are_untouched(form: str) -> None:
    """Item 6: another thread's forward never meets netlens' StopForward or its hooks."""
    model = seeded(RGBConvs)
    inputs = torch.rand(2, *_SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(inputs)
    kwargs: dict[str, Any] = {"input_shape": _SHAPE, "steps": 60, "seed": 0}
    if form == "sliced":
        kwargs.update(layer="conv1", channels=[0, 1])  # the one-channel-per-input path
    elif form == "layer":
        kwargs.update(layer="relu1", channels=[0, 1])  # stops after relu1
    else:
        kwargs.update(objective=obj.channel("conv1", 1) + obj.neuron("relu1", 0))
    done = threading.Event()
    outputs: list[object] = []
    failures: list[BaseException] = []

    def plain_forwards() -> None:
        try:
            while not done.is_set():
                with torch.no_grad():
                    outputs.append(model(inputs))
        except BaseException as error:  # StopForward is a BaseException
            failures.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    worker = threading.Thread(target=plain_forwards)
    try:
        worker.start()
        with model_unchanged(model):
            result = nl.maximize_activation(model, **kwargs)
    finally:
        done.set()
        worker.join()
        sys.setswitchinterval(interval)
    if failures:
        raise failures[0]
    assert result.history.shape[0] == 60
    assert outputs, "the other thread ran no forward pass"
    for output in outputs:
        assert isinstance(output, torch.Tensor)
        assert torch.equal(output, reference)


def test_deconvnet_refuses_non_finite_projections() -> None:
    model = SqrtOfZero().eval()
    inputs = torch.rand(2, 3, 8, 8)
    with model_unchanged(model), pytest.raises(nl.NetlensValueError, match="finite"):
        nl.deconvnet(model, inputs, "conv1", 0)
