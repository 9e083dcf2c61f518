"""netlens against lucent 0.1.8 on a small colour CIFAR-10 model: objective reached and time.

Run::

    pip install --no-deps --target /tmp/lucent_site torch-lucent==0.1.8 "kornia<=0.4.1" decorator
    python docs/figures/train_cifar_rgb.py            # the model, ~/netlens-data/models/...
    python benchmarks/lucent_compare.py --lucent-path /tmp/lucent_site \
        --figure docs/_static/maximization/lucent_conv2.png

(``--quick``: 4 channels, 16 steps, 1 repeat.) For every channel of a layer of LeNet5 trained
on colour CIFAR-10 (``docs/figures/train_cifar_rgb.py``; inputs are pixels in [0, 1] normalised
with mean 0.5 and std 0.5), the same number of Adam steps at lr 0.05 on the mean of the
channel's map, with Fourier parametrisation and colours decorrelated by ImageNet's matrix (both
libraries' default), pictures in (0, 1) by a squash:

* ``lucent``: lucent's loop as its users write it, one ``render_vis`` call per channel:
  ``param.image(32)`` (Fourier, decorrelated, sigmoid), ``transform.standard_transforms``
  (pad 12 with grey, jitter 8, scale 0.95-1.05, rotate +-10 degrees, jitter 4: made for
  ImageNet-sized pictures) then the model's normalisation, ``fixed_image_size=32`` (so that
  the transformed picture is resized back to the 32x32 the model takes), no preprocessing.
* ``lucent, scaled``: the same, with lucent's transforms scaled to a 32-pixel picture (pad 2,
  jitter 2, the same scales and angles, jitter 2): what a careful lucent user of a small model
  would write.
* ``netlens``: one call of ``nl.maximize_activation(model, layer, param="fourier",
  decorrelate=True, normalize=(0.5, 0.5))`` for all channels, default transforms.
* ``netlens, lr 0.025``: the same at half the learning rate. netlens squashes by
  ``(tanh(z) + 1) / 2``, which is ``sigmoid(2 z)``, lucent by ``sigmoid(z)``: at half the rate
  netlens' pictures change as fast per step as lucent's, which isolates what the transforms
  and the rest contribute to the objective.

After each lucent call the benchmark removes the forward hooks that ``render_vis`` leaves on
every module of the model (lucent never removes them; left in place they would slow every
later channel), and runs lucent on its own copy of the model. The methods run interleaved,
``--repeats`` times; the times are medians. The objective is measured afterwards, the same way
for all: the channel's mean on the final 32x32 picture, without transforms.

lucent 0.1.8 imports ``torchvision.transforms.Normalize`` (used only with ``preprocess=True``,
which is off here) and ``IPython.display`` (used only to show pictures). torchvision from PyPI
does not import beside a CPU-only torch build, so where either is missing the benchmark puts
a stand-in module under that name before importing lucent, and says so; everything lucent
computes (its parametrisation, transforms with kornia 0.4.1, objectives and ``render_vis``)
runs as shipped.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import netlens as nl
from netlens.models import LeNet5

MEAN, STD = 0.5, 0.5  # the model's normalisation: pixels in [0, 1] to [-1, 1]
LAYERS = {"conv1": 32, "conv2": 64}


def import_lucent(path: str | None) -> Any:
    """Import lucent's ``render``, ``param`` and ``transform``, with stand-ins where needed."""
    if path:
        sys.path.insert(0, path)
    stand_ins = []
    try:
        import torchvision.transforms  # noqa: F401
    except ImportError:
        vision = types.ModuleType("torchvision")
        vision_transforms = types.ModuleType("torchvision.transforms")

        class Normalize:  # torchvision's, for (C, H, W) tensors
            def __init__(self, mean: Any, std: Any) -> None:
                self.mean, self.std = torch.tensor(mean), torch.tensor(std)

            def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
                return (tensor - self.mean[:, None, None]) / self.std[:, None, None]

        vision_transforms.Normalize = Normalize  # type: ignore[attr-defined]
        vision.transforms = vision_transforms  # type: ignore[attr-defined]
        sys.modules["torchvision"] = vision
        sys.modules["torchvision.transforms"] = vision_transforms
        stand_ins.append("torchvision.transforms.Normalize")
    try:
        import IPython.display  # noqa: F401
    except ImportError:
        ipython = types.ModuleType("IPython")
        display = types.ModuleType("IPython.display")
        ipython.display = display  # type: ignore[attr-defined]
        sys.modules["IPython"] = ipython
        sys.modules["IPython.display"] = display
        stand_ins.append("IPython.display")
    import kornia
    import lucent
    from lucent.optvis import param, render, transform

    for name in ("IPython", "IPython.display", "torchvision", "torchvision.transforms"):
        # lucent holds what it imported; matplotlib must not find a stand-in IPython
        if name.split(".")[0] in {s.split(".")[0] for s in stand_ins}:
            sys.modules.pop(name, None)

    print(
        f"lucent {lucent.__version__} (kornia {kornia.__version__}); stand-ins for: "
        f"{', '.join(stand_ins) or 'nothing'}"
    )
    return types.SimpleNamespace(render=render, param=param, transform=transform)


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - MEAN) / STD


