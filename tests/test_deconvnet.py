from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _models import (
    DictNet,
    EveryRelu,
    Squashed,
    ToChannelsLast,
    TokenBlock,
    WithExtras,
    seeded_lenet,
)
from torch import nn

import netlens as nl
from netlens.models import LeNet5
from netlens.testing import (
    FunctionalReluNet,
    GRUClassifier,
    PackedLSTMClassifier,
    TinyConvNet,
    ZooModel,
    model_unchanged,
)

RULES = ["deconvnet", "guided", "gradient"]


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-9)


@contextmanager
def _captum_quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


SIZE = 16  # LeNet5 on 16x16 inputs: conv2 maps 8x8, the same layers, a smaller fc1


# -- the slow, obvious reference -----------------------------------------------------------------


def _rule(signal: torch.Tensor, forward: torch.Tensor, rule: str) -> torch.Tensor:
    """The backward of a ReLU whose forward input was ``forward``, written out per rule."""
    if rule == "deconvnet":
        return F.relu(signal)
    if rule == "guided":
        return F.relu(signal) * (forward > 0)
    return signal * (forward > 0)


def _hand_chain(
    model: LeNet5, x: torch.Tensor, layer: str, seed_of: object, rule: str
) -> torch.Tensor:
    """Zeiler & Fergus' deconvnet for LeNet5 up to conv2/relu2/pool2, spelled out.

    ``seed_of`` maps the layer's output to the seed (all other activations zero).
    """
    a1 = model.conv1(x)
    r1 = F.relu(a1)
    p1, switches1 = F.max_pool2d(r1, 2, return_indices=True)
    a2 = model.conv2(p1)
    r2 = F.relu(a2)
    p2, switches2 = F.max_pool2d(r2, 2, return_indices=True)
    outputs = {"conv2": a2, "relu2": r2, "pool2": p2}
    signal = seed_of(outputs[layer])  # type: ignore[operator]
    if layer == "pool2":
        signal = F.max_unpool2d(signal, switches2, 2, output_size=r2.shape[-2:])
    if layer in ("pool2", "relu2"):
        signal = _rule(signal, a2, rule)
    signal = F.conv_transpose2d(signal, model.conv2.weight, padding=2)
    signal = F.max_unpool2d(signal, switches1, 2, output_size=r1.shape[-2:])
    signal = _rule(signal, a1, rule)
    return F.conv_transpose2d(signal, model.conv1.weight, padding=2)


def _one_hot(channel: int, where: tuple[int, int] | None, unit: bool = False) -> object:
    """Seed builder: the activation (or 1) at one place per input, ``None`` = each input's max."""

    def seed(output: torch.Tensor) -> torch.Tensor:
        result = torch.zeros_like(output)
        for n in range(output.shape[0]):
            if where is None:
                flat = int(output[n, channel].argmax())
                i, j = divmod(flat, output.shape[-1])
            else:
                i, j = where
            result[n, channel, i, j] = 1.0 if unit else output[n, channel, i, j]
        return result

    return seed


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("layer", ["conv2", "relu2", "pool2"])
def test_lenet_matches_hand_written_deconvnet_at_an_index(rule: str, layer: str) -> None:
    model = seeded_lenet()
    x = torch.randn(3, 1, SIZE, SIZE, dtype=torch.float64)
    where = (3, 4) if layer != "pool2" else (2, 3)
    projection = nl.deconvnet(model, x, layer, 6, position=where, rule=rule)
    expected = _hand_chain(model, x, layer, _one_hot(6, where), rule)
    assert projection.images.dtype == torch.float64
    assert expected.abs().max() > 0
    _close(projection.images, expected)
    assert projection.positions is not None
    assert projection.positions.tolist() == [list(where)] * 3


