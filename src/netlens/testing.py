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

from ._core.hooks import global_hooks as global_hooks_of
from ._core.hooks import module_hooks

__all__ = [
    "ContractModel",
    "ZooModel",
    "contract_zoo",
    "model_unchanged",
    "model_zoo",
    "snapshot",
]


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
        name: {attr: tuple(hooks.keys()) for attr, hooks in module_hooks(module).items()}
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
    global_hooks = {attr: tuple(hooks.keys()) for attr, hooks in global_hooks_of().items()}
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


# -- the contract zoo --------------------------------------------------------------------------
# Models whose layers put the batch, the channels or the tensor of interest where a guess from
# the shapes goes wrong. Each member says what a user must pass so that every technique sees the
# same channels (API: "Layers, outputs and results: one contract").


@dataclass(frozen=True)
class ContractModel:
    """A tiny seeded model with an example batch and the layer arguments a user must pass.

    Attributes:
        name: Short identifier (``"gru_time_first"``, ``"dict_block"``, ...).
        model: The module, in eval mode.
        inputs: An example batch (``torch.long`` token ids for ``"token_classifier"``).
        layer: Name of a layer worth looking at.
        channels: How many channels (units) that layer has under the contract.
        channel_dim: What to pass as ``channel_dim=``; None when the default rule is right.
        select: What to pass as ``select=``; None when the default rule is right.
        num_classes: Size of the model's output.
    """

    name: str
    model: nn.Module
    inputs: torch.Tensor
    layer: str
    channels: int
    channel_dim: int | None
    select: int | str | None
    num_classes: int


