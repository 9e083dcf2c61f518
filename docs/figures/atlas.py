"""Render the screenshots of docs/guide/atlas.rst: the atlas of the CIFAR example's LeNet5.

    python docs/figures/atlas.py [--run DIR] [--cifar DIR]

Builds (or, from the run's ``atlas/.atlas-state``, reloads) the atlas that
``examples/cifar_lenet.py`` writes into ``DIR/atlas`` (conv1, conv2, fc1 over the 10,000 test
images, k = 9, feature visualisations of the conv channels) from the run's checkpoint, and
screenshots three of its pages with the system's headless Chromium into
docs/_static/atlas/: ``cifar_index.png``, ``cifar_layer.png`` (conv2) and
``cifar_channel.png`` (conv2's channel 6, a diagonal edge).

Exits non-zero, saying why, when the checkpoint, the data or Chromium is missing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from _common import load

import netlens as nl
from netlens.datasets import CIFAR10
from netlens.models import LeNet5

OUT = Path(__file__).resolve().parent.parent / "_static" / "atlas"
PAGES = {
    "cifar_index.png": ("index.html", 1280, 420),
    "cifar_layer.png": ("conv2/index.html", 1280, 700),
    "cifar_channel.png": ("conv2/6.html", 1280, 860),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/cifar-report"))
    parser.add_argument("--cifar", type=Path, default=Path("data/cifar"))
    args = parser.parse_args(argv)
    browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if browser is None:
        sys.exit("error: no headless Chromium (apt-get install chromium-headless-shell)")
    checkpoint = torch.load(args.run / "checkpoint.pt", map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint)
    path = args.run / "model_only.pt"
    torch.save(state, path)
    model = load(LeNet5(), path)
    path.unlink()
    test = CIFAR10(args.cifar, train=False)
    images = torch.stack([test[index][0] for index in range(len(test))])
    batches = [images[start : start + 500] for start in range(0, len(images), 500)]
    site = args.run / "atlas"
    book = nl.atlas(
        model, batches, ["conv1", "conv2", "fc1"], out=site, k=9, maximize=["conv1", "conv2"]
    )
    print(book, f"{book.site_bytes / 2**20:.0f} MiB", book.seconds)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (page, width, height) in PAGES.items():
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        command += [f"--window-size={width},{height}", f"--screenshot={OUT / name}"]
        subprocess.run(
            [*command, (site / page).resolve().as_uri()], check=True, capture_output=True
        )
        print("wrote", OUT / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