@pytest.mark.parametrize("rule", RULES)
def test_lenet_matches_hand_written_deconvnet_at_the_max_and_for_whole_maps(rule: str) -> None:
    model = seeded_lenet(1)
    x = torch.randn(4, 1, SIZE, SIZE, dtype=torch.float64)
    top = nl.deconvnet(model, x, "relu2", 11, rule=rule)
    _close(top.images, _hand_chain(model, x, "relu2", _one_hot(11, None), rule))
    a2 = model.conv2(F.max_pool2d(F.relu(model.conv1(x)), 2))
    assert top.positions is not None
    for n in range(4):
        i, j = top.positions[n].tolist()
        assert a2[n, 11, i, j] == a2[n, 11].max() == top.activations[n]

    def whole(output: torch.Tensor) -> torch.Tensor:
        seed = torch.zeros_like(output)
        seed[:, 11] = output[:, 11]
        return seed

    every = nl.deconvnet(model, x, "conv2", 11, position="all", rule=rule)
    _close(every.images, _hand_chain(model, x, "conv2", whole, rule))
    assert every.positions is None and every.activations.shape == (4, 8, 8)


def test_scale_unit_seeds_with_ones() -> None:
    model = seeded_lenet()
    x = torch.randn(2, 1, SIZE, SIZE, dtype=torch.float64)
    unit = nl.deconvnet(model, x, "conv2", 2, position=(7, 7), scale="unit")
    _close(unit.images, _hand_chain(model, x, "conv2", _one_hot(2, (7, 7), unit=True), "deconvnet"))
    activation = nl.deconvnet(model, x, "conv2", 2, position=(7, 7))
    # Rectification commutes with positive scaling only: compare where the activation is > 0.
    positive = activation.activations > 0
    _close(
        activation.images[positive],
        unit.images[positive] * activation.activations[positive].reshape(-1, 1, 1, 1),
    )


def test_a_list_of_channels_is_one_pass_and_equals_one_call_per_channel() -> None:
    model = seeded_lenet(2)
    x = torch.randn(3, 1, SIZE, SIZE, dtype=torch.float64)
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        together = nl.deconvnet(model, x, "conv2", [5, 0, 9], rule="guided")
    finally:
        handle.remove()
    assert calls == [3]  # one forward pass for all channels
    assert together.images.shape == (3, 3, 1, SIZE, SIZE)
    assert together.activations.shape == (3, 3) and together.channels.tolist() == [5, 0, 9]
    assert together.positions is not None and together.positions.shape == (3, 3, 2)
    for column, channel in enumerate([5, 0, 9]):
        alone = nl.deconvnet(model, x, "conv2", channel, rule="guided")
        _close(together.images[:, column], alone.images)
        _close(together.activations[:, column], alone.activations)
        assert torch.equal(together.positions[:, column], alone.positions)  # type: ignore[arg-type]
    # An int channel: a 1-D channels tensor, no channel dim in the data.
    assert alone.channels.tolist() == [9] and alone.images.shape == x.shape
    assert alone.activations.shape == (3,) and alone.positions is not None
    assert alone.positions.shape == (3, 2)


