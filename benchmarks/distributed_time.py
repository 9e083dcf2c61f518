"""Time of ``examples/distributed_lenses.py`` with 1 and with 2 processes on the same data.

Run: ``python benchmarks/distributed_time.py --data-dir DIR`` (``DIR`` holds CIFAR-10's
``cifar-10-batches-py/``). Launches ``torchrun --nproc_per_node N`` (gloo on 127.0.0.1, one
thread per process) for N = 1, 2, 1, 2, ... (interleaved, so that machine noise hits both
alike) and prints, per N, the median of: the time of the lenses themselves (statistics and the
top-9 of conv1 and conv2, as the example measures it on rank 0), the CPU time of rank 0 over
the same span, and the wall time of the whole launch (process start-up, reading CIFAR-10 and
writing the results included).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "distributed_lenses.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(processes: int, data_dir: Path, out: Path, extra: list[str]) -> dict[str, float]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    command += [str(EXAMPLE), "--data-dir", str(data_dir), "--out", str(out), *extra]
    environment = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=environment)
    wall = time.perf_counter() - start
    run = json.loads((out / "run.json").read_text())
    return {"lenses": run["seconds"], "cpu": run["cpu_seconds_rank_0"], "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="the first N test images")
    args = parser.parse_args()
    extra = [] if args.limit is None else ["--limit", str(args.limit)]
    found: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for processes in (1, 2):
                out = Path(folder) / f"run{processes}"
                found[processes].append(launch(processes, args.data_dir, out, extra))
    print(f"examples/distributed_lenses.py, medians of {args.repeats} interleaved launches")
    print(f"  {'processes':>9} {'lenses':>9} {'CPU rank 0':>11} {'whole launch':>13}")
    for processes, runs in found.items():
        lenses, cpu, wall = (statistics.median(run[key] for run in runs) for key in found[1][0])
        print(f"  {processes:>9} {lenses:>8.1f}s {cpu:>10.1f}s {wall:>12.1f}s")
    for processes, runs in found.items():
        print(f"  all {processes}:", ", ".join(f"{run['lenses']:.1f}" for run in runs))


if __name__ == "__main__":
    main()
