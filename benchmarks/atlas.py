"""The atlas against the sum of its parts, and at scale on ResNet-18.

Part 1 (``lenet``): the full atlas of the CIFAR example's LeNet5 (conv1, conv2, fc1; the 10,000
test images; k = 9; feature visualisations of every conv channel) against the sum of its parts
run separately, timed side by side in one run: one plain forward pass over the data,
``maximize_activation`` per layer, and ``deconvnet`` of the atlas' winners (per channel, its k
inputs). Goals: the atlas takes at most 1.3x that sum, and runs the model over the data once.

Part 2 (``resnet``): torchvision's ResNet-18 (random weights) at 64 px over 10,000 inputs, the
outputs of its four stages (960 channels): time, peak memory above the model and the data's
batch, site size and time per channel. Under ``torchrun --nproc_per_node 2`` each rank passes
over half of the inputs and optimises half of the channels.

    python benchmarks/atlas.py lenet --data-dir <grey CIFAR-10 root>   # random images without
    python benchmarks/atlas.py resnet
    torchrun --nproc_per_node 2 benchmarks/atlas.py resnet
    python benchmarks/atlas.py lenet --quick                             # a short check

The inputs of part 2 are made batch by batch from a seeded generator, so that the data set
itself takes no memory: what is measured is the atlas' own.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the torchvision helper of the tests

import netlens as nl  # noqa: E402
from netlens.models import LeNet5  # noqa: E402


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    """Start the peak resident size (VmHWM) afresh at the current size (Linux)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


# -- part 1: LeNet5 on the CIFAR example's test set ------------------------------------------


def _cifar_test(data_dir: str | None, count: int) -> torch.Tensor:
    if data_dir is None:
        return torch.randn(count, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    from netlens.datasets import CIFAR10

    test = CIFAR10(data_dir, train=False)
    return torch.stack([test[index][0] for index in range(min(count, len(test)))])


def lenet(args: argparse.Namespace) -> None:
    """Part 1: the atlas against one forward pass + maximisation + deconvnet of its winners."""
    count = 1_000 if args.quick else 10_000
    steps = 16 if args.quick else 128
    images = _cifar_test(args.data_dir, count)
    batches = [images[start : start + 500] for start in range(0, images.shape[0], 500)]
    torch.manual_seed(0)
    model = LeNet5().eval()
    layers, visualised = ["conv1", "conv2", "fc1"], ["conv1", "conv2"]
    value_range = (float(images.min()), float(images.max()))

    calls: list[int] = []
    handle = model.register_forward_pre_hook(
        lambda module, inputs: calls.append(inputs[0].shape[0])
    )
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        book = nl.atlas(
            model, batches, layers, out=out, k=9, maximize=visualised, steps=steps, resume=False
        )
        atlas_seconds = time.perf_counter() - started
    handle.remove()
    full_passes = sum(1 for size in calls if size == 500) / len(batches)

    parts: dict[str, float] = {}
    started = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    parts["forward pass"] = time.perf_counter() - started
    started = time.perf_counter()
    for layer in visualised:
        nl.maximize_activation(
            model,
            layer,
            input_shape=(1, 28, 28),
            steps=steps,
            param="fourier",
            value_range=value_range,
            seed=0,
        )
    parts["maximize_activation"] = time.perf_counter() - started
    started = time.perf_counter()
    for layer in layers:
        top = book[layer].top
        assert top is not None
        for channel in range(top.indices.shape[0]):
            nl.deconvnet(model, images[top.indices[channel]], layer, channel)
    parts["deconvnet of the winners"] = time.perf_counter() - started
    total = sum(parts.values())

    channels = sum(len(book[layer]) for layer in layers)
    print(f"LeNet5, {images.shape[0]} images, k=9, {steps} steps, {channels} channels")
    print(f"  atlas                      {atlas_seconds:8.1f} s   {dict(book.seconds)}")
    for name, seconds in parts.items():
        print(f"  {name:<26} {seconds:8.1f} s")
    print(f"  sum of the parts           {total:8.1f} s")
    print(f"  atlas / sum of parts       {atlas_seconds / total:8.2f}   (goal <= 1.3)")
    print(f"  forward passes over data   {full_passes:8.2f}   (goal <= 1)")
    print(f"  site size                  {book.site_bytes / 2**20:8.1f} MiB")


# -- part 2: ResNet-18 at 64 px -------------------------------------------------------------


def _inputs(first: int, count: int, batch: int, size: int) -> Iterator[torch.Tensor]:
    """Inputs ``first .. first + count`` in batches, each batch drawn from its own seed."""
    for start in range(first, first + count, batch):
        stop = min(start + batch, first + count)
        generator = torch.Generator().manual_seed(start)
        yield torch.randn(stop - start, 3, size, size, generator=generator)


def resnet(args: argparse.Namespace) -> None:
    """Part 2: time, memory, site size of an atlas of ResNet-18's four stages."""
    from _torchvision import import_torchvision

    group = None
    rank, world = 0, 1
    if "WORLD_SIZE" in os.environ:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        group, rank, world = "default", dist.get_rank(), dist.get_world_size()
    count = 1_000 if args.quick else 10_000
    steps = 4 if args.quick else args.steps
    torchvision = import_torchvision()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    share = count // world
    data = _inputs(rank * share, share if rank < world - 1 else count - rank * share, 250, 64)
    with torch.no_grad():
        model(torch.randn(250, 3, 64, 64))  # warm: the allocator and the kernels' caches
    baseline = _rss_kib("VmRSS")
    _reset_peak()
    layers = ["layer1", "layer2", "layer3", "layer4"]
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        started = time.perf_counter()
        book = nl.atlas(model, data, layers, out=out, k=9, steps=steps, group=group, resume=False)
        seconds = time.perf_counter() - started
    peak = _rss_kib("VmHWM") - baseline
    if rank == 0:
        channels = sum(len(book[layer]) for layer in layers)
        print(
            f"ResNet-18, 64 px, {count} inputs, {channels} channels, {steps} steps, "
            f"{world} process(es), {torch.get_num_threads()} thread(s) each"
        )
        print(f"  time                 {seconds:8.1f} s   {dict(book.seconds)}")
        print(f"  time per channel     {seconds / channels:8.3f} s")
        print(f"  peak above the model {peak / 2**10:8.0f} MiB (rank 0; goal < 1024)")
        print(f"  site size            {book.site_bytes / 2**20:8.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["lenet", "resnet"])
    parser.add_argument("--data-dir", help="grey CIFAR-10 (part 1); random images without")
    parser.add_argument(
        "--steps", type=int, default=32, help="feature visualisation steps (part 2)"
    )
    parser.add_argument("--out", help="keep the site here (part 2)")
    parser.add_argument("--quick", action="store_true", help="a short check")
    args = parser.parse_args()
    {"lenet": lenet, "resnet": resnet}[args.part](args)


if __name__ == "__main__":
    main()
