"""Incremental occlusion on the architectures users bring: torchvision's model definitions.

As in test_incremental.py, every comparison runs the same call with ``incremental=True`` and
``incremental=False`` and asks for the same maps (1e-9 relative in float64, 1e-4 in float32),
here on torchvision models with random weights and BatchNorm statistics that are not the
identity; then on what those models and their users do that a tiny test model does not: conv
subclasses, in-place dropout on a view, ``layer=`` on every kind of layer, and calls from
several threads at once.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import pytest
import torch
from _models import FlattenDropout, HalvedConv2d, StdConv2d, UnitNorm, randomize_batchnorm
from _torchvision import import_torchvision
from test_incremental import _assert_same
from torch import nn
from torch.nn.utils import parametrize

import netlens as nl
from netlens.testing import model_unchanged

models = import_torchvision().models


# One intra-op thread for this file's tests (tests/conftest.py): as in test_incremental.py, small
# inputs gain nothing from intra-op threads, which only add contention on a shared machine.
ONE_THREAD = True


# -- models ------------------------------------------------------------------------------------


def _vgg11_bn() -> nn.Module:
    # torchvision's classifier holds 25088 x 4096 weights (seconds to initialise, 800 MB in
    # float64); a narrow one after the same features, adaptive pool and flatten takes the same
    # path through incremental inference.
    with torch.device("meta"):
        model = models.vgg11_bn(num_classes=10)
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 10)
    )
    model.to_empty(device="cpu")
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model


class Architecture(NamedTuple):
    build: Callable[[], nn.Module]
    size: int  # inputs (1, 3, size, size)
    window: int | tuple[int, int]
    stride: int | tuple[int, int]


# Each with 4 to 16 occluder positions, some with gaps between windows or ragged edges.
ARCHITECTURES = {
    "resnet18": Architecture(lambda: models.resnet18(num_classes=10), 64, 16, 16),
    "densenet121": Architecture(lambda: models.densenet121(num_classes=10), 32, 8, 8),
    "mobilenet_v2": Architecture(lambda: models.mobilenet_v2(num_classes=10), 64, 24, 20),
    "mobilenet_v3_small": Architecture(
        lambda: models.mobilenet_v3_small(num_classes=10), 64, (16, 24), (16, 20)
    ),
    # Its classifier applies nn.Dropout(inplace=True) to the flattened features.
    "efficientnet_b0": Architecture(lambda: models.efficientnet_b0(num_classes=10), 64, 16, 16),
    "googlenet": Architecture(
        lambda: models.googlenet(num_classes=10, aux_logits=False, init_weights=True), 64, 20, 22
    ),
    "inception_v3": Architecture(  # needs at least 75 x 75
        lambda: models.inception_v3(num_classes=10, aux_logits=False, init_weights=True),
        80,
        20,
        20,
    ),
    "squeezenet1_1": Architecture(lambda: models.squeezenet1_1(num_classes=10), 64, 12, 18),
    "shufflenet_v2_x0_5": Architecture(
        lambda: models.shufflenet_v2_x0_5(num_classes=10), 64, 16, 16
    ),
    "vgg11_bn": Architecture(_vgg11_bn, 64, 16, 16),
    "convnext_tiny": Architecture(lambda: models.convnext_tiny(num_classes=10), 64, 24, 20),
}


def _build(name: str, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, torch.Tensor]:
    architecture = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = randomize_batchnorm(architecture.build(), seed=1)
    inputs = torch.randn(1, 3, architecture.size, architecture.size)
    return model.to(dtype).eval(), inputs.to(dtype)


def _check(
    model: nn.Module,
    inputs: torch.Tensor,
    modes: Sequence[bool | str] = (True,),
    **kwargs: Any,
) -> None:
    """Each of ``modes`` of ``incremental`` gives the plain path's results."""
    with model_unchanged(model):
        plain = nl.occlusion(model, inputs, incremental=False, **kwargs)
        for mode in modes:
            result = nl.occlusion(model, inputs, incremental=mode, **kwargs)  # type: ignore[arg-type]
            if mode is True:
                assert result.incremental is True
            _assert_same(result, plain)


def _convert_conv(old: nn.Conv2d, kind: str) -> nn.Module:
    """The same convolution (shape and weights) as a subclass or with a parametrization."""
    cls = {"forward": StdConv2d, "conv_forward": HalvedConv2d, "parametrization": nn.Conv2d}[kind]
    new = cls(
        old.in_channels,
        old.out_channels,
        old.kernel_size,  # type: ignore[arg-type]
        old.stride,  # type: ignore[arg-type]
        old.padding,  # type: ignore[arg-type]
        old.dilation,  # type: ignore[arg-type]
        old.groups,
        bias=old.bias is not None,
        dtype=old.weight.dtype,
    )
    new.load_state_dict(old.state_dict())
    if kind == "parametrization":
        parametrize.register_parametrization(new, "weight", UnitNorm())
    return new


