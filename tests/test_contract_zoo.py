from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from netlens.testing import (
    ContractModel,
    Conv1D,
    DictBlock,
    PackedLSTMClassifier,
    contract_zoo,
    model_unchanged,
)

NAMES = list(contract_zoo())

# name: (input shape, shape of the layer's output (the tensor the default rule reads, or the
# padded one of a PackedSequence), the channel axis in it)
SHAPES: dict[str, tuple[tuple[int, ...], tuple[int, ...], int]] = {
    "gru_time_first": ((4, 4, 5), (4, 4, 6), -1),
    "gru_batch_first": ((4, 4, 5), (4, 4, 6), -1),
    "lstm_packed": ((3, 5, 4), (3, 5, 6), -1),
    "dict_block": ((2, 1, 8, 8), (2, 5, 8, 8), 1),
    "channels_last": ((2, 3, 8, 8), (2, 8, 8, 6), -1),
    "conv1d_gpt": ((2, 8, 5), (2, 8, 12), -1),
    "token_classifier": ((2, 7), (2, 7, 10), -1),
}


def _layer_output(member: ContractModel) -> object:
    found: list[object] = []
    module = dict(member.model.named_modules())[member.layer]
    handle = module.register_forward_hook(lambda _m, _a, output: found.append(output))
    try:
        with torch.no_grad():
            member.model(member.inputs)
    finally:
        handle.remove()
    assert len(found) == 1
    return found[0]


def _first_tensor(output: object) -> torch.Tensor:
    if isinstance(output, nn.utils.rnn.PackedSequence):
        return nn.utils.rnn.pad_packed_sequence(output, batch_first=True)[0]
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return _first_tensor(next(iter(output.values())))
    assert isinstance(output, (tuple, list))
    return _first_tensor(output[0])


def test_members_and_their_documented_fields() -> None:
    zoo = contract_zoo()
    assert list(zoo) == list(SHAPES)
    for name, member in zoo.items():
        assert member.name == name
        assert dataclasses.is_dataclass(member)
        with pytest.raises(dataclasses.FrozenInstanceError):
            member.layer = "x"  # type: ignore[misc]
        assert not member.model.training
        assert all(not module.training for module in member.model.modules())
        assert member.num_classes == 3
    assert zoo["channels_last"].channel_dim == -1
    assert all(m.channel_dim is None for n, m in zoo.items() if n != "channels_last")
    assert all(m.select is None for m in zoo.values())


@pytest.mark.parametrize("name", NAMES)
def test_member_runs_with_the_documented_shapes(name: str) -> None:
    member = contract_zoo()[name]
    input_shape, output_shape, channel_axis = SHAPES[name]
    assert tuple(member.inputs.shape) == input_shape
    with model_unchanged(member.model), torch.no_grad():
        logits = member.model(member.inputs)
    assert logits.shape == (input_shape[0], member.num_classes)
    assert torch.isfinite(logits).all()
    output = _first_tensor(_layer_output(member))
    assert tuple(output.shape) == output_shape
    assert output.shape[channel_axis] == member.channels


@pytest.mark.parametrize("name", NAMES)
def test_member_accepts_other_batch_sizes(name: str) -> None:
    member = contract_zoo()[name]
    inputs = torch.cat([member.inputs, member.inputs[:1]])
    with torch.no_grad():
        assert member.model(inputs).shape == (inputs.shape[0], 3)
        assert member.model(member.inputs[:1]).shape == (1, 3)


def test_the_tricky_layouts_are_there() -> None:
    zoo = contract_zoo()
    gru = zoo["gru_time_first"]
    assert gru.inputs.shape[0] == gru.inputs.shape[1]  # T == N: shapes cannot tell the batch
    rnn = dict(gru.model.named_modules())["rnn"]
    assert isinstance(rnn, nn.GRU) and not rnn.batch_first
    output = _layer_output(zoo["lstm_packed"])
    assert isinstance(output, tuple)
    assert isinstance(output[0], nn.utils.rnn.PackedSequence)
    output = _layer_output(zoo["dict_block"])
    assert isinstance(output, dict) and list(output) == ["hidden", "gate"]
    block = dict(zoo["dict_block"].model.named_modules())["block"]
    assert isinstance(block, DictBlock)
    gate_channels = block.gate_channels
    assert output["gate"].shape == (2, gate_channels) and gate_channels == 3
    stage = dict(zoo["channels_last"].model.named_modules())["stage"]
    assert type(stage).__module__ == "netlens.testing"
    assert not isinstance(stage, (nn.Conv2d, nn.Linear, nn.LayerNorm))
    proj = dict(zoo["conv1d_gpt"].model.named_modules())["proj"]
    assert type(proj).__name__ == "Conv1D"
    assert proj.weight.shape == (5, 12)  # (in_features, out_features), as GPT-2 stores it
    ids = zoo["token_classifier"].inputs
    assert ids.dtype == torch.long
    assert int(ids.min()) >= 1 and int(ids.max()) < 20
    assert zoo["token_classifier"].model.mask_id == 0


def test_packed_lstm_ignores_the_padding() -> None:
    member = contract_zoo()["lstm_packed"]
    assert isinstance(member.model, PackedLSTMClassifier)
    lengths = member.model.lengths.tolist()
    assert lengths == [4, 5, 3]  # not sorted: packing must restore the order
    noisy = member.inputs.clone()
    for row, length in enumerate(lengths):
        noisy[row, length:] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(member.model(noisy), member.model(member.inputs))


def test_conv1d_is_a_transposed_linear() -> None:
    member = contract_zoo()["conv1d_gpt"]
    proj = dict(member.model.named_modules())["proj"]
    assert isinstance(proj, Conv1D)
    x = member.inputs
    torch.testing.assert_close(proj(x), x @ proj.weight + proj.bias)


def test_time_first_and_batch_first_twins_agree() -> None:
    zoo = contract_zoo()
    first, reference = zoo["gru_time_first"], zoo["gru_batch_first"]
    assert torch.equal(first.inputs, reference.inputs)
    state, reference_state = first.model.state_dict(), reference.model.state_dict()
    assert state.keys() == reference_state.keys()
    assert all(torch.equal(state[key], reference_state[key]) for key in state)
    other = torch.randn(3, 7, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for inputs in (first.inputs, other):
            torch.testing.assert_close(first.model(inputs), reference.model(inputs))
        # The time-first layer's output is the batch-first one with the first two dims swapped.
        time_first = _first_tensor(_layer_output(first))
        batch_first = _first_tensor(_layer_output(reference))
        torch.testing.assert_close(time_first.transpose(0, 1), batch_first)
        assert not torch.allclose(time_first, batch_first)


def test_zoo_is_seeded_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    first, second = contract_zoo(), contract_zoo()
    assert torch.equal(torch.random.get_rng_state(), state)
    third = contract_zoo(seed=1)
    for name in first:
        assert torch.equal(first[name].inputs, second[name].inputs)
        for (key, a), (_, b) in zip(
            first[name].model.state_dict().items(),
            second[name].model.state_dict().items(),
            strict=True,
        ):
            assert torch.equal(a, b), key
        differs = any(
            not torch.equal(a, b)
            for a, b in zip(
                first[name].model.state_dict().values(),
                third[name].model.state_dict().values(),
                strict=True,
            )
            if a.is_floating_point()
        )
        assert differs, name
