"""Record what every layer of LeNet5 and of a row-LSTM computes, and summarise it.

Run: ``python examples/record_layers.py``. Needs no data set: it feeds random inputs, so the
numbers only show the mechanics (shapes, calls, in-place safety). The CIFAR-10 and MNIST
experiments in this folder apply the same tools to trained models.
"""

from __future__ import annotations

import torch
from torch import nn

import netlens as nl
from netlens.models import LeNet5, RowClassifier


def summarise(model: nn.Module, inputs: torch.Tensor, layers: nl.LayerSpec) -> None:
    with nl.record(model, layers) as rec, torch.no_grad():
        model(inputs)
    for name, output in rec.items():
        calls = len(rec.calls(name))
        print(
            f"  {name:<8} {type(rec.layers[name]).__name__:<10} {tuple(output.shape)!s:<20} "
            f"mean {output.mean():+.3f}  zeros {float((output == 0).float().mean()):.0%}"
            + (f"  ({calls} calls)" if calls > 1 else "")
        )


def main() -> None:
    torch.manual_seed(0)
    print("LeNet5 on a batch of 16 random 28x28 images, every conv and ReLU:")
    summarise(LeNet5().eval(), torch.randn(16, 1, 28, 28), [nn.Conv2d, "relu*", "fc2"])
    print("Row-LSTM on 16 random 28-step sequences (output sequence of the LSTM):")
    summarise(RowClassifier("lstm").eval(), torch.randn(16, 28, 28), ["rnn", "fc"])


if __name__ == "__main__":
    main()
