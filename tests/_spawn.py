"""Run a function in several fresh processes joined by torch.distributed (gloo on 127.0.0.1)."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# The loopback interface, so that gloo never looks beyond this machine.
LOOPBACK = "lo0" if sys.platform == "darwin" else "lo"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _entry(rank: int, worker: Callable[..., None], world: int, port: int, *args: Any) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = LOOPBACK
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        worker(rank, world, *args)
    finally:
        dist.destroy_process_group()


def spawn(worker: Callable[..., None], world: int, *args: Any, timeout: float = 120) -> None:
    """Run ``worker(rank, world, *args)`` in ``world`` fresh processes; fail rather than hang."""
    context = mp.start_processes(
        _entry,
        args=(worker, world, free_port(), *args),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {world} processes did not finish within {timeout} s")
