"""Helpers for testing code that looks inside models: a model-state guard and a tiny model zoo.

Every netlens technique is tested with :func:`model_unchanged` over :func:`model_zoo`; user code
built on netlens can do the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ZooModel",
    "model_unchanged",
    "model_zoo",
    "snapshot",
]

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


@dataclass(frozen=True)
class _State:
    names: tuple[str, ...]
    training: dict[str, bool]
    hooks: dict[str, dict[str, tuple[int, ...]]]
    parameters: dict[str, tuple[int, torch.Tensor, torch.Tensor | None, bool]]
    buffers: dict[str, torch.Tensor]
    global_hooks: dict[str, tuple[int, ...]]


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
    return bool(torch.equal(a, b))


def snapshot(model: nn.Module) -> _State:
    """Copy everything :func:`model_unchanged` compares (values are cloned)."""
    hooks = {
        name: {attr: tuple(getattr(module, attr, {}).keys()) for attr in _HOOK_DICTS}
        for name, module in model.named_modules()
    }
    parameters = {
        name: (
            id(param),
            param.detach().clone(),
            None if param.grad is None else param.grad.detach().clone(),
            param.requires_grad,
        )
        for name, param in model.named_parameters()
    }
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    from torch.nn.modules import module as module_module

    global_hooks = {
        attr: tuple(getattr(module_module, attr).keys())
        for attr in (
            "_global_forward_hooks",
            "_global_forward_pre_hooks",
            "_global_backward_hooks",
            "_global_backward_pre_hooks",
        )
        if hasattr(module_module, attr)
    }
    return _State(
        names=tuple(name for name, _ in model.named_modules()),
        training={name: module.training for name, module in model.named_modules()},
        hooks=hooks,
        parameters=parameters,
        buffers=buffers,
        global_hooks=global_hooks,
    )


def _differences(before: _State, after: _State) -> list[str]:
    found: list[str] = []
    if before.names != after.names:
        found.append(f"module structure changed: {before.names} -> {after.names}")
    for name, flag in before.training.items():
        if after.training.get(name, flag) != flag:
            found.append(f"{name or 'model'}.training changed: {flag} -> {not flag}")
    for name, attrs in before.hooks.items():
        for attr, keys in attrs.items():
            now = after.hooks.get(name, {}).get(attr, keys)
            if now != keys:
                found.append(f"{name or 'model'}.{attr} changed: {len(keys)} -> {len(now)} hooks")
    for attr, keys in before.global_hooks.items():
        if after.global_hooks.get(attr, keys) != keys:
            found.append(f"global {attr} changed")
    if before.parameters.keys() != after.parameters.keys():
        found.append("the set of parameters changed")
    for name, (ident, value, grad, requires_grad) in before.parameters.items():
        if name not in after.parameters:
            continue
        ident2, value2, grad2, requires_grad2 = after.parameters[name]
        if ident != ident2:
            found.append(f"parameter {name} was replaced by another object")
        if not _same(value, value2):
            found.append(f"parameter {name} changed value")
        if not _same(grad, grad2):
            found.append(f"parameter {name}.grad changed")
        if requires_grad != requires_grad2:
            found.append(
                f"parameter {name}.requires_grad changed: {requires_grad} -> {requires_grad2}"
            )
    if before.buffers.keys() != after.buffers.keys():
        found.append("the set of buffers changed")
    for name, value in before.buffers.items():
        if name in after.buffers and not _same(value, after.buffers[name]):
            found.append(f"buffer {name} changed value")
    return found


@contextmanager
def model_unchanged(model: nn.Module) -> Iterator[None]:
    """Fail if the model differs on exit from how it was on entry.

    Compares parameter values and identities, gradients, ``requires_grad``, buffers (BatchNorm
    running statistics), every module's ``training`` flag, the module structure, and the hooks
    registered on each module and globally. Checked also when the block raises: the original
    exception propagates when the model is unchanged; otherwise an ``AssertionError`` listing the
    differences is raised from it.

    Example:
        >>> import torch, torch.nn as nn
        >>> from netlens.testing import model_unchanged
        >>> net = nn.Linear(2, 2)
        >>> with model_unchanged(net):
        ...     _ = net(torch.ones(1, 2))
        >>> with model_unchanged(net):
        ...     net.eval()
        Traceback (most recent call last):
        AssertionError: The model changed: model.training changed: True -> False
    """
    before = snapshot(model)
    try:
        yield
    except BaseException as error:
        found = _differences(before, snapshot(model))
        if found:
            raise AssertionError("The model changed: " + "; ".join(found)) from error
        raise
    found = _differences(before, snapshot(model))
    if found:
        raise AssertionError("The model changed: " + "; ".join(found))


# -- the zoo -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooModel:
    """A tiny seeded model with an example batch.

    Attributes:
        name: Short identifier (``"conv"``, ``"lstm"``, ...).
        model: The module, in eval mode unless the test needs otherwise.
        inputs: An example batch.
        feature_layer: Name of a layer with channels worth looking at (for images a conv layer).
        num_classes: Size of the model's output.
    """

    name: str
    model: nn.Module
    inputs: torch.Tensor
    feature_layer: str
    num_classes: int


class TinyConvNet(nn.Module):
    """Conv, ReLU, max-pool twice, then a linear classifier; inputs ``(N, 1, 8, 8)``."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=inplace)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of 8x8 single-channel images."""
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        logits: torch.Tensor = self.fc(self.flatten(x))
        return logits


