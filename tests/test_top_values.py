"""What top_activations ranks and merges: NaN and infinity, shards read differently, dtypes.

Also the dtype in which inputs reach a model that keeps one parameter in another dtype (a
float64 temperature among float32 layers), for top_activations and deconvnet, and the rule
that chooses it (:func:`netlens._core.model.model_dtype_device`).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from _models import ConvPairNet, PoisonedChannels, Standardise, TemperedClassifier
from torch import nn

import netlens as nl
from netlens._core.model import model_dtype_device
from netlens.testing import model_unchanged

# -- NaN and infinity ------------------------------------------------------------------------------


def _poisoned() -> tuple[nn.Module, torch.Tensor]:
    """The model (``nn.Sequential(PoisonedChannels(), nn.ReLU())``, layer "0") and 8 inputs.

    Input 3 makes channel 1 NaN (64 values), input 5 makes channel 2 infinite (64 values).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(PoisonedChannels(), nn.ReLU()).eval()
    data = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    data[3, 0, 0, 0] = 2.0
    data[5, 0, 0, 0] = -2.0
    return model, data


def test_nan_activations_are_not_ranked_but_refused() -> None:
    model, data = _poisoned()
    batches = [data[:2], data[2:4], data[4:6], data[6:]]
    with model_unchanged(model), pytest.raises(nl.NetlensValueError) as raised:
        nl.top_activations(model, batches, "0", channels=[0, 1], k=2)
    message = str(raised.value)
    assert "layer '0'" in message and "channel 1" in message and "64 NaN" in message
    assert "input 3" in message and "channel 0" not in message


def test_infinite_activations_are_refused_too() -> None:
    model, data = _poisoned()
    with pytest.raises(nl.NetlensValueError, match=r"channel 2 .*64 infinite.* input 5"):
        nl.top_activations(model, data, "0", channels=2, k=2)
    with pytest.raises(nl.NetlensValueError, match=r"channel 1 .*NaN.*channel 2 .*infinite"):
        nl.top_activations(model, data, "0", k=2)  # every channel


def test_non_finite_values_in_channels_not_asked_for_do_not_matter() -> None:
    model, data = _poisoned()
    top = nl.top_activations(model, data, "0", channels=[0], k=3)
    assert torch.isfinite(top.activations).all() and torch.isfinite(top.projections).all()
    clean = data.clone()
    clean[3, 0, 0, 0] = clean[5, 0, 0, 0] = 0.0
    assert torch.isfinite(nl.top_activations(model, clean, "0", k=3).activations).all()


# -- merging shards --------------------------------------------------------------------------------


def _pair_net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ConvPairNet().eval()
    generator = torch.Generator().manual_seed(2)
    return model, torch.randn(5, 1, 8, 8, generator=generator), torch.randn(4, 1, 8, 8)


def test_merge_refuses_an_int_channel_with_a_list_of_it() -> None:
    model, first, second = _pair_net()
    single = nl.top_activations(model, first, "pair", channels=0, k=2)
    listed = nl.top_activations(model, second, "pair", channels=[0], k=2)
    for a, b in ((single, listed), (listed, single)):
        with pytest.raises(nl.NetlensValueError, match="the same channel form") as raised:
            a.merge(b)
        assert "one int channel" in str(raised.value) and "a list" in str(raised.value)


def test_merge_refuses_shards_read_with_another_select_or_channel_dim() -> None:
    model, first, second = _pair_net()
    base = nl.top_activations(model, first, "pair", channels=[0, 1], k=2)
    doubled = nl.top_activations(model, second, "pair", channels=[0, 1], k=2, select=1)
    with pytest.raises(nl.NetlensValueError, match=r"the same select.* default .* 1\b"):
        base.merge(doubled)
    picked = nl.top_activations(
        model, second, "pair", channels=[0, 1], k=2, select=lambda out: out[0]
    )
    with pytest.raises(nl.NetlensValueError, match=r"the same select.*<lambda>"):
        picked.merge(base)
    rows = nl.top_activations(model, second, "pair", channels=[0, 1], k=2, channel_dim=2)
    with pytest.raises(nl.NetlensValueError, match="the same channel_dim"):
        base.merge(rows)
    # the same reading merges, also with the same select spelled again
    again = nl.top_activations(model, second, "pair", channels=[0, 1], k=2, select=1)
    assert doubled.merge(again).samples == 8


