from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netlens as nl
from netlens.models import LeNet5, RowClassifier
from netlens.testing import TinyConvNet, ZooModel, contract_zoo, model_unchanged, model_zoo


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
    with nl.record(net, ["conv1", "fc"], device="meta") as rec:
        net(torch.randn(1, 1, 8, 8))
    assert rec["conv1"].device.type == "meta" and rec["conv1"].shape == (1, 4, 8, 8)
    assert rec["fc"].device == torch.device("meta")
    with nl.record(net, "conv1", device=torch.device("meta")) as rec:
        net(torch.randn(1, 1, 8, 8))
    assert rec["conv1"].is_meta


def test_device_of_the_model_keeps_the_copy_on_write() -> None:
    # device="cpu" on a CPU model moves nothing: the recorded tensor is the model's own, and
    # still needs protecting from the in-place ReLU after it
    net = TinyConvNet(inplace=True).eval()
    x = torch.randn(2, 1, 8, 8)
    with nl.record(net, "conv1", device="cpu") as rec:
        net(x)
    torch.testing.assert_close(rec["conv1"], net.conv1(x), rtol=0, atol=0)


def test_bad_device() -> None:
    net = TinyConvNet().eval()
    with model_unchanged(net):
        with pytest.raises(nl.NetlensValueError, match="name a device"):
            nl.record(net, "conv1", device="gpu:x")
        with pytest.raises(nl.NetlensTypeError, match="device to be None, a str"):
            nl.record(net, "conv1", device=0)  # type: ignore[arg-type]


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


def test_select_picking_no_tensor_is_a_clear_error() -> None:
    net = TinyConvNet().eval()
    with model_unchanged(net):
        with pytest.raises(nl.NetlensTypeError, match=r"select=.* to pick a tensor .* 'conv1'"):
            with nl.record(net, "conv1", select=lambda out: out.shape):
                net(torch.randn(1, 1, 8, 8))
        # an index needs a tuple or list: the conv returns a tensor
        with pytest.raises(nl.NetlensTypeError, match=r"'conv1' to return a tuple or list"):
            with nl.record(net, "conv1", select=3):
                net(torch.randn(1, 1, 8, 8))
        expected = r"an index \(int\), a key \(str\) or a callable"
        with pytest.raises(nl.NetlensTypeError, match=expected):
            nl.record(net, "conv1", select=1.5)  # type: ignore[arg-type]
    assert _no_hooks(net)


def test_select_by_index_key_and_callable() -> None:
    net = RowClassifier("lstm", input_size=5, hidden_size=4).eval()
    x = torch.randn(2, 7, 5)
    _, (h, c) = net.rnn(x)
    with nl.record(net, "rnn", select=1) as rec:  # (h, c): its first tensor
        net(x)
    torch.testing.assert_close(rec["rnn"], h)
    with nl.record(net, "rnn", select=lambda out: out[1][1]) as rec:
        net(x)
    torch.testing.assert_close(rec["rnn"], c)
    with pytest.raises(nl.NetlensValueError, match=r"select=2 to pick a part"):
        with nl.record(net, "rnn", select=2):
            net(x)

    member = contract_zoo()["dict_block"]
    block = member.model.block
    images = member.inputs
    with nl.record(member.model, "block") as rec:  # a mapping: its first tensor value
        member.model(images)
    torch.testing.assert_close(rec["block"], block(images)["hidden"])
    with nl.record(member.model, "block", select="gate") as rec:
        member.model(images)
    torch.testing.assert_close(rec["block"], block(images)["gate"])
    with pytest.raises(nl.NetlensValueError, match=r"select='nope'.*'hidden', 'gate'"):
        with nl.record(member.model, "block", select="nope"):
            member.model(images)
    assert _no_hooks(member.model)


def test_layer_returning_no_tensor_asks_for_select() -> None:
    class Wrapped(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, object]:
            return {"note": "no tensor first", "box": [x]}

    class Note(nn.Module):
        def forward(self, x: torch.Tensor) -> str:
            return "not a tensor"

    net = nn.Sequential()
    net.add_module("w", Wrapped())
    other = nn.Sequential()
    other.add_module("n", Note())
    with pytest.raises(nl.NetlensTypeError, match=r"'n' to return a tensor.*pass select="):
        with nl.record(other, "n"):
            other(torch.zeros(1))
    with nl.record(net, "w") as rec:  # the first tensor, however deep
        net(torch.ones(1))
    assert rec["w"].item() == 1.0
    with nl.record(net, "w", select=lambda out: out["box"][0] * 2) as rec:
        net(torch.ones(1))
    assert rec["w"].item() == 2.0


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
    assert _mode_stack() == []


# -- one owner, one block at a time ----------------------------------------------------------


def _mode_stack() -> list[object]:
    return list(torch.overrides._get_current_function_mode_stack())


def test_entering_an_active_recorder_again_is_an_error_and_leaks_nothing() -> None:
    net = TinyConvNet(inplace=True).eval()
    x = torch.randn(2, 1, 8, 8)
    with model_unchanged(net):
        rec = nl.record(net, ["conv1", "relu1"])
        with pytest.raises(nl.NetlensValueError, match="already inside its with block"):
            with rec:
                net(x)
                with rec:
                    pass
        assert _no_hooks(net) and _mode_stack() == []
        # after its block a recorder can be entered again, and it still works
        with rec:
            net(x)
        torch.testing.assert_close(rec["conv1"], net.conv1(x), rtol=0, atol=0)
    assert _no_hooks(net) and _mode_stack() == []


