from __future__ import annotations

import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _models import RGBConvs, seeded
from torch import nn

import netlens as nl
from netlens._core.outputs import layer_view
from netlens._maximize.param import _INIT_STD, _channel_seed
from netlens._maximize.transforms import gaussian_blur as _gaussian_blur
from netlens.models import LeNet5, RowClassifier
from netlens.testing import ContractModel, ZooModel, contract_zoo, model_unchanged

# One intra-op thread for this file's tests (tests/conftest.py): Many small optimisation steps: more
# threads only add contention on a shared machine.
ONE_THREAD = True


@pytest.fixture(scope="module")
def lenet() -> nn.Module:
    return seeded(LeNet5)


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
    assert torch.equal(result.channels, torch.arange(32))
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
    model = seeded(LeNet5).double()
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
    model = seeded(LeNet5).double()
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
        assert torch.equal(alone.channels, torch.tensor([channel]))
        torch.testing.assert_close(alone.images, batch.images[index], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            alone.activations, batch.activations[index], rtol=1e-4, atol=1e-4
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
    model = seeded(LeNet5)
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
    from netlens._maximize.param import Fourier as _Fourier

    spectrum = torch.zeros(1, 1, 16, 9, 2, dtype=torch.float64)
    spectrum[0, 0, 0, 2, 0] = 1.0  # horizontal frequency 2/16
    image = _Fourier(spectrum, (1, 16, 16), 2).image()[0, 0]
    columns = torch.arange(16, dtype=torch.float64)
    wave = torch.cos(2 * torch.pi * 2 * columns / 16) * 2 / 16  # irfft "ortho" of one bin
    expected = wave / (2 / 16) / 4  # scaled by 1/f and by 1/4
    torch.testing.assert_close(image, expected.expand(16, 16), rtol=1e-12, atol=1e-12)


def test_transforms_shift_whole_pixels_and_keep_the_range() -> None:
    from netlens._maximize.transforms import resample as _transform

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
        seeded(LeNet5), "conv1", [0], input_shape=(1, 28, 28), steps=6, blur_every=2
    )
    assert bool(torch.isfinite(result.images).all())


def test_recurrent_class_logit_and_hidden_unit() -> None:
    model = seeded(lambda: RowClassifier("lstm", input_size=8, hidden_size=12, num_classes=5))
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
    model = seeded(lambda: LeNet5(in_channels=3, image_size=20)).double()
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
    "channel negative": ({"channels": [0, -1]}, nl.NetlensValueError, "channels >= 0"),
    "channels empty": ({"channels": []}, nl.NetlensValueError, "at least one channels"),
    "channels of floats": ({"channels": [0, 1.0]}, nl.NetlensTypeError, "channels"),
    "channels float": ({"channels": 1.5}, nl.NetlensTypeError, "channels"),
    "rank too low": ({"input_shape": (28,)}, nl.NetlensValueError, "input_shape"),
    "rank too high": ({"input_shape": (1, 1, 28, 28)}, nl.NetlensValueError, "input_shape"),
    "shape not ints": ({"input_shape": (1, 28.0, 28)}, nl.NetlensValueError, "input_shape"),
    "shape missing": ({"input_shape": None}, nl.NetlensTypeError, "input_shape"),
    "steps zero": ({"steps": 0}, nl.NetlensValueError, "steps >= 1"),
    "steps negative": ({"steps": -3}, nl.NetlensValueError, "steps >= 1"),
    "steps float": ({"steps": 2.0}, nl.NetlensTypeError, "steps"),
    "lr a string": ({"lr": "0.1"}, nl.NetlensTypeError, "lr"),
    "lr zero": ({"lr": 0.0}, nl.NetlensValueError, "lr"),
    "lr negative": ({"lr": -0.1}, nl.NetlensValueError, "lr"),
    "lr nan": ({"lr": float("nan")}, nl.NetlensValueError, "lr"),
    "range reversed": ({"value_range": (1, -1)}, nl.NetlensValueError, "low < high"),
    "range empty": ({"value_range": (0.5, 0.5)}, nl.NetlensValueError, "low < high"),
    "range not a pair": ({"value_range": (0, 1, 2)}, nl.NetlensTypeError, "value_range"),
    "range of strings": ({"value_range": ("0", 1)}, nl.NetlensTypeError, "value_range"),
    "range infinite": ({"value_range": (0, float("inf"))}, nl.NetlensValueError, "finite"),
    "unknown param": ({"param": "wavelet"}, nl.NetlensValueError, "param"),
    "param not a string": ({"param": 1}, nl.NetlensTypeError, "param"),
    "unknown transform": ({"transforms": "shear"}, nl.NetlensValueError, "shear"),
    "unknown transform in list": (
        {"transforms": ["jitter", "flip"]},
        nl.NetlensValueError,
        "flip",
    ),
    "unknown objective": ({"objective": "max"}, nl.NetlensValueError, "objective"),
    "objective not a string": ({"objective": 3}, nl.NetlensTypeError, "objective"),
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
    "blur every negative": ({"blur_every": -1}, nl.NetlensValueError, "blur_every"),
    "select not an index": ({"select": 1.5}, nl.NetlensTypeError, "select"),
    "select on a tensor": ({"select": 1}, nl.NetlensTypeError, "select=1"),
    "channel_dim out of range": ({"channel_dim": 4}, nl.NetlensValueError, "channel_dim"),
    "channel_dim is the batch": ({"channel_dim": 0}, nl.NetlensValueError, "batch axis"),
    "channel_dim a string": ({"channel_dim": "1"}, nl.NetlensTypeError, "channel_dim"),
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


