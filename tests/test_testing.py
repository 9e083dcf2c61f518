from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from netlens.testing import ResidualNet, model_unchanged, model_zoo


def _set_grad(net: nn.Module) -> None:
    net.stem.weight.grad = torch.ones_like(net.stem.weight)


def _bump(net: nn.Module) -> None:
    with torch.no_grad():
        net.stem.bias.add_(1e-6)


def _replace(net: nn.Module) -> None:
    net.fc.weight = nn.Parameter(net.fc.weight.detach().clone())


CHANGES: dict[str, tuple[Callable[[nn.Module], object], str]] = {
    "value": (_bump, "parameter stem.bias changed value"),
    "grad": (_set_grad, "stem.weight.grad changed"),
    "requires_grad": (lambda n: n.fc.bias.requires_grad_(False), "requires_grad changed"),
    "training": (lambda n: n.bn_a.eval(), "bn_a.training changed"),
    "forward hook": (lambda n: n.fc.register_forward_hook(lambda *a: None), "_forward_hooks"),
    "pre hook": (lambda n: n.register_forward_pre_hook(lambda *a: None), "_forward_pre_hooks"),
    "buffer": (lambda n: n(torch.randn(2, 1, 8, 8)), "buffer bn_a.running_mean changed"),
    "replaced": (_replace, "replaced by another object"),
    "structure": (lambda n: n.add_module("extra", nn.ReLU()), "module structure changed"),
    "global hook": (
        lambda n: nn.modules.module.register_module_forward_hook(lambda *a: None),
        "global _global_forward_hooks",
    ),
}


@pytest.mark.parametrize("kind", sorted(CHANGES))
def test_model_unchanged_detects_each_kind_of_change(kind: str) -> None:
    change, message = CHANGES[kind]
    net = ResidualNet()
    try:
        with pytest.raises(AssertionError, match=message), model_unchanged(net):
            change(net)
    finally:
        nn.modules.module._global_forward_hooks.clear()


def test_model_unchanged_passes_for_a_clean_block_and_reraises_the_original_error() -> None:
    net = ResidualNet().eval()
    with model_unchanged(net):
        net(torch.randn(2, 1, 8, 8))
    with pytest.raises(KeyError), model_unchanged(net):
        raise KeyError("original")


def test_model_unchanged_chains_the_original_error_when_the_model_changed() -> None:
    net = ResidualNet()
    with pytest.raises(AssertionError) as info, model_unchanged(net):
        net.eval()
        raise KeyError("original")
    assert isinstance(info.value.__cause__, KeyError)


def test_nan_parameters_compare_equal_to_themselves() -> None:
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight[0, 0] = float("nan")
    with model_unchanged(net):
        pass


def test_zoo_is_seeded_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    first, second = model_zoo(), model_zoo()
    assert torch.equal(torch.random.get_rng_state(), state)
    for name in first:
        for a, b in zip(
            first[name].model.parameters(), second[name].model.parameters(), strict=False
        ):
            assert torch.equal(a, b)
        assert torch.equal(first[name].inputs, second[name].inputs)
        out = first[name].model(first[name].inputs)
        assert out.shape == (2, first[name].num_classes)


def test_zoo_in_float64() -> None:
    zoo = model_zoo(dtype=torch.float64)
    for entry in zoo.values():
        assert entry.inputs.dtype == torch.float64
        assert entry.model(entry.inputs).dtype == torch.float64
