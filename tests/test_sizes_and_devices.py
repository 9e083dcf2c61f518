"""Abuse of sizes and devices (issue 13, item 6): clear errors, never a crash deep in torch."""

from __future__ import annotations

import pytest
import torch

import netlens as nl
from netlens.models import LeNet5


@pytest.fixture
def meta_model() -> torch.nn.Module:
    return LeNet5().to("meta").eval()


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: nl.occlusion(m, x, window=7),
        lambda m, x: nl.deconvnet(m, x, "conv1", 0),
        lambda m, x: nl.activation_stats(m, x, "conv1"),
        lambda m, x: nl.top_activations(m, x, "conv1", k=1),
        lambda m, x: nl.maximize_activation(m, "conv1", 0, input_shape=(1, 28, 28), steps=2),
    ],
    ids=["occlusion", "deconvnet", "activation_stats", "top_activations", "maximize"],
)
def test_a_model_on_the_meta_device_is_refused(meta_model, call) -> None:
    with pytest.raises(nl.NetlensValueError, match="'meta' device"):
        call(meta_model, torch.randn(2, 1, 28, 28))


def test_meta_tensors_are_refused_by_activation_stats_update() -> None:
    with pytest.raises(nl.NetlensValueError, match="'meta' device"):
        nl.ActivationStats().update(torch.empty(2, 3, 4, device="meta"))


@pytest.mark.parametrize("stride", [2**62, 2**70])
def test_a_stride_past_the_free_space_means_one_position(stride: int) -> None:
    torch.manual_seed(0)
    model = LeNet5().eval()
    x = torch.randn(2, 1, 28, 28)
    huge = nl.occlusion(model, x, window=7, stride=stride)
    exact = nl.occlusion(model, x, window=7, stride=22)  # 28 - 7 + 1: one position too
    assert huge.probability.shape == (2, 1, 1)
    torch.testing.assert_close(huge.attribution, exact.attribution)
