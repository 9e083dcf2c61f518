r"""Data-set-wide lenses on several processes: the statistics and top-9 of every conv channel.

LeNet5 (freshly initialised with ``--seed``, or trained: ``--checkpoint`` of
``examples/cifar_lenet.py``) over the CIFAR-10 test set (grey 28x28, as ``cifar_lenet.py``
trains on it), split across the processes of a ``torchrun`` launch. Each process passes over
its shard only; ``nl.activation_stats(..., group=...)`` and ``nl.top_activations(...,
group=...)`` merge the shards across processes, and every process ends with the same result:
the one a single process gets over all of the data. Rank 0 writes it, once.

Run on the CPU with two processes, gloo on the loopback interface::

    GLOO_SOCKET_IFNAME=lo torchrun --nproc_per_node 2 --master_addr 127.0.0.1 \
        --master_port 29517 examples/distributed_lenses.py --data-dir ~/data/cifar --out runs/lenses

``--data-dir`` holds ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``. Without torchrun
(``python examples/distributed_lenses.py ...``) it runs as one process. ``--quick`` reads the
first 1,000 test images only, as ``--quick`` makes the other examples small (``--limit N``
chooses another number). ``--out`` receives
``stats_conv1.csv``, ``stats_conv2.csv`` (per-channel statistics), ``top_conv1.pt``,
``top_conv2.pt`` (the :class:`netlens.TopActivations`, for ``torch.load(...,
weights_only=False)``), ``top_conv1.png``, ``top_conv2.png`` (the paper's Figure 2 for every
channel) and ``run.json`` (the settings, the number of processes and the time).

Each rank reads one contiguous block of the data set (:class:`ShardSampler`), so that the
``indices`` of the top-9 are indices into the CIFAR-10 test set, whatever the number of
processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

import netlens as nl
from netlens.datasets import CIFAR10
from netlens.models import LeNet5

LAYERS = ("conv1", "conv2")
QUICK_IMAGES = 1000  # --quick: the first test images only


class ShardSampler(DistributedSampler[int]):
    """A ``DistributedSampler`` that gives each rank one contiguous block, in order, unpadded.

    The default one deals the data out in turn (rank ``r`` reads ``r, r + W, r + 2W, ...``) and
    repeats samples so that every rank reads as many: right for training, but the statistics
    would count the repeats, and the shards concatenated in rank order (the order in which the
    top-k's ``indices`` count) would not be the data set's order.
    """

    def __init__(self, dataset: Dataset[Any], num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        size = len(dataset)  # type: ignore[arg-type]
        self.start = size * rank // num_replicas
        self.stop = size * (rank + 1) // num_replicas
        self.num_samples = self.stop - self.start

    def __iter__(self) -> Any:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.num_samples


@dataclass(frozen=True)
class Lenses:
    """Per-channel statistics and top-k activations of each layer, and how long they took."""

    stats: dict[str, nl.ChannelStats]
    tops: dict[str, nl.TopActivations]
    seconds: float  # wall time
    cpu_seconds: float  # CPU time of this process


def lenses(
    model: torch.nn.Module,
    dataset: Dataset[Any],
    *,
    batch_size: int = 250,
    k: int = 9,
    group: Any = None,
) -> Lenses:
    """Statistics and the top-``k`` of every channel of :data:`LAYERS` over ``dataset``.

    With ``group`` (``"default"`` or a process group) this rank reads only its shard, and the
    results are merged across the group's ranks; without, one process reads everything.
    """
    sampler = None
    if group is not None:
        process_group = dist.group.WORLD if group == "default" else group
        world, rank = dist.get_world_size(process_group), dist.get_rank(process_group)
        sampler = ShardSampler(dataset, world, rank)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False)
    start, cpu_start = time.perf_counter(), time.process_time()
    stats = nl.activation_stats(model, loader, list(LAYERS), group=group)
    tops = {layer: nl.top_activations(model, loader, layer, k=k, group=group) for layer in LAYERS}
    return Lenses(stats, tops, time.perf_counter() - start, time.process_time() - cpu_start)


def write(result: Lenses, out: Path, settings: dict[str, Any]) -> None:
    """Write the statistics, the top-k results and their figures, and the run's settings."""
    out.mkdir(parents=True, exist_ok=True)
    for layer in LAYERS:
        result.stats[layer].to_csv(out / f"stats_{layer}.csv")
        torch.save(result.tops[layer], out / f"top_{layer}.pt")
        result.tops[layer].save(out / f"top_{layer}.png")
    run = {**settings, "seconds": result.seconds, "cpu_seconds_rank_0": result.cpu_seconds}
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")


def load_model(checkpoint: Path | None, seed: int) -> LeNet5:
    """LeNet5 for grey 28x28 inputs: trained from a checkpoint, or initialised from ``seed``."""
    torch.manual_seed(seed)  # every rank builds the same weights
    model = LeNet5()
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("model", state))
    return model.eval()


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="holds CIFAR-10")
    parser.add_argument("--out", type=Path, required=True, help="where rank 0 writes")
    parser.add_argument("--checkpoint", type=Path, default=None, help="of cifar_lenet.py")
    parser.add_argument("--seed", type=int, default=0, help="weights without a checkpoint")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("-k", type=int, default=9, help="top activations per channel")
    parser.add_argument("--limit", type=int, default=None, help="the first N test images only")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"the first {QUICK_IMAGES} test images only, for a smoke run (--limit overrides)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    if args.quick and args.limit is None:
        args.limit = QUICK_IMAGES
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    launched = "WORLD_SIZE" in os.environ  # by torchrun, which also sets MASTER_ADDR and PORT
    if launched:
        dist.init_process_group("gloo")
    try:
        group = "default" if launched else None
        rank, world = (dist.get_rank(), dist.get_world_size()) if launched else (0, 1)
        model = load_model(args.checkpoint, args.seed)
        dataset: Dataset[Any] = CIFAR10(args.data_dir, train=False)
        if args.limit is not None:
            dataset = Subset(dataset, range(min(args.limit, len(dataset))))  # type: ignore[arg-type]
        result = lenses(model, dataset, batch_size=args.batch_size, k=args.k, group=group)
        if rank == 0:
            settings = {
                "processes": world,
                "threads_per_process": args.threads,
                "images": len(dataset),  # type: ignore[arg-type]
                "batch_size": args.batch_size,
                "k": args.k,
                "checkpoint": None if args.checkpoint is None else str(args.checkpoint),
                "seed": args.seed,
            }
            write(result, args.out, settings)
            print(
                f"{world} process(es): statistics and top-{args.k} of {', '.join(LAYERS)} over "
                f"{len(dataset)} images in {result.seconds:.1f} s (rank 0: "  # type: ignore[arg-type]
                f"{result.cpu_seconds:.1f} s of CPU); written to {args.out}"
            )
    finally:
        if launched:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
