"""The models of the example experiments: LeNet5 and a row-by-row recurrent classifier."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from ._core.errors import NetlensValueError

__all__ = ["LeNet5", "RowClassifier"]


class LeNet5(nn.Module):
    """LeNet5 as in the course report: two 5x5 conv layers (32 and 64 filters), two linear layers.

    ``conv1`` (5x5x32, padding 2), ReLU, 2x2 max-pool, ``conv2`` (5x5x64, padding 2), ReLU, 2x2
    max-pool, ``fc1`` (3136 -> 1024 for 28x28 inputs), ReLU, ``fc2`` (1024 -> classes). The
    output is logits; ``softmax`` of it gives the class probabilities used at inference.

    Args:
        in_channels: 1 for grey images (the report), 3 for colour.
        num_classes: Size of the output.
        image_size: Height and width of the (square) inputs; 28 in the report.
        dropout: Probability of :class:`~torch.nn.Dropout` on the 1024 hidden units before
            ``fc2`` (module ``dropout``); 0 (the report) adds no dropout module at all.

    Example:
        >>> import torch
        >>> from netlens.models import LeNet5
        >>> LeNet5()(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        *,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if image_size % 4:
            raise NetlensValueError(f"Expected image_size divisible by 4, but got {image_size}.")
        if not 0.0 <= dropout < 1.0:
            raise NetlensValueError(f"Expected dropout in [0, 1), but got {dropout}.")
        self.conv1 = nn.Conv2d(in_channels, 32, 5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * (image_size // 4) ** 2, 1024)
        self.relu3 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout else None
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for ``(N, C, H, W)`` images."""
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(self.flatten(x)))
        if self.dropout is not None:
            x = self.dropout(x)
        logits: torch.Tensor = self.fc2(x)
        return logits


class RowClassifier(nn.Module):
    """Read an image one row per time step with an RNN, LSTM or GRU; classify the last state.

    Args:
        cell: ``"rnn"`` (tanh), ``"lstm"`` or ``"gru"``.
        input_size: Features per step (28 pixels of an MNIST row).
        hidden_size: Recurrent state size (128 in the report).
        num_classes: Size of the output.
        orthogonal_init: Replace PyTorch's uniform initialisation of the recurrent weights
            ``weight_hh`` by a random orthogonal matrix per gate block (``i, f, g, o`` of an
            LSTM, ``r, z, n`` of a GRU; Saxe et al. 2014), so that the state is neither
            amplified nor damped along the 28 steps at the start of training. The input
            weights and the biases keep PyTorch's default. Draws from the global random state.

    Inputs are ``(N, T, F)`` or ``(N, 1, T, F)`` images (the channel dim is dropped).

    Example:
        >>> import torch
        >>> from netlens.models import RowClassifier
        >>> RowClassifier("gru")(torch.zeros(2, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        cell: str = "lstm",
        input_size: int = 28,
        hidden_size: int = 128,
        num_classes: int = 10,
        *,
        orthogonal_init: bool = False,
    ) -> None:
        super().__init__()
        kinds: dict[str, type[nn.RNN | nn.LSTM | nn.GRU]] = {
            "rnn": nn.RNN,
            "lstm": nn.LSTM,
            "gru": nn.GRU,
        }
        if cell not in kinds:
            raise NetlensValueError(
                f"Expected cell to be one of {sorted(kinds)}, but got {cell!r}."
            )
        self.cell = cell
        self.rnn = kinds[cell](input_size, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)
        if orthogonal_init:
            with torch.no_grad():
                recurrent_weight = cast(torch.Tensor, self.rnn.weight_hh_l0)
                for block in torch.split(recurrent_weight, hidden_size):
                    nn.init.orthogonal_(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for ``(N, T, F)`` or ``(N, 1, T, F)`` inputs."""
        if x.dim() == 4:
            x = x.squeeze(1)
        output, _ = self.rnn(x)
        logits: torch.Tensor = self.fc(output[:, -1])
        return logits
