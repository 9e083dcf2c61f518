"""Half precision: every technique on a float16 and a bfloat16 LeNet5 (issue 13, item 5).

A result is as good as float32's within the precision, or a clear error; never NaN silently.
"""

from __future__ import annotations

import pytest
import torch
from _models import seeded_lenet

import netlens as nl
from netlens.models import LeNet5
from netlens.testing import model_unchanged

HALF = [torch.float16, torch.bfloat16]


def _lenet_pair(dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A float32 LeNet5 on 28x28 inputs and its copy in ``dtype``."""
    reference = seeded_lenet(0, size=28, dtype=torch.float32)
    half = LeNet5().eval()
    half.load_state_dict(reference.state_dict())
    return reference, half.to(dtype)


def _close(half: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype) -> None:
    assert torch.isfinite(half.float()).all()
    # bfloat16 keeps 8 bits of mantissa, float16 11: errors accumulate through the network.
    tolerance = 0.08 if dtype == torch.bfloat16 else 0.02
    scale = float(reference.abs().max()) or 1.0
    assert float((half.float() - reference.float()).abs().max()) <= tolerance * scale


@pytest.mark.parametrize("dtype", HALF)
def test_record_and_stats(dtype: torch.dtype) -> None:
    reference, half = _lenet_pair(dtype)
    x = torch.randn(4, 1, 28, 28)
    with model_unchanged(half):
        stats = nl.activation_stats(half, x.to(dtype), "conv2")["conv2"]
    expected = nl.activation_stats(reference, x, "conv2")["conv2"]
    _close(stats.mean, expected.mean, dtype)
    _close(stats.std, expected.std, dtype)


@pytest.mark.parametrize("dtype", HALF)
def test_deconvnet(dtype: torch.dtype) -> None:
    reference, half = _lenet_pair(dtype)
    x = torch.randn(2, 1, 28, 28)
    with model_unchanged(half):
        projection = nl.deconvnet(half, x.to(dtype), "conv2", 3)
    expected = nl.deconvnet(reference, x, "conv2", 3)
    assert projection.images.dtype == dtype
    _close(projection.images, expected.images, dtype)


@pytest.mark.parametrize("dtype", HALF)
def test_occlusion(dtype: torch.dtype) -> None:
    reference, half = _lenet_pair(dtype)
    x = torch.randn(2, 1, 28, 28)
    with model_unchanged(half):
        result = nl.occlusion(half, x.to(dtype), window=7, layer="conv2")
    expected = nl.occlusion(reference, x, window=7, layer="conv2")
    _close(result.probability, expected.probability, dtype)
    # the attribution is a difference of probabilities: its error is that of a probability
    tolerance = 0.02 if dtype == torch.bfloat16 else 0.005
    assert torch.isfinite(result.attribution.float()).all()
    assert float((result.attribution.float() - expected.attribution).abs().max()) <= tolerance


@pytest.mark.parametrize("dtype", HALF)
def test_top_activations(dtype: torch.dtype) -> None:
    reference, half = _lenet_pair(dtype)
    x = torch.randn(6, 1, 28, 28)
    with model_unchanged(half):
        top = nl.top_activations(half, x.to(dtype), "conv2", channels=[0, 1], k=2)
    expected = nl.top_activations(reference, x, "conv2", channels=[0, 1], k=2)
    _close(top.activations, expected.activations, dtype)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("value_range", [None, (-1.0, 1.0)])
def test_maximize_activation_stays_finite(dtype: torch.dtype, value_range) -> None:
    reference, half = _lenet_pair(dtype)
    with model_unchanged(half):
        result = nl.maximize_activation(
            half,
            "conv1",
            [0, 1],
            input_shape=(1, 28, 28),
            steps=20,
            seed=0,
            value_range=value_range,
        )
    expected = nl.maximize_activation(
        reference,
        "conv1",
        [0, 1],
        input_shape=(1, 28, 28),
        steps=20,
        seed=0,
        value_range=value_range,
    )
    assert torch.isfinite(result.images.float()).all()
    assert torch.isfinite(result.history.float()).all()
    # reaches the float32 run's objective within the precision
    assert float(result.activations.float().min()) >= 0.9 * float(expected.activations.min())


@pytest.mark.parametrize("dtype", HALF)
def test_grids(dtype: torch.dtype) -> None:
    _, half = _lenet_pair(dtype)
    array = nl.FilterGrid(half.conv1).to_array()
    assert array.dtype.name == "uint8"
