"""Modules inside a time-first transformer layer read their batch where their layer has it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netlens as nl


class TimeFirst(nn.Module):
    """Takes ``(N, T, D)``, runs a ``batch_first=False`` encoder layer on ``(T, N, D)``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=False
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layer(x.transpose(0, 1)).transpose(0, 1)
        return self.head(out.mean(1))


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
