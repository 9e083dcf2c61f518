"""Load times of netlens.datasets on the real files, and one epoch against a per-image Pillow path.

Run: ``python benchmarks/datasets.py [--cifar DIR] [--mnist DIR]`` (``--quick`` for a smoke run:
one repeat, test splits only). Each reader is constructed ``--repeats`` times, interleaved;
medians are printed. Then one shuffled ``DataLoader`` epoch over the CIFAR-10 test split (batch
128) through the preprocessed tensor of ``CIFAR10`` against a torchvision-style dataset that
converts each image with Pillow in ``__getitem__`` (grey, bilinear resize, [-1, 1]), with the
largest difference between the two. Needs Pillow only for that comparison.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from netlens.datasets import CIFAR10, MNIST


class PillowCIFAR10(Dataset[tuple[torch.Tensor, int]]):
    """What a torchvision pipeline does: keep uint8 images, convert each one when it is read."""

    def __init__(self, source: CIFAR10, raw: np.ndarray) -> None:
        from PIL import Image

        self.image = Image
        self.raw = raw  # (N, 32, 32, 3) uint8
        self.targets = source.targets.tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        picture = self.image.fromarray(self.raw[index]).convert("L")
        picture = picture.resize((28, 28), self.image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32))
        return (pixels / 127.5 - 1)[None], self.targets[index]


def seconds(fn: Callable[[], object]) -> float:
    return timed(fn)[0]


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def epoch(dataset: Dataset[tuple[torch.Tensor, int]]) -> None:
    loader = DataLoader(
        dataset, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    for _images, _labels in loader:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cifar", type=Path, default=Path("/root/netlens-data/cifar"))
    parser.add_argument("--mnist", type=Path, default=Path("../shared/datasets/mnist"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat, test splits only")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as scratch:
        # The archive layout, holding the test batch only (gzip of all 60,000 images takes long).
        archive_root = Path(scratch)
        with tarfile.open(archive_root / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(
                args.cifar / "cifar-10-batches-py" / "test_batch", "cifar-10-batches-py/test_batch"
            )
        cases: dict[str, Callable[[], object]] = {
            "CIFAR10 test, grey 28 (folder)": lambda: CIFAR10(args.cifar, train=False),
            "CIFAR10 test, grey 28 (tar.gz)": lambda: CIFAR10(archive_root, train=False),
            "CIFAR10 test, RGB 32": lambda: CIFAR10(args.cifar, train=False, grey=False, size=None),
            "MNIST test (gz)": lambda: MNIST(args.mnist, train=False),
        }
        if not args.quick:
            cases["CIFAR10 train, grey 28 (folder)"] = lambda: CIFAR10(args.cifar, train=True)
            cases["MNIST train (gz)"] = lambda: MNIST(args.mnist, train=True)
        times: dict[str, list[float]] = {name: [] for name in cases}
        built: dict[str, Any] = {}
        for _ in range(repeats):
            for name, build in cases.items():
                elapsed, built[name] = timed(build)
                times[name].append(elapsed)
        shutil.rmtree(archive_root, ignore_errors=True)

    print(f"torch {torch.__version__}, 1 thread, median of {repeats} interleaved repeats")
    print(f"{'construction':<36}{'seconds':>10}  {'len':>6}  {'item':<12}{'data range':>18}")
    for name, values in times.items():
        dataset = built[name]
        image, _ = dataset[0]
        value_range = f"[{dataset.data.min():.4f}, {dataset.data.max():.4f}]"
        print(
            f"{name:<36}{statistics.median(values):>10.2f}  {len(dataset):>6}  "
            f"{tuple(image.shape)!s:<12}{value_range:>18}"
        )

    ours = CIFAR10(args.cifar, train=False)
    rgb = CIFAR10(args.cifar, train=False, grey=False, size=None)
    raw = ((rgb.data + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    try:
        pillow = PillowCIFAR10(ours, np.ascontiguousarray(raw))
    except ImportError:
        print("Pillow is not installed: no per-image comparison.")
        return
    epochs: dict[str, list[float]] = {"netlens (tensor)": [], "Pillow per image": []}
    for _ in range(repeats):
        epochs["netlens (tensor)"].append(seconds(lambda: epoch(ours)))
        epochs["Pillow per image"].append(seconds(lambda: epoch(pillow)))
    fast, slow = (statistics.median(epochs[name]) for name in epochs)
    print(f"{'test epoch, batch 128, shuffled':<36}{'seconds':>10}")
    print(f"{'netlens (tensor)':<36}{fast:>10.2f}")
    print(f"{'Pillow per image':<36}{slow:>10.2f}")
    print(f"{'ratio Pillow / netlens':<36}{slow / fast:>10.1f}")
    reference = torch.stack([pillow[index][0] for index in range(len(pillow))])
    difference = (reference - ours.data).abs()
    print(
        f"difference to Pillow (its two uint8 roundings): max {difference.max():.4f} "
        f"= {difference.max() * 127.5:.2f} grey levels, mean {difference.mean() * 127.5:.3f} levels"
    )


if __name__ == "__main__":
    main()
