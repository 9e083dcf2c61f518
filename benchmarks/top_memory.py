"""Peak memory and time of ``netlens.top_activations`` on a vgg11_bn-style network.

Run: ``python benchmarks/top_memory.py`` (``--quick``: two layers, fewer inputs; Linux only, it
reads ``/proc``). Each measurement runs in a fresh process, which builds the network and the
inputs, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``) and then makes one call;
it reports how far the peak resident memory rose above the process with the network and the
inputs in memory, and the wall time of the call. The goal: under 300 MB for
``top_activations`` at every ``features.*`` layer (32 inputs of 3x224x224 in batches of 4, the
top-9 of 8 channels). For reference, the same is measured for a plain forward pass of one
batch up to the layer (the least any pass over the data costs) and for one ``nl.deconvnet``
call on one input (the least one projection costs).

The network is torchvision's ``vgg11_bn`` layout (configuration "A" with batch norm: 8 conv
layers of 64 to 512 channels, 5 max pools, and the 25088-4096-4096-1000 classifier; 132.9 M
parameters, 507 MiB in float32), written out here because torchvision is not a dependency.
Weights are random (seeded): receptive fields, memory and time do not depend on them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import netlens as nl

# vgg11 ("A"): output channels of the conv layers, "M" for a 2x2 max pool.
LAYOUT: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
GOAL_MIB = 300 * 10**6 / 2**20  # 300 MB


class VGG11BN(nn.Module):
    """torchvision's ``vgg11_bn``: conv-BN-ReLU blocks, max pools, a 3-layer classifier."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                assert isinstance(item, int)
                conv = nn.Conv2d(channels, item, kernel_size=3, padding=1)
                layers += [conv, nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of ``(N, 3, H, W)`` images."""
        x = self.avgpool(self.features(x))
        logits: torch.Tensor = self.classifier(torch.flatten(x, 1))
        return logits


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(
    what: str, layer: str, count: int, batch_size: int, channels: int, k: int, size: int
) -> None:
    """In a fresh process: one call; print its peak memory growth and time as JSON.

    ``what``: ``"top"`` (``top_activations`` over all inputs), ``"forward"`` (a plain forward
    pass of one batch up to the layer, without gradients: what any pass over the data costs)
    or ``"deconvnet"`` (``nl.deconvnet`` of one activation of one input).
    """
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = VGG11BN().eval()
    inputs = torch.randn(count, 3, size, size)
    loader = [inputs[start : start + batch_size] for start in range(0, count, batch_size)]
    index = int(layer.split(".")[1])
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak (VmHWM) is reset to the current resident size
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    patch: list[int] = []
    if what == "top":
        top = nl.top_activations(model, loader, layer, channels=list(range(channels)), k=k)
        patch = list(top.patches.shape[2:])
    elif what == "forward":
        with torch.no_grad():
            model.features[: index + 1](loader[0])
    else:
        nl.deconvnet(model, inputs[:1], layer, 0)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    print(
        json.dumps(
            {
                "growth_mib": (peak - before) / 1024,
                "before_mib": before / 1024,
                "seconds": seconds,
                "patch": patch,
                "parameters": sum(p.numel() for p in model.parameters()),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two layers, 12 inputs, k=4")
    parser.add_argument("--layers", nargs="*", default=None)
    parser.add_argument("--count", type=int, default=None, help="inputs (default 32)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--channels", type=int, default=8, help="channels 0 .. n-1")
    parser.add_argument("-k", type=int, default=None, help="activations per channel (default 9)")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    count = args.count or (12 if args.quick else 32)
    k = args.k or (4 if args.quick else 9)
    if args.child is not None:
        what, layer = args.child
        child(what, layer, count, args.batch_size, args.channels, k, args.size)
        return
    quick_layers = ["features.0", "features.25"]
    every_layer = ["features.0", "features.4", "features.11", "features.18", "features.25"]
    layers = args.layers or (quick_layers if args.quick else [*every_layer, "features.28"])
    print(
        f"torch {torch.__version__}, 1 thread, vgg11_bn layout, {count} random inputs "
        f"3x{args.size}x{args.size} in batches of {args.batch_size}, channels "
        f"0..{args.channels - 1}, k={k}; each measurement in a fresh process"
    )
    print(
        "peak resident memory growth during the call (MiB) and its time; for reference, a plain"
        f"\nforward pass of one batch up to the layer and one nl.deconvnet call on one input"
        f" (goal: top_activations < {GOAL_MIB:.0f} MiB)"
    )
    print(f"  {'layer':<12} {'top_activations':>22} {'forward':>9} {'deconvnet':>10}  patch")
    worst = 0.0
    for layer in layers:
        found = {}
        for what in ("top", "forward", "deconvnet"):
            command = [sys.executable, str(Path(__file__).resolve()), "--child", what, layer]
            command += ["--count", str(count), "--batch-size", str(args.batch_size)]
            command += ["--channels", str(args.channels), "-k", str(k)]
            command += ["--size", str(args.size)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            found[what] = json.loads(output.strip().splitlines()[-1])
        top, forward, deconvnet = found["top"], found["forward"], found["deconvnet"]
        worst = max(worst, top["growth_mib"])
        print(
            f"  {layer:<12} {top['growth_mib']:>8.0f} MiB {top['seconds']:>7.1f} s "
            f"{forward['growth_mib']:>5.0f} MiB {deconvnet['growth_mib']:>6.0f} MiB"
            f"  {'x'.join(str(s) for s in top['patch'])}"
        )
    print(
        f"(the process held {top['before_mib']:.0f} MiB before each call: the network's "
        f"{top['parameters'] / 1e6:.1f} M parameters and the inputs)"
    )
    verdict = "holds" if worst < GOAL_MIB else "FAILS"
    print(f"worst top_activations growth {worst:.0f} MiB: the {GOAL_MIB:.0f} MiB bound {verdict}")


if __name__ == "__main__":
    main()
