"""The layer contract on the architectures users bring: torchvision and Hugging Face definitions.

Each layer below is listed with the axis that holds its channels, known from the architecture
(a ConvNeXt ``LayerNorm2d``: dim 1; a GPT-2 MLP activation: the last dim, however its modules
are registered). Every technique that applies reads the same channels, and its result is
checked against a reference written here without netlens' output rule: a plain forward hook
that keeps the layer's output, and a reduction by hand over the known channel axis.

Random weights, tiny configurations: nothing is downloaded. ``transformers`` is test-only (the
``dev`` extra); its tests are skipped where it is missing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

import pytest
import torch
from _torchvision import import_torchvision
from torch import nn

import netlens as nl
from netlens.testing import model_unchanged

torchvision = import_torchvision()  # before transformers, which imports it

# GELU, Hardswish and LayerNorm on the way are projected as plain gradients; the warning saying
# so is tested in test_deconvnet.py.
pytestmark = pytest.mark.filterwarnings("ignore:The path from the inputs:UserWarning")


# One intra-op thread for this file's tests (tests/conftest.py): Tiny convolutions gain nothing from
# intra-op threads, and lose much on a busy machine.
ONE_THREAD = True


class Architecture(NamedTuple):
    build: Callable[[], nn.Module]
    inputs: Callable[[], torch.Tensor]
    layers: Mapping[str, int]  # layer -> the channel axis of its output, as the architecture has it
    window: tuple[int, ...]  # occluder window over the inputs' last dims (4 positions or fewer)
    cnn: bool  # deconvnet applies
    scores: str | Callable[[Any], torch.Tensor] = "softmax"


def _images(size: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def _tokens() -> torch.Tensor:
    return torch.randint(1, 50, (2, 6), generator=torch.Generator().manual_seed(1))


def _logits(output: Any) -> torch.Tensor:
    return output.logits


def _seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def seeded() -> nn.Module:
        torch.manual_seed(0)
        return build().eval()

    return seeded


def _convnext() -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=10)


def _vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    )  # fmt: skip


def _transformers() -> Any:
    return pytest.importorskip("transformers")


def _bert() -> nn.Module:
    transformers = _transformers()
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def _gpt2() -> nn.Module:
    transformers = _transformers()
    config = transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16, num_labels=3,
        pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2ForSequenceClassification(config)


def _hf_vit() -> nn.Module:
    transformers = _transformers()
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        image_size=16, patch_size=4, num_labels=3,
    )  # fmt: skip
    return transformers.ViTForImageClassification(config)


ARCHITECTURES: dict[str, Architecture] = {
    "resnet18": Architecture(
        _seeded(lambda: torchvision.models.resnet18(num_classes=10)),
        _images(32),
        {"conv1": 1, "relu": 1, "layer2": 1, "layer3.1.bn2": 1, "fc": 1},
        (16, 16),
        cnn=True,
    ),
    "mobilenet_v3_small": Architecture(
        _seeded(lambda: torchvision.models.mobilenet_v3_small(num_classes=10)),
        _images(32),
        {"features.1.block.1": 1, "features.4.block.0.2": 1, "features.12": 1, "classifier.1": 1},
        (16, 16),
        cnn=True,
    ),
    "convnext": Architecture(
        _seeded(_convnext),
        _images(32),
        {
            "features.0.1": 1,  # LayerNorm2d: a LayerNorm of channels-first maps
            "features.1.0.block.4": 3,  # GELU between the channels-last Linear layers
            "features.1.0": 1,  # CNBlock: permuted back, plus the residual
            "features.2.0": 1,
            "classifier.0": 1,
        },
        (16, 16),
        cnn=True,
    ),
    "vit": Architecture(
        _seeded(_vit),
        _images(32),
        {
            "conv_proj": 1,
            "encoder.layers.encoder_layer_0.self_attention": 2,
            "encoder.layers.encoder_layer_0.mlp.1": 2,  # GELU on (N, T, 64)
            "encoder.layers.encoder_layer_0": 2,
            "encoder.ln": 2,
        },
        (16, 16),
        cnn=False,
    ),
    "hf_bert": Architecture(
        _seeded(_bert),
        _tokens,
        {
            "bert.embeddings": 2,
            "bert.encoder.layer.0.attention": 2,
            "bert.encoder.layer.0.intermediate.intermediate_act_fn": 2,
            "bert.encoder.layer.0.output": 2,
            "bert.pooler.activation": 1,
        },
        (3,),
        cnn=False,
        scores=_logits,
    ),
    "hf_gpt2": Architecture(
        _seeded(_gpt2),
        _tokens,
        {
            "transformer.h.0.attn": 2,
            "transformer.h.0.mlp.act": 2,  # registered after c_proj, consumes c_fc's output
            "transformer.h.0.mlp": 2,
            "transformer.ln_f": 2,
        },
        (3,),
        cnn=False,
        scores=_logits,
    ),
    "hf_vit": Architecture(
        _seeded(_hf_vit),
        _images(16),
        {
            "vit.embeddings": 2,
            "vit.layers.0.mlp.activation_fn": 2,  # registered before fc1, consumes its output
            "vit.layers.0": 2,
            "vit.layernorm": 2,
        },
        (8, 8),
        cnn=False,
        scores=_logits,
    ),
}

CASES = [(arch, layer) for arch, spec in ARCHITECTURES.items() for layer in spec.layers]
CNN_CASES = [(arch, layer) for arch, layer in CASES if ARCHITECTURES[arch].cnn]


@functools.cache
def _model(arch: str) -> nn.Module:
    return ARCHITECTURES[arch].build()


@functools.cache
def _inputs(arch: str) -> torch.Tensor:
    return ARCHITECTURES[arch].inputs()


@contextmanager
def _unchanged(arch: str) -> Iterator[nn.Module]:
    model = _model(arch)
    with torch.random.fork_rng(), model_unchanged(model):
        yield model


# -- the reference: a plain hook and a hand-written reduction ------------------------------------


def _first(output: Any) -> torch.Tensor:
    """What the architecture's layer returns first: its tensor, or a tuple's or mapping's first."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        return _first(next(iter(output.values())))
    assert isinstance(output, (tuple, list)), type(output)
    return _first(output[0])


