"""The layer contract of the API, every technique over every member of the contract zoo.

Written against the public API only ("Layers, outputs and results: one contract" in
docs/API): the channels a layer has, the batch axis of a time-first recurrent layer, the part of
a layer's output that is read (tuples, mappings, PackedSequence, ``select=``), integer inputs,
inference mode, and what every result offers. Every call runs inside ``model_unchanged``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import netlens as nl
from netlens.testing import ContractModel, TokenClassifier, contract_zoo, model_unchanged

# Recurrent and sigmoid layers are projected with plain gradients; the warning saying so is
# tested in test_deconvnet.py.
pytestmark = pytest.mark.filterwarnings("ignore:The path from the inputs:UserWarning")


@dataclasses.dataclass(frozen=True)
class Case:
    """A member of the contract zoo with the layer arguments a user passes for it."""

    member: str
    channels: int
    channel_dim: int | None
    select: int | str | None

    @property
    def id(self) -> str:
        return self.member if self.select is None else f"{self.member}[{self.select}]"


def _cases() -> list[Case]:
    cases = [Case(m.name, m.channels, m.channel_dim, m.select) for m in contract_zoo().values()]
    # The second value of the dict block's mapping, picked with select=: (N, 3) gate units.
    cases.append(Case("dict_block", 3, None, "gate"))
    return cases


CASES = _cases()
TOKENS = "token_classifier"
FLOAT_CASES = [case for case in CASES if case.member != TOKENS]
TIME_FIRST, BATCH_FIRST = "gru_time_first", "gru_batch_first"

# Occluder windows over the last dims of each member's inputs: one row of a sequence, a quarter
# of an image, two tokens.
WINDOWS: dict[str, tuple[int, ...]] = {
    "gru_time_first": (1, 5),
    "gru_batch_first": (1, 5),
    "lstm_packed": (1, 4),
    "dict_block": (4, 4),
    "channels_last": (4, 4),
    "conv1d_gpt": (2, 5),
    "token_classifier": (2,),
}

# The tensor that `record` stores for each case (PackedSequence: padded, batch first).
RECORDED_SHAPES: dict[str, tuple[int, ...]] = {
    "gru_time_first": (4, 4, 6),
    "gru_batch_first": (4, 4, 6),
    "lstm_packed": (3, 5, 6),
    "dict_block": (2, 5, 8, 8),
    "dict_block[gate]": (2, 3),
    "channels_last": (2, 8, 8, 6),
    "conv1d_gpt": (2, 8, 12),
    "token_classifier": (2, 7, 10),
}


def _ids(cases: list[Case]) -> list[str]:
    return [case.id for case in cases]


def _member(case: Case) -> ContractModel:
    return contract_zoo()[case.member]


def _layer_kwargs(case: Case) -> dict[str, Any]:
    """``channel_dim=`` and ``select=`` as the member says; left out where the default rule is."""
    kwargs: dict[str, Any] = {}
    if case.channel_dim is not None:
        kwargs["channel_dim"] = case.channel_dim
    if case.select is not None:
        kwargs["select"] = case.select
    return kwargs


def _occlusion_kwargs(member: ContractModel) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"window": WINDOWS[member.name]}
    if not member.inputs.is_floating_point():
        kwargs["baseline"] = TokenClassifier.mask_id
    return kwargs


def _grid(member: ContractModel) -> tuple[int, ...]:
    window = WINDOWS[member.name]
    sizes = member.inputs.shape[member.inputs.dim() - len(window) :]
    return tuple(size // width for size, width in zip(sizes, window, strict=True))


@contextmanager
def _unchanged(member: ContractModel) -> Iterator[None]:
    """``model_unchanged`` plus: the inputs are not changed either."""
    inputs = member.inputs.clone()
    with model_unchanged(member.model):
        yield
    assert torch.equal(member.inputs, inputs), "the inputs were changed"


def _check_channels(channels: object, expected: list[int]) -> None:
    assert isinstance(channels, torch.Tensor), f"channels is {type(channels).__name__}"
    assert channels.dim() == 1, f"channels has shape {tuple(channels.shape)}"
    assert channels.tolist() == expected


# -- every technique sees the layer's channels ---------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_record_stores_the_contract_tensor(case: Case) -> None:
    member = _member(case)
    select: dict[str, Any] = {"select": case.select} if case.select is not None else {}
    with _unchanged(member), nl.record(member.model, member.layer, **select) as recorder:
        member.model(member.inputs)
    stored = recorder[member.layer]
    assert isinstance(stored, torch.Tensor)
    assert tuple(stored.shape) == RECORDED_SHAPES[case.id]


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_activation_stats_sees_the_channels(case: Case) -> None:
    member = _member(case)
    with _unchanged(member):
        stats = nl.activation_stats(
            member.model, [member.inputs], member.layer, **_layer_kwargs(case)
        )
    result = stats[member.layer]
    for field in ("mean", "std", "min", "max", "zero_fraction"):
        assert getattr(result, field).shape == (case.channels,), field


@pytest.mark.parametrize("case", FLOAT_CASES, ids=_ids(FLOAT_CASES))
def test_deconvnet_accepts_the_last_channel_and_refuses_one_more(case: Case) -> None:
    member = _member(case)
    kwargs = _layer_kwargs(case)
    with _unchanged(member):
        projection = nl.deconvnet(
            member.model, member.inputs, member.layer, case.channels - 1, **kwargs
        )
    assert projection.images.shape == member.inputs.shape
    _check_channels(projection.channels, [case.channels - 1])
    with _unchanged(member), pytest.raises(nl.NetlensValueError):
        nl.deconvnet(member.model, member.inputs, member.layer, case.channels, **kwargs)


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_occlusion_feature_activation_sees_the_channels(case: Case) -> None:
    member = _member(case)
    kwargs = {**_occlusion_kwargs(member), **_layer_kwargs(case), "layer": member.layer}
    with _unchanged(member):
        result = nl.occlusion(member.model, member.inputs, channel=case.channels - 1, **kwargs)
    assert result.feature_activation is not None
    assert result.feature_activation.shape == (member.inputs.shape[0], *_grid(member))
    _check_channels(result.channels, [case.channels - 1])
    with _unchanged(member), pytest.raises(nl.NetlensValueError):
        nl.occlusion(member.model, member.inputs, channel=case.channels, **kwargs)
    # By default the channel strongest on the unoccluded input, one of the layer's channels.
    with _unchanged(member):
        default = nl.occlusion(member.model, member.inputs, **kwargs)
    assert default.feature_activation is not None
    assert isinstance(default.channels, torch.Tensor) and default.channels.dim() == 1
    assert int(default.channels.min()) >= 0 and int(default.channels.max()) < case.channels


@pytest.mark.parametrize("case", FLOAT_CASES, ids=_ids(FLOAT_CASES))
def test_maximize_activation_sees_the_channels(case: Case) -> None:
    member = _member(case)
    input_shape = tuple(member.inputs.shape[1:])
    kwargs = {**_layer_kwargs(case), "input_shape": input_shape, "steps": 2, "seed": 0}
    with _unchanged(member):
        result = nl.maximize_activation(
            member.model, member.layer, channels=[0, case.channels - 1], **kwargs
        )
    _check_channels(result.channels, [0, case.channels - 1])
    assert result.images.shape == (2, *input_shape)
    assert result.activations.shape == (2,)
    assert torch.isfinite(result.images).all()
    with _unchanged(member), pytest.raises(nl.NetlensValueError):
        nl.maximize_activation(member.model, member.layer, channels=[case.channels], **kwargs)


@pytest.mark.parametrize("case", FLOAT_CASES, ids=_ids(FLOAT_CASES))
def test_top_activations_sees_the_channels(case: Case) -> None:
    member = _member(case)
    data = [member.inputs, member.inputs]
    with _unchanged(member):
        result = nl.top_activations(member.model, data, member.layer, k=2, **_layer_kwargs(case))
    _check_channels(result.channels, list(range(case.channels)))
    assert result.activations.shape == (case.channels, 2)
    assert int(result.indices.max()) < 2 * member.inputs.shape[0]


# -- a time-first recurrent layer gives what its batch-first twin gives ---------------------------


def _twins() -> tuple[ContractModel, ContractModel]:
    zoo = contract_zoo()
    return zoo[TIME_FIRST], zoo[BATCH_FIRST]


@pytest.mark.parametrize("channel", [5, [0, 5]], ids=["int", "list"])
@pytest.mark.parametrize("position", ["max", "all"])
def test_time_first_deconvnet_equals_batch_first(
    channel: int | list[int], position: Literal["max", "all"]
) -> None:
    results = []
    for member in _twins():
        with _unchanged(member):
            results.append(
                nl.deconvnet(
                    member.model,
                    member.inputs,
                    member.layer,
                    channel,
                    rule="gradient",
                    position=position,
                )
            )
    first, reference = results
    torch.testing.assert_close(first.images, reference.images)
    torch.testing.assert_close(first.activations, reference.activations)
    if position == "max":
        assert first.positions is not None and reference.positions is not None
        assert torch.equal(first.positions, reference.positions)
    # Every input is projected, not only the first one.
    for images in (first.images, reference.images):
        per_input = images.abs().flatten(1).sum(dim=1)
        assert (per_input > 0).all(), per_input


def test_time_first_activation_stats_equal_batch_first() -> None:
    results = []
    for member in _twins():
        with _unchanged(member):
            results.append(nl.activation_stats(member.model, [member.inputs], member.layer))
    first, reference = (result["rnn"] for result in results)
    for field in ("mean", "std", "min", "max", "zero_fraction", "count"):
        torch.testing.assert_close(getattr(first, field), getattr(reference, field))


@pytest.mark.parametrize("channel", [None, 5, [0, 5]], ids=["default", "int", "list"])
def test_time_first_occlusion_equals_batch_first(channel: int | list[int] | None) -> None:
    results = []
    for member in _twins():
        with _unchanged(member):
            results.append(
                nl.occlusion(
                    member.model,
                    member.inputs,
                    window=WINDOWS[member.name],
                    layer=member.layer,
                    channel=channel,
                )
            )
    first, reference = results
    torch.testing.assert_close(first.probability, reference.probability)
    torch.testing.assert_close(first.attribution, reference.attribution)
    assert first.feature_activation is not None and reference.feature_activation is not None
    torch.testing.assert_close(first.feature_activation, reference.feature_activation)
    assert torch.equal(first.channels, reference.channels)


def test_time_first_top_activations_equal_batch_first() -> None:
    results = []
    for member in _twins():
        with _unchanged(member):
            results.append(
                nl.top_activations(member.model, [member.inputs, member.inputs], "rnn", k=2)
            )
    first, reference = results
    torch.testing.assert_close(first.activations, reference.activations)
    assert torch.equal(first.indices, reference.indices)
    assert torch.equal(first.positions, reference.positions)
    torch.testing.assert_close(first.patches, reference.patches)
    torch.testing.assert_close(first.projections, reference.projections)
    assert (first.projections.abs().flatten(2).sum(dim=2) > 0).all()


# -- results ---------------------------------------------------------------------------------------

TECHNIQUES = ["deconvnet", "occlusion", "maximize_activation", "top_activations"]
# The data fields of each technique's result that carry a channel dimension.
DATA_FIELDS: dict[str, tuple[str, ...]] = {
    "deconvnet": ("images", "activations", "positions"),
    "occlusion": ("feature_activation",),
    "maximize_activation": ("images", "activations"),
    "top_activations": ("activations", "indices", "positions", "boxes", "patches", "projections"),
}
# Techniques whose per-channel data does not depend on the other channels asked for (activation
# maximisation starts each channel from noise drawn for the whole batch).
SEPARABLE = {"deconvnet", "occlusion", "top_activations"}


def _run(technique: str, case: Case, channel: int | list[int]) -> Any:
    """Run one technique on one case for ``channel``, checking the model is left unchanged."""
    member = _member(case)
    kwargs = _layer_kwargs(case)
    model, inputs, layer = member.model, member.inputs, member.layer
    calls: dict[str, Callable[[], Any]] = {
        "deconvnet": lambda: nl.deconvnet(model, inputs, layer, channel, **kwargs),
        "occlusion": lambda: nl.occlusion(
            model, inputs, layer=layer, channel=channel, **_occlusion_kwargs(member), **kwargs
        ),
        "maximize_activation": lambda: nl.maximize_activation(
            model,
            layer,
            channels=channel,
            input_shape=tuple(inputs.shape[1:]),
            steps=2,
            seed=0,
            **kwargs,
        ),
        "top_activations": lambda: nl.top_activations(
            model, [inputs, inputs], layer, channels=channel, k=2, **kwargs
        ),
        "activation_stats": lambda: nl.activation_stats(model, [inputs], layer, **kwargs)[layer],
    }
    with _unchanged(member):
        return calls[technique]()


def _techniques_for(cases: list[Case]) -> list[Any]:
    return [
        pytest.param(technique, case, id=f"{technique}-{case.id}")
        for technique in TECHNIQUES
        for case in cases
        if case.member != TOKENS or technique == "occlusion"
    ]


@pytest.mark.parametrize(("technique", "case"), _techniques_for(CASES))
def test_channels_is_a_1d_tensor_for_an_int_and_for_a_list(technique: str, case: Case) -> None:
    last = case.channels - 1
    _check_channels(_run(technique, case, last).channels, [last])
    _check_channels(_run(technique, case, [0, last]).channels, [0, last])


def _without(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return shape[:axis] + shape[axis + 1 :]


@pytest.mark.parametrize(("technique", "case"), _techniques_for(CASES))
def test_an_int_channel_drops_the_channel_dim_and_a_list_keeps_it(
    technique: str, case: Case
) -> None:
    last = case.channels - 1
    single, pair = _run(technique, case, last), _run(technique, case, [0, last])
    for field in DATA_FIELDS[technique]:
        one, two = getattr(single, field), getattr(pair, field)
        if one is None and two is None:
            continue
        assert isinstance(one, torch.Tensor) and isinstance(two, torch.Tensor), field
        assert two.dim() == one.dim() + 1, (field, tuple(one.shape), tuple(two.shape))
        # The list's channel axis: the one whose removal leaves the int channel's shape.
        axes = [
            axis
            for axis in range(two.dim())
            if two.shape[axis] == 2 and _without(tuple(two.shape), axis) == tuple(one.shape)
        ]
        assert axes, (field, tuple(one.shape), tuple(two.shape))
        if technique in SEPARABLE:
            assert any(
                torch.allclose(two.select(axis, 1).to(one.dtype), one, atol=1e-6) for axis in axes
            ), field


def _result_params() -> list[Any]:
    # Drawing and saving is slow: one member with images and one with sequences per technique,
    # and the token classifier for occlusion.
    params = [
        pytest.param(technique, member, id=f"{technique}-{member}")
        for technique in [*TECHNIQUES, "activation_stats"]
        for member in ("channels_last", TIME_FIRST)
    ]
    params.append(pytest.param("occlusion", TOKENS, id=f"occlusion-{TOKENS}"))
    params.append(pytest.param("activation_stats", TOKENS, id=f"activation_stats-{TOKENS}"))
    return params


def _case(member: str) -> Case:
    return next(case for case in CASES if case.member == member and case.select is None)


@pytest.mark.parametrize(("technique", "member"), _result_params())
def test_results_are_frozen_dataclasses_without_eq(technique: str, member: str) -> None:
    case = _case(member)
    result = _run(technique, case, case.channels - 1)
    assert dataclasses.is_dataclass(result) and not isinstance(result, type)
    params = result.__dataclass_params__  # type: ignore[attr-defined]
    assert params.frozen, type(result).__name__
    assert not params.eq, type(result).__name__
    field = dataclasses.fields(result)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(result, field, None)


@pytest.mark.parametrize(("technique", "member"), _result_params())
def test_results_plot_save_and_show_themselves(technique: str, member: str, tmp_path: Path) -> None:
    case = _case(member)
    result = _run(technique, case, case.channels - 1)
    figures = plt.get_fignums()

    fig, ax = result.plot(ax=None)
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    assert ax.figure is fig

    given = Figure().subplots()
    fig2, ax2 = result.plot(ax=given)
    assert ax2 is given and fig2 is given.figure

    for suffix, magic in ((".png", b"\x89PNG\r\n\x1a\n"), (".svg", b"<svg"), (".pdf", b"%PDF")):
        path = tmp_path / f"result{suffix}"
        result.save(path)
        content = path.read_bytes()
        assert content.startswith(magic) if suffix != ".svg" else magic in content, suffix

    png = result._repr_png_()
    assert isinstance(png, bytes) and png.startswith(b"\x89PNG\r\n\x1a\n")
    assert plt.get_fignums() == figures, "pyplot state was touched"


# -- integer inputs (token ids) --------------------------------------------------------------------


def _tokens() -> ContractModel:
    return contract_zoo()[TOKENS]


def test_occlusion_of_token_ids_with_an_integer_baseline_matches_a_loop() -> None:
    member = _tokens()
    ids, model, mask = member.inputs, member.model, TokenClassifier.mask_id
    with _unchanged(member):
        result = nl.occlusion(model, ids, window=(2,), baseline=mask)
    with torch.no_grad():
        probabilities = torch.softmax(model(ids), dim=1)
        target = probabilities.argmax(dim=1)
        expected = []
        for start in range(0, ids.shape[1] - 2 + 1, 2):  # window 2, stride 2
            occluded = ids.clone()
            occluded[:, start : start + 2] = mask
            scores = torch.softmax(model(occluded), dim=1)
            expected.append(scores.gather(1, target[:, None])[:, 0])
    assert result.probability.shape == (2, 3)
    torch.testing.assert_close(result.probability, torch.stack(expected, dim=1))
    assert torch.equal(result.target, target)
    assert result.attribution.shape == ids.shape


def test_occlusion_refuses_a_fractional_baseline_on_token_ids() -> None:
    member = _tokens()
    with _unchanged(member), pytest.raises((nl.NetlensTypeError, nl.NetlensValueError)):
        nl.occlusion(member.model, member.inputs, window=(2,), baseline=0.5)


def test_deconvnet_refuses_token_ids() -> None:
    member = _tokens()
    with _unchanged(member), pytest.raises(nl.NetlensTypeError):
        nl.deconvnet(member.model, member.inputs, member.layer, 0)


def test_maximize_activation_refuses_a_model_on_token_ids() -> None:
    member = _tokens()
    with _unchanged(member), pytest.raises(nl.NetlensTypeError):
        nl.maximize_activation(
            member.model, member.layer, channels=[0], input_shape=(7,), steps=2, seed=0
        )


def test_top_activations_on_token_ids_sees_the_channels_or_refuses_the_projections() -> None:
    # The API does not say whether top_activations, whose projections need gradients, refuses
    # integer inputs outright; either way it must not see other channels.
    member = _tokens()
    try:
        with _unchanged(member):
            result = nl.top_activations(
                member.model, [member.inputs, member.inputs], member.layer, k=2
            )
    except nl.NetlensTypeError:
        return
    _check_channels(result.channels, list(range(member.channels)))


# -- inference mode ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_record_stats_and_occlusion_work_in_inference_mode(case: Case) -> None:
    member = _member(case)
    kwargs = _layer_kwargs(case)
    select: dict[str, Any] = {"select": case.select} if case.select is not None else {}
    with torch.inference_mode():
        with _unchanged(member), nl.record(member.model, member.layer, **select) as recorder:
            member.model(member.inputs)
        assert tuple(recorder[member.layer].shape) == RECORDED_SHAPES[case.id]
        with _unchanged(member):
            stats = nl.activation_stats(member.model, [member.inputs], member.layer, **kwargs)
        assert stats[member.layer].mean.shape == (case.channels,)
        with _unchanged(member):
            result = nl.occlusion(
                member.model,
                member.inputs,
                layer=member.layer,
                channel=case.channels - 1,
                **_occlusion_kwargs(member),
                **kwargs,
            )
        assert result.feature_activation is not None
        assert result.probability.shape == (member.inputs.shape[0], *_grid(member))


GRADIENT_TECHNIQUES = ["deconvnet", "maximize_activation", "top_activations"]


@pytest.mark.parametrize("case", FLOAT_CASES, ids=_ids(FLOAT_CASES))
@pytest.mark.parametrize("technique", GRADIENT_TECHNIQUES)
def test_gradient_techniques_name_inference_mode(technique: str, case: Case) -> None:
    with torch.inference_mode(), pytest.raises(nl.NetlensError) as info:
        _run(technique, case, case.channels - 1)
    assert "inference mode" in str(info.value).lower()


# -- wrong types and wrong values, also in netlens.datasets ----------------------------------------


@pytest.mark.parametrize("size", ["a", "28", 2.5, True, None.__class__])
def test_cifar10_size_of_the_wrong_type_is_a_type_error(tmp_path: Path, size: object) -> None:
    from netlens.datasets import CIFAR10

    with pytest.raises(nl.NetlensTypeError, match="size"):
        CIFAR10(tmp_path, size=size)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, -3])
def test_cifar10_size_below_one_is_a_value_error(tmp_path: Path, size: int) -> None:
    from netlens.datasets import CIFAR10

    with pytest.raises(nl.NetlensValueError, match="size"):
        CIFAR10(tmp_path, size=size)
