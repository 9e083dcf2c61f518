"""Train LeNet5 on colour CIFAR-10 for the colour pictures of activation maximisation.

    python ../shared/datasets/make_cifar10_batches.py ~/netlens-data/cifar   # once
    python docs/figures/train_cifar_rgb.py --data-dir ~/netlens-data/cifar \
        --out ~/netlens-data/models/lenet5_cifar_rgb.pt

``LeNet5(in_channels=3, image_size=32)`` from :mod:`netlens.models` on the 50,000 training
images in colour at 32x32 (``CIFAR10(grey=False, size=None)``: values in [-1, 1], that is pixels
in [0, 1] normalised with mean 0.5 and std 0.5), Adam at lr 0.001, batches of 128, random
horizontal flips, one thread, a few epochs (a few minutes on a CPU). It prints the loss per
epoch and the test accuracy, and writes the weights (about 17 MB: keep them out of the
repository). The model is small and trained briefly on purpose: it is there so that the
synthesised pictures have some structure, not to be a good classifier.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

from netlens.datasets import CIFAR10
from netlens.models import LeNet5


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), 1000):
            logits = model(images[start : start + 1000])
            correct += int((logits.argmax(1) == labels[start : start + 1000]).sum())
    return correct / len(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path.home() / "netlens-data" / "cifar")
    parser.add_argument(
        "--out", type=Path, default=Path.home() / "netlens-data/models/lenet5_cifar_rgb.pt"
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train = CIFAR10(args.data_dir, train=True, grey=False, size=None)
    test = CIFAR10(args.data_dir, train=False, grey=False, size=None)
    images, labels = train.data, train.targets
    model = LeNet5(in_channels=3, image_size=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_of = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(images))
        total, batches = 0.0, 0
        for first in range(0, len(order), args.batch_size):
            index = order[first : first + args.batch_size]
            batch = images[index]
            flip = torch.rand(len(index)) < 0.5  # random horizontal flips
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            loss = loss_of(model(batch), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            batches += 1
        model.eval()
        print(
            f"epoch {epoch}: train loss {total / batches:.3f}, test accuracy "
            f"{accuracy(model, test.data, test.targets):.4f}, {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
