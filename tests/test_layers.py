from __future__ import annotations

import pytest
import torch
from _models import ListWithParent, Owned, RegisteredTwice
from torch import nn

import netlens as nl
from netlens.models import LeNet5, RowClassifier
from netlens.testing import ResidualNet, TinyConvNet


def test_dotted_name() -> None:
    net = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), nn.Flatten())
    found = nl.find_layers(net, "0.1")
    assert list(found) == ["0.1"]
    assert found["0.1"] is net[0][1]


def test_glob_stays_within_one_part_and_double_star_spans() -> None:
    net = nn.Sequential()
    net.add_module("encoder", nn.Sequential())
    for index in range(2):
        block = nn.Sequential()
        block.add_module("conv", nn.Conv2d(1, 1, 1))
        block.add_module("relu", nn.ReLU())
        net.encoder.add_module(str(index), block)
    assert list(nl.find_layers(net, "encoder.*.relu")) == ["encoder.0.relu", "encoder.1.relu"]
    assert list(nl.find_layers(net, "encoder.*")) == ["encoder.0", "encoder.1"]
    assert list(nl.find_layers(net, "**.conv")) == ["encoder.0.conv", "encoder.1.conv"]
    assert list(nl.find_layers(LeNet5(), "conv*")) == ["conv1", "conv2"]
    assert list(nl.find_layers(LeNet5(), "fc?")) == ["fc1", "fc2"]


def test_type_includes_subclasses_and_keeps_model_order() -> None:
    class MyConv(nn.Conv2d):
        pass

    net = nn.Sequential(nn.Conv2d(1, 1, 1), MyConv(1, 1, 1), nn.ReLU())
    assert list(nl.find_layers(net, nn.Conv2d)) == ["0", "1"]
    assert list(nl.find_layers(LeNet5(), nn.ReLU)) == ["relu1", "relu2", "relu3"]


def test_type_matches_root_only_when_nothing_else_does() -> None:
    lstm = nn.LSTM(3, 4)
    assert list(nl.find_layers(lstm, nn.LSTM)) == [""]
    assert list(nl.find_layers(RowClassifier("gru"), nn.GRU)) == ["rnn"]


def test_module_object_and_list_in_list_order() -> None:
    net = LeNet5()
    found = nl.find_layers(net, [net.fc2, "conv1", nn.MaxPool2d])
    assert list(found) == ["fc2", "conv1", "pool1", "pool2"]


def test_shared_module_appears_once_under_first_name() -> None:
    shared = nn.Linear(2, 2)
    net = nn.Sequential(shared, nn.ReLU(), shared)
    assert list(nl.find_layers(net, nn.Linear)) == ["0"]


def test_unknown_name_lists_close_matches_and_all_names_for_small_models() -> None:
    with pytest.raises(nl.LayerNotFoundError) as info:
        nl.find_layers(LeNet5(), "conv3")
    message = str(info.value)
    assert "'conv3'" in message
    assert "Did you mean" in message and "'conv1'" in message
    assert "'fc2'" in message  # every name listed for a small model
    assert isinstance(info.value, KeyError) and isinstance(info.value, nl.NetlensError)


def test_unknown_name_in_a_big_model_lists_only_close_matches() -> None:
    net = nn.Sequential()
    for index in range(30):
        net.add_module(f"block{index}", nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(nl.LayerNotFoundError) as info:
        nl.find_layers(net, "blok17.0")
    assert "'block17.0'" in str(info.value)
    assert "'block3'" not in str(info.value)
    assert "60 layers" in str(info.value)


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("", nl.NetlensValueError),
        ("  ", nl.NetlensValueError),
        ([], nl.NetlensValueError),
        ("conv9*", nl.LayerNotFoundError),
        (nn.LSTM, nl.LayerNotFoundError),
        (nn.Linear(2, 2), nl.LayerNotFoundError),
        (3, nl.NetlensTypeError),
        (int, nl.NetlensTypeError),
    ],
)
def test_bad_specs(spec: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="Expected"):
        nl.find_layers(LeNet5(), spec)  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", [3, [3], "", []])
def test_a_bad_spec_is_named_as_the_user_passed_it(spec: object) -> None:
    model, x = LeNet5(), torch.randn(1, 1, 28, 28)
    calls = {
        "spec": lambda: nl.find_layers(model, spec),  # type: ignore[arg-type]
        "layers": lambda: nl.record(model, spec),  # type: ignore[arg-type]
        "layer": lambda: nl.deconvnet(model, x, spec, 0),  # type: ignore[arg-type]
    }
    for name, call in calls.items():
        with pytest.raises(nl.NetlensError, match=rf"Expected {name} to "):
            call()
    with pytest.raises(nl.NetlensError, match="Expected layers to "):
        nl.activation_stats(model, x, spec)  # type: ignore[arg-type]


def test_non_module_model() -> None:
    with pytest.raises(nl.NetlensTypeError, match=r"Expected model to be a torch\.nn\.Module"):
        nl.find_layers(lambda x: x, "conv1")  # type: ignore[arg-type]


def test_type_error_lists_the_model_layer_types() -> None:
    with pytest.raises(nl.LayerNotFoundError, match="BatchNorm2d"):
        nl.find_layers(ResidualNet(), nn.LSTM)


