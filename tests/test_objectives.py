from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _models import RGBClassifier, seeded
from torch import nn

import netlens as nl
from netlens import objectives as obj
from netlens.models import LeNet5
from netlens.testing import contract_zoo, model_unchanged, model_zoo

# One intra-op thread for this file's tests (tests/conftest.py): tiny models: intra-op threads only
# add contention on a shared machine.
ONE_THREAD = True


@pytest.fixture(scope="module")
def rgb() -> nn.Module:
    return seeded(RGBClassifier).double()


def _outputs(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every layer's output and the logits, by plain hooks (independent of netlens)."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
        for name, module in model.named_children()
    ]
    try:
        with torch.no_grad():
            seen["output"] = model(images)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _gram_similarities(maps: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the channel Gram matrices of every pair of inputs, by loops."""
    count = maps.shape[0]
    grams = []
    for i in range(count):
        features = maps[i].reshape(maps.shape[1], -1)
        grams.append(features @ features.T)
    similarity = torch.zeros(count, count, dtype=torch.float64)
    for i in range(count):
        for j in range(count):
            a, b = grams[i].flatten(), grams[j].flatten()
            similarity[i, j] = (a @ b) / (a.norm() * b.norm())
    return similarity


# -- composing ---------------------------------------------------------------------------------


def test_objectives_compose_with_plus_minus_and_numbers() -> None:
    a, b = obj.channel("conv2", 3), obj.neuron("conv1", 0, (2, 1))
    combined = 2 * a - b / 4 + 10 * obj.diversity("conv2")
    assert repr(combined) == (
        "2 * channel('conv2', 3) - 0.25 * neuron('conv1', 0, (2, 1)) + 10 * diversity('conv2')"
    )
    assert str(combined) == "2*conv2:3 - 0.25*conv1:0@2,1 + 10*diversity(conv2)"
    assert [weight for weight, _ in combined.terms] == [2.0, -0.25, 10.0]
    assert repr(-a) == "-channel('conv2', 3)"
    assert repr(+a) == repr(a)
    assert repr(sum([a, b])) == "channel('conv2', 3) + neuron('conv1', 0, (2, 1))"
    assert repr(a * np.float64(0.5)) == "0.5 * channel('conv2', 3)"
    assert str(obj.class_logit(2, log_probability=True)) == "log p(2)"
    assert str(obj.neuron("rnn", 1, 7)) == "rnn:1@7"
    assert str(obj.direction(nn.Linear, [1.0, 2.0])) == "Linear:direction"
    # the parts are not changed by combining them
    assert repr(a) == "channel('conv2', 3)"


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: obj.channel("conv2", 3) + 1, nl.NetlensTypeError, "Objective on both sides"),
        (lambda: 1 - obj.channel("conv2", 3), nl.NetlensTypeError, "Objective on both sides"),
        (lambda: obj.channel("conv2", 3) * "2", nl.NetlensTypeError, "number to scale"),
        (lambda: obj.channel("conv2", 3) * obj.channel("conv2", 1), nl.NetlensTypeError, "number"),
        (lambda: obj.channel("conv2", 3) * float("inf"), nl.NetlensValueError, "finite"),
        (lambda: obj.channel("conv2", 3) / 0, nl.NetlensValueError, "other than 0"),
        (lambda: obj.channel("conv2", -1), nl.NetlensValueError, "channel"),
        (lambda: obj.channel("conv2", 1.5), nl.NetlensTypeError, "channel"),
        (lambda: obj.channel(3, 1), nl.NetlensTypeError, "layer"),
        (lambda: obj.channel("conv2", 1, select=1.5), nl.NetlensTypeError, "select"),
        (lambda: obj.neuron("conv2", 1, "centre"), nl.NetlensTypeError, "position"),
        (lambda: obj.neuron("conv2", 1, (1, 2.5)), nl.NetlensTypeError, "position"),
        (lambda: obj.neuron("conv2", 1, (1, -2)), nl.NetlensValueError, "non-negative"),
        (lambda: obj.neuron("rnn", 1, -1), nl.NetlensValueError, "T - 1"),
        (lambda: obj.direction("conv2", torch.ones(2, 2)), nl.NetlensValueError, "1-D"),
        (lambda: obj.direction("conv2", []), nl.NetlensValueError, "1-D"),
        (lambda: obj.direction("conv2", "abc"), nl.NetlensTypeError, "vector"),
        (lambda: obj.direction("conv2", [1.0], cosine=1), nl.NetlensTypeError, "cosine"),
        (lambda: obj.class_logit(-2), nl.NetlensValueError, "index"),
        (lambda: obj.class_logit(1, log_probability="yes"), nl.NetlensTypeError, "log_prob"),
    ],
)
def test_bad_objectives_are_refused(make: Callable[[], Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        make()


# -- values against plain float64 references ---------------------------------------------------


def _run(model: nn.Module, objective: Any, **kwargs: Any) -> nl.Maximization:
    settings: dict[str, Any] = {"input_shape": (3, 8, 8), "steps": 3, "seed": 0}
    settings.update(kwargs)
    with model_unchanged(model):
        return nl.maximize_activation(model, objective=objective, **settings)


def test_each_kind_of_term_against_a_reference(rgb: nn.Module) -> None:
    vector = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0, -0.5], dtype=torch.float64)
    objectives = [
        obj.channel("conv2", 4),
        obj.channel("relu1", 1),
        obj.neuron("conv2", 2),  # the centre of the 4x4 map: (2, 2)
        obj.neuron("conv1", 3, (1, 6)),
        obj.direction("conv2", vector),
        obj.direction("conv2", vector, cosine=True),
        obj.class_logit(3),
        obj.class_logit(3, log_probability=True),
        obj.channel("fc", 1),
    ]
    result = _run(rgb, objectives)
    assert result.images.shape == (9, 3, 8, 8)
    assert result.activations.shape == (9,)
    assert torch.equal(result.channels, torch.arange(9))
    assert result.layer == "conv1, relu1, conv2, fc, output"
    seen = _outputs(rgb, result.images)
    rows = range(9)
    conv1, relu1, conv2, logits = seen["conv1"], seen["relu1"], seen["conv2"], seen["output"]
    expected = [
        conv2[0, 4].mean(),
        relu1[1, 1].mean(),
        conv2[2, 2, 2, 2],
        conv1[3, 3, 1, 6],
        sum(conv2[4, c] * vector[c] for c in range(6)).mean(),
        F.cosine_similarity(conv2[5], vector[:, None, None], dim=0).mean(),
        logits[6, 3],
        logits[7].log_softmax(0)[3],
        seen["fc"][8, 1],
    ]
    for row, value in zip(rows, expected, strict=True):
        torch.testing.assert_close(result.activations[row], value, rtol=1e-9, atol=1e-9)


def test_a_combination_is_the_weighted_sum_of_its_terms(rgb: nn.Module) -> None:
    combined = obj.channel("conv2", 1) - 0.5 * obj.neuron("conv1", 0) + 2 * obj.class_logit(4)
    result = _run(rgb, combined)
    assert result.images.shape == (3, 8, 8)  # one objective: no objective dimension
    assert result.activations.shape == () and result.history.shape == (3,)
    assert torch.equal(result.channels, torch.tensor([0]))
    seen = _outputs(rgb, result.images[None])
    expected = (
        seen["conv2"][0, 1].mean() - 0.5 * seen["conv1"][0, 0, 4, 4] + 2 * seen["output"][0, 4]
    )
    torch.testing.assert_close(result.activations, expected, rtol=1e-9, atol=1e-9)


def test_diversity_is_lucents_with_the_sign_of_a_value_to_maximise(rgb: nn.Module) -> None:
    result = _run(rgb, obj.diversity("conv2"), batch=4)
    assert result.images.shape == (4, 3, 8, 8)
    assert result.activations.shape == (4,)
    maps = _outputs(rgb, result.images)["conv2"]
    similarity = _gram_similarities(maps)
    own = -(similarity.sum(1) - similarity.diagonal()) / 4
    torch.testing.assert_close(result.activations, own, rtol=1e-9, atol=1e-9)
    # lucent's diversity: -(sum over pairs i != j of the similarities) / batch, a loss that its
    # users subtract; netlens' values sum to the same number, a value that is added
    lucent = -sum(similarity[i, j] for i in range(4) for j in range(4) if i != j) / 4
    torch.testing.assert_close(result.activations.sum(), lucent, rtol=1e-9, atol=1e-9)


def test_diversity_pushes_the_batch_apart(rgb: nn.Module) -> None:
    kwargs: dict[str, Any] = {"batch": 4, "steps": 40, "lr": 0.1, "transforms": None}
    plain = _run(rgb, obj.channel("conv2", 2), **kwargs)
    diverse = _run(rgb, obj.channel("conv2", 2) + 5 * obj.diversity("conv2"), **kwargs)

    def mean_similarity(images: torch.Tensor) -> float:
        similarity = _gram_similarities(_outputs(rgb, images)["conv2"])
        return float((similarity.sum() - similarity.diagonal().sum()) / 12)

    assert mean_similarity(diverse.images) < mean_similarity(plain.images) - 0.01


def test_diversity_compares_the_inputs_of_one_objective_only(rgb: nn.Module) -> None:
    pair = [obj.diversity("conv2"), obj.diversity("conv2") + obj.channel("conv2", 0)]
    result = _run(rgb, pair, batch=3)
    assert result.images.shape == (2, 3, 3, 8, 8)
    assert result.activations.shape == (2, 3)
    assert result.history.shape == (3, 2, 3)
    for k in range(2):
        maps = _outputs(rgb, result.images[k])["conv2"]
        similarity = _gram_similarities(maps)
        expected = -(similarity.sum(1) - similarity.diagonal()) / 3
        if k == 1:
            expected = expected + maps[:, 0].flatten(1).mean(1)
        torch.testing.assert_close(result.activations[k], expected, rtol=1e-9, atol=1e-9)


def test_an_objective_equals_the_layer_and_channel_form(rgb: nn.Module) -> None:
    # objective 0 draws from the generator of channel 0: the same run, full layer or sliced
    kwargs: dict[str, Any] = {"input_shape": (3, 8, 8), "steps": 6, "seed": 5}
    classic = nl.maximize_activation(rgb, "conv2", 0, **kwargs)
    expression = nl.maximize_activation(rgb, objective=obj.channel("conv2", 0), **kwargs)
    torch.testing.assert_close(expression.images, classic.images, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(expression.history, classic.history, rtol=1e-9, atol=1e-9)
    centre = nl.maximize_activation(rgb, "conv1", [0], objective="center", **kwargs)
    unit = nl.maximize_activation(rgb, objective=[obj.neuron("conv1", 0)], **kwargs)
    torch.testing.assert_close(unit.images, centre.images, rtol=1e-9, atol=1e-9)


# -- running the model as far as needed --------------------------------------------------------


def test_the_forward_pass_stops_at_the_deepest_layer_read(rgb: nn.Module) -> None:
    calls: list[str] = []
    handles = [
        rgb.get_submodule(name).register_forward_pre_hook(
            lambda m, a, name=name: calls.append(name)
        )
        for name in ("pool2", "fc")
    ]
    try:
        _run(rgb, obj.channel("relu2", 0) + obj.channel("conv1", 1), steps=4)
        assert calls == ["pool2", "fc"]  # the probe only
        calls.clear()
        _run(rgb, obj.channel("conv1", 1) + obj.class_logit(0), steps=4)
        assert calls == ["pool2", "fc"] * 6  # probe, 4 steps, final: to the output
    finally:
        for handle in handles:
            handle.remove()


def test_a_model_that_fails_after_the_layers_read() -> None:
    lenet = seeded(LeNet5)  # fc1 is sized for 28x28 inputs
    result = nl.maximize_activation(
        lenet, objective=obj.channel("conv2", 5), input_shape=(32, 32), steps=2, seed=0
    )
    assert result.images.shape == (1, 32, 32)  # the channel count from conv1
    with model_unchanged(lenet), pytest.raises(nl.NetlensValueError, match="RuntimeError"):
        nl.maximize_activation(
            lenet, objective=obj.class_logit(0), input_shape=(1, 32, 32), steps=2
        )


def test_a_module_called_twice_is_read_at_its_last_call() -> None:
    model = model_zoo()["shared"].model
    result = nl.maximize_activation(
        model,
        objective=obj.channel("block.0", 2),
        input_shape=(1, 8, 8),
        steps=3,
        seed=0,
        transforms=None,
    )
    with torch.no_grad():
        second = model.block[0](model.block(model.stem(result.images[None])))
    torch.testing.assert_close(result.activations, second[0, 2].mean(), rtol=1e-5, atol=1e-6)


def test_terms_take_select_and_channel_dim() -> None:
    member = contract_zoo()["dict_block"]
    model = member.model
    gate = obj.channel("block", 2, select="gate")
    hidden = obj.channel("block", 4)
    result = nl.maximize_activation(
        model, objective=gate + hidden, input_shape=(1, 8, 8), steps=3, seed=0
    )
    with torch.no_grad():
        output = model.block(result.images[None])
    expected = output["gate"][0, 2] + output["hidden"][0, 4].mean()
    torch.testing.assert_close(result.activations, expected, rtol=1e-5, atol=1e-6)
    assert result.layer == "block"
    last = contract_zoo()["channels_last"]
    rows = nl.maximize_activation(
        last.model,
        objective=obj.channel("stage", 7, channel_dim=1),
        input_shape=(3, 8, 8),
        steps=2,
        seed=0,
    )
    with torch.no_grad():
        staged = last.model.stage(
            last.model.permute(last.model.relu(last.model.stem(rows.images[None])))
        )
    torch.testing.assert_close(rows.activations, staged[0, 7].mean(), rtol=1e-5, atol=1e-6)


def test_recurrent_unit_at_the_last_step() -> None:
    zoo = model_zoo()["lstm"]
    result = nl.maximize_activation(
        zoo.model, objective=obj.neuron("rnn", 4, 7), input_shape=(8, 8), steps=5, seed=0
    )
    with torch.no_grad():
        output, _ = zoo.model.rnn(result.images[None])
    torch.testing.assert_close(result.activations, output[0, -1, 4], rtol=1e-5, atol=1e-6)


# -- refused ------------------------------------------------------------------------------------


BAD: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "layer too": ({"layer": "conv2"}, nl.NetlensValueError, "no layer"),
    "channels too": ({"channels": [0]}, nl.NetlensValueError, "no channels"),
    "select too": ({"select": 0}, nl.NetlensValueError, "no select"),
    "channel_dim too": ({"channel_dim": 1}, nl.NetlensValueError, "no channel_dim"),
    "channel too high": (
        {"objective": obj.channel("conv2", 6)},
        nl.NetlensValueError,
        r"a channel in \[0, 6\)",
    ),
    "class too high": ({"objective": obj.class_logit(5)}, nl.NetlensValueError, "a class"),
    "position outside": (
        {"objective": obj.neuron("conv2", 0, (4, 0))},
        nl.NetlensValueError,
        "position",
    ),
    "position too short": (
        {"objective": obj.neuron("conv2", 0, 1)},
        nl.NetlensValueError,
        "position of 2 indices",
    ),
    "vector length": (
        {"objective": obj.direction("conv2", [1.0, 2.0])},
        nl.NetlensValueError,
        "6 entries",
    ),
    "unknown layer": ({"objective": obj.channel("conv9", 0)}, nl.LayerNotFoundError, "conv9"),
    "several layers": ({"objective": obj.channel("conv*", 0)}, nl.NetlensValueError, "one layer"),
    "diversity alone": (
        {"objective": obj.diversity("conv2")},
        nl.NetlensValueError,
        "batch >= 2",
    ),
    "diversity batch 1": (
        {"objective": obj.diversity("conv2"), "batch": 1},
        nl.NetlensValueError,
        "batch >= 2",
    ),
    "empty list": ({"objective": []}, nl.NetlensTypeError, "non-empty list"),
    "mixed list": (
        {"objective": [obj.channel("conv2", 0), "mean"]},
        nl.NetlensTypeError,
        "objective",
    ),
    "no layer at all": ({"objective": "mean"}, nl.NetlensValueError, "Expected a layer"),
    "wrong input shape": (
        {"objective": obj.channel("conv2", 0), "input_shape": (1, 8, 8)},
        nl.NetlensValueError,
        "input_shape",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_calls_raise_a_clear_error_and_leave_the_model(rgb: nn.Module, case: str) -> None:
    settings: dict[str, Any] = {
        "objective": obj.channel("conv2", 0),
        "input_shape": (3, 8, 8),
        "steps": 2,
    }
    changes, error, message = BAD[case]
    settings.update(changes)
    with model_unchanged(rgb), pytest.raises(error, match=message):
        nl.maximize_activation(rgb, **settings)


def test_class_logit_needs_a_batch_of_scores() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(0))  # returns one flat vector
    with model_unchanged(model), pytest.raises(nl.NetlensValueError, match="class scores"):
        nl.maximize_activation(model, objective=obj.class_logit(0), input_shape=(1, 5, 5), steps=1)


def test_plot_titles_are_the_objectives(rgb: nn.Module) -> None:
    result = _run(rgb, [obj.channel("conv2", 1), obj.class_logit(2)], batch=2)
    figure, ax = result.plot()
    assert figure.axes == [ax]
    assert [text.get_text() for text in ax.texts] == ["conv2:1", "", "logit 2", ""]
    figure, ax = result.plot_curves()
    assert len(ax.lines) == 4
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["conv2:1", "logit 2"]
    assert "objectives=['conv2:1', 'logit 2']" in repr(result)
