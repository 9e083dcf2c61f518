"""Threads sharing one model: every technique gives the results of sequential calls.

Two threads run the same technique on one model at once; a rendezvous in the model's forward
pass makes sure that both are inside their calls together. Each thread must get exactly what a
call on its own gives, and the model (a train-mode model with a submodule in eval mode, with
BatchNorm and dropout that would betray a pass in training mode) must end as it began. The
mechanism underneath, :func:`netlens._core.model.evaluating` and
:func:`~netlens._core.model.cudnn_off`, is also tested with every order of entering and leaving.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import torch
from _models import MixedNet
from torch import nn

import netlens as nl
from netlens._core.model import cudnn_off, evaluating
from netlens.testing import model_unchanged

T = TypeVar("T")

_WAIT = 20.0  # seconds: a rendezvous that takes longer means a thread is stuck


def _model() -> MixedNet:
    """A seeded model in training mode with one submodule (``conv2``) in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MixedNet()
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
    model.train()
    model.conv2.eval()
    return model


def _images(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def _fast_switching() -> Iterator[None]:
    """Switch threads as often as the interpreter can, so that calls interleave finely."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _rendezvous(parties: int = 2) -> Callable[[], None]:
    """A ``meet`` that holds each thread's first forward pass until every party has arrived."""
    barrier = threading.Barrier(parties)
    arrived: set[int] = set()
    lock = threading.Lock()

    def meet() -> None:
        me = threading.get_ident()
        with lock:
            if me in arrived:
                return
            arrived.add(me)
        barrier.wait(_WAIT)

    return meet


def _in_threads(*works: Callable[[], T]) -> list[T]:
    """Run each work in its own thread; their results, or the first error, re-raised here."""
    results: list[Any] = [None] * len(works)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = works[index]()
        except BaseException as error:  # StopForward is a BaseException
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(works))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(4 * _WAIT)
    if errors:
        raise errors[0]
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    return results


def _same(actual: Any, expected: Any, where: str = "result") -> None:
    """Exact equality of results: tensors, dataclasses, mappings and sequences of them."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert torch.equal(actual, expected), where
    elif dataclasses.is_dataclass(expected) and not isinstance(expected, type):
        assert type(actual) is type(expected), where
        for item in dataclasses.fields(expected):
            _same(getattr(actual, item.name), getattr(expected, item.name), f"{where}.{item.name}")
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            _same(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _same(a, e, f"{where}[{index}]")
    else:
        assert actual == expected, where


def _record(model: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    with nl.record(model, ["conv", "conv2"]) as recorder:
        model(inputs)
    return {name: recorder[name] for name in ("conv", "conv2")}


# Each technique as a function of the shared model and one thread's inputs. The model is in
# training mode: each technique must run it in eval mode (or, for record, leave it as it is).
TECHNIQUES: dict[str, Callable[[nn.Module, torch.Tensor], Any]] = {
    "record": _record,
    "activation_stats": lambda model, x: nl.activation_stats(
        model, [x[:3], x[3:]], ["conv", "bn", "fc"]
    ),
    "deconvnet": lambda model, x: nl.deconvnet(model, x, "conv2", [0, 2]),
    "top_activations": lambda model, x: nl.top_activations(
        model, [x[:3], x[3:]], "conv2", channels=[0, 1], k=2
    ),
    "occlusion": lambda model, x: nl.occlusion(model, x[:2], window=4, stride=4),
    "occlusion_layer": lambda model, x: nl.occlusion(
        model, x[:2], window=4, stride=4, layer="conv2", channel=1
    ),
    # On "bn": a conv target takes a sliced path of its own, tested below.
    "maximize_activation": lambda model, x: _maximize(model, x, "bn"),
}


def _maximize(model: nn.Module, x: torch.Tensor, layer: str) -> Any:
    channels = [int(x[0, 0, 0, 0] > 0), 2]
    seed = int(x[0, 0, 0, 1] > 0)
    return nl.maximize_activation(model, layer, channels, input_shape=(1, 8, 8), steps=6, seed=seed)


@pytest.mark.parametrize("technique", list(TECHNIQUES))
def test_two_threads_on_one_model_give_the_sequential_results(technique: str) -> None:
    run = TECHNIQUES[technique]
    model = _model()
    if technique == "record":
        # record leaves the mode alone: the user's own passes in training mode would update
        # BatchNorm's statistics and draw dropout masks
        model.eval()
    inputs = [_images(6, seed=1), _images(6, seed=2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with model_unchanged(model):
            expected = [run(model, x) for x in inputs]
        # Several rounds: which thread leaves first differs from round to round.
        for _ in range(3):
            model.meet = _rendezvous()
            try:
                with model_unchanged(model):
                    found = _in_threads(*(lambda x=x: run(model, x) for x in inputs))
            finally:
                model.meet = None
            for index in range(2):
                _same(found[index], expected[index], f"thread {index}")


def test_maximize_on_a_conv_layer_in_two_threads_gives_the_sequential_results() -> None:
    """The sliced path of a conv target is taken whatever hooks another thread's call adds."""
    model = _model()
    inputs = [_images(6, seed=1), _images(6, seed=2)]
    expected = [_maximize(model, x, "conv2") for x in inputs]
    for _ in range(3):
        model.meet = _rendezvous()
        try:
            found = _in_threads(*(lambda x=x: _maximize(model, x, "conv2") for x in inputs))
        finally:
            model.meet = None
        for index in range(2):
            _same(found[index], expected[index], f"thread {index}")


# -- the other thread's own passes ----------------------------------------------------------------