def test_an_input_shape_of_the_wrong_rank_names_input_shape_and_what_the_layer_got() -> None:
    lstm = seeded(lambda: RowClassifier("lstm", input_size=8, hidden_size=4, num_classes=3))
    # (2, 8) would pass an LSTM as one unbatched sequence of 2 steps: refused by its rank
    with model_unchanged(lstm), pytest.raises(nl.NetlensValueError) as caught:
        nl.maximize_activation(lstm, "rnn", input_shape=(8,), steps=2)
    message = str(caught.value)
    assert message.startswith("Expected input_shape")
    assert "(8,)" in message and "(N, T, F)" in message and "(2, 8)" in message
    assert "unsqueeze" not in message  # there are no user inputs to unsqueeze
    with pytest.raises(nl.NetlensValueError, match=r"input_shape.*\(N, C, H, W\)"):
        nl.maximize_activation(seeded(LeNet5), "conv2", input_shape=(28,), steps=2)


def test_a_bad_select_is_reported_as_such_not_as_input_shape() -> None:
    member = contract_zoo()["dict_block"]
    with pytest.raises(nl.NetlensValueError) as caught:
        nl.maximize_activation(
            member.model, "block", input_shape=(1, 8, 8), steps=2, select="missing"
        )
    assert str(caught.value).startswith("Expected select='missing'")


def test_not_a_model() -> None:
    with pytest.raises(nl.NetlensTypeError):
        nl.maximize_activation("net", "conv1", input_shape=(1, 28, 28))  # type: ignore[arg-type]


# -- result and pictures --------------------------------------------------------------------------


def test_plot_draws_the_grid_on_one_axes_without_pyplot(lenet: nn.Module) -> None:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    result = nl.maximize_activation(
        lenet, "conv1", [0, 1, 2, 3, 4], input_shape=(1, 28, 28), steps=3, seed=0
    )
    figure, ax = result.plot()
    assert isinstance(figure, Figure) and isinstance(ax, Axes)
    assert figure.axes == [ax]
    assert [text.get_text() for text in ax.texts] == ["0", "1", "2", "3", "4"]
    given = Figure().add_subplot()
    figure, ax = result.plot(given)
    assert ax is given and figure is given.figure
    with pytest.raises(TypeError):
        result.plot(curves=True)  # type: ignore[call-arg]
    # an int channel: one picture, titled by its channel
    one = nl.maximize_activation(lenet, "conv1", 7, input_shape=(1, 28, 28), steps=2, seed=0)
    _, ax = one.plot()
    assert [text.get_text() for text in ax.texts] == ["7"]
    sequences = nl.maximize_activation(
        seeded(lambda: RowClassifier("gru", input_size=6, hidden_size=4, num_classes=3)),
        "fc",
        input_shape=(5, 6),
        steps=2,
    )
    figure, ax = sequences.plot()
    assert isinstance(figure, Figure) and figure.axes == [ax]
    vectors = nl.maximize_activation(nn.Sequential(nn.Linear(6, 4)), "0", 2, input_shape=(6,))
    assert isinstance(vectors.plot()[0], Figure)
    # Other test modules (Captum) import pyplot, so check its state rather than its absence.
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []


def test_plot_curves_one_line_per_channel(lenet: nn.Module) -> None:
    from matplotlib.figure import Figure

    result = nl.maximize_activation(lenet, "conv1", [0, 3, 5], input_shape=(1, 28, 28), steps=4)
    figure, ax = result.plot_curves()
    assert figure.axes == [ax]
    assert len(ax.lines) == 3
    for line, column in zip(ax.lines, result.history.T, strict=True):
        assert list(line.get_xdata()) == [1, 2, 3, 4]
        torch.testing.assert_close(
            torch.as_tensor(line.get_ydata()), column.double(), rtol=0, atol=0
        )
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["0", "3", "5"]
    given = Figure().add_subplot()
    assert result.plot_curves(given) == (given.figure, given)
    one = nl.maximize_activation(lenet, "conv1", 3, input_shape=(1, 28, 28), steps=4)
    _, ax = one.plot_curves()
    assert len(ax.lines) == 1
    torch.testing.assert_close(
        torch.as_tensor(ax.lines[0].get_ydata()), one.history.double(), rtol=0, atol=0
    )


@pytest.mark.parametrize("steps", [1, 7])
def test_plot_curves_ticks_steps_at_whole_numbers(lenet: nn.Module, steps: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    result = nl.maximize_activation(lenet, "conv1", 0, input_shape=(1, 28, 28), steps=steps)
    figure, ax = result.plot_curves()
    FigureCanvasAgg(figure).draw()
    low, high = ax.get_xlim()
    ticks = [tick for tick in ax.get_xticks() if low <= tick <= high]
    assert ticks and all(tick == int(tick) for tick in ticks)  # one step: not 0.96 ... 1.04


@pytest.mark.parametrize("suffix", ["png", "svg", "pdf"])
def test_save_and_notebook_display(lenet: nn.Module, tmp_path: Any, suffix: str) -> None:
    result = nl.maximize_activation(lenet, "conv1", [0, 1], input_shape=(1, 28, 28), steps=2)
    path = tmp_path / f"maximization.{suffix}"
    result.save(path)
    assert path.stat().st_size > 0
    magic = {"png": b"\x89PNG", "svg": b"<?xml", "pdf": b"%PDF"}[suffix]
    assert path.read_bytes().startswith(magic)
    assert result._repr_png_().startswith(b"\x89PNG")
    with pytest.raises(nl.NetlensValueError, match=r"\.png"):
        result.save(tmp_path / "maximization.jpg")


def test_result_is_frozen_compares_by_identity_and_progress_runs(lenet: nn.Module) -> None:
    result = nl.maximize_activation(
        lenet, "fc2", [3], input_shape=(1, 28, 28), steps=2, progress=True, seed=0
    )
    again = nl.maximize_activation(lenet, "fc2", [3], input_shape=(1, 28, 28), steps=2, seed=0)
    with pytest.raises(AttributeError):
        result.images = torch.zeros(1)  # type: ignore[misc]
    assert result.layer == "fc2"
    assert result == result and result != again  # eq=False: identity, no tensor comparison
    assert "fc2" in repr(result) and "[3]" in repr(result)


def test_int_channel_drops_the_channel_dim_and_a_list_keeps_it(lenet: nn.Module) -> None:
    kwargs: dict[str, Any] = {"input_shape": (1, 28, 28), "steps": 5, "seed": 2}
    single = nl.maximize_activation(lenet, "conv2", 6, **kwargs)
    listed = nl.maximize_activation(lenet, "conv2", [6], **kwargs)
    as_tensor = nl.maximize_activation(lenet, "conv2", torch.tensor(6), **kwargs)
    everything = nl.maximize_activation(lenet, "conv1", None, **kwargs)
    assert single.images.shape == (1, 28, 28)
    assert single.activations.shape == ()
    assert single.history.shape == (5,)
    assert listed.images.shape == (1, 1, 28, 28)
    assert listed.activations.shape == (1,)
    assert listed.history.shape == (5, 1)
    assert as_tensor.images.shape == (1, 28, 28)
    assert everything.images.shape == (32, 1, 28, 28)
    assert everything.history.shape == (5, 32)
    for result in (single, listed, as_tensor):
        assert result.channels.dtype == torch.long
        assert result.channels.shape == (1,) and int(result.channels[0]) == 6
    assert torch.equal(everything.channels, torch.arange(32))
    assert torch.equal(single.images, listed.images[0])
    assert torch.equal(single.history, listed.history[:, 0])
    assert torch.equal(single.activations, listed.activations[0])


def test_results_are_in_the_models_dtype_and_device() -> None:
    model = seeded(LeNet5).double()
    result = nl.maximize_activation(model, "conv1", [0, 1], input_shape=(1, 28, 28), steps=2)
    parameter = next(model.parameters())
    for tensor in (result.images, result.activations, result.history):
        assert tensor.dtype == torch.float64
        assert tensor.device == parameter.device
    assert result.channels.device == torch.device("cpu")


# -- the layer contract ------------------------------------------------------------------------


CONTRACT_NAMES = [name for name in contract_zoo() if name != "token_classifier"]


def _contract_reference(
    member: ContractModel, result: nl.Maximization, select: Any, channel_dim: Any
) -> tuple[int, torch.Tensor]:
    """The layer's channel count under the contract, and the mean objective of each image.

    Recorded with ``nl.record`` and read with ``layer_view``, independently of the optimiser.
    """
    model = member.model
    view = layer_view(model, member.layer, select=select, channel_dim=channel_dim)
    with nl.record(model, member.layer, select=select) as recorded, torch.no_grad():
        model(member.inputs)
        count = view.channels(recorded[member.layer])
        model(result.images)
        output = recorded[member.layer]
    arranged = view.arrange(output, result.images.shape[0]).double()
    rows = torch.arange(arranged.shape[0])
    maps = arranged[rows, result.channels]
    return count, maps.flatten(1).mean(1) if maps.dim() > 1 else maps


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_contract_zoo_channels_and_objective(name: str) -> None:
    member = contract_zoo()[name]
    shape = tuple(member.inputs.shape[1:])
    with model_unchanged(member.model):
        result = nl.maximize_activation(
            member.model,
            member.layer,
            input_shape=shape,
            steps=4,
            seed=0,
            select=member.select,
            channel_dim=member.channel_dim,
        )
    count, expected = _contract_reference(member, result, member.select, member.channel_dim)
    # the count every technique reports for the layer (the contract zoo's own count is
    # checked by the contract tests, against the shared rule)
    assert torch.equal(result.channels, torch.arange(count))
    assert result.images.shape == (count, *shape)
    assert result.history.shape == (4, count)
    torch.testing.assert_close(result.activations.double(), expected, rtol=1e-5, atol=1e-6)


def test_select_picks_another_part_of_a_mapping_output() -> None:
    member = contract_zoo()["dict_block"]
    result = nl.maximize_activation(
        member.model, "block", [0, 2], input_shape=(1, 8, 8), steps=3, seed=0, select="gate"
    )
    count, expected = _contract_reference(member, result, "gate", None)
    assert count == member.model.block.gate_channels == 3
    torch.testing.assert_close(result.activations.double(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(nl.NetlensValueError, match="channels in \\[0, 3\\)"):
        nl.maximize_activation(
            member.model, "block", 4, input_shape=(1, 8, 8), steps=1, select="gate"
        )


def test_channel_dim_says_which_axis_of_a_channels_last_block() -> None:
    member = contract_zoo()["channels_last"]
    kwargs: dict[str, Any] = {"input_shape": (3, 8, 8), "steps": 3, "seed": 0}
    for channel_dim, count in ((-1, 6), (3, 6), (1, 8), (2, 8)):  # channels, rows, columns
        result = nl.maximize_activation(member.model, "stage", channel_dim=channel_dim, **kwargs)
        reference_count, expected = _contract_reference(member, result, None, channel_dim)
        assert result.channels.numel() == reference_count == count
        torch.testing.assert_close(result.activations.double(), expected, rtol=1e-5, atol=1e-6)


def test_time_first_recurrent_layer_equals_its_batch_first_twin() -> None:
    zoo = contract_zoo()
    kwargs: dict[str, Any] = {"input_shape": (4, 5), "steps": 6, "seed": 4}
    time_first = nl.maximize_activation(zoo["gru_time_first"].model, "rnn", [1, 5], **kwargs)
    batch_first = nl.maximize_activation(zoo["gru_batch_first"].model, "rnn", [1, 5], **kwargs)
    torch.testing.assert_close(time_first.images, batch_first.images, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(time_first.history, batch_first.history, rtol=1e-5, atol=1e-6)


def test_lstm_fed_a_packed_sequence_maximises_its_padded_output() -> None:
    member = contract_zoo()["lstm_packed"]
    model = member.model
    with model_unchanged(model):
        result = nl.maximize_activation(
            model, "rnn", 2, input_shape=(5, 4), steps=12, lr=0.1, seed=0, transforms=None
        )
    assert result.images.shape == (5, 4)
    # a batch of one input: sample 0 has length lengths[0] (4), the last step is padding
    length = int(model.lengths[0])
    packed = nn.utils.rnn.pack_padded_sequence(
        result.images[None], torch.tensor([length]), batch_first=True
    )
    with torch.no_grad():
        output, _ = model.rnn(packed)
    padded, _ = nn.utils.rnn.pad_packed_sequence(output, batch_first=True)
    torch.testing.assert_close(result.activations, padded[0, :, 2].mean(), rtol=1e-5, atol=1e-6)
    assert float(result.history[-1]) > float(result.history[0])


def test_integer_input_models_are_refused_naming_the_embedding() -> None:
    member = contract_zoo()["token_classifier"]
    with model_unchanged(member.model), pytest.raises(nl.NetlensTypeError, match="token ids"):
        nl.maximize_activation(member.model, "proj", input_shape=(7,), steps=2)


def test_refused_under_inference_mode(lenet: nn.Module) -> None:
    with model_unchanged(lenet), torch.inference_mode():
        with pytest.raises(nl.NetlensValueError, match="inference_mode"):
            nl.maximize_activation(lenet, "conv1", 0, input_shape=(1, 28, 28), steps=2)


def test_one_channel_per_input_only_where_it_equals_the_full_layer() -> None:
    from netlens._maximize.readout import _SlicedLayer as _SlicedTarget

    bert = nn.Sequential(nn.Linear(5, 12), nn.GELU())
    image = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    tokens = torch.zeros(2, 8, 5)
    pictures = torch.zeros(2, 1, 6, 6)

    def applies(model: nn.Module, inputs: torch.Tensor, **view: Any) -> bool:
        found = layer_view(model, "0", **view)
        return _SlicedTarget.applies(found, found.tensor(model[0](inputs)), 1, False)

    assert applies(bert, tokens)
    assert applies(bert, tokens, channel_dim=2)
    assert not applies(bert, tokens, channel_dim=1)  # the tokens as channels
    assert not applies(bert, tokens, select=lambda output: output)
    assert applies(image, pictures)
    assert not applies(image, pictures, channel_dim=-1)  # the columns as channels
    conv = layer_view(image, "0")
    assert not _SlicedTarget.applies(conv, image[0](pictures), 2, False)  # called twice
    assert not _SlicedTarget.applies(conv, image[0](pictures), 1, True)  # hooked


@pytest.mark.parametrize("channel_dim", [None, 1])
def test_a_bert_style_linear_sliced_or_not_equals_the_full_layer(channel_dim: Any) -> None:
    # The full path is forced by a hook of the user's own on the layer.
    model = seeded(lambda: nn.Sequential(nn.Linear(5, 12), nn.GELU())).double()
    kwargs: dict[str, Any] = {
        "input_shape": (8, 5),
        "steps": 8,
        "seed": 1,
        "channel_dim": channel_dim,
    }
    fast = nl.maximize_activation(model, "0", [0, 3, 7], **kwargs)
    handle = model[0].register_forward_hook(lambda m, i, o: None)
    try:
        full = nl.maximize_activation(model, "0", [0, 3, 7], **kwargs)
    finally:
        handle.remove()
    torch.testing.assert_close(fast.images, full.images, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fast.history, full.history, rtol=1e-9, atol=1e-9)
    # and both are the mean of the right slice: units (last dim) or tokens (dim 1)
    with torch.no_grad():
        output = model[0](fast.images)
    rows = torch.arange(3)
    picked = output[rows, :, [0, 3, 7]] if channel_dim is None else output[rows, [0, 3, 7]]
    torch.testing.assert_close(fast.activations, picked.mean(1), rtol=1e-9, atol=1e-9)
    count = 8 if channel_dim == 1 else 12
    assert nl.maximize_activation(model, "0", **kwargs).channels.numel() == count


# -- colours, normalisation, batches, input_shape ----------------------------------------------


# Lucid's and lucent's color_correlation_svd_sqrt, typed in again.
LUCID_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64
)


def _lucent_fft_image(spectrum: torch.Tensor, size: int) -> torch.Tensor:
    """lucent 0.1.8's ``fft_image`` for a square picture of even size, written out again."""
    fy = torch.fft.fftfreq(size, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(size, dtype=torch.float64)[: size // 2 + 1]
    freqs = (fx * fx + fy * fy).sqrt()
    scale = 1.0 / torch.maximum(freqs, torch.tensor(1.0 / size, dtype=torch.float64))
    scaled = torch.view_as_complex(scale[..., None] * spectrum)
    return torch.fft.irfftn(scaled, s=(size, size), norm="ortho") / 4.0


def _colour_reference(
    model: nn.Module,
    layer: str,
    channel: int,
    param: str,
    mean: torch.Tensor,
    std: torch.Tensor,
    steps: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One channel, the full model: parameter -> lucent's colours -> (0, 1) -> normalised."""
    module = model.get_submodule(layer)
    generator = torch.Generator().manual_seed(_channel_seed(seed, channel))
    shape = (3, 8, 8) if param == "pixel" else (3, 8, 5, 2)
    raw = (_INIT_STD * torch.randn(shape, generator=generator, dtype=torch.float64))[None]
    raw.requires_grad_(True)
    optimizer = torch.optim.Adam([raw], lr=0.05)
    matrix = LUCID_SQRT / LUCID_SQRT.norm(dim=0).max()

    def pixels() -> torch.Tensor:
        image = raw if param == "pixel" else _lucent_fft_image(raw, 8)
        colours = torch.einsum("ij,njhw->nihw", matrix, image)
        return (torch.tanh(colours) + 1) / 2

    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: captured.append(o))
    values = []
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            captured.clear()
            model((pixels() - mean[:, None, None]) / std[:, None, None])
            value = captured[-1][:, channel].mean()
            (raw.grad,) = torch.autograd.grad(-value, [raw])
            optimizer.step()
            values.append(value.detach())
    finally:
        handle.remove()
    return pixels().detach()[0], torch.stack(values)


@pytest.mark.parametrize("param", ["pixel", "fourier"])
def test_decorrelated_colours_and_normalize_match_a_plain_float64_loop(param: str) -> None:
    model = seeded(lambda: RGBConvs(5)).double()
    mean = torch.tensor([0.4, 0.5, 0.6], dtype=torch.float64)
    std = torch.tensor([0.2, 0.25, 0.3], dtype=torch.float64)
    with model_unchanged(model):
        result = nl.maximize_activation(
            model,
            "conv2",
            [1, 3],
            input_shape=(8, 8),  # 3 channels from conv1
            steps=10,
            param=param,
            transforms=None,
            decorrelate=True,
            normalize=(mean.tolist(), std),
            seed=2,
        )
    for index, channel in enumerate([1, 3]):
        pixels, history = _colour_reference(model, "conv2", channel, param, mean, std, 10, 2)
        torch.testing.assert_close(result.pixels[index], pixels, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(result.history[:, index], history, rtol=1e-9, atol=1e-9)
    normalised = (result.pixels - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(result.images, normalised, rtol=1e-12, atol=1e-12)
    assert result.value_range == (0.0, 1.0)
    assert float(result.pixels.min()) > 0 and float(result.pixels.max()) < 1
    with torch.no_grad():
        reached = model(result.images)[[0, 1], [1, 3]].flatten(1).mean(1)
    torch.testing.assert_close(result.activations, reached, rtol=1e-9, atol=1e-9)


def test_the_default_colour_basis_is_lucents() -> None:
    from netlens._color import color_matrix

    matrix = color_matrix(True)
    assert matrix is not None
    torch.testing.assert_close(matrix, LUCID_SQRT / LUCID_SQRT.norm(dim=0).max())
    assert color_matrix(False) is None
    torch.testing.assert_close(color_matrix(2 * LUCID_SQRT.numpy()), matrix)


def test_color_stats_against_torch_cov() -> None:
    generator = torch.Generator().manual_seed(0)
    mixing = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.3, 0.0], [0.6, 0.2, 0.1]])
    base = torch.randn(40, 8, 8, 3, generator=generator, dtype=torch.float64)
    images = (base @ mixing.T.double() + 0.5).permute(0, 3, 1, 2).contiguous()
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3)
    stats = nl.color_stats(images.float())
    streamed = nl.color_stats([(images[:13], "labels"), images[13:30], images[30:]])
    last = nl.color_stats(images.permute(0, 2, 3, 1), channel_dim=-1)
    covariance = torch.cov(pixels.T)
    for found in (stats, streamed, last):
        assert found.count == 40 * 64
        torch.testing.assert_close(found.covariance, covariance, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(found.mean, pixels.mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(found.std, pixels.std(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(streamed.covariance, covariance, rtol=1e-12, atol=1e-12)
    basis = streamed.basis
    torch.testing.assert_close(basis @ basis.T, covariance, rtol=1e-10, atol=1e-12)
    norms = basis.norm(dim=0)
    assert bool((norms[:-1] >= norms[1:]).all())  # strongest direction first
    assert bool((basis[basis.abs().argmax(0), torch.arange(3)] > 0).all())
    assert "count=2560" in repr(streamed)
    with pytest.raises(nl.NetlensValueError, match="3 colour channels"):
        nl.color_stats(torch.rand(2, 1, 4, 4))
    with pytest.raises(nl.NetlensValueError, match="at least 2 pixels"):
        nl.color_stats([])
    with pytest.raises(nl.NetlensTypeError, match="data"):
        nl.color_stats(3)


def test_decorrelate_with_grey_statistics_gives_grey_pictures() -> None:
    grey = torch.rand(16, 1, 8, 8).expand(16, 3, 8, 8)
    result = nl.maximize_activation(
        seeded(lambda: RGBConvs(5)),
        "conv2",
        [0, 2],
        input_shape=(3, 8, 8),
        steps=5,
        decorrelate=nl.color_stats(grey),
        normalize=(0.5, 0.5),
        seed=0,
    )
    pixels = result.pixels
    torch.testing.assert_close(pixels[:, 0], pixels[:, 1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2], rtol=1e-6, atol=1e-6)


def test_normalize_in_other_units_and_a_value_range_of_pixels() -> None:
    model = seeded(lambda: RGBConvs(5))
    result = nl.maximize_activation(
        model,
        "conv1",
        1,
        input_shape=(3, 8, 8),
        steps=20,
        lr=0.2,
        value_range=(0, 255),
        normalize=((120.0, 110.0, 100.0), 60.0),
        seed=0,
    )
    assert result.value_range == (0.0, 255.0)
    assert result.images.shape == result.pixels.shape == (3, 8, 8)
    assert float(result.pixels.min()) > 0 and float(result.pixels.max()) < 255
    assert float(result.pixels.max() - result.pixels.min()) > 50
    mean = torch.tensor([120.0, 110.0, 100.0])[:, None, None]
    torch.testing.assert_close(result.images, (result.pixels - mean) / 60.0)
    mean_, std_ = result.normalize or (None, None)
    assert mean_ is not None and std_ is not None
    assert mean_.tolist() == [120.0, 110.0, 100.0] and float(std_) == 60.0


def test_batch_adds_a_dimension_of_different_inputs(lenet: nn.Module) -> None:
    kwargs: dict[str, Any] = {"input_shape": (28, 28), "steps": 4, "seed": 1}
    listed = nl.maximize_activation(lenet, "conv2", [3, 8], batch=3, **kwargs)
    single = nl.maximize_activation(lenet, "conv2", 8, batch=3, **kwargs)
    one = nl.maximize_activation(lenet, "conv2", [3, 8], batch=1, **kwargs)
    assert listed.images.shape == (2, 3, 1, 28, 28)
    assert listed.activations.shape == (2, 3) and listed.history.shape == (4, 2, 3)
    assert single.images.shape == (3, 1, 28, 28)
    assert single.activations.shape == (3,) and single.history.shape == (4, 3)
    assert one.images.shape == (2, 1, 1, 28, 28) and one.history.shape == (4, 2, 1)
    assert torch.equal(listed.channels, torch.tensor([3, 8]))
    assert torch.equal(single.channels, torch.tensor([8]))
    # each channel's inputs are the same in any batch of channels; the copies differ
    torch.testing.assert_close(single.images, listed.images[1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(listed.images[0, 0], listed.images[0, 1])
    with torch.no_grad():
        reached = lenet.conv2(lenet.pool1(lenet.relu1(lenet.conv1(single.images))))[:, 8]
    torch.testing.assert_close(single.activations, reached.flatten(1).mean(1))
    _, ax = listed.plot()
    assert [text.get_text() for text in ax.texts] == ["3", "", "", "8", "", ""]
    _, ax = listed.plot_curves()
    assert len(ax.lines) == 6
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["3", "8"]
    assert "batch=3" in repr(listed)


def test_a_normalised_run_is_drawn_as_its_pixels() -> None:
    result = nl.maximize_activation(
        seeded(lambda: RGBConvs(5)),
        "conv2",
        [0, 1],
        input_shape=(3, 8, 8),
        steps=2,
        normalize=(0.5, 0.25),
        seed=0,
    )
    _, ax = result.plot()
    drawn = ax.images[0].get_array()
    assert float(drawn.min()) > 0.3  # pixels near 0.5, shown on (0, 1), white borders
    _, ax = result.plot(normalize="filter")
    assert float(ax.images[0].get_array().min()) == 0.0  # each picture stretched


def test_input_shape_completed_from_the_first_layer() -> None:
    linear = nn.Sequential(nn.Linear(6, 4), nn.ReLU())
    assert nl.maximize_activation(linear, "0", 1, steps=2).images.shape == (6,)
    with pytest.raises(nl.NetlensTypeError, match=r"takes 1 channels.*\(32, 32\)"):
        nl.maximize_activation(seeded(LeNet5), "conv1", 0, steps=2)
    broken = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(18, 4), nn.ReLU())
    with (
        model_unchanged(broken),
        pytest.raises(
            nl.NetlensValueError, match=r"\(1, 6, 6\) \(completed from \(6, 6\) by the in_channels"
        ),
    ):
        nl.maximize_activation(broken, "3", input_shape=(6, 6), steps=2)


COLOUR_BAD: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "decorrelate grey": (
        {"decorrelate": True, "input_shape": (1, 8, 8)},
        nl.NetlensValueError,
        r"RGB images \(3, H, W\)",
    ),
    "decorrelate a string": ({"decorrelate": "yes"}, nl.NetlensTypeError, "decorrelate"),
    "decorrelate 2x2": ({"decorrelate": [[1, 0], [0, 1]]}, nl.NetlensValueError, "3x3"),
    "decorrelate zeros": ({"decorrelate": torch.zeros(3, 3)}, nl.NetlensValueError, "not zero"),
    "normalize not a pair": ({"normalize": (0.5,)}, nl.NetlensTypeError, "normalize"),
    "normalize of strings": ({"normalize": ("a", 1.0)}, nl.NetlensTypeError, "mean"),
    "normalize wrong length": (
        {"normalize": ((0.5, 0.5), 0.5)},
        nl.NetlensValueError,
        "one number per channel",
    ),
    "std zero": ({"normalize": (0.5, (0.5, 0.0, 0.5))}, nl.NetlensValueError, "std to be > 0"),
    "mean infinite": ({"normalize": (float("inf"), 1.0)}, nl.NetlensValueError, "finite"),
    "batch zero": ({"batch": 0}, nl.NetlensValueError, "batch >= 1"),
    "batch float": ({"batch": 2.0}, nl.NetlensTypeError, "batch"),
    "no layer": ({"layer": None}, nl.NetlensValueError, "Expected a layer"),
}


@pytest.mark.parametrize("case", sorted(COLOUR_BAD))
def test_bad_colour_and_batch_arguments(case: str) -> None:
    model = seeded(lambda: RGBConvs(5))
    kwargs: dict[str, Any] = {"layer": "conv2", "input_shape": (3, 8, 8), "steps": 2}
    changes, error, message = COLOUR_BAD[case]
    kwargs.update(changes)
    if case == "decorrelate grey":
        model = seeded(lambda: nn.Sequential(nn.Conv2d(1, 2, 3)))
        kwargs["layer"] = "0"
    with model_unchanged(model), pytest.raises(error, match=message):
        nl.maximize_activation(model, **kwargs)


def test_the_channels_last_layout_changes_nothing_but_speed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import netlens._maximize.optimise as maximize

    model = seeded(lambda: LeNet5(in_channels=3, image_size=16)).double()
    kwargs: dict[str, Any] = {"input_shape": (16, 16), "steps": 6, "seed": 0, "decorrelate": True}
    fast = nl.maximize_activation(model, "conv2", [1, 5], **kwargs)
    monkeypatch.setattr(maximize, "_CHANNELS_LAST", False)
    plain = nl.maximize_activation(model, "conv2", [1, 5], **kwargs)
    torch.testing.assert_close(fast.images, plain.images, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fast.history, plain.history, rtol=1e-9, atol=1e-9)


def test_grouped_layout_hands_the_gradient_back_in_the_features_layout() -> None:
    from netlens._maximize.readout import _GroupedLayout

    for layout in (torch.channels_last, torch.contiguous_format):
        features = torch.randn(3, 4, 5, 6, dtype=torch.float64).contiguous(memory_format=layout)
        features.requires_grad_(True)
        flat = _GroupedLayout.apply(features)
        assert flat.shape == (1, 12, 5, 6)
        torch.testing.assert_close(flat, features.detach().reshape(1, 12, 5, 6))
        weights = torch.randn(1, 12, 5, 6, dtype=torch.float64)
        (gradient,) = torch.autograd.grad((flat * weights).sum(), [features])
        torch.testing.assert_close(gradient, weights.reshape(3, 4, 5, 6))
        assert gradient.is_contiguous(memory_format=layout)