def lucent_transforms(lucent: Any, scaled: bool) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    transform = lucent.transform
    if not scaled:
        return [*transform.standard_transforms, normalise]
    scales = [1 + (i - 5) / 50.0 for i in range(11)]
    angles = list(range(-10, 11)) + 5 * [0]
    return [
        transform.pad(2, mode="constant", constant_value=0.5),
        transform.jitter(2),
        transform.random_scale(scales),
        transform.random_rotate(angles),
        transform.jitter(2),
        normalise,
    ]


def run_lucent(
    lucent: Any,
    model: nn.Module,
    layer: str,
    channels: list[int],
    steps: int,
    seed: int,
    scaled: bool,
) -> torch.Tensor:
    """One ``render_vis`` per channel; the final pictures ``(K, 3, 32, 32)`` in (0, 1)."""
    pictures = []
    for channel in channels:
        torch.manual_seed(seed * 100_003 + channel)
        np.random.seed(seed * 100_003 + channel)  # noqa: NPY002 (lucent draws from it)
        try:
            images = lucent.render.render_vis(
                model,
                f"{layer}:{channel}",
                param_f=lambda: lucent.param.image(32, fft=True, decorrelate=True),
                transforms=lucent_transforms(lucent, scaled),
                preprocess=False,
                thresholds=(steps,),
                progress=False,
                show_image=False,
                fixed_image_size=32,
            )
        finally:
            for module in model.modules():  # lucent's hooks, never removed by lucent
                module._forward_hooks.clear()
        pictures.append(torch.from_numpy(images[-1][0]).permute(2, 0, 1))
    return torch.stack(pictures)


def run_netlens(
    model: nn.Module, layer: str, channels: list[int], steps: int, seed: int, lr: float = 0.05
) -> torch.Tensor:
    result = nl.maximize_activation(
        model,
        layer,
        channels,
        input_shape=(32, 32),
        steps=steps,
        lr=lr,
        param="fourier",
        decorrelate=True,
        normalize=(MEAN, STD),
        seed=seed,
    )
    return result.pixels


def objective(
    model: nn.Module, layer: str, channels: list[int], pixels: torch.Tensor
) -> torch.Tensor:
    """The mean of each channel's map on its own picture, without transforms."""
    with nl.record(model, layer) as recorded, torch.no_grad():
        model(normalise(pixels.float()))
    output = recorded[layer]
    return output[torch.arange(len(channels)), torch.tensor(channels)].flatten(1).mean(1)