def test_compiled_model_is_refused_and_original_works() -> None:
    net = TinyConvNet().eval()
    compiled = torch.compile(net, backend="eager")
    with pytest.raises(nl.UnsupportedModelError, match="_orig_mod"):
        nl.find_layers(compiled, "conv1")
    with pytest.raises(nl.UnsupportedModelError):
        nl.record(compiled, "conv1")
    assert isinstance(nl.UnsupportedModelError("x"), TypeError)
    found = nl.find_layers(compiled._orig_mod, "conv1")  # type: ignore[arg-type]
    assert found["conv1"] is net.conv1


def test_compiled_submodule_is_refused() -> None:
    net = TinyConvNet().eval()
    net.conv1 = torch.compile(net.conv1, backend="eager")  # type: ignore[assignment]
    with pytest.raises(nl.UnsupportedModelError, match="conv1"):
        nl.record(net, "conv1._orig_mod")
    with pytest.raises(nl.UnsupportedModelError):
        nl.record(net, "conv1")
    nl.find_layers(net, "conv2")  # layers outside the compiled part are fine


# -- TorchScript: refused where layers are looked up, for every technique ----------------------


def _techniques() -> dict[str, object]:
    x = torch.randn(2, 1, 8, 8)
    return {
        "find_layers": lambda model, layer: nl.find_layers(model, layer),
        "record": lambda model, layer: nl.record(model, layer),
        "activation_stats": lambda model, layer: nl.activation_stats(model, x, layer),
        "deconvnet": lambda model, layer: nl.deconvnet(model, x, layer, 0),
        "occlusion": lambda model, layer: nl.occlusion(model, x, window=4, layer=layer),
        "top_activations": lambda model, layer: nl.top_activations(model, [x], layer, k=1),
        "maximize_activation": lambda model, layer: nl.maximize_activation(
            model, layer, 0, input_shape=(1, 8, 8), steps=1
        ),
    }


def _small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)
    ).eval()


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize("technique", list(_techniques()))
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_models_are_refused_with_a_type_error(technique: str, how: str) -> None:
    net = _small_net()
    scripted = (
        torch.jit.script(net) if how == "script" else torch.jit.trace(net, torch.randn(1, 1, 8, 8))
    )
    run = _techniques()[technique]
    with pytest.raises(nl.NetlensTypeError, match="TorchScript") as info:
        run(scripted, "1")  # type: ignore[operator]
    assert "original nn.Module" in str(info.value)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_a_torchscript_submodule_is_refused_and_the_rest_works() -> None:
    net = _small_net()
    net[0] = torch.jit.script(net[0])  # type: ignore[call-overload]
    with pytest.raises(nl.NetlensTypeError, match="TorchScript"):
        nl.record(net, "0")
    with pytest.raises(nl.NetlensTypeError, match="TorchScript"):
        nl.find_layers(net, "*")  # matches the scripted conv among others
    stats = nl.activation_stats(net, torch.randn(2, 1, 8, 8), "1")
    assert stats["1"].num_channels == 3


# -- a module registered under two names ---------------------------------------------------------


def test_every_name_of_a_shared_module_finds_it() -> None:
    model = RegisteredTwice()
    assert nl.find_layers(model, "b")["b"] is model.a
    assert list(nl.find_layers(model, nn.Linear)) == ["a"]  # a type or glob: once, first name
    assert list(nl.find_layers(model, "*")) == ["a", "act"]
    x = torch.randn(2, 3)
    with nl.record(model, "b") as recorder:
        expected = model.a(x)
        model(x)
    torch.testing.assert_close(recorder["b"], expected.detach())
    stats = nl.activation_stats(model, x, ["b", "act"])
    assert list(stats) == ["b", "act"]
    assert stats["b"].num_channels == 4
    torch.testing.assert_close(stats["b"].mean, expected.detach().double().mean(0))
    with pytest.raises(nl.LayerNotFoundError) as info:
        nl.find_layers(model, "c")
    assert "'a'" in str(info.value) and "'b'" not in str(info.value)  # first names listed


# -- a module that contains itself ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "where"),
    [(Owned, "'act.owner' is the model itself"), (ListWithParent, "'blocks.2' is the model")],
)
@pytest.mark.parametrize(
    "technique", ["find_layers", "record", "activation_stats", "occlusion", "deconvnet"]
)
def test_a_model_that_contains_itself_is_a_value_error(build, where, technique: str) -> None:
    model = build()
    layer = "act" if build is Owned else "blocks.1"
    x = torch.randn(2, 3)
    calls = {
        "find_layers": lambda: nl.find_layers(model, layer),
        "record": lambda: nl.record(model, layer),
        "activation_stats": lambda: nl.activation_stats(model, x, "*"),
        "occlusion": lambda: nl.occlusion(model, x, window=1),  # no layer: the model is checked
        "deconvnet": lambda: nl.deconvnet(model, x, layer, 0),
    }
    with pytest.raises(nl.NetlensValueError, match="form a tree") as info:
        calls[technique]()
    assert where in str(info.value)


def test_a_module_shared_by_two_parents_is_no_loop() -> None:
    shared = nn.Linear(3, 3)
    model = nn.Sequential(nn.Sequential(shared, nn.ReLU()), nn.Sequential(shared, nn.ReLU()))
    stats = nl.activation_stats(model, torch.randn(2, 3), "1.0")
    assert stats["1.0"].num_channels == 3