class GRUClassifier(nn.Module):
    """A GRU over ``(N, T, F)`` sequences, classifying from the last step.

    With ``batch_first=False`` the model transposes its inputs to ``(T, N, F)`` and its ``rnn``
    layer outputs ``(T, N, hidden)``: the batch axis is dim 1, which only the module's
    ``batch_first`` flag tells (with ``T == N`` the shapes cannot). With ``batch_first=True``
    there is no transpose; the same weights give the same logits.
    """

    def __init__(
        self,
        input_size: int = 5,
        hidden_size: int = 6,
        num_classes: int = 3,
        *,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.rnn = nn.GRU(input_size, hidden_size, batch_first=batch_first)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``(N, T, F)`` sequences from the hidden state of their last step."""
        if self.batch_first:
            output, _ = self.rnn(x)
            last = output[:, -1]
        else:
            output, _ = self.rnn(x.transpose(0, 1))
            last = output[-1]
        logits: torch.Tensor = self.fc(last)
        return logits


class PackedLSTMClassifier(nn.Module):
    """An LSTM over padded ``(N, T, F)`` sequences, packed by per-sample lengths it holds.

    The lengths live in the ``lengths`` buffer (one per sample of the example batch, not sorted);
    in a batch of another size, sample ``i`` has length ``lengths[i % len(lengths)]``. The
    ``rnn`` layer outputs ``(PackedSequence, (h, c))``; the model unpacks the sequence and
    classifies each sample from its last valid step.
    """

    lengths: torch.Tensor

    def __init__(
        self,
        lengths: list[int],
        input_size: int = 4,
        hidden_size: int = 6,
        num_classes: int = 3,
    ) -> None:
        super().__init__()
        self.register_buffer("lengths", torch.tensor(lengths, dtype=torch.long))
        self.rnn = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify padded ``(N, T, F)`` sequences from each one's last valid step."""
        rows = torch.arange(x.shape[0], device=self.lengths.device)
        lengths = self.lengths[rows % self.lengths.numel()]
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        output, _ = self.rnn(packed)
        padded, _ = nn.utils.rnn.pad_packed_sequence(output, batch_first=True)
        last = padded[rows.to(padded.device), lengths.to(padded.device) - 1]
        logits: torch.Tensor = self.fc(last)
        return logits


class DictBlock(nn.Module):
    """Conv and ReLU returning a mapping: ``{"hidden": (N, C, H, W), "gate": (N, G)}``.

    ``"hidden"`` (the first value, what the default rule reads) has ``channels`` channels;
    ``"gate"``, a sigmoid of a linear map of the pooled features, has ``gate_channels`` units and
    is what ``select="gate"`` reads.
    """

    def __init__(self, in_channels: int = 1, channels: int = 5, gate_channels: int = 3) -> None:
        super().__init__()
        self.channels = channels
        self.gate_channels = gate_channels
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.gate = nn.Linear(channels, gate_channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the features and the gate of a batch of images."""
        hidden = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.gate(hidden.mean(dim=(2, 3))))
        return {"hidden": hidden, "gate": gate}


class DictBlockNet(nn.Module):
    """A :class:`DictBlock` on ``(N, 1, 8, 8)`` images, then max-pool and a linear classifier.

    Only the block's ``"hidden"`` value reaches the output.
    """

    def __init__(self, channels: int = 5, num_classes: int = 3) -> None:
        super().__init__()
        self.block = DictBlock(1, channels)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(channels * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of 8x8 single-channel images."""
        hidden = self.block(x)["hidden"]
        logits: torch.Tensor = self.fc(torch.flatten(self.pool(hidden), 1))
        return logits


class Permute(nn.Module):
    """Permute the dims of a tensor (no parameters), like ``torchvision.ops.Permute``."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x.permute(*dims)``."""
        return x.permute(*self.dims)


class ChannelsLastStage(nn.Module):
    """A per-channel scale with a residual on channels-last ``(N, H, W, C)`` tensors.

    Its kind is unknown to netlens, so the default channel axis (dim 1) would be ``H``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x * scale + x``, the scale broadcast over the last dim."""
        return x * self.scale + x


class ChannelsLastNet(nn.Module):
    """A conv stem on ``(N, 3, 8, 8)``, a permute to ``(N, 8, 8, C)`` and a channels-last stage."""

    def __init__(self, channels: int = 6, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.relu = nn.ReLU()
        self.permute = Permute([0, 2, 3, 1])
        self.stage = ChannelsLastStage(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of 8x8 RGB images."""
        x = self.stage(self.permute(self.relu(self.stem(x))))
        logits: torch.Tensor = self.fc(x.mean(dim=(1, 2)))
        return logits


class Conv1D(nn.Module):
    """A linear layer with its weight stored ``(in_features, out_features)``, as in GPT-2.

    The layout and name of Hugging Face transformers' ``pytorch_utils.Conv1D``: ``nf`` output
    features, ``nx`` input features, ``x @ weight + bias`` over the last dim of ``(..., nx)``.
    """

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(..., nx)`` to ``(..., nf)``."""
        size_out = (*x.shape[:-1], self.nf)
        flat = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return flat.view(size_out)


class GPTProjectionNet(nn.Module):
    """A :class:`Conv1D` projection and GELU on ``(N, T, D)``, mean over ``T``, a classifier."""

    def __init__(self, dim: int = 5, hidden: int = 12, num_classes: int = 3) -> None:
        super().__init__()
        self.proj = Conv1D(hidden, dim)
        self.act = nn.GELU()
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``(N, T, D)`` sequences of vectors."""
        logits: torch.Tensor = self.fc(self.act(self.proj(x)).mean(dim=1))
        return logits


class TokenClassifier(nn.Module):
    """An embedding of ``(N, T)`` int64 token ids, a linear layer and ReLU, mean over ``T``.

    Token ``mask_id`` (0) is the integer baseline to occlude with; the example ids avoid it.
    """

    mask_id = 0

    def __init__(
        self, vocab: int = 20, dim: int = 6, hidden: int = 10, num_classes: int = 3
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, hidden)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Classify ``(N, T)`` token ids."""
        hidden = self.relu(self.proj(self.embed(ids)))
        logits: torch.Tensor = self.fc(hidden.mean(dim=1))
        return logits


def contract_zoo(seed: int = 0) -> dict[str, ContractModel]:
    """Build the contract's tiny models, seeded and without touching the global RNG.

    Each member is a model in eval mode, an example batch, a layer and how many channels that
    layer has under the layer contract, with the ``channel_dim=`` and ``select=`` a user must
    pass (None where the default rule is right). Every member has 3 classes.

    - ``"gru_time_first"``: ``(4, 4, 5)`` inputs transposed to ``(T, N, F)`` for an
      ``nn.GRU(batch_first=False)``; layer ``"rnn"`` outputs ``(T, N, 6)`` (``T == N``), 6 units.
    - ``"gru_batch_first"``: the same weights with ``batch_first=True`` and no transpose, the
      reference every technique must agree with on the same inputs.
    - ``"lstm_packed"``: padded ``(3, 5, 4)`` inputs with lengths ``[4, 5, 3]`` (zero padding),
      packed for an ``nn.LSTM(batch_first=True)``; layer ``"rnn"`` outputs a
      ``PackedSequence``, 6 units.
    - ``"dict_block"``: ``(2, 1, 8, 8)`` images; layer ``"block"`` returns
      ``{"hidden": (N, 5, 8, 8), "gate": (N, 3)}``, 5 channels (``select="gate"``: 3, see
      ``model.block.gate_channels``).
    - ``"channels_last"``: ``(2, 3, 8, 8)`` images; layer ``"stage"`` outputs ``(N, 8, 8, 6)``
      from a module unknown to netlens, 6 channels with ``channel_dim=-1``.
    - ``"conv1d_gpt"``: ``(2, 8, 5)`` inputs; layer ``"proj"``, a GPT-2 style ``Conv1D``,
      outputs ``(N, 8, 12)``, 12 units.
    - ``"token_classifier"``: ``(2, 7)`` int64 token ids in ``[1, 20)``; layer ``"proj"`` (a
      ``Linear`` after an ``Embedding(20, 6)``) outputs ``(N, 7, 10)``, 10 units. Token
      ``model.mask_id`` (0) is the integer baseline for occlusion.

    Args:
        seed: Seeds the weights (``seed + i`` for the ``i``-th member) and the example batches.

    Returns:
        ``{name: ContractModel}`` in the order above.

    Example:
        >>> import torch
        >>> from netlens.testing import contract_zoo
        >>> zoo = contract_zoo()
        >>> list(zoo)  # doctest: +NORMALIZE_WHITESPACE
        ['gru_time_first', 'gru_batch_first', 'lstm_packed', 'dict_block', 'channels_last',
         'conv1d_gpt', 'token_classifier']
        >>> member = zoo["channels_last"]
        >>> member.layer, member.channels, member.channel_dim, member.select
        ('stage', 6, -1, None)
        >>> member.model(member.inputs).shape
        torch.Size([2, 3])
        >>> first, reference = zoo["gru_time_first"], zoo["gru_batch_first"]
        >>> torch.allclose(first.model(first.inputs), reference.model(first.inputs))
        True
    """
    steps = 5
    lengths = [steps - 1, steps, steps - 2]
    time_first = _seeded(lambda: GRUClassifier(batch_first=False), seed)
    batch_first = _seeded(lambda: GRUClassifier(batch_first=True), seed)
    batch_first.load_state_dict(time_first.state_dict())
    # name: (model, example input shape, layer, channels, channel_dim, select)
    members: dict[str, tuple[nn.Module, tuple[int, ...], str, int, int | None, str | None]] = {
        "gru_time_first": (time_first, (4, 4, 5), "rnn", 6, None, None),
        "gru_batch_first": (batch_first, (4, 4, 5), "rnn", 6, None, None),
        "lstm_packed": (
            _seeded(lambda: PackedLSTMClassifier(lengths), seed + 2),
            (len(lengths), steps, 4),
            "rnn",
            6,
            None,
            None,
        ),
        "dict_block": (_seeded(DictBlockNet, seed + 3), (2, 1, 8, 8), "block", 5, None, None),
        "channels_last": (_seeded(ChannelsLastNet, seed + 4), (2, 3, 8, 8), "stage", 6, -1, None),
        "conv1d_gpt": (_seeded(GPTProjectionNet, seed + 5), (2, 8, 5), "proj", 12, None, None),
        "token_classifier": (_seeded(TokenClassifier, seed + 6), (2, 7), "proj", 10, None, None),
    }
    zoo: dict[str, ContractModel] = {}
    for index, (name, (model, shape, layer, channels, channel_dim, select)) in enumerate(
        members.items()
    ):
        generator = torch.Generator().manual_seed(seed + 200 + index)
        if name == "gru_batch_first":
            # The twins share their inputs, so that their results compare directly.
            inputs = zoo["gru_time_first"].inputs.clone()
        elif name == "token_classifier":
            inputs = torch.randint(1, 20, shape, generator=generator)
        else:
            inputs = torch.randn(shape, generator=generator)
        if name == "lstm_packed":
            valid = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
            inputs = inputs * valid[:, :, None]
        zoo[name] = ContractModel(
            name, model.eval(), inputs, layer, channels, channel_dim, select, 3
        )
    return zoo
