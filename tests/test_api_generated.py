"""Every argument of the public API, checked the same way, generated from the signatures.

For each public callable there is one valid call (``CASES``). From its signature
(``inspect``), every parameter is then given, one at a time, (1) a value of no sensible type,
which must raise :class:`netlens.NetlensTypeError` naming the parameter, and (2) where its
annotation says it is a number or a choice of strings, a value of the right type out of range
(a huge negative int, NaN, an unknown name), which must raise
:class:`netlens.NetlensValueError` naming the parameter. A new public callable fails
``test_every_public_callable_is_covered`` until it has a valid call here: its arguments are
then covered without writing new cases.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import netlens as nl
from netlens import datasets, objectives
from netlens.models import LeNet5

MODULES = {"netlens": nl, "netlens.objectives": objectives, "netlens.datasets": datasets}


class _Wrong:
    """A value of no type any parameter accepts."""

    def __repr__(self) -> str:
        return "<wrong>"


def _net() -> nn.Module:
    torch.manual_seed(0)
    return LeNet5().eval()


def _images() -> torch.Tensor:
    return torch.randn(2, 1, 28, 28)


# The one valid call of each public callable: a function and its keyword arguments.
CASES: dict[str, Callable[[], tuple[Callable[..., Any], dict[str, Any]]]] = {
    "netlens.occlusion": lambda: (
        nl.occlusion,
        {"model": _net(), "inputs": _images(), "window": 14, "incremental": False},
    ),
    "netlens.deconvnet": lambda: (
        nl.deconvnet,
        {"model": _net(), "inputs": _images(), "layer": "conv2", "channel": 0},
    ),
    "netlens.activation_stats": lambda: (
        nl.activation_stats,
        {"model": _net(), "data": _images(), "layers": "conv1"},
    ),
    "netlens.top_activations": lambda: (
        nl.top_activations,
        {"model": _net(), "data": _images(), "layer": "conv1", "k": 1},
    ),
    "netlens.record": lambda: (nl.record, {"model": _net(), "layers": "conv1"}),
    "netlens.find_layers": lambda: (nl.find_layers, {"model": _net(), "spec": "conv1"}),
    "netlens.maximize_activation": lambda: (
        nl.maximize_activation,
        {"model": _net(), "layer": "conv1", "channels": 0, "input_shape": (1, 28, 28), "steps": 1},
    ),
    "netlens.color_stats": lambda: (nl.color_stats, {"data": torch.rand(4, 3, 8, 8)}),
    "netlens.atlas": lambda: (
        nl.atlas,
        {"model": _net(), "data": _images(), "layers": "conv1", "k": 1, "maximize": False},
    ),
    "netlens.FilterGrid": lambda: (nl.FilterGrid, {"source": _net().conv1}),
    "netlens.ActivationGrid": lambda: (nl.ActivationGrid, {"activations": torch.rand(4, 3, 5)}),
    "netlens.ActivationStats": lambda: (nl.ActivationStats, {}),
    "netlens.objectives.channel": lambda: (objectives.channel, {"layer": "conv1", "channel": 0}),
    "netlens.objectives.neuron": lambda: (
        objectives.neuron,
        {"layer": "conv1", "channel": 0, "position": (2, 2)},
    ),
    "netlens.objectives.direction": lambda: (
        objectives.direction,
        {"layer": "conv1", "vector": torch.ones(6)},
    ),
    "netlens.objectives.diversity": lambda: (objectives.diversity, {"layer": "conv1"}),
    "netlens.objectives.class_logit": lambda: (objectives.class_logit, {"index": 0}),
}
# Public names that a user does not call with arguments of their own, and why.
NOT_CALLED = {
    # results: made by netlens and returned, frozen
    "netlens.ChannelStats",
    "netlens.ColorStats",
    "netlens.Maximization",
    "netlens.OcclusionMap",
    "netlens.Projection",
    "netlens.TopActivations",
    "netlens.Recorder",  # made by nl.record
    "netlens.Atlas",  # made by nl.atlas, as its layers and their channel cards
    "netlens.AtlasLayer",
    "netlens.ChannelCard",
    "netlens.objectives.Objective",  # made by the functions of netlens.objectives and arithmetic
    # the data sets read files: their argument checks are tested in test_datasets.py
    "netlens.datasets.CIFAR10",
    "netlens.datasets.MNIST",
}


def _public() -> list[str]:
    names = []
    for prefix, module in MODULES.items():
        for name in module.__all__:
            value = getattr(module, name)
            if callable(value) and not (
                isinstance(value, type) and issubclass(value, BaseException)
            ):
                names.append(f"{prefix}.{name}")
    return sorted(names)


def test_every_public_callable_is_covered() -> None:
    missing = [name for name in _public() if name not in CASES and name not in NOT_CALLED]
    assert not missing, f"public callables without a valid call in CASES: {missing}"


def test_the_valid_calls_are_valid() -> None:
    for case in CASES.values():
        function, kwargs = case()
        function(**kwargs)  # raises if a case is wrong, which would void the checks below


def _parameters() -> list[tuple[str, str]]:
    pairs = []
    for name, case in CASES.items():
        function, _ = case()
        for parameter in inspect.signature(function).parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            pairs.append((name, parameter.name))
    return pairs


@pytest.mark.parametrize(("name", "parameter"), _parameters())
def test_a_value_of_no_sensible_type_is_a_type_error(name: str, parameter: str) -> None:
    function, kwargs = CASES[name]()
    kwargs[parameter] = _Wrong()
    with pytest.raises(nl.NetlensTypeError) as caught:
        function(**kwargs)
    assert parameter in str(caught.value)


_CONTAINER = re.compile(r"(?:tuple|Sequence)\[([^\[\]]*)\]")


def _typed(annotation: str, kind: str, value: Any) -> list[Any]:
    """``value`` of type ``kind`` as the annotation takes it: bare, or filling its container.

    ``tuple[float, float]`` takes ``(nan, nan)`` and ``Sequence[int]`` takes ``(-10**9,)``: a
    bare number there would be of the wrong type, a type error rather than a value out of range.
    """
    if kind not in annotation:
        return []
    if kind in _CONTAINER.sub("", annotation):
        return [value]
    container = _CONTAINER.search(annotation)
    assert container is not None
    return [(value,) * len(container.group(1).split(","))]


def _out_of_range(annotation: str) -> list[Any]:
    """Values of an annotated type that no parameter of it accepts."""
    values: list[Any] = []
    if "Literal[" in annotation or annotation in ("str", "str | None") or "Rule" in annotation:
        values.append("no-such-choice")
    values += _typed(annotation, "float", math.nan)
    values += _typed(annotation, "int", -(10**9))
    return values


def _range_cases() -> list[tuple[str, str, Any]]:
    cases = []
    for name, case in CASES.items():
        function, _ = case()
        for parameter in inspect.signature(function).parameters.values():
            if parameter.name in SKIP_RANGE.get(name, ()):
                continue
            for value in _out_of_range(str(parameter.annotation)):
                cases.append((name, parameter.name, value))
    return cases


# Parameters whose every value of the annotated type is meaningful, and why.
SKIP_RANGE: dict[str, tuple[str, ...]] = {
    "netlens.maximize_activation": ("seed",),  # any int seeds a generator
}


@pytest.mark.parametrize(("name", "parameter", "value"), _range_cases())
def test_a_value_out_of_range_is_a_value_error(name: str, parameter: str, value: Any) -> None:
    function, kwargs = CASES[name]()
    kwargs[parameter] = value
    with pytest.raises(nl.NetlensValueError) as caught:
        function(**kwargs)
    assert parameter in str(caught.value)