def test_each_thread_sees_only_its_own_forward_passes() -> None:
    import sys
    import threading

    passes = 500
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True)).eval()
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(passes, 2, 3, generator=generator) for _ in range(2)]
    with torch.no_grad():
        expected = [[net[0](x) for x in batch] for batch in inputs]  # before any hook
    wrong = [0, 0]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(thread: int) -> None:
        try:
            with nl.record(net, ["0", "1"]) as rec, torch.no_grad():
                start.wait()
                for index in range(passes):
                    net(inputs[thread][index])
                    if not torch.equal(rec["0"], expected[thread][index]):
                        wrong[thread] += 1
                    if not torch.equal(rec["1"], expected[thread][index].clamp(min=0)):
                        wrong[thread] += 1
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert wrong == [0, 0]
    assert _no_hooks(net)


def test_passes_of_other_threads_are_not_recorded() -> None:
    import threading

    net = TinyConvNet().eval()
    with nl.record(net, "conv1") as rec:
        thread = threading.Thread(target=lambda: net(torch.randn(1, 1, 8, 8)))
        thread.start()
        thread.join()
        assert "conv1" not in rec
        net(torch.randn(3, 1, 8, 8))
    assert rec["conv1"].shape[0] == 3


# -- the copy-on-write mode is on only during a pass ---------------------------------------------


class _Watched(nn.Module):
    """conv, in-place ReLU, linear; notes the height of the mode stack before each layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(2 * 4 * 4, 3)
        self.heights: dict[str, int] = {}
        for name in ("conv", "relu", "fc"):
            module = getattr(self, name)
            module.register_forward_pre_hook(
                lambda m, a, name=name: self.heights.__setitem__(name, len(_mode_stack()))
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


def test_mode_is_pushed_at_the_first_recorded_tensor_and_popped_after_the_pass() -> None:
    net = _Watched().eval()
    x = torch.randn(2, 1, 6, 6)
    with nl.record(net, "fc") as rec:
        net(x)
        assert net.heights == {"conv": 0, "relu": 0, "fc": 0}  # nothing recorded before fc
        assert _mode_stack() == []  # between passes
    with nl.record(net, "conv") as rec:
        net(x)
        assert net.heights == {"conv": 0, "relu": 1, "fc": 1}
        assert _mode_stack() == []
    torch.testing.assert_close(rec["conv"], net.conv(x), rtol=0, atol=0)


def test_mode_is_popped_when_the_model_raises() -> None:
    net = TinyConvNet(inplace=True).eval()
    with model_unchanged(net), nl.record(net, "conv1") as rec:
        with pytest.raises(RuntimeError):
            net(torch.randn(1, 1, 12, 12))  # fc does not fit: raises after conv1 ran
        assert rec["conv1"].shape == (1, 4, 12, 12)
        assert _mode_stack() == []
    assert _mode_stack() == []


class _Stop(BaseException):
    pass


def test_a_pass_cut_short_by_a_base_exception_is_closed_by_the_next() -> None:
    # forward hooks with always_call=True do not run for a BaseException (KeyboardInterrupt,
    # the StopForward of netlens' own techniques): the next pass, or the block's end, cleans up
    net = TinyConvNet(inplace=True).eval()
    x = torch.randn(2, 1, 8, 8)

    def stop(module: nn.Module, args: object, output: object) -> None:
        raise _Stop

    with model_unchanged(net), nl.record(net, ["conv1", "relu1"]) as rec:
        handle = net.relu1.register_forward_hook(stop)
        with pytest.raises(_Stop):
            net(x)
        handle.remove()
        assert len(_mode_stack()) == 1  # left by the cut pass
        net(x)
        assert _mode_stack() == []
        assert len(rec.calls("conv1")) == 1
        torch.testing.assert_close(rec["conv1"], net.conv1(x), rtol=0, atol=0)
        handle = net.relu1.register_forward_hook(stop)
        with pytest.raises(_Stop):
            net(x)
        handle.remove()
    assert _mode_stack() == []  # the block's end took the mode of the cut pass off


class _Doubling(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        return func(*args, **(kwargs or {}))


class _OwnMode(nn.Module):
    """A model whose forward runs its layers inside a torch function mode of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.relu = nn.ReLU(inplace=True)
        self.mode = _Doubling()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.mode:
            y = self.relu(self.conv(x))
        stack = _mode_stack()
        assert self.mode not in stack  # its with block popped its own mode
        return y.add_(1)


def test_modes_entered_by_the_model_itself_stay_balanced() -> None:
    net = _OwnMode().eval()
    x = torch.randn(2, 1, 6, 6)
    with nl.record(net, "conv") as rec:
        net(x)
        assert _mode_stack() == []
    torch.testing.assert_close(rec["conv"], net.conv(x), rtol=0, atol=0)
    with _Doubling() as outer, nl.record(net, "conv") as rec:
        net(x)
        assert _mode_stack() == [outer]
    torch.testing.assert_close(rec["conv"], net.conv(x), rtol=0, atol=0)


def test_recording_works_under_inference_mode() -> None:
    net = TinyConvNet(inplace=True).eval()
    x = torch.randn(2, 1, 8, 8)
    with model_unchanged(net), torch.inference_mode(), nl.record(net, nn.Conv2d) as rec:
        net(x)
        expected = net.conv1(x)
    torch.testing.assert_close(rec["conv1"], expected, rtol=0, atol=0)
    assert bool((rec["conv1"] < 0).any())
    assert _mode_stack() == []
