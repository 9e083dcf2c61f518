from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netlens as nl
from netlens._maximize import _INIT_STD, _channel_seed, _gaussian_blur
from netlens.models import LeNet5, RowClassifier
from netlens.testing import ZooModel, model_unchanged


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Many small optimisation steps: more threads only add contention on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _seeded(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


@pytest.fixture(scope="module")
def lenet() -> nn.Module:
    return _seeded(LeNet5)


# -- the known answer ---------------------------------------------------------------------------


def test_conv1_centre_unit_reaches_the_box_optimum(lenet: nn.Module) -> None:
    # A conv unit that sees the input directly is linear in it: over the box [-1, 1] its
    # maximum is sum|w| + b, reached at x = sign(w) under the receptive field.
    result = nl.maximize_activation(
        lenet,
        "conv1",
        objective="center",
        value_range=(-1, 1),
        transforms=None,
        input_shape=(1, 28, 28),
        seed=0,
    )
    weight, bias = lenet.conv1.weight.detach(), lenet.conv1.bias.detach()
    optimum = weight.abs().flatten(1).sum(1) + bias
    assert result.channels == tuple(range(32))
    assert result.activations.shape == (32,)
    assert bool((result.activations >= 0.99 * optimum).all()), result.activations / optimum
    assert bool((result.activations <= optimum + 1e-5).all())
    # the reached value is what conv1 computes at the centre of the returned images
    centre = lenet.conv1(result.images)[torch.arange(32), torch.arange(32), 14, 14]
    torch.testing.assert_close(result.activations, centre.detach(), rtol=1e-5, atol=1e-5)
    patch = result.images[:, 0, 12:17, 12:17]
    assert bool((patch.sign() == weight[:, 0].sign()).all())
    assert float(result.images.abs().max()) < 1.0  # strictly inside: the tanh squash


# -- against a slow, obvious float64 reference --------------------------------------------------


def _reference(
    model: nn.Module,
    layer: str,
    channels: list[int],
    input_shape: tuple[int, ...],
    steps: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One channel at a time, the full model each step, tanh squash, mean objective."""
    module = dict(model.named_modules())[layer]
    images, history = [], []
    for channel in channels:
        generator = torch.Generator().manual_seed(_channel_seed(seed, channel))
        raw = _INIT_STD * torch.randn(input_shape, generator=generator, dtype=torch.float64)
        raw = raw[None].requires_grad_(True)
        optimizer = torch.optim.Adam([raw], lr=0.05)
        captured: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda m, i, o, seen=captured: seen.append(o))
        values = []
        try:
            for _ in range(steps):
                optimizer.zero_grad()
                captured.clear()
                with torch.enable_grad():
                    model(torch.tanh(raw))
                    value = captured[-1][:, channel].mean()
                    (raw.grad,) = torch.autograd.grad(-value, [raw])
                optimizer.step()
                values.append(value.detach())
        finally:
            handle.remove()
        images.append(torch.tanh(raw.detach())[0])
        history.append(torch.stack(values))
    return torch.stack(images), torch.stack(history, dim=1)


@pytest.mark.parametrize(("layer", "channels"), [("conv2", [0, 5, 63]), ("fc2", [1, 7])])
def test_matches_a_plain_float64_loop(layer: str, channels: list[int]) -> None:
    model = _seeded(LeNet5).double()
    images, history = _reference(model, layer, channels, (1, 28, 28), steps=12, seed=3)
    with model_unchanged(model):
        result = nl.maximize_activation(
            model,
            layer,
            channels,
            input_shape=(1, 28, 28),
            steps=12,
            transforms=None,
            value_range=(-1, 1),
            seed=3,
        )
    assert result.images.dtype == torch.float64
    torch.testing.assert_close(result.images, images, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(result.history, history, rtol=1e-9, atol=1e-9)


def test_one_channel_per_input_equals_the_full_layer() -> None:
    # A hook of the user's own on the layer makes netlens run the layer in full instead of
    # computing one channel per input; both must agree.
    model = _seeded(LeNet5).double()
    kwargs: dict[str, Any] = {"input_shape": (1, 28, 28), "steps": 10, "seed": 1}
    for layer in ("conv2", "fc1"):
        sliced = nl.maximize_activation(model, layer, [2, 9, 30], **kwargs)
        handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: None)
        try:
            full = nl.maximize_activation(model, layer, [2, 9, 30], **kwargs)
        finally:
            handle.remove()
        torch.testing.assert_close(sliced.images, full.images, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(sliced.activations, full.activations, rtol=1e-9, atol=1e-9)


# -- batching and seeds -------------------------------------------------------------------------


@pytest.mark.parametrize("transforms", [None, "default"])
def test_a_batch_of_channels_equals_each_channel_alone(lenet: nn.Module, transforms: Any) -> None:
    kwargs: dict[str, Any] = {
        "input_shape": (1, 28, 28),
        "steps": 24,
        "transforms": transforms,
        "value_range": (-1, 1),
        "seed": 7,
    }
    batch = nl.maximize_activation(lenet, "conv2", [4, 17, 40], **kwargs)
    for index, channel in enumerate([4, 17, 40]):
        alone = nl.maximize_activation(lenet, "conv2", channel, **kwargs)
        assert alone.channels == (channel,)
        torch.testing.assert_close(alone.images[0], batch.images[index], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            alone.activations[0], batch.activations[index], rtol=1e-4, atol=1e-4
        )


def test_a_seed_repeats_the_run_and_leaves_the_global_rng_alone(lenet: nn.Module) -> None:
    state = torch.get_rng_state()
    kwargs: dict[str, Any] = {"input_shape": (1, 28, 28), "steps": 8, "tv": 0.1, "l2": 0.01}
    first = nl.maximize_activation(lenet, "relu2", [0, 1], seed=11, **kwargs)
    second = nl.maximize_activation(lenet, "relu2", [0, 1], seed=11, **kwargs)
    other = nl.maximize_activation(lenet, "relu2", [0, 1], seed=12, **kwargs)
    unseeded = nl.maximize_activation(lenet, "relu2", [0, 1], **kwargs)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.history, second.history)
    assert not torch.equal(first.images, other.images)
    assert not torch.equal(first.images, unseeded.images)


# -- the model is left as it was ----------------------------------------------------------------


def test_model_unchanged_over_the_zoo(zoo_model: ZooModel) -> None:
    model, shape = zoo_model.model, tuple(zoo_model.inputs.shape[1:])
    with model_unchanged(model):
        result = nl.maximize_activation(
            model, zoo_model.feature_layer, input_shape=shape, steps=3, seed=0
        )
    assert result.images.shape[1:] == shape
    assert result.history.shape == (3, len(result.channels))
    with model_unchanged(model), pytest.raises(nl.NetlensValueError):
        nl.maximize_activation(model, zoo_model.feature_layer, 99, input_shape=shape, steps=3)
    with model_unchanged(model), pytest.raises(nl.NetlensValueError):
        # fails inside the optimisation loop, with every hook and flag in place
        nl.maximize_activation(
            model, zoo_model.feature_layer, objective=lambda m: m, input_shape=shape, steps=3
        )


def test_model_unchanged_when_the_model_raises_and_grads_are_kept() -> None:
    model = _seeded(LeNet5)
    model.fc2.weight.grad = torch.ones_like(model.fc2.weight)
    model.train()
    with model_unchanged(model), pytest.raises(nl.NetlensValueError, match="input_shape"):
        nl.maximize_activation(model, "fc2", input_shape=(1, 32, 32), steps=2)
    with model_unchanged(model):
        nl.maximize_activation(model, "fc2", 0, input_shape=(1, 28, 28), steps=2)


def test_works_under_no_grad_and_stops_at_the_target_layer(lenet: nn.Module) -> None:
    calls: list[int] = []
    handle = lenet.fc1.register_forward_pre_hook(lambda m, i: calls.append(1))
    try:
        with torch.no_grad():
            nl.maximize_activation(lenet, "relu2", [0], input_shape=(1, 28, 28), steps=5)
            assert calls == [1]  # the probe (the whole model, once); no step reaches fc1
            # fc1 is sized for 28x28 inputs: 32x32 fails there, but conv2 comes first
            result = nl.maximize_activation(lenet, "conv2", [0], input_shape=(1, 32, 32), steps=3)
    finally:
        handle.remove()
    assert result.images.shape == (1, 1, 32, 32)


def test_a_module_called_twice_is_maximised_at_its_last_call() -> None:
    zoo = nl.testing.model_zoo()["shared"]
    model = zoo.model
    result = nl.maximize_activation(
        model, "block.0", [1, 2], input_shape=(1, 8, 8), steps=5, seed=0, transforms=None
    )
    with torch.no_grad():
        first = model.block(model.stem(result.images))
        second = model.block[0](first)
    expected = second[torch.arange(2), torch.tensor([1, 2])].flatten(1).mean(1)
    torch.testing.assert_close(result.activations, expected, rtol=1e-5, atol=1e-6)


# -- parametrisations, objectives, models -------------------------------------------------------


def test_fourier_parametrisation(lenet: nn.Module) -> None:
    result = nl.maximize_activation(
        lenet,
        "conv1",
        [0, 1, 2, 3],
        objective="center",
        param="fourier",
        transforms=None,
        value_range=(-1, 1),
        input_shape=(1, 28, 28),
        steps=128,
        seed=0,
    )
    weight, bias = lenet.conv1.weight.detach()[:4], lenet.conv1.bias.detach()[:4]
    optimum = weight.abs().flatten(1).sum(1) + bias
    assert bool((result.activations >= 0.9 * optimum).all()), result.activations / optimum
    assert float(result.images.abs().max()) < 1.0
    assert bool((result.history[-1] > result.history[0]).all())


def test_fourier_image_of_one_frequency_is_a_wave_scaled_by_one_over_f() -> None:
    from netlens._maximize import _Fourier

    spectrum = torch.zeros(1, 1, 16, 9, 2, dtype=torch.float64)
    spectrum[0, 0, 0, 2, 0] = 1.0  # horizontal frequency 2/16
    image = _Fourier(spectrum, (1, 16, 16), 2).image()[0, 0]
    columns = torch.arange(16, dtype=torch.float64)
    wave = torch.cos(2 * torch.pi * 2 * columns / 16) * 2 / 16  # irfft "ortho" of one bin
    expected = wave / (2 / 16) / 4  # scaled by 1/f and by 1/4
    torch.testing.assert_close(image, expected.expand(16, 16), rtol=1e-12, atol=1e-12)


def test_transforms_shift_whole_pixels_and_keep_the_range() -> None:
    from netlens._maximize import _transform

    images = torch.rand(2, 3, 12, 10, dtype=torch.float64)
    identity = torch.tensor([[0.5, 0.5, 0.5, 0.5]] * 2, dtype=torch.float64)
    torch.testing.assert_close(_transform(images, identity, ("jitter",), False), images)
    # draws of 0.99 shift by +reach (1 pixel for sizes below 21): output[y, x] = input[y+1, x+1]
    shifted = _transform(images, torch.full((2, 4), 0.99, dtype=torch.float64), ("jitter",), False)
    torch.testing.assert_close(shifted[..., :-1, :-1], images[..., 1:, 1:])
    everything = _transform(
        images, torch.rand(2, 4, dtype=torch.float64), ("jitter", "scale", "rotate"), False
    )
    assert float(everything.min()) >= 0.0 and float(everything.max()) <= 1.0
    # a (T, F) sequence is only shifted along time
    sequence = torch.rand(2, 12, 10, dtype=torch.float64)
    moved = _transform(sequence, torch.full((2, 4), 0.99, dtype=torch.float64), ("jitter",), True)
    torch.testing.assert_close(moved[:, :-1], sequence[:, 1:])


def test_blur_keeps_a_constant_and_smooths_noise() -> None:
    constant = torch.full((2, 3, 10, 10), 0.25, dtype=torch.float64)
    torch.testing.assert_close(_gaussian_blur(constant, 1.0, 2), constant)
    noise = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    assert float(_gaussian_blur(noise, 1.0, 2).std()) < 0.6 * float(noise.std())
    result = nl.maximize_activation(
        _seeded(LeNet5), "conv1", [0], input_shape=(1, 28, 28), steps=6, blur_every=2
    )
    assert bool(torch.isfinite(result.images).all())


def test_recurrent_class_logit_and_hidden_unit() -> None:
    model = _seeded(lambda: RowClassifier("lstm", input_size=8, hidden_size=12, num_classes=5))
    with model_unchanged(model):
        logit = nl.maximize_activation(
            model, "fc", [0, 3], input_shape=(10, 8), steps=30, lr=0.1, seed=0
        )
    assert logit.images.shape == (2, 10, 8)
    with torch.no_grad():
        logits = model(logit.images)
    torch.testing.assert_close(logit.activations, logits[[0, 1], [0, 3]], rtol=1e-5, atol=1e-6)
    assert bool((logit.history[-1] > logit.history[0] + 0.1).all())

    # an LSTM hidden unit at the last time step: the LSTM's output via record's tuple handling
    with model_unchanged(model):
        unit = nl.maximize_activation(
            model,
            "rnn",
            [4],
            objective=lambda maps: maps[:, -1],
            input_shape=(10, 8),
            value_range=(-3, 3),
            steps=40,
            lr=0.1,
            seed=0,
        )
    with torch.no_grad():
        output, _ = model.rnn(unit.images)
    torch.testing.assert_close(unit.activations, output[:, -1, 4], rtol=1e-5, atol=1e-6)
    assert float(unit.activations[0]) > 0.5


def test_colour_images_of_any_size_and_float64() -> None:
    model = _seeded(lambda: LeNet5(in_channels=3, image_size=20)).double()
    result = nl.maximize_activation(
        model, "conv2", [0, 1], input_shape=(3, 20, 20), steps=4, value_range=(0, 1), seed=0
    )
    assert result.images.shape == (2, 3, 20, 20)
    assert result.images.dtype == torch.float64
    assert float(result.images.min()) > 0 and float(result.images.max()) < 1


def test_objective_callable_and_relu_target(lenet: nn.Module) -> None:
    result = nl.maximize_activation(
        lenet,
        "relu1",
        [5],
        objective=lambda maps: maps.amax(dim=(1, 2)),
        input_shape=(1, 28, 28),
        steps=10,
        seed=0,
    )
    with torch.no_grad():
        expected = F.relu(lenet.conv1(result.images))[0, 5].max()
    torch.testing.assert_close(result.activations[0], expected, rtol=1e-5, atol=1e-6)


# -- bad input ------------------------------------------------------------------------------------


BAD: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "channel too high": ({"channels": 32}, nl.NetlensValueError, r"channels in \[0, 32\)"),
    "channel negative": ({"channels": [0, -1]}, nl.NetlensValueError, "channels in"),
    "channels empty": ({"channels": []}, nl.NetlensValueError, "at least one channel"),
    "channels float": ({"channels": 1.5}, nl.NetlensTypeError, "channels"),
    "rank too low": ({"input_shape": (28, 28)}, nl.NetlensValueError, "input_shape"),
    "rank too high": ({"input_shape": (1, 1, 28, 28)}, nl.NetlensValueError, "input_shape"),
    "shape not ints": ({"input_shape": (1, 28.0, 28)}, nl.NetlensValueError, "input_shape"),
    "shape missing": ({"input_shape": None}, nl.NetlensTypeError, "input_shape"),
    "steps zero": ({"steps": 0}, nl.NetlensValueError, "steps > 0"),
    "steps negative": ({"steps": -3}, nl.NetlensValueError, "steps > 0"),
    "lr zero": ({"lr": 0.0}, nl.NetlensValueError, "lr"),
    "lr negative": ({"lr": -0.1}, nl.NetlensValueError, "lr"),
    "lr nan": ({"lr": float("nan")}, nl.NetlensValueError, "lr"),
    "range reversed": ({"value_range": (1, -1)}, nl.NetlensValueError, "low < high"),
    "range empty": ({"value_range": (0.5, 0.5)}, nl.NetlensValueError, "low < high"),
    "range not a pair": ({"value_range": (0, 1, 2)}, nl.NetlensTypeError, "value_range"),
    "unknown param": ({"param": "wavelet"}, nl.NetlensValueError, "param"),
    "unknown transform": ({"transforms": "shear"}, nl.NetlensValueError, "shear"),
    "unknown transform in list": (
        {"transforms": ["jitter", "flip"]},
        nl.NetlensValueError,
        "flip",
    ),
    "unknown objective": ({"objective": "max"}, nl.NetlensValueError, "objective"),
    "objective of wrong shape": (
        {"objective": lambda maps: maps.sum()},
        nl.NetlensValueError,
        "one value per channel",
    ),
    "objective keeps the maps": (
        {"objective": lambda maps: maps},
        nl.NetlensValueError,
        "one value per channel",
    ),
    "objective returns a number": (
        {"objective": lambda maps: 1.0},
        nl.NetlensValueError,
        "one value per channel",
    ),
    "objective detached": (
        {"objective": lambda maps: maps.detach().flatten(1).mean(1)},
        nl.NetlensValueError,
        "depend on the input",
    ),
    "l2 negative": ({"l2": -1.0}, nl.NetlensValueError, "l2"),
    "tv negative": ({"tv": -1.0}, nl.NetlensValueError, "tv"),
    "seed negative": ({"seed": -1}, nl.NetlensValueError, "seed"),
    "seed float": ({"seed": 1.5}, nl.NetlensTypeError, "seed"),
    "blur sigma zero": ({"blur_sigma": 0.0}, nl.NetlensValueError, "blur_sigma"),
    "several layers": ({"layer": "conv*"}, nl.NetlensValueError, "exactly one layer"),
    "unknown layer": ({"layer": "conv3"}, nl.LayerNotFoundError, "conv3"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_a_clear_error_and_leaves_the_model(lenet: nn.Module, case: str) -> None:
    changes, error, message = BAD[case]
    kwargs: dict[str, Any] = {"layer": "conv1", "input_shape": (1, 28, 28), "steps": 2}
    kwargs.update(changes)
    layer = kwargs.pop("layer")
    with model_unchanged(lenet), pytest.raises(error, match=message):
        nl.maximize_activation(lenet, layer, **kwargs)


def test_transforms_need_an_image_or_a_sequence() -> None:
    model = nn.Sequential(nn.Linear(6, 4))
    with pytest.raises(nl.NetlensValueError, match="transforms"):
        nl.maximize_activation(model, "0", input_shape=(6,), transforms=["jitter"], steps=2)
    # "default" means no transforms for a vector input
    result = nl.maximize_activation(model, "0", input_shape=(6,), steps=2)
    assert result.images.shape == (4, 6)


def test_not_a_model() -> None:
    with pytest.raises(nl.NetlensTypeError):
        nl.maximize_activation("net", "conv1", input_shape=(1, 28, 28))  # type: ignore[arg-type]


# -- result and pictures --------------------------------------------------------------------------


def test_plot_grid_and_curves_without_pyplot(lenet: nn.Module) -> None:
    from matplotlib.figure import Figure

    result = nl.maximize_activation(
        lenet, "conv1", [0, 1, 2, 3, 4], input_shape=(1, 28, 28), steps=3, seed=0
    )
    figure, ax = result.plot()
    assert isinstance(figure, Figure)
    assert [text.get_text() for text in ax.texts] == ["0", "1", "2", "3", "4"]
    figure, axes = result.plot(curves=True)
    assert len(axes) == 2 and len(axes[1].lines) == 5
    given = Figure().add_subplot()
    assert result.plot(given)[1] is given
    with pytest.raises(nl.NetlensValueError, match="curves"):
        result.plot(given, curves=True)
    sequences = nl.maximize_activation(
        _seeded(lambda: RowClassifier("gru", input_size=6, hidden_size=4, num_classes=3)),
        "fc",
        input_shape=(5, 6),
        steps=2,
    )
    figure, ax = sequences.plot()
    assert isinstance(figure, Figure)
    # Other test modules (Captum) import pyplot, so check its state rather than its absence.
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []


def test_result_is_frozen_and_progress_runs(lenet: nn.Module) -> None:
    result = nl.maximize_activation(
        lenet, "fc2", [3], input_shape=(1, 28, 28), steps=2, progress=True
    )
    with pytest.raises(AttributeError):
        result.images = torch.zeros(1)  # type: ignore[misc]
    assert result.layer == "fc2" and result.channels == (3,)