def figure(pictures: dict[str, torch.Tensor], channels: list[int], path: Path, count: int) -> None:
    from matplotlib.figure import Figure

    shown = channels[:count]
    fig = Figure(figsize=(1.0 * len(shown) + 1.2, 1.05 * len(pictures) + 0.3), layout="constrained")
    axes = fig.subplots(len(pictures), len(shown), squeeze=False)
    for row, (name, images) in enumerate(pictures.items()):
        for column, channel in enumerate(shown):
            ax = axes[row, column]
            ax.imshow(images[column].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(str(channel), fontsize=8)
            if column == 0:
                ax.set_ylabel(name, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=Path.home() / "netlens-data/models/lenet5_cifar_rgb.pt"
    )
    parser.add_argument("--lucent-path", default=None, help="a folder to import lucent from")
    parser.add_argument("--layers", nargs="+", default=["conv2"], choices=sorted(LAYERS))
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="4 channels, 16 steps, 1 repeat")
    parser.add_argument("--figure", type=Path, help="write the pictures side by side here")
    parser.add_argument("--figure-channels", type=int, default=16)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(args.threads)
    lucent = import_lucent(args.lucent_path)
    model = LeNet5(in_channels=3, image_size=32)
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
    model.eval()
    steps, repeats = (16, 1) if args.quick else (args.steps, args.repeats)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU, LeNet5 on colour "
        f"CIFAR-10 ({args.checkpoint.name}), {steps} steps, {repeats} interleaved repeat(s)"
    )
    methods: dict[str, Callable[..., torch.Tensor]] = {
        "lucent": lambda m, *a: run_lucent(lucent, m, *a, scaled=False),
        "lucent, scaled": lambda m, *a: run_lucent(lucent, m, *a, scaled=True),
        "netlens": run_netlens,
        "netlens, lr 0.025": lambda *a: run_netlens(*a, lr=0.025),
    }
    lucent_model = copy.deepcopy(model)  # lucent's requires_grad and hooks stay off ours
    for name, method in methods.items():  # warm-up: imports, kernel caches
        method(lucent_model if name.startswith("lucent") else model, "conv1", [0], 2, 0)
    for layer in args.layers:
        channels = list(range(4 if args.quick else LAYERS[layer]))
        times: dict[str, list[float]] = {name: [] for name in methods}
        pictures: dict[str, torch.Tensor] = {}
        for repeat in range(repeats):
            for name, method in methods.items():
                target = lucent_model if name.startswith("lucent") else model
                start = time.perf_counter()
                pictures[name] = method(target, layer, channels, steps, repeat)
                times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(values) for name, values in times.items()}
        print(f"\n{layer}, {len(channels)} channels: wall time for all of them, median")
        for name in methods:
            runs = ", ".join(f"{value:.1f}" for value in times[name])
            speed = medians[name] / medians["netlens"]
            print(
                f"  {name:<19}{medians[name]:>9.2f} s  (runs: {runs})  netlens {speed:.1f}x faster"
            )
        reached = {name: objective(model, layer, channels, p) for name, p in pictures.items()}
        print(f"{layer}: objective reached (last repeat), mean of the channel's map")
        for name in methods:
            print(
                f"  {name:<19}mean {reached[name].mean():.4f}, median {reached[name].median():.4f}"
            )
        for ours in ("netlens", "netlens, lr 0.025"):
            for name in ("lucent", "lucent, scaled"):
                base = reached[name]
                positive = base > 0
                ratio = reached[ours][positive] / base[positive]
                wins = int((reached[ours] >= base).sum())
                print(
                    f"  {ours} / {name}: per channel (where {name} > 0, {int(positive.sum())} "
                    f"of {len(channels)}) min {ratio.min():.3f}, median {ratio.median():.3f}, "
                    f"max {ratio.max():.3f}; {ours} >= {name} on {wins}/{len(channels)} channels"
                )
        pictures.pop("netlens, lr 0.025")
        if args.figure is not None:
            path = (
                args.figure
                if len(args.layers) == 1
                else args.figure.with_stem(f"{args.figure.stem}_{layer}")
            )
            figure(pictures, channels, path, args.figure_channels)


if __name__ == "__main__":
    main()