class _NoBatchedBackward(torch.autograd.Function):
    """Identity whose backward reads a Python number, which autograd's batched backward cannot."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad * (1.0 + 0.0 * float(grad.abs().sum()))


def test_a_list_of_channels_falls_back_to_one_backward_per_channel() -> None:
    model = seeded_lenet(12)
    x = torch.randn(2, 1, SIZE, SIZE, dtype=torch.float64)
    expected = nl.deconvnet(model, x, "conv2", [4, 8]).images
    forward = model.forward

    def odd_forward(inputs: torch.Tensor) -> torch.Tensor:
        return forward(_NoBatchedBackward.apply(inputs))

    model.forward = odd_forward  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        leaf = x.clone().requires_grad_(True)
        out = model(leaf)
        torch.autograd.grad(out, leaf, torch.ones(2, *out.shape), is_grads_batched=True)
    _close(nl.deconvnet(model, x, "conv2", [4, 8]).images, expected)


def test_linear_layer_position_is_the_empty_index() -> None:
    model = seeded_lenet()
    x = torch.randn(2, 1, SIZE, SIZE, dtype=torch.float64)
    projection = nl.deconvnet(model, x, "fc1", 17, position=())
    assert projection.positions is not None and projection.positions.shape == (2, 0)
    top = nl.deconvnet(model, x, "fc1", 17)
    _close(top.images, projection.images)


# -- every form of ReLU ------------------------------------------------------------------------


def _same_weights(target: nn.Module, source: nn.Module) -> nn.Module:
    target.load_state_dict(source.state_dict())
    return target.double().eval()


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("layer", ["conv1", "conv2", "fc"])
def test_functional_relu_model_equals_the_module_model(rule: str, layer: str) -> None:
    torch.manual_seed(3)
    modules = TinyConvNet().double().eval()
    functional = _same_weights(FunctionalReluNet(), modules)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    expected = nl.deconvnet(modules, x, layer, [1, 2], rule=rule)
    actual = nl.deconvnet(functional, x, layer, [1, 2], rule=rule)
    assert expected.images.abs().max() > 0
    _close(actual.images, expected.images)


def test_functional_relu_gets_the_deconvnet_rule_not_the_gradient() -> None:
    torch.manual_seed(4)
    model = FunctionalReluNet().double().eval()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    deconv = nl.deconvnet(model, x, "fc", 0, scale="unit").images
    gradient = nl.deconvnet(model, x, "fc", 0, scale="unit", rule="gradient").images
    leaf = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(model(leaf)[:, 0].sum(), leaf)
    _close(gradient, plain)
    assert (deconv - plain).abs().max() > 1e-3


@pytest.mark.parametrize("rule", RULES)
def test_every_relu_spelling_in_place_or_not_gives_the_same_projection(rule: str) -> None:
    torch.manual_seed(5)
    plain = EveryRelu(inplace=False).double().eval()
    inplace = _same_weights(EveryRelu(inplace=True), plain)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    for layer in ("convs.5", "convs.3", "convs.0"):
        expected = nl.deconvnet(plain, x, layer, 1, rule=rule)
        actual = nl.deconvnet(inplace, x, layer, 1, rule=rule)
        _close(actual.images, expected.images)
        _close(actual.activations, expected.activations)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("layer", ["conv1", "relu1", "fc"])
def test_inplace_model_equals_the_non_inplace_one(rule: str, layer: str) -> None:
    torch.manual_seed(6)
    plain = TinyConvNet(inplace=False).double().eval()
    inplace = _same_weights(TinyConvNet(inplace=True), plain)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    expected = nl.deconvnet(plain, x, layer, [0, 2], rule=rule)
    actual = nl.deconvnet(inplace, x, layer, [0, 2], rule=rule)
    _close(actual.images, expected.images)
    _close(actual.activations, expected.activations)


_SPELLINGS = {
    "nn.ReLU": lambda x: nn.ReLU()(x),
    "nn.ReLU(inplace=True)": lambda x: nn.ReLU(inplace=True)(x),
    "F.relu": F.relu,
    "F.relu(inplace=True)": lambda x: F.relu(x, inplace=True),
    "F.relu_": F.relu_,
    "torch.relu": torch.relu,
    "torch.relu_": torch.relu_,
    "Tensor.relu": lambda x: x.relu(),
    "Tensor.relu_": lambda x: x.relu_(),
}


class _OneRelu(nn.Module):
    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(_SPELLINGS[self.spelling](self.conv1(x)))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("spelling", list(_SPELLINGS))
def test_each_relu_spelling_gets_the_rule(spelling: str, rule: str) -> None:
    torch.manual_seed(7)
    model = _OneRelu(spelling).double().eval()
    x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    projection = nl.deconvnet(model, x, "conv2", 1, position=(2, 3), scale="unit", rule=rule)
    seed = torch.zeros(3, 2, 6, 6, dtype=torch.float64)
    seed[:, 1, 2, 3] = 1
    signal = F.conv_transpose2d(seed, model.conv2.weight, padding=1)
    signal = _rule(signal, model.conv1(x), rule)
    expected = F.conv_transpose2d(signal, model.conv1.weight, padding=1)
    _close(projection.images, expected)


# -- against Captum ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "captum_class"),
    [
        ("deconvnet", "NeuronDeconvolution"),
        ("guided", "NeuronGuidedBackprop"),
        ("gradient", "NeuronGradient"),
    ],
)
@pytest.mark.parametrize("layer", ["conv2", "relu2", "pool2", "fc1"])
def test_equals_captum_with_unit_scale(rule: str, captum_class: str, layer: str) -> None:
    captum_attr = pytest.importorskip("captum.attr")
    model = seeded_lenet(8)
    x = torch.randn(3, 1, SIZE, SIZE, dtype=torch.float64)
    index: tuple[int, ...] = () if layer == "fc1" else (2, 3)
    channel = 4
    ours = nl.deconvnet(model, x, layer, channel, position=index, scale="unit", rule=rule)
    with _captum_quiet():
        method = getattr(captum_attr, captum_class)(model, getattr(model, layer))
        theirs = method.attribute(x, neuron_selector=(channel, *index))
    assert theirs.abs().max() > 0
    _close(ours.images, theirs)


def test_equals_captum_on_the_tiny_conv_net_too() -> None:
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(9)
    model = TinyConvNet().double().eval()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    ours = nl.deconvnet(model, x, "conv2", 3, position=(1, 2), scale="unit")
    with _captum_quiet():
        theirs = captum_attr.NeuronDeconvolution(model, model.conv2).attribute(
            x, neuron_selector=(3, 1, 2)
        )
    _close(ours.images, theirs)


# -- the model and the inputs are left alone -------------------------------------------------------


def test_model_unchanged_over_the_zoo(zoo_model: ZooModel) -> None:
    model, inputs, layer = zoo_model.model, zoo_model.inputs, zoo_model.feature_layer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the recurrent models warn about their nonlinearity
        with model_unchanged(model):
            projection = nl.deconvnet(model, inputs, layer, [0, 1])
        with model_unchanged(model):
            nl.deconvnet(model, inputs, layer, 0, position="all", rule="guided")
    assert projection.images.shape == (inputs.shape[0], 2, *inputs.shape[1:])
    assert torch.isfinite(projection.images).all()


def test_model_unchanged_over_the_zoo_when_raising(zoo_model: ZooModel) -> None:
    model, inputs, layer = zoo_model.model, zoo_model.inputs, zoo_model.feature_layer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with model_unchanged(model), pytest.raises(nl.NetlensValueError, match="channel"):
            nl.deconvnet(model, inputs, layer, 10_000)
        with model_unchanged(model), pytest.raises(nl.NetlensValueError, match="position"):
            nl.deconvnet(model, inputs, layer, 0, position=(99, 99, 99))


def test_model_unchanged_when_the_model_itself_raises() -> None:
    class Broken(TinyConvNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.conv1(x)
            raise RuntimeError("broken forward")

    model = Broken(inplace=True)
    model.train()
    with model_unchanged(model), pytest.raises(RuntimeError, match="broken"):
        nl.deconvnet(model, torch.randn(2, 1, 8, 8), "conv1", 0)
    assert model.training


def test_inputs_and_gradients_are_left_alone() -> None:
    model = TinyConvNet()
    model.train()
    for param in model.parameters():
        param.grad = torch.full_like(param, 0.5)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    before = x.detach().clone()
    with model_unchanged(model):
        nl.deconvnet(model, x, "conv2", 1)
    assert x.requires_grad and x.grad is None and torch.equal(x.detach(), before)
    y = torch.randn(2, 1, 8, 8)
    nl.deconvnet(model, y, "conv2", 1)
    assert not y.requires_grad and y.grad is None


def test_runs_inside_no_grad_and_inside_a_record_block() -> None:
    model = TinyConvNet(inplace=True).eval()
    x = torch.randn(2, 1, 8, 8)
    expected = nl.deconvnet(model, x, "conv2", 1).images
    with torch.no_grad():
        _close(nl.deconvnet(model, x, "conv2", 1).images, expected)
    with nl.record(model, "conv1") as rec:
        _close(nl.deconvnet(model, x, "conv2", 1).images, expected)
        model(x)
    assert (rec["conv1"] < 0).any()


def test_runs_in_the_models_dtype_and_returns_the_inputs_dtype() -> None:
    model = TinyConvNet().double().eval()
    x = torch.randn(2, 1, 8, 8)
    projection = nl.deconvnet(model, x, "conv2", 0)
    assert projection.images.dtype == projection.activations.dtype == torch.float32
    # Computed in float64 (the model's dtype), then handed back as float32.
    expected = nl.deconvnet(model, x.double(), "conv2", 0)
    assert expected.images.dtype == torch.float64
    assert torch.equal(projection.images, expected.images.float())


def test_float64_inputs_on_a_float32_model_give_float64_results() -> None:
    torch.manual_seed(13)
    model = TinyConvNet().eval()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    with model_unchanged(model):
        projection = nl.deconvnet(model, x, "conv2", [1, 4], position="all")
    assert projection.images.dtype == projection.activations.dtype == torch.float64
    assert projection.images.device == x.device
    single = nl.deconvnet(model, x.float(), "conv2", [1, 4], position="all")
    assert single.images.dtype == torch.float32
    torch.testing.assert_close(projection.images, single.images.double())
    assert next(model.parameters()).dtype == torch.float32


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"channel": 6}, nl.NetlensValueError, r"channel in \[0, 6\).*6 channels.*got 6"),
        ({"channel": [0, 60]}, nl.NetlensValueError, r"got 60"),
        ({"channel": -1}, nl.NetlensValueError, "channel >= 0"),
        ({"channel": [0, -1]}, nl.NetlensValueError, "each of channel >= 0"),
        ({"channel": "3"}, nl.NetlensTypeError, "channel to be an int or a list"),
        ({"channel": 1.5}, nl.NetlensTypeError, "channel to be an int"),
        ({"channel": True}, nl.NetlensTypeError, "channel to be an int"),
        ({"channel": []}, nl.NetlensValueError, "at least one channel"),
        ({"position": (4, 0)}, nl.NetlensValueError, r"position to index .* \(4, 4\)"),
        ({"position": (1,)}, nl.NetlensValueError, "position to index the 2-d map"),
        ({"position": (-1, 0)}, nl.NetlensValueError, "non-negative"),
        ({"position": "middle"}, nl.NetlensValueError, "position to be one of"),
        ({"position": (0.5, 1)}, nl.NetlensTypeError, "position to be an int or a tuple of ints"),
        ({"position": 3}, nl.NetlensTypeError, "position to be"),
        ({"scale": "ones"}, nl.NetlensValueError, "scale to be one of"),
        ({"rule": "lrp"}, nl.NetlensValueError, "rule to be one of"),
        ({"rule": 1}, nl.NetlensTypeError, "rule to be one of"),
        ({"select": 1.5}, nl.NetlensTypeError, "select to be"),
        ({"select": 1}, nl.NetlensTypeError, "tuple or list for select=1"),
        ({"channel_dim": "last"}, nl.NetlensTypeError, "channel_dim to be"),
        ({"channel_dim": 4}, nl.NetlensValueError, r"channel_dim in \[-4, 4\)"),
        ({"channel_dim": 0}, nl.NetlensValueError, "differ from its batch axis"),
        ({"inputs": torch.ones(2, 1, 8, 8, dtype=torch.long)}, nl.NetlensTypeError, "floating"),
        ({"inputs": torch.ones(2, 1, 8, 8, dtype=torch.uint8)}, nl.NetlensTypeError, "floating"),
        ({"inputs": torch.ones(0, 1, 8, 8)}, nl.NetlensValueError, "at least one input"),
        ({"inputs": [[1.0]]}, nl.NetlensTypeError, "torch.Tensor"),
        ({"layer": "conv3"}, nl.LayerNotFoundError, "conv2"),
        ({"layer": "conv*"}, nl.NetlensValueError, "exactly one layer"),
        ({"layer": "unused"}, nl.NetlensValueError, "never ran"),
        ({"layer": "constant"}, nl.NetlensValueError, "depend on the inputs"),
    ],
)
def test_bad_input_raises_and_leaves_the_model_unchanged(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    model = WithExtras()
    model.train()
    arguments: dict[str, object] = {
        "inputs": torch.randn(2, 1, 8, 8),
        "layer": "conv2",
        "channel": 0,
    }
    arguments.update(kwargs)
    with model_unchanged(model), pytest.raises(error, match=match):
        nl.deconvnet(model, **arguments)  # type: ignore[arg-type]


# -- nonlinearities the deconvnet does not cover ----------------------------------------


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_warns_once_naming_the_module_for_tanh_on_the_path(rule: str) -> None:
    model = Squashed("module").eval()
    with pytest.warns(UserWarning, match=r"'act' \(Tanh\)") as caught:
        nl.deconvnet(model, torch.randn(2, 1, 8, 8), "conv2", [0, 1], rule=rule)
    assert len([w for w in caught if "nonlinearities" in str(w.message)]) == 1


def test_warns_naming_functions_and_lists_them_in_one_warning() -> None:
    model = Squashed("function").eval()
    with pytest.warns(UserWarning, match=r"gelu\(\), sigmoid\(\)") as caught:
        nl.deconvnet(model, torch.randn(2, 1, 8, 8), "conv2", 0)
    assert len(caught) == 1
    assert "tanh" not in str(caught[0].message)


def test_no_warning_without_nonlinearity_on_the_path_or_for_the_gradient() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nl.deconvnet(Squashed("none").eval(), torch.randn(2, 1, 8, 8), "conv2", 0)
        nl.deconvnet(
            Squashed("module").eval(), torch.randn(2, 1, 8, 8), "conv2", 0, rule="gradient"
        )
        nl.deconvnet(LeNet5().eval(), torch.randn(2, 1, 28, 28), "fc2", 0)


# -- the layer contract: which tensor, which batch axis, which channel axis ------------------------


def test_a_linear_layer_on_tokens_has_its_units_on_the_last_dim() -> None:
    torch.manual_seed(14)
    model = TokenBlock().double().eval()
    x = torch.randn(2, 8, 32, dtype=torch.float64)
    with model_unchanged(model):
        projection = nl.deconvnet(model, x, "intermediate", 20)  # unit 20 of 64, 8 tokens
    hidden = model.intermediate(x).detach()  # (N, T, 64)
    weight = model.intermediate.weight.detach()
    assert projection.positions is not None and projection.positions.shape == (2, 1)
    expected = torch.zeros_like(x)
    for n in range(2):
        t = int(hidden[n, :, 20].argmax())  # the position indexes the token axis
        assert projection.positions[n].tolist() == [t]
        assert projection.activations[n] == hidden[n, t, 20]
        expected[n, t] = hidden[n, t, 20] * weight[20]
    _close(projection.images, expected)
    at = nl.deconvnet(model, x, "intermediate", [20, 63], position=(5,), scale="unit")
    expected = torch.zeros(2, 2, 8, 32, dtype=torch.float64)
    expected[:, 0, 5], expected[:, 1, 5] = weight[20], weight[63]
    _close(at.images, expected)
    every = nl.deconvnet(model, x, "intermediate", 20, position="all")
    assert every.activations.shape == (2, 8) and every.positions is None
    _close(every.images, hidden[..., 20:21] * weight[20])
    with model_unchanged(model), pytest.raises(nl.NetlensValueError, match=r"in \[0, 64\)"):
        nl.deconvnet(model, x, "intermediate", 64)


def _gru_twins() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(15)
    time_first = GRUClassifier(batch_first=False).double().eval()
    batch_first = GRUClassifier(batch_first=True).double().eval()
    batch_first.load_state_dict(time_first.state_dict())
    return time_first, batch_first


@pytest.mark.parametrize("position", ["max", "all", (2,)], ids=["max", "all", "index"])
def test_a_time_first_gru_with_as_many_steps_as_inputs_equals_its_batch_first_twin(
    position: str | tuple[int],
) -> None:
    time_first, batch_first = _gru_twins()
    x = torch.randn(4, 4, 5, dtype=torch.float64)  # T == N: the shapes cannot tell the batch
    results = []
    for model in (time_first, batch_first):
        with model_unchanged(model), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the GRU has no deconvnet rule
            results.append(nl.deconvnet(model, x, "rnn", [1, 4], position=position))
    first, reference = results
    # Every input and channel is projected, not only input 0.
    assert (first.images.abs().flatten(2).sum(dim=2) > 0).all()
    _close(first.images, reference.images)
    _close(first.activations, reference.activations)
    if position != "all":
        assert first.positions is not None and reference.positions is not None
        assert torch.equal(first.positions, reference.positions)
    # The batch-first twin against autograd on (N, T, H).
    leaf = x.clone().requires_grad_(True)
    output, _ = batch_first.rnn(leaf)
    for column, channel in enumerate([1, 4]):
        seed = torch.zeros_like(output)
        for n in range(4):
            if position == "all":
                seed[n, :, channel] = output[n, :, channel]
            else:
                t = int(output[n, :, channel].argmax()) if position == "max" else position[0]
                seed[n, t, channel] = output[n, t, channel]
        (grad,) = torch.autograd.grad(output, leaf, seed.detach(), retain_graph=True)
        _close(reference.images[:, column], grad)


def test_a_layer_returning_a_dict_gives_its_first_tensor_and_select_picks_another() -> None:
    torch.manual_seed(16)
    model = DictNet().double().eval()
    x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    with model_unchanged(model):
        features = nl.deconvnet(model, x, "block", [0, 2])
    _close(features.images, nl.deconvnet(model, x, "block.relu", [0, 2]).images)
    assert features.activations.shape == (3, 2) and features.images.abs().max() > 0
    with model_unchanged(model):
        pooled = nl.deconvnet(model, x, "block", 2, select="pooled", rule="gradient")
    assert pooled.positions is not None and pooled.positions.shape == (3, 0)
    leaf = x.clone().requires_grad_(True)
    value = model.block(leaf)["pooled"][:, 2]
    (grad,) = torch.autograd.grad(value, leaf, value.detach())
    _close(pooled.images, grad)
    by_callable = nl.deconvnet(
        model, x, "block", 2, select=lambda out: out["pooled"], rule="gradient"
    )
    _close(by_callable.images, pooled.images)
    with model_unchanged(model), pytest.raises(nl.NetlensValueError, match=r"in \[0, 4\)"):
        nl.deconvnet(model, x, "block", 4, select="pooled")
    with model_unchanged(model), pytest.raises(nl.NetlensValueError, match="select='gate'"):
        nl.deconvnet(model, x, "block", 0, select="gate")


def test_a_packed_sequence_is_projected_from_its_padded_tensor() -> None:
    torch.manual_seed(17)
    lengths = [4, 5, 3]
    model = PackedLSTMClassifier(lengths).double().eval()
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    with model_unchanged(model), pytest.warns(UserWarning, match=r"'rnn' \(LSTM\)"):
        projection = nl.deconvnet(model, x, "rnn", 2, position=(2,), scale="unit")
    leaf = x.clone().requires_grad_(True)
    found: list[nn.utils.rnn.PackedSequence] = []
    handle = model.rnn.register_forward_hook(lambda _m, _a, out: found.append(out[0]))
    try:
        model(leaf)
    finally:
        handle.remove()
    padded, _ = nn.utils.rnn.pad_packed_sequence(found[0], batch_first=True)
    seed = torch.zeros_like(padded)
    seed[:, 2, 2] = 1
    (grad,) = torch.autograd.grad(padded, leaf, seed)
    _close(projection.images, grad)
    assert (projection.images.abs().flatten(1).sum(dim=1) > 0).all()
    for row, length in enumerate(lengths):  # steps past a sequence's end are padding
        assert projection.images[row, length:].abs().sum() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        last = nl.deconvnet(model, x, "rnn", 2, position=(4,), scale="unit")
    # Step 4 exists only in the second sequence; a padding step depends on no input.
    assert last.images[1].abs().max() > 0
    assert last.images[0].abs().max() == last.images[2].abs().max() == 0


def test_channel_dim_reads_a_channels_last_layer() -> None:
    torch.manual_seed(18)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), ToChannelsLast(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    )
    model = model.double().eval()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    with model_unchanged(model):
        last = nl.deconvnet(model, x, "1", [3, 1], channel_dim=-1)
    first = nl.deconvnet(model, x, "0", [3, 1])
    _close(last.images, first.images)
    _close(last.activations, first.activations)
    assert last.positions is not None and first.positions is not None
    assert torch.equal(last.positions, first.positions)
    with model_unchanged(model), pytest.raises(nl.NetlensValueError, match=r"in \[0, 4\)"):
        nl.deconvnet(model, x, "1", 4, channel_dim=-1)


@pytest.mark.parametrize(
    "inputs",
    [torch.randn(1, 8, 8), torch.randn(8, 8)],
    ids=["one image", "one channel"],
)
def test_inputs_without_their_batch_dimension_are_refused(inputs: torch.Tensor) -> None:
    model = TinyConvNet().eval()
    with model_unchanged(model), pytest.raises(nl.NetlensValueError, match="batch dimension"):
        nl.deconvnet(model, inputs, "conv2", 0)


def test_a_sequence_without_its_batch_dimension_is_refused() -> None:
    model, _ = _gru_twins()
    with model_unchanged(model), pytest.raises(nl.NetlensValueError, match=r"\(4, 5\)"):
        nl.deconvnet(model, torch.randn(4, 5, dtype=torch.float64), "rnn", 0)


def test_inference_mode_is_refused_with_an_error_naming_it() -> None:
    model = TinyConvNet().eval()
    with model_unchanged(model):
        with torch.inference_mode(), pytest.raises(nl.NetlensValueError, match="inference mode"):
            nl.deconvnet(model, torch.randn(2, 1, 8, 8), "conv2", 0)
        # torch.no_grad() is fine (test_runs_inside_no_grad_and_inside_a_record_block).


# -- pictures --------------------------------------------------------------------------------


def test_plots_draw_on_a_new_figure_or_a_given_axes() -> None:
    from matplotlib.figure import Figure

    model = seeded_lenet()
    x = torch.randn(2, 1, SIZE, SIZE, dtype=torch.float64)
    fig, ax = nl.deconvnet(model, x, "conv2", [1, 2, 3]).plot()
    assert isinstance(fig, Figure) and len(ax.images) == 1
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ch 1", "ch 2", "ch 3"]
    given = Figure().add_subplot()
    fig2, ax2 = nl.deconvnet(model, x, "conv2", 1).plot(ax=given)
    assert ax2 is given and fig2 is given.figure
    assert "Projection(" in repr(nl.deconvnet(model, x, "conv2", 1))


def test_projection_is_a_frozen_plottable_result(tmp_path: Path) -> None:
    model = TinyConvNet().eval()
    projection = nl.deconvnet(model, torch.randn(2, 1, 8, 8), "conv2", 3, position="all")
    params = projection.__dataclass_params__  # type: ignore[attr-defined]
    assert params.frozen and not params.eq
    with pytest.raises(dataclasses.FrozenInstanceError):
        projection.rule = "guided"  # type: ignore[misc]
    assert projection.channels.tolist() == [3] and not projection.listed
    assert projection.activations.shape == (2, 4, 4)
    _, ax = projection.plot()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ch 3"]
    assert len(ax.get_yticklabels()) == 2
    for suffix in ("png", "svg", "pdf"):
        projection.save(tmp_path / f"projection.{suffix}")
        assert (tmp_path / f"projection.{suffix}").stat().st_size > 0
    assert projection._repr_png_().startswith(b"\x89PNG")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_model_on_the_gpu_gives_results_on_the_inputs_device() -> None:
    torch.manual_seed(24)
    model = TinyConvNet().eval()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    on_cpu = nl.deconvnet(model, x, "conv2", [0, 2])
    top_on_cpu = nl.top_activations(model, x, "conv2", channels=1, k=2)
    model.cuda()
    with model_unchanged(model):
        projection = nl.deconvnet(model, x, "conv2", [0, 2])
        top = nl.top_activations(model, x, "conv2", channels=1, k=2)
    assert projection.images.device == top.patches.device == top.indices.device == x.device
    assert projection.images.dtype == top.projections.dtype == torch.float64
    torch.testing.assert_close(projection.images, on_cpu.images, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(top.projections, top_on_cpu.projections, rtol=1e-4, atol=1e-5)