def _outputs(model: nn.Module, layer: str, inputs: torch.Tensor) -> list[torch.Tensor]:
    """Every output of ``layer`` in one forward pass, with a hook of this test's own."""
    outputs: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda module, args, output: outputs.append(_first(output).detach().clone())
    )
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        handle.remove()
    assert outputs, f"{layer} did not run"
    return outputs


def _by_channel(output: torch.Tensor, axis: int) -> torch.Tensor:
    """``(C, everything else)`` in float64, the channel axis as the architecture has it."""
    return output.double().movedim(axis, 0).reshape(output.shape[axis], -1)


def _per_sample(output: torch.Tensor, axis: int) -> torch.Tensor:
    """``(N, C, everything else)``: the batch is dim 0 in every layer listed here."""
    moved = output.double().movedim(axis, 1)
    return moved.reshape(moved.shape[0], moved.shape[1], -1)


def _channels(arch: str, layer: str) -> int:
    axis = ARCHITECTURES[arch].layers[layer]
    return int(_outputs(_model(arch), layer, _inputs(arch))[-1].shape[axis])


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual.double().cpu(), expected, rtol=1e-5, atol=1e-5)


# -- every technique, against the reference -----------------------------------------------------


@pytest.mark.parametrize(("arch", "layer"), CASES)
def test_record_stores_what_a_plain_hook_sees(arch: str, layer: str) -> None:
    inputs = _inputs(arch)
    expected = _outputs(_model(arch), layer, inputs)
    with _unchanged(arch) as model, nl.record(model, layer) as recorder, torch.no_grad():
        model(inputs)
    calls = recorder.calls(layer)
    assert len(calls) == len(expected)
    for stored, wanted in zip(calls, expected, strict=True):
        torch.testing.assert_close(stored, wanted)


@pytest.mark.parametrize(("arch", "layer"), CASES)
def test_activation_stats_reduce_over_all_but_the_channel_axis(arch: str, layer: str) -> None:
    inputs = _inputs(arch)
    axis = ARCHITECTURES[arch].layers[layer]
    values = torch.cat([_by_channel(o, axis) for o in _outputs(_model(arch), layer, inputs)], 1)
    with _unchanged(arch) as model:
        stats = nl.activation_stats(model, inputs, layer)[layer]
    assert stats.num_channels == values.shape[0] == _channels(arch, layer)
    _close(stats.mean, values.mean(1))
    _close(stats.std, values.std(1, correction=0))
    _close(stats.min, values.min(1).values)
    _close(stats.max, values.max(1).values)