def test_merge_ranks_in_the_wider_dtype_whichever_shard_comes_first() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    # float16 cannot tell 1.0001 and 1.0002 from 1.0: ranked in float16, the three would tie
    half = torch.tensor([[1.0, 0.0], [0.5, 0.0]], dtype=torch.float16)
    full = torch.tensor([[1.0001, 0.0], [1.0002, 0.0]])
    a = nl.top_activations(model, half, "0", channels=0, k=2)
    b = nl.top_activations(model, full, "0", channels=0, k=2)
    assert a.activations.dtype == torch.float16 and b.activations.dtype == torch.float32
    merged = a.merge(b)
    assert merged.activations.dtype == torch.float32
    assert merged.patches.dtype == merged.projections.dtype == torch.float32
    assert merged.indices.tolist() == [3, 2]  # 1.0002, then 1.0001: ahead of a's 1.0 (index 0)
    swapped = b.merge(a)
    assert swapped.activations.dtype == torch.float32 and swapped.indices.tolist() == [1, 0]
    assert torch.equal(merged.activations, swapped.activations)


# -- the dtype inputs reach the model in -----------------------------------------------------------


def _tempered_twins() -> tuple[nn.Module, nn.Module]:
    """The tempered model and its twin with a float32 temperature (same weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TemperedClassifier().eval()
    twin = TemperedClassifier(torch.float32).eval()
    twin.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    return model, twin


def test_a_float64_temperature_does_not_decide_the_inputs_dtype() -> None:
    model, twin = _tempered_twins()
    data = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    assert model_dtype_device(model) == (torch.float32, torch.device("cpu"))
    with model_unchanged(model):
        top = nl.top_activations(model, data, "conv", channels=[0, 1], k=2)
        projection = nl.deconvnet(model, data, "conv", [0, 2])
        logits = nl.deconvnet(model, data, "fc", 1)
    expected = nl.top_activations(twin, data, "conv", channels=[0, 1], k=2)
    for name in ("activations", "indices", "boxes", "patches", "projections"):
        assert torch.equal(getattr(top, name), getattr(expected, name)), name
    assert torch.equal(projection.images, nl.deconvnet(twin, data, "conv", [0, 2]).images)
    assert logits.images.dtype == torch.float32
    torch.testing.assert_close(logits.images, nl.deconvnet(twin, data, "fc", 1).images)


def test_the_inputs_dtype_is_that_of_the_first_layer_that_holds_parameters() -> None:
    # a float64 temperature beside the layers, float64 normalisation buffers in front
    assert model_dtype_device(TemperedClassifier())[0] == torch.float32
    normalised = nn.Sequential(Standardise(), nn.Conv2d(1, 2, 3))
    assert model_dtype_device(normalised)[0] == torch.float32
    # mixed precision: a float16 model whose BatchNorm stays in float32 takes float16
    half = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2, 2)).half()
    half[1].float()
    assert model_dtype_device(half)[0] == torch.float16
    # a first layer kept in float32 (as mixed precision often keeps it) decides
    first_full = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 4).half(), nn.Linear(4, 4).half())
    assert model_dtype_device(first_full)[0] == torch.float32
    # parameters held beside parameter-free submodules still count
    block = nn.Module()
    block.weight = nn.Parameter(torch.ones(2, dtype=torch.float64))
    block.act = nn.ReLU()
    assert model_dtype_device(block)[0] == torch.float64
    # no parameters: the first floating buffer; no floating tensor at all: nothing
    assert model_dtype_device(Standardise())[0] == torch.float64
    assert model_dtype_device(nn.ReLU()) == (None, None)


def test_activation_stats_on_a_tempered_model() -> None:
    model, twin = _tempered_twins()
    data = [torch.randn(4, 1, 8, 8) for _ in range(2)]
    with model_unchanged(model), warnings.catch_warnings():
        warnings.simplefilter("error")
        found = nl.activation_stats(model, data, ["conv", "fc"])
    expected = nl.activation_stats(twin, data, ["conv", "fc"])
    assert torch.equal(found["conv"].mean, expected["conv"].mean)
    assert torch.equal(found["fc"].std, expected["fc"].std)
