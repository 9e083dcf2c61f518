from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netlens as nl
from netlens.models import LeNet5, RowClassifier
from netlens.testing import TinyConvNet, ZooModel, model_unchanged, model_zoo


def _no_hooks(model: nn.Module) -> bool:
    return all(
        not module._forward_hooks and not module._forward_pre_hooks for module in model.modules()
    )


def test_records_what_a_manual_forward_computes() -> None:
    net = LeNet5().eval()
    x = torch.randn(3, 1, 28, 28)
    with nl.record(net, ["conv1", "pool2", "fc2"]) as rec:
        out = net(x)
    expected_conv1 = net.conv1(x)
    torch.testing.assert_close(rec["conv1"], expected_conv1, rtol=0, atol=0)
    assert rec["pool2"].shape == (3, 64, 7, 7)
    torch.testing.assert_close(rec["fc2"], out, rtol=0, atol=0)
    assert list(rec) == ["conv1", "pool2", "fc2"]
    assert len(rec) == 3 and "conv1" in rec and "conv2" not in rec
    assert _no_hooks(net)


def test_each_forward_starts_fresh_and_the_mapping_holds_the_latest() -> None:
    net = TinyConvNet().eval()
    with nl.record(net, "conv1") as rec:
        net(torch.zeros(1, 1, 8, 8))
        first = rec["conv1"]
        net(torch.ones(2, 1, 8, 8))
    assert first.shape[0] == 1
    assert rec["conv1"].shape[0] == 2
    assert len(rec.calls("conv1")) == 1


def test_module_called_twice_keeps_every_call() -> None:
    zoo = model_zoo()["shared"]
    net = zoo.model
    with nl.record(net, "block") as rec:
        net(zoo.inputs)
    calls = rec.calls("block")
    assert len(calls) == 2
    stem = net.stem(zoo.inputs)
    torch.testing.assert_close(calls[0], net.block(stem))
    torch.testing.assert_close(calls[1], net.block(net.block(stem)))
    assert rec["block"] is calls[1]


def test_inplace_relu_does_not_overwrite_the_recorded_conv_output() -> None:
    net = TinyConvNet(inplace=True).eval()
    x = torch.randn(4, 1, 8, 8)
    with nl.record(net, ["conv1", "relu1"]) as rec:
        net(x)
    expected = net.conv1(x)
    torch.testing.assert_close(rec["conv1"], expected, rtol=0, atol=0)
    assert bool((rec["conv1"] < 0).any())
    torch.testing.assert_close(rec["relu1"], expected.clamp(min=0), rtol=0, atol=0)


@pytest.mark.parametrize(
    "overwrite",
    [
        lambda t: t.relu_(),
        lambda t: F.relu(t, inplace=True),
        lambda t: F.relu(t, True),
        lambda t: t.add_(1),
        lambda t: t.mul_(0),
        lambda t: t.__setitem__((slice(None), 0), 5.0),
        lambda t: t[:, 1].zero_(),
        lambda t: torch.add(t, 1, out=t),
        lambda t: F.dropout(t, 0.5, True, True),
        lambda t: t.clamp_(min=0),
        lambda t: t.view(-1).fill_(3.0),
    ],
)
def test_every_kind_of_inplace_write_is_caught(overwrite: object) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            overwrite(y)  # type: ignore[operator]
            return y

    net = Net()
    x = torch.randn(2, 1, 6, 6)
    with nl.record(net, "conv") as rec, torch.no_grad():
        net(x)
    torch.testing.assert_close(rec["conv"], net.conv(x).detach(), rtol=0, atol=0)


def test_augmented_assignment_is_caught() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            y += 1
            return y

    net = Net()
    x = torch.randn(2, 1, 6, 6)
    with nl.record(net, "conv") as rec, torch.no_grad():
        net(x)
    torch.testing.assert_close(rec["conv"], net.conv(x).detach(), rtol=0, atol=0)


def test_no_copy_when_nothing_writes_in_place() -> None:
    net = TinyConvNet().eval()
    x = torch.randn(2, 1, 8, 8)
    seen: dict[str, torch.Tensor] = {}
    net.conv1.register_forward_hook(lambda m, a, out: seen.update(out=out))
    with nl.record(net, "conv1") as rec:
        net(x)
    # Zero-copy: the recorder holds a view of the model's own output.
    assert rec["conv1"].data_ptr() == seen["out"].data_ptr()


def test_lstm_tuple_output_and_select() -> None:
    net = RowClassifier("lstm", input_size=5, hidden_size=4, num_classes=3).eval()
    x = torch.randn(2, 7, 5)
    with nl.record(net, "rnn") as rec:
        net(x)
    output, (_h, c) = net.rnn(x)
    assert rec["rnn"].shape == (2, 7, 4)
    torch.testing.assert_close(rec["rnn"], output)
    with nl.record(net, "rnn", select=lambda out: out[1][1]) as rec:
        net(x)
    torch.testing.assert_close(rec["rnn"], c)


def test_gru_hidden_state_via_select() -> None:
    net = RowClassifier("gru", input_size=5, hidden_size=4).eval()
    x = torch.randn(2, 7, 5)
    with nl.record(net, "rnn", select=lambda out: out[1]) as rec:
        net(x)
    torch.testing.assert_close(rec["rnn"][0], net.rnn(x)[0][:, -1])


def test_detach_false_keeps_the_graph() -> None:
    net = TinyConvNet().eval()
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    with nl.record(net, "conv2", detach=False) as rec:
        net(x)
    assert rec["conv2"].requires_grad
    (grad,) = torch.autograd.grad(rec["conv2"][:, 0].sum(), x)
    assert grad.abs().sum() > 0