class FunctionalReluNet(nn.Module):
    """:class:`TinyConvNet` written with ``F.relu`` and ``torch.relu`` instead of modules."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of 8x8 single-channel images."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
        logits: torch.Tensor = self.fc(torch.flatten(x, 1))
        return logits


class ResidualNet(nn.Module):
    """A conv stem and one residual block with BatchNorm; inputs ``(N, 1, 8, 8)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv_a = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of 8x8 single-channel images."""
        x = self.relu(self.stem(x))
        y = self.relu(self.bn_a(self.conv_a(x)))
        y = self.bn_b(self.conv_b(y))
        x = self.pool(self.relu(x + y))
        logits: torch.Tensor = self.fc(torch.flatten(x, 1))
        return logits


class SharedBlockNet(nn.Module):
    """One conv block applied twice in the same forward pass; inputs ``(N, 1, 8, 8)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of 8x8 single-channel images."""
        x = self.block(self.block(self.stem(x)))
        logits: torch.Tensor = self.fc(torch.flatten(self.pool(x), 1))
        return logits


class RowRecurrentNet(nn.Module):
    """Read an image row by row with an RNN, LSTM or GRU; classify from the last hidden state."""

    def __init__(self, cell: str = "lstm", input_size: int = 8, hidden_size: int = 6) -> None:
        super().__init__()
        recurrent = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = recurrent(input_size, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``(N, T, F)`` sequences."""
        output, _ = self.rnn(x)
        logits: torch.Tensor = self.fc(output[:, -1])
        return logits


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def model_zoo(
    seed: int = 0, dtype: torch.dtype = torch.float32, batch: int = 2
) -> dict[str, ZooModel]:
    """Build the tiny models every technique is tested on, seeded and without touching global RNG.

    Returns ``{name: ZooModel}`` for: ``"conv"`` (conv/ReLU/pool), ``"inplace"`` (the same with
    ``nn.ReLU(inplace=True)``), ``"functional"`` (``F.relu`` and ``torch.relu``), ``"residual"``
    (BatchNorm and a skip connection), ``"shared"`` (a block used twice per forward), ``"lstm"``
    and ``"gru"`` (row classifiers on ``(N, 8, 8)`` sequences). Models are in eval mode except
    ``"residual"``, which stays in training mode so that BatchNorm running statistics would
    betray a forward pass that a technique forgot to undo.

    Example:
        >>> from netlens.testing import model_zoo
        >>> sorted(model_zoo())
        ['conv', 'functional', 'gru', 'inplace', 'lstm', 'residual', 'shared']
    """
    builders: dict[str, tuple[Callable[[], nn.Module], str, bool]] = {
        "conv": (TinyConvNet, "conv2", True),
        "inplace": (lambda: TinyConvNet(inplace=True), "conv2", True),
        "functional": (FunctionalReluNet, "conv2", True),
        "residual": (ResidualNet, "conv_b", True),
        "shared": (SharedBlockNet, "block.0", True),
        "lstm": (lambda: RowRecurrentNet("lstm"), "rnn", False),
        "gru": (lambda: RowRecurrentNet("gru"), "rnn", False),
    }
    zoo: dict[str, ZooModel] = {}
    for index, (name, (build, layer, image)) in enumerate(builders.items()):
        model = _seeded(build, seed + index).to(dtype)
        if name != "residual":
            model.eval()
        generator = torch.Generator().manual_seed(seed + 100 + index)
        shape = (batch, 1, 8, 8) if image else (batch, 8, 8)
        inputs = torch.randn(shape, generator=generator).to(dtype)
        zoo[name] = ZooModel(name, model, inputs, layer, 3)
    return zoo