def _qat_net() -> nn.Module:
    """Two ``torch.ao.nn.qat.Conv2d``, calibrated then frozen; inputs ``(N, 3, 24, 24)``.

    An ordinary conv first, so that incremental inference has work to do even if it runs the
    others as opaque modules.
    """
    qconfig = torch.ao.quantization.get_default_qat_qconfig("fbgemm")
    model = nn.Sequential(
        nn.Conv2d(3, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        torch.ao.nn.qat.Conv2d(3, 8, 3, qconfig=qconfig),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        torch.ao.nn.qat.Conv2d(8, 8, 3, padding=1, qconfig=qconfig),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 11 * 11, 10),
    )
    model.train()
    with torch.no_grad():  # the fake quantizers' observers calibrate on a forward pass
        model(torch.randn(8, 3, 24, 24))
    # Frozen: otherwise every forward pass would move the quantization ranges.
    model.apply(torch.ao.quantization.disable_observer)
    return randomize_batchnorm(model, seed=1).eval()


def _two_conv_net() -> nn.Module:
    """Inputs ``(N, 3, 48, 48)``."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 12 * 12, 10),
    ).eval()


def _in_threads(*workers: Callable[[threading.Barrier], None]) -> None:
    """Run each worker in its own thread, started together; re-raise the first exception."""
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def run(worker: Callable[[threading.Barrier], None]) -> None:
        try:
            worker(barrier)
        except BaseException as error:
            errors.append(error)
            barrier.abort()  # the others fail fast at their barrier instead of waiting

    threads = [threading.Thread(target=run, args=(worker,)) for worker in workers]
    switch = sys.getswitchinterval()
    # Threads take turns every microsecond instead of every 5 ms: often enough that one of
    # them runs while the other is inside a short section such as tracing the model.
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sys.setswitchinterval(switch)
    assert not any(thread.is_alive() for thread in threads), "a worker thread hangs"
    if errors:
        raise errors[0]


# -- torchvision definitions -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_equals_the_plain_path_in_float64(name: str) -> None:
    model, inputs = _build(name)
    architecture = ARCHITECTURES[name]
    _check(model, inputs, window=architecture.window, stride=architecture.stride)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "vgg11_bn"])
def test_equals_the_plain_path_in_float32(name: str) -> None:
    model, inputs = _build(name, torch.float32)
    architecture = ARCHITECTURES[name]
    _check(model, inputs, window=architecture.window, stride=architecture.stride)


@pytest.mark.parametrize(
    "layer",
    [
        "conv1",
        "layer1.0.bn1",
        "relu",
        "layer1.0.relu",  # called twice in its block
        "layer2.0",
        "avgpool",
        "fc",
    ],
)
def test_layer_of_each_kind(layer: str) -> None:
    model, inputs = _build("resnet18")
    _check(model, inputs, window=16, stride=16, layer=layer)


# -- what users do -----------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [None, "layer1.0.conv1"])
@pytest.mark.parametrize("kind", ["forward", "conv_forward", "parametrization"])
def test_conv_subclasses(kind: str, layer: str | None) -> None:
    # A conv that does not compute nn.Conv2d's function of its weight: incremental inference
    # may run it as an opaque module or compute it exactly, never as a plain nn.Conv2d.
    model, inputs = _build("resnet18")
    model.layer1[0].conv1 = _convert_conv(model.layer1[0].conv1, kind)
    _check(model, inputs, modes=(True, "auto"), window=16, stride=16, layer=layer)


def test_qat_conv() -> None:
    model = _qat_net()
    inputs = torch.randn(1, 3, 24, 24)
    _check(model, inputs, modes=(True, "auto"), window=8, stride=8)


def test_in_place_dropout_on_a_view() -> None:
    # Dropout is the identity in eval mode; in place on a view, it must not stop the engine.
    torch.manual_seed(0)
    model = FlattenDropout().double().eval()
    inputs = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    _check(model, inputs, window=4, stride=4)


def test_forward_passes_in_another_thread() -> None:
    # Incremental inference traces the model: plain forward passes of the same model in another
    # thread meanwhile must see none of it (no torch.fx Proxy, no hook, no error).
    model = _two_conv_net()
    inputs = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        reference = model(inputs)
    expected = nl.occlusion(model, inputs, window=12, stride=12, incremental=True)
    done = threading.Event()
    outputs: list[Any] = []

    def occlude(barrier: threading.Barrier) -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(4):
                result = nl.occlusion(model, inputs, window=12, stride=12, incremental=True)
                _assert_same(result, expected)
        finally:
            done.set()

    def forward(barrier: threading.Barrier) -> None:
        barrier.wait(timeout=30)
        while True:
            stop = done.is_set()
            with torch.no_grad():
                output = model(inputs)
            assert type(output) is torch.Tensor, f"a forward pass returned {type(output)}"
            assert torch.equal(output, reference)
            outputs.append(output)
            if stop:
                break

    _in_threads(occlude, forward)
    assert len(outputs) > 1


def test_two_calls_at_once_on_one_model() -> None:
    model = _two_conv_net()
    inputs = [torch.randn(1, 3, 48, 48), torch.randn(1, 3, 48, 48)]
    expected = [nl.occlusion(model, x, window=12, stride=12, incremental=True) for x in inputs]

    def worker(index: int) -> Callable[[threading.Barrier], None]:
        def occlude(barrier: threading.Barrier) -> None:
            barrier.wait(timeout=30)
            for _ in range(3):
                result = nl.occlusion(model, inputs[index], window=12, stride=12, incremental=True)
                assert result.incremental is True
                _assert_same(result, expected[index])

        return occlude

    with model_unchanged(model):
        _in_threads(worker(0), worker(1))
