"""Modules inside a time-first transformer layer read their batch where their layer has it."""

from __future__ import annotations

import pytest
import torch
from _models import TimeFirst

import netlens as nl


@pytest.mark.filterwarnings("ignore:The path from the inputs")  # LayerNorm on the way back
def test_a_linear_inside_a_time_first_layer_has_its_batch_on_dim_1() -> None:
    torch.manual_seed(0)
    model = TimeFirst().eval()
    inputs = torch.randn(5, 5, 8)  # T == N: the sizes cannot tell the axes apart
    with nl.record(model, "layer.linear1") as rec:
        model(inputs)
    raw = rec["layer.linear1"]  # (T, N, 16)
    top = nl.top_activations(model, inputs, "layer.linear1", k=1)
    # reference: the strongest (time step, input) of each unit, read with the batch on dim 1
    per_input = raw.permute(1, 0, 2).amax(1)  # (N, 16): each input's strongest value per unit
    expected = per_input.argmax(0)
    assert torch.equal(top.indices[:, 0], expected)
    torch.testing.assert_close(top.activations[:, 0], per_input.amax(0))