@pytest.mark.parametrize(("arch", "layer"), CASES)
def test_occlusion_sums_the_channel_of_a_plain_hook(arch: str, layer: str) -> None:
    spec = ARCHITECTURES[arch]
    inputs = _inputs(arch)
    channels = _channels(arch, layer)
    channel = channels - 1
    floating = inputs.is_floating_point()
    baseline = 0.0 if floating else 0
    kwargs: dict[str, Any] = {"window": spec.window, "baseline": baseline, "scores": spec.scores}
    with _unchanged(arch) as model:
        result = nl.occlusion(model, inputs, layer=layer, channel=channel, **kwargs)
    assert result.feature_activation is not None
    # The reference: every window position by hand, the layer's (last) output by a plain hook.
    sizes = inputs.shape[inputs.dim() - len(spec.window) :]
    grid = [size // width for size, width in zip(sizes, spec.window, strict=True)]
    expected = torch.zeros(inputs.shape[0], *grid, dtype=torch.float64)
    for position in torch.cartesian_prod(*[torch.arange(n) for n in grid]).reshape(-1, len(grid)):
        occluded = inputs.clone()
        where = [slice(None)] * (inputs.dim() - len(grid))
        where += [
            slice(int(p) * w, (int(p) + 1) * w) for p, w in zip(position, spec.window, strict=True)
        ]
        occluded[tuple(where)] = baseline
        output = _outputs(_model(arch), layer, occluded)[-1]
        summed = _per_sample(output, spec.layers[layer])[:, channel].sum(-1)
        expected[(slice(None), *position.tolist())] = summed
    _close(result.feature_activation, expected)
    with _unchanged(arch) as model, pytest.raises(nl.NetlensValueError):
        nl.occlusion(model, inputs, layer=layer, channel=channels, **kwargs)


@pytest.mark.parametrize(("arch", "layer"), CASES)
def test_top_activations_are_the_strongest_values_of_the_channel(arch: str, layer: str) -> None:
    inputs = _inputs(arch)
    axis = ARCHITECTURES[arch].layers[layer]
    channels = _channels(arch, layer)
    data = [inputs, inputs.flip(0)]
    try:
        with _unchanged(arch) as model:
            result = nl.top_activations(model, data, layer, channels=[channels - 1], k=3)
    except nl.NetlensTypeError as error:
        # token ids: the API lets top_activations refuse them (its projections need gradients)
        assert not inputs.is_floating_point(), error
        return
    # one entry per input: its strongest value in the channel's map
    outputs = [_outputs(_model(arch), layer, batch)[-1] for batch in data]
    strongest = [_per_sample(o, axis)[:, channels - 1].max(-1).values for o in outputs]
    expected = torch.cat(strongest).topk(3).values
    _close(result.activations[0], expected)
    with _unchanged(arch) as model, pytest.raises(nl.NetlensValueError):
        nl.top_activations(model, data, layer, channels=[channels], k=3)


@pytest.mark.parametrize(("arch", "layer"), CNN_CASES)
def test_deconvnet_seeds_the_strongest_activation_of_the_channel(arch: str, layer: str) -> None:
    inputs = _inputs(arch)
    axis = ARCHITECTURES[arch].layers[layer]
    channels = _channels(arch, layer)
    with _unchanged(arch) as model:
        projection = nl.deconvnet(model, inputs, layer, channels - 1)
    assert projection.images.shape == inputs.shape
    output = _outputs(_model(arch), layer, inputs)[-1]
    _close(projection.activations.flatten(), _per_sample(output, axis)[:, -1].max(-1).values)
    with _unchanged(arch) as model, pytest.raises(nl.NetlensValueError):
        nl.deconvnet(model, inputs, layer, channels)


# -- what the data's path decides -------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "layer", "units"),
    [
        ("hf_gpt2", "transformer.h.0.mlp.act", 128),  # 4 * n_embd, not the 6 tokens
        ("hf_vit", "vit.layers.0.mlp.activation_fn", 64),  # intermediate_size, not 17 tokens
        ("hf_bert", "bert.encoder.layer.0.intermediate.intermediate_act_fn", 64),
        ("convnext", "features.0.1", 8),  # LayerNorm2d after the stem: C, not W
        ("convnext", "classifier.0", 16),  # LayerNorm2d on (N, C, 1, 1): C, not 1
    ],
)
def test_the_units_of_an_activation_are_those_of_the_module_it_consumes(
    arch: str, layer: str, units: int
) -> None:
    inputs = _inputs(arch)
    with _unchanged(arch) as model:
        stats = nl.activation_stats(model, inputs, layer)[layer]
        per_layer = nl.activation_stats(model, inputs, layer, channel_dim={layer: -1})[layer]
    assert stats.num_channels == units
    if ARCHITECTURES[arch].layers[layer] == 2:  # the dict form states the same axis
        _close(per_layer.mean, stats.mean.double())
