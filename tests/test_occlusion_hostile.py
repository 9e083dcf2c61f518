"""Occlusion under hostile models and values: NaN scores, batch statistics, token baselines."""

from __future__ import annotations

import pytest
import torch
from _models import NaNWhereOccluded
from torch import nn

import netlens as nl


@pytest.mark.parametrize("incremental", [False, True])
def test_nan_scores_raise_instead_of_nan_maps(incremental: bool) -> None:
    model = NaNWhereOccluded().eval()
    inputs = torch.rand(2, 1, 8, 8) + 0.5
    with pytest.raises(nl.NetlensValueError, match="NaN or inf"):
        nl.occlusion(model, inputs, window=4, incremental=incremental)
    # Away from the top-left pixel, every map is finite.
    result = nl.occlusion(model, inputs, window=4, baseline=1.0, incremental=incremental)
    assert bool(torch.isfinite(result.probability).all())


def test_nan_feature_activation_raises() -> None:
    model = NaNWhereOccluded().eval()
    inputs = torch.rand(1, 1, 8, 8) + 0.5
    with pytest.raises(nl.NetlensValueError, match="layer 'conv'"):
        nl.occlusion(model, inputs, window=4, layer="conv", scores=lambda out: out.nan_to_num())


def _batch_statistics_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    ).eval()


def test_batch_statistics_need_a_chosen_batch_size() -> None:
    model = _batch_statistics_model()
    inputs = torch.randn(2, 1, 8, 8)
    with pytest.raises(nl.NetlensValueError, match=r"batch_size=1.*\n?") as caught:
        nl.occlusion(model, inputs, window=4)
    assert "'1' (BatchNorm2d)" in str(caught.value)
    with pytest.raises(nl.NetlensValueError, match="incremental=False"):
        nl.occlusion(model, inputs, window=4, batch_size=1, incremental=True)
    # batch_size=1: each copy alone, so the maps do not depend on the budget.
    one = nl.occlusion(model, inputs, window=4, batch_size=1, memory_budget=2**16)
    again = nl.occlusion(model, inputs, window=4, batch_size=1, memory_budget=2**30)
    assert not one.incremental
    torch.testing.assert_close(one.probability, again.probability, rtol=0, atol=0)
    alone = torch.stack([torch.softmax(model(x[None]), 1)[0, one.target[0]] for x in (inputs[0],)])
    torch.testing.assert_close(one.base_score[:1], alone)


@pytest.mark.parametrize("baseline", [20, 99, -1])
def test_token_baseline_outside_the_vocabulary(baseline: int) -> None:
    model = nn.Sequential(nn.Embedding(20, 4), nn.Flatten(), nn.Linear(24, 2)).eval()
    ids = torch.randint(0, 20, (2, 6))
    with pytest.raises(nl.NetlensValueError, match=r"\[0, 20\).*embedding '0'"):
        nl.occlusion(model, ids, window=(1,), baseline=baseline)
    assert nl.occlusion(model, ids, window=(1,), baseline=19).probability.shape == (2, 6)