def test_detach_false_with_inplace_relu_keeps_a_valid_graph() -> None:
    net = TinyConvNet(inplace=True).eval()
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    with nl.record(net, "conv1", detach=False) as rec:
        net(x)
    (grad,) = torch.autograd.grad(rec["conv1"].sum(), x)
    (expected,) = torch.autograd.grad(net.conv1(x).sum(), x)
    torch.testing.assert_close(grad, expected)


def test_default_detaches_and_no_grad_works() -> None:
    net = TinyConvNet().eval()
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    with nl.record(net, "conv1") as rec:
        net(x)
    assert not rec["conv1"].requires_grad
    with nl.record(net, "conv1") as rec, torch.no_grad():
        net(x)
    assert rec["conv1"].shape == (2, 4, 8, 8)


def test_device_argument_moves_tensors() -> None:
    net = TinyConvNet().eval()
    with nl.record(net, "conv1", device="cpu") as rec:
        net(torch.randn(1, 1, 8, 8))
    assert rec["conv1"].device.type == "cpu"


def test_float64_model() -> None:
    net = TinyConvNet().double().eval()
    with nl.record(net, nn.Conv2d) as rec:
        net(torch.randn(1, 1, 8, 8, dtype=torch.float64))
    assert rec["conv1"].dtype == torch.float64 and rec["conv2"].dtype == torch.float64


def test_hooks_removed_when_block_raises() -> None:
    net = TinyConvNet().eval()
    with model_unchanged(net), pytest.raises(RuntimeError, match="boom"):
        with nl.record(net, nn.Conv2d):
            net(torch.randn(1, 1, 8, 8))
            raise RuntimeError("boom")
    assert _no_hooks(net)


def test_hooks_removed_when_the_model_raises() -> None:
    net = TinyConvNet().eval()
    with model_unchanged(net), pytest.raises(RuntimeError):
        with nl.record(net, nn.Conv2d):
            net(torch.randn(1, 2, 8, 8))  # wrong number of channels


def test_recorder_is_read_only_and_readable_after_exit() -> None:
    net = TinyConvNet().eval()
    with nl.record(net, "conv1") as rec:
        net(torch.randn(1, 1, 8, 8))
    with pytest.raises(TypeError):
        rec["conv1"] = torch.zeros(1)  # type: ignore[index]
    assert rec["conv1"].shape == (1, 4, 8, 8)
    net(torch.randn(3, 1, 8, 8))  # after exit nothing is recorded any more
    assert rec["conv1"].shape == (1, 4, 8, 8)
    assert "conv1" in repr(rec)
    assert set(rec.layers) == {"conv1"}


def test_reading_a_layer_that_never_ran() -> None:
    net = TinyConvNet().eval()
    with nl.record(net, ["conv1", "fc"]) as rec:
        net.conv1(torch.randn(1, 1, 8, 8))  # only a submodule ran
        with pytest.raises(nl.NotRecordedError, match=r"'fc'.*has not been called"):
            rec["fc"]
        with pytest.raises(nl.NotRecordedError):
            rec.calls("fc")
    assert isinstance(nl.NotRecordedError("x"), KeyError)
    with pytest.raises(nl.LayerNotFoundError, match="recorded layers"):
        rec["conv2"]


def test_select_returning_a_non_tensor_is_a_clear_error() -> None:
    net = TinyConvNet().eval()
    with model_unchanged(net):
        with pytest.raises(nl.NetlensTypeError, match=r"select to return a torch\.Tensor"):
            with nl.record(net, "conv1", select=lambda out: out.shape):
                net(torch.randn(1, 1, 8, 8))
        with pytest.raises(nl.NetlensTypeError, match="callable"):
            nl.record(net, "conv1", select=3)  # type: ignore[arg-type]


def test_layer_returning_no_tensor_asks_for_select() -> None:
    class Dicty(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"x": x}

    net = nn.Sequential()
    net.add_module("d", Dicty())
    with pytest.raises(nl.NetlensTypeError, match="select="):
        with nl.record(net, "d"):
            net(torch.zeros(1))
    with nl.record(net, "d", select=lambda out: out["x"]) as rec:
        net(torch.ones(1))
    assert rec["d"].item() == 1.0


def test_model_unchanged_over_the_zoo_normal_and_raising(zoo_model: ZooModel) -> None:
    net = zoo_model.model
    with model_unchanged(net):
        with nl.record(net, [zoo_model.feature_layer, "fc"]) as rec, torch.no_grad():
            # residual is in training mode: use a copy of its inputs under no_grad; BN running
            # stats would change, so only run the zoo models that are in eval mode.
            if not net.training:
                net(zoo_model.inputs)
        if not net.training:
            assert rec["fc"].shape == (zoo_model.inputs.shape[0], 3)
    with model_unchanged(net), pytest.raises(ValueError):
        with nl.record(net, zoo_model.feature_layer):
            raise ValueError("user error inside the block")


def test_nested_recorders() -> None:
    net = TinyConvNet(inplace=True).eval()
    x = torch.randn(1, 1, 8, 8)
    with nl.record(net, "conv1") as outer, nl.record(net, ["conv1", "conv2"]) as inner:
        net(x)
    torch.testing.assert_close(outer["conv1"], inner["conv1"])
    torch.testing.assert_close(outer["conv1"], net.conv1(x))
    assert _no_hooks(net)