class _Held:
    """A ``meet`` that holds the first forward pass of one thread (the technique's) until ``ready``.

    Passes of other threads go through untouched.
    """

    def __init__(self, ready: Callable[[], bool]) -> None:
        self.thread: int | None = None
        self.reached = threading.Event()
        self._ready = ready

    def __call__(self) -> None:
        if threading.get_ident() != self.thread or self.reached.is_set():
            return
        self.reached.set()
        for _ in range(int(_WAIT / 0.001)):
            if self._ready():
                return
            time.sleep(0.001)
        raise AssertionError("the other thread did not get going")

    def run(self, work: Callable[[], T]) -> Callable[[], T]:
        def held() -> T:
            self.thread = threading.get_ident()
            return work()

        return held


@pytest.mark.parametrize("technique", list(TECHNIQUES))
def test_plain_forward_passes_in_another_thread_are_untouched(technique: str) -> None:
    """While a technique runs, another thread's forward passes give the model's own outputs.

    No hook of the technique acts on them: no ``StopForward`` (a ``BaseException``), no
    recording, no swapped ReLU, nothing cut short. (The model is in eval mode here: training
    flags are one per module, for every thread, so in training mode the other thread's passes
    would run in eval mode while the technique holds the model.)
    """
    model = _model().eval()
    inputs, probe = _images(6, seed=1), _images(3, seed=5)
    with torch.no_grad():
        expected = model(probe)
    outputs: list[torch.Tensor] = []
    done = threading.Event()
    held = _Held(lambda: len(outputs) >= 3)

    def technique_work() -> Any:
        try:
            return TECHNIQUES[technique](model, inputs)
        finally:
            done.set()

    def forwards() -> None:
        held.reached.wait(_WAIT)
        while not done.is_set():
            with torch.no_grad():
                outputs.append(model(probe))

    model.meet = held
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _in_threads(held.run(technique_work), forwards)
        finally:
            model.meet = None
    assert len(outputs) >= 3
    for output in outputs:
        assert isinstance(output, torch.Tensor) and torch.equal(output, expected)


@pytest.mark.parametrize(
    "technique",
    [
        "deconvnet",
        "top_activations",
        "occlusion",
        "maximize_activation",
    ],
)
def test_another_thread_trains_with_gradients_while_a_technique_runs(technique: str) -> None:
    """Parameters keep ``requires_grad`` during a technique: another thread's step gets grads."""
    model = _model()
    inputs = _images(6, seed=1)
    trained = threading.Event()
    seen: dict[str, bool] = {}
    held = _Held(trained.is_set)

    def step() -> None:
        held.reached.wait(_WAIT)
        try:
            model(_images(2, seed=9)).sum().backward()
            seen.update({name: p.grad is not None for name, p in model.named_parameters()})
        finally:
            trained.set()

    model.meet = held
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _in_threads(held.run(lambda: TECHNIQUES[technique](model, inputs)), step)
        finally:
            model.meet = None
    assert seen and all(seen.values()), [name for name, flag in seen.items() if not flag]


# -- the mechanism: first in saves, last out restores ----------------------------------------------


def _flags(model: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


@pytest.mark.parametrize("first_out", [0, 1])
def test_overlapping_evaluating_restores_when_the_last_caller_leaves(first_out: int) -> None:
    model = _model()
    original = _flags(model)
    entered = [threading.Event(), threading.Event()]
    leave = [threading.Event(), threading.Event()]
    left = [threading.Event(), threading.Event()]
    inside: list[dict[str, bool]] = []

    def caller(index: int) -> None:
        with evaluating(model):
            entered[index].set()
            leave[index].wait(_WAIT)
            inside.append(_flags(model))
        left[index].set()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(2)]
    threads[0].start()
    assert entered[0].wait(_WAIT)
    threads[1].start()
    assert entered[1].wait(_WAIT)
    leave[first_out].set()
    assert left[first_out].wait(_WAIT)
    # the other caller is still inside: every module stays in eval mode
    assert not any(_flags(model).values())
    leave[1 - first_out].set()
    for thread in threads:
        thread.join(_WAIT)
    assert all(not any(flags.values()) for flags in inside)
    assert _flags(model) == original


def test_evaluating_a_submodule_inside_another_callers_model() -> None:
    """Overlapping holds on a model and on one of its submodules: each module is restored once."""
    model = _model()
    original = _flags(model)
    outer = evaluating(model)
    inner = evaluating(model.bn)
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)
    assert not model.bn.training  # still held by the inner caller
    assert model.training and model.conv.training and not model.conv2.training
    inner.__exit__(None, None, None)
    assert _flags(model) == original
    # the other way round
    inner, outer = evaluating(model.bn), evaluating(model)
    inner.__enter__()
    outer.__enter__()
    inner.__exit__(None, None, None)
    assert not any(_flags(model).values())  # the outer caller holds everything
    outer.__exit__(None, None, None)
    assert _flags(model) == original


def test_overlapping_cudnn_off_restores_the_flag_when_the_last_caller_leaves() -> None:
    original = torch.backends.cudnn.enabled
    first, second = cudnn_off(), cudnn_off()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert torch.backends.cudnn.enabled is False  # the second caller still holds it
    second.__exit__(None, None, None)
    assert torch.backends.cudnn.enabled is original


def test_evaluating_restores_after_an_error_and_puts_every_caller_in_eval_mode() -> None:
    model = _model()
    original = _flags(model)
    with pytest.raises(RuntimeError, match="boom"), evaluating(model):
        assert not any(_flags(model).values())
        raise RuntimeError("boom")
    assert _flags(model) == original
    with evaluating(model):
        model.train()  # changed by someone else while held
        with evaluating(model):
            assert not any(_flags(model).values())  # a new caller still gets eval mode
    assert _flags(model) == original
