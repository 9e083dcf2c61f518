from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netlens as nl
from netlens.models import LeNet5
from netlens.testing import (
    FunctionalReluNet,
    ResidualNet,
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


def _lenet(seed: int = 0, size: int = SIZE) -> LeNet5:
    torch.manual_seed(seed)
    return LeNet5(image_size=size).double().eval()


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
    model = _lenet()
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
    model = _lenet(1)
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
    model = _lenet()
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
    model = _lenet(2)
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
    assert alone.channels.dim() == 0 and alone.images.shape == x.shape


class _NoBatchedBackward(torch.autograd.Function):
    """Identity whose backward reads a Python number, which autograd's batched backward cannot."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad * (1.0 + 0.0 * float(grad.abs().sum()))


def test_a_list_of_channels_falls_back_to_one_backward_per_channel() -> None:
    model = _lenet(12)
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
    model = _lenet()
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


class _EveryRelu(nn.Module):
    """Each spelling of ReLU once, with and without in place."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace
        self.convs = nn.ModuleList(nn.Conv2d(2, 2, 3, padding=1) for _ in range(6))
        self.relu = nn.ReLU(inplace=inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.convs[0](x))
        x = F.relu(self.convs[1](x), inplace=self.inplace)
        y = self.convs[2](x)
        x = torch.relu_(y) if self.inplace else torch.relu(y)
        y = self.convs[3](x)
        if self.inplace:
            y.relu_()
            x = y
        else:
            x = y.relu()
        x = F.relu_(self.convs[4](x)) if self.inplace else F.relu(self.convs[4](x))
        return self.convs[5](x)


@pytest.mark.parametrize("rule", RULES)
def test_every_relu_spelling_in_place_or_not_gives_the_same_projection(rule: str) -> None:
    torch.manual_seed(5)
    plain = _EveryRelu(inplace=False).double().eval()
    inplace = _same_weights(_EveryRelu(inplace=True), plain)
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
    model = _lenet(8)
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
        with model_unchanged(model):
            top = nl.top_activations(model, [inputs, inputs], layer, channels=[0, 1], k=2)
    assert projection.images.shape == (inputs.shape[0], 2, *inputs.shape[1:])
    assert torch.isfinite(projection.images).all()
    assert top.patches.shape[:2] == (2, 2)


def test_model_unchanged_over_the_zoo_when_raising(zoo_model: ZooModel) -> None:
    model, inputs, layer = zoo_model.model, zoo_model.inputs, zoo_model.feature_layer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with model_unchanged(model), pytest.raises(nl.NetlensValueError, match="channel"):
            nl.deconvnet(model, inputs, layer, 10_000)
        with model_unchanged(model), pytest.raises(nl.NetlensValueError, match="position"):
            nl.deconvnet(model, inputs, layer, 0, position=(99, 99, 99))
        with model_unchanged(model), pytest.raises(nl.NetlensValueError, match="channels"):
            nl.top_activations(model, [inputs], layer, channels=[10_000], k=1)


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


def test_follows_the_models_dtype() -> None:
    model = TinyConvNet().double().eval()
    projection = nl.deconvnet(model, torch.randn(2, 1, 8, 8), "conv2", 0)
    assert projection.images.dtype == torch.float64


# -- bad input -------------------------------------------------------------------------------------


class _WithExtras(TinyConvNet):
    """TinyConvNet with a layer it never calls and a layer fed only with a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Conv2d(1, 2, 3)
        self.constant = nn.Linear(2, 2)
        self.register_buffer("fixed", torch.ones(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.constant(self.fixed)[:, :1]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"channel": 6}, nl.NetlensValueError, r"channel indices in \[0, 6\).*got 6"),
        ({"channel": [0, 60]}, nl.NetlensValueError, r"got 60"),
        ({"channel": -1}, nl.NetlensValueError, "channel to be >= 0"),
        ({"channel": 1.5}, nl.NetlensTypeError, "channel to be an int"),
        ({"channel": True}, nl.NetlensTypeError, "channel to be an int"),
        ({"channel": []}, nl.NetlensValueError, "at least one channel"),
        ({"position": (4, 0)}, nl.NetlensValueError, r"position to index .* \(4, 4\)"),
        ({"position": (1,)}, nl.NetlensValueError, "position to index the 2-d map"),
        ({"position": (-1, 0)}, nl.NetlensValueError, ">= 0"),
        ({"position": "middle"}, nl.NetlensValueError, "position to be one of"),
        ({"position": 3}, nl.NetlensTypeError, "position to be"),
        ({"scale": "ones"}, nl.NetlensValueError, "scale to be one of"),
        ({"rule": "lrp"}, nl.NetlensValueError, "rule to be one of"),
        ({"inputs": torch.ones(2, 1, 8, 8, dtype=torch.long)}, nl.NetlensTypeError, "floating"),
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
    model = _WithExtras()
    model.train()
    arguments: dict[str, object] = {
        "inputs": torch.randn(2, 1, 8, 8),
        "layer": "conv2",
        "channel": 0,
    }
    arguments.update(kwargs)
    with model_unchanged(model), pytest.raises(error, match=match):
        nl.deconvnet(model, **arguments)  # type: ignore[arg-type]


def test_bad_input_to_top_activations() -> None:
    model = TinyConvNet().eval()
    data = torch.randn(5, 1, 8, 8)
    with model_unchanged(model):
        with pytest.raises(nl.NetlensValueError, match="at least k=9 inputs"):
            nl.top_activations(model, data, "conv2")
        with pytest.raises(nl.NetlensValueError, match="k >= 1"):
            nl.top_activations(model, data, "conv2", k=0)
        with pytest.raises(nl.NetlensTypeError, match="iterable of batches"):
            nl.top_activations(model, 3, "conv2", k=1)  # type: ignore[arg-type]
        with pytest.raises(nl.NetlensTypeError, match="floating"):
            nl.top_activations(model, [data.long()], "conv2", k=1)
        with pytest.raises(nl.NetlensValueError, match=r"channels in \[0, 6\)"):
            nl.top_activations(model, data, "conv2", channels=[6], k=1)
        with pytest.raises(nl.NetlensValueError, match="channels to be >= 0"):
            nl.top_activations(model, data, "conv2", channels=[-2], k=1)
    convolutional = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    with model_unchanged(convolutional), pytest.raises(nl.NetlensValueError, match="every batch"):
        nl.top_activations(convolutional, [data, torch.randn(3, 1, 6, 6)], "0", k=1)


# -- nonlinearities the deconvnet does not cover ----------------------------------------


class _Squashed(nn.Module):
    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.act = nn.Tanh()
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.where == "module":
            x = self.act(x)
        elif self.where == "function":
            x = torch.sigmoid(F.gelu(x))
        x = F.relu(self.conv2(x))
        return self.head(torch.tanh(x).flatten(1))  # after the layer: not on the path


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_warns_once_naming_the_module_for_tanh_on_the_path(rule: str) -> None:
    model = _Squashed("module").eval()
    with pytest.warns(UserWarning, match=r"'act' \(Tanh\)") as caught:
        nl.deconvnet(model, torch.randn(2, 1, 8, 8), "conv2", [0, 1], rule=rule)
    assert len([w for w in caught if "nonlinearities" in str(w.message)]) == 1


def test_warns_naming_functions_and_lists_them_in_one_warning() -> None:
    model = _Squashed("function").eval()
    with pytest.warns(UserWarning, match=r"gelu\(\), sigmoid\(\)") as caught:
        nl.deconvnet(model, torch.randn(2, 1, 8, 8), "conv2", 0)
    assert len(caught) == 1
    assert "tanh" not in str(caught[0].message)


def test_no_warning_without_nonlinearity_on_the_path_or_for_the_gradient() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nl.deconvnet(_Squashed("none").eval(), torch.randn(2, 1, 8, 8), "conv2", 0)
        nl.deconvnet(
            _Squashed("module").eval(), torch.randn(2, 1, 8, 8), "conv2", 0, rule="gradient"
        )
        nl.deconvnet(LeNet5().eval(), torch.randn(2, 1, 28, 28), "fc2", 0)


def test_top_activations_warns_once_too() -> None:
    model = _Squashed("module").eval()
    with pytest.warns(UserWarning, match="Tanh") as caught:
        nl.top_activations(model, [torch.randn(4, 1, 8, 8)] * 3, "conv2", k=2)
    assert len(caught) == 1


# -- top activations ----------------------------------------------------------------------


def _brute_force_top(
    model: nn.Module, data: torch.Tensor, layer: str, channels: list[int], k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with nl.record(model, layer) as rec, torch.no_grad():
        model(data)
    maps = rec[layer][:, channels].flatten(2)  # (N, C, positions)
    best, where = maps.max(dim=2)
    values, indices, positions = [], [], []
    for c in range(len(channels)):
        order = sorted(range(data.shape[0]), key=lambda n: (-float(best[n, c]), n))[:k]
        values.append(best[order, c])
        indices.append(torch.tensor(order))
        positions.append(where[order, c])
    return torch.stack(values), torch.stack(indices), torch.stack(positions)


def test_top_activations_equals_a_brute_force_search_and_its_projections() -> None:
    model = _lenet(10, size=20)
    data = torch.randn(45, 1, 20, 20, dtype=torch.float64)
    loader = [(data[i : i + 7], torch.zeros(7)) for i in range(0, 45, 7)]  # uneven batches
    top = nl.top_activations(model, loader, "conv2", channels=[3, 40, 7], k=5)
    values, indices, flat = _brute_force_top(model, data, "conv2", [3, 40, 7], 5)
    _close(top.activations, values)
    assert torch.equal(top.indices, indices)
    assert torch.equal(top.positions[..., 0] * 10 + top.positions[..., 1], flat)
    assert top.patches.shape == top.projections.shape == (3, 5, 1, 14, 14)
    for c, channel in enumerate([3, 40, 7]):
        for rank in range(5):
            n = int(indices[c, rank])
            i, j = top.positions[c, rank].tolist()
            # conv2's receptive field in LeNet5: rows 2i-6 .. 2i+7 (5x5 conv, pool 2, 5x5 conv).
            rows = (max(0, 2 * i - 6), min(20, 2 * i + 8))
            columns = (max(0, 2 * j - 6), min(20, 2 * j + 8))
            assert top.boxes[c, rank].tolist() == [[0, 1], list(rows), list(columns)]
            image = data[n : n + 1]
            # Clipped at the top/left: the patch is padded before the image content.
            top_pad = 14 - (rows[1] - rows[0]) if rows[0] == 0 else 0
            left_pad = 14 - (columns[1] - columns[0]) if columns[0] == 0 else 0
            window = (slice(None), slice(rows[0], rows[1]), slice(columns[0], columns[1]))
            inside = (
                slice(None),
                slice(top_pad, top_pad + rows[1] - rows[0]),
                slice(left_pad, left_pad + columns[1] - columns[0]),
            )
            _close(top.patches[c, rank][inside], image[0][window])
            if rank in (0, 4):  # the slow reference for the projections, on a few
                projection = nl.deconvnet(model, image, "conv2", channel, position=(i, j)).images
                _close(top.projections[c, rank][inside], projection[0][window])
                # The projection lies inside the receptive field.
                outside = projection[0].clone()
                outside[window] = 0
                assert outside.abs().max() == 0


def test_receptive_fields_follow_pooling_strides_and_residual_paths() -> None:
    torch.manual_seed(11)
    functional = FunctionalReluNet().eval()  # F.max_pool2d, torch.relu
    top = nl.top_activations(functional, torch.randn(12, 1, 8, 8), "conv2", k=3)
    for (i, j), box in zip(
        top.positions.reshape(-1, 2).tolist(), top.boxes.reshape(-1, 3, 2).tolist(), strict=True
    ):
        # 3x3 conv (pad 1), 2x2 pool, 3x3 conv (pad 1): rows 2i-3 .. 2i+4
        assert box[1:] == [
            [max(0, 2 * i - 3), min(8, 2 * i + 5)],
            [max(0, 2 * j - 3), min(8, 2 * j + 5)],
        ]
    # The largest receptive field inside the 8x8 input is 7x7 (every one is clipped).
    assert top.patches.shape[-2:] == (7, 7)
    residual = ResidualNet()  # in training mode, with BatchNorm: projected in eval mode
    with model_unchanged(residual):
        top = nl.top_activations(residual, torch.randn(10, 1, 8, 8), "conv_b", k=3)
    for (i, j), box in zip(
        top.positions.reshape(-1, 2).tolist(), top.boxes.reshape(-1, 3, 2).tolist(), strict=True
    ):
        # three 3x3 convs (pad 1) on the long path; the skip path's field lies inside
        assert box[1:] == [[max(0, i - 3), min(8, i + 4)], [max(0, j - 3), min(8, j + 4)]]
    strided = nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2), nn.ReLU(inplace=True), nn.Conv2d(2, 2, 3, stride=2)
    ).eval()
    top = nl.top_activations(strided, torch.randn(6, 1, 11, 11), "2", k=2)
    for (i, j), box in zip(
        top.positions.reshape(-1, 2).tolist(), top.boxes.reshape(-1, 3, 2).tolist(), strict=True
    ):
        assert box[1:] == [[4 * i, 4 * i + 7], [4 * j, 4 * j + 7]]  # 3 + (3 - 1) * 2 = 7


class _FixedFilter(nn.Module):
    """A conv with a plain float32 tensor as weight (no parameter, no buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.randn(2, 1, 3, 3)
        self.conv = nn.Conv2d(2, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.relu(F.conv2d(x, self.weight)))


def test_receptive_fields_of_a_model_that_keeps_its_own_dtype() -> None:
    top = nl.top_activations(_FixedFilter().eval(), torch.randn(6, 1, 9, 9), "conv", k=2)
    for (i, j), box in zip(
        top.positions.reshape(-1, 2).tolist(), top.boxes.reshape(-1, 3, 2).tolist(), strict=True
    ):
        assert box[1:] == [[i, i + 5], [j, j + 5]]


def test_running_top_memory_does_not_grow_with_the_data() -> None:
    from netlens._deconvnet import _RunningTop

    model = TinyConvNet().eval()
    top = _RunningTop("conv2", 4, [0, 5])
    with nl.record(model, "conv2") as rec, torch.no_grad():
        for _ in range(10):
            x = torch.randn(16, 1, 8, 8)
            model(x)
            top.update(x, rec["conv2"])
    assert top.images.shape == (2, 4, 1, 8, 8) and top.values.shape == (2, 4)
    assert top.seen == 160


# -- pictures --------------------------------------------------------------------------------


def test_plots_draw_on_a_new_figure_or_a_given_axes() -> None:
    from matplotlib.figure import Figure

    model = _lenet()
    x = torch.randn(2, 1, SIZE, SIZE, dtype=torch.float64)
    fig, ax = nl.deconvnet(model, x, "conv2", [1, 2, 3]).plot()
    assert isinstance(fig, Figure) and len(ax.images) == 1
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ch 1", "ch 2", "ch 3"]
    given = Figure().add_subplot()
    fig2, ax2 = nl.deconvnet(model, x, "conv2", 1).plot(ax=given)
    assert ax2 is given and fig2 is given.figure
    top = nl.top_activations(model, x.repeat(5, 1, 1, 1), "conv2", channels=[0, 1, 2], k=9)
    fig3, ax3 = top.plot()
    assert isinstance(fig3, Figure) and len(ax3.texts) == 3
    assert "Projection(" in repr(nl.deconvnet(model, x, "conv2", 1))
    assert "TopActivations(" in repr(top)
