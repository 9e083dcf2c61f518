"""Check that a refactoring changed no result: run public calls on fixed seeds, save every tensor.

Not a timing: a before/after check for changes meant to leave behaviour alone. Run it once on
each checkout and compare (one thread, so that reductions run in the same order)::

    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before/src python benchmarks/refactor_equivalence.py /tmp/before.pt
    PYTHONPATH=src python benchmarks/refactor_equivalence.py /tmp/after.pt
    python benchmarks/refactor_equivalence.py --compare /tmp/before.pt /tmp/after.pt

It covers statistics, deconvnet, top activations, occlusion (plain, incremental, a layer, row
windows), maximisation (layer form, objectives with diversity, a recurrent layer), colour
statistics and a filter grid.
"""

from __future__ import annotations

import dataclasses
import sys

import torch

import netlens as nl
from netlens import objectives as obj
from netlens.models import LeNet5
from netlens.testing import ResidualNet, RowRecurrentNet


def _tensors(result: object) -> dict[str, torch.Tensor]:
    """Every tensor field of a result (or of a dict of results), by dotted name."""
    found: dict[str, torch.Tensor] = {}
    if isinstance(result, dict):
        for key, value in result.items():
            for name, tensor in _tensors(value).items():
                found[f"{key}.{name}"] = tensor
    elif dataclasses.is_dataclass(result):
        for field in dataclasses.fields(result):
            value = getattr(result, field.name)
            if isinstance(value, torch.Tensor):
                found[field.name] = value
    return found


def _results() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    lenet = LeNet5(image_size=16).eval()
    images = torch.randn(24, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    residual = ResidualNet().eval()
    small = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    recurrent = RowRecurrentNet("gru").eval()
    rows = torch.randn(6, 8, 8, generator=torch.Generator().manual_seed(3))
    data = [images[:12], images[12:]]
    shape = (1, 16, 16)
    results = {
        "stats": nl.activation_stats(lenet, data, ["conv1", "relu2", "fc1"]),
        "deconvnet": nl.deconvnet(lenet, images[:4], "conv2", [1, 5]),
        "top": nl.top_activations(lenet, data, "conv2", channels=[0, 3], k=4),
        "plain": nl.occlusion(residual, small, window=(3, 3), stride=(2, 2), incremental=False),
        "incremental": nl.occlusion(
            residual, small, window=(3, 3), stride=(2, 2), incremental=True
        ),
        "layer": nl.occlusion(lenet, images[:3], window=(4, 4), layer="conv2", channel=[2, 7]),
        "rows": nl.occlusion(recurrent, rows, window=(2, 8)),
        "maximize": nl.maximize_activation(
            lenet, "conv2", [0, 3, 9], input_shape=shape, steps=20, seed=3, param="fourier"
        ),
        "objectives": nl.maximize_activation(
            lenet,
            objective=[obj.channel("conv2", 1) + 0.5 * obj.diversity("conv2")],
            input_shape=shape,
            steps=15,
            seed=4,
            batch=2,
        ),
        "recurrent": nl.maximize_activation(recurrent, "rnn", input_shape=(8, 8), steps=10, seed=1),
        "color": nl.color_stats(
            [torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(5))]
        ),
    }
    flat = _tensors(results)
    flat["grid"] = torch.from_numpy(nl.FilterGrid(lenet.conv1).to_array())
    return flat


def _same(first: torch.Tensor, second: torch.Tensor) -> bool:
    if first.shape != second.shape or first.dtype != second.dtype:
        return False
    if first.is_floating_point():
        return bool(torch.equal(first.nan_to_num(), second.nan_to_num()))
    return bool(torch.equal(first, second))


def main(argv: list[str]) -> int:
    """Save the results to ``argv[0]``, or compare two saved files (``--compare A B``)."""
    torch.set_num_threads(1)
    if argv[:1] == ["--compare"] and len(argv) == 3:
        before, after = torch.load(argv[1]), torch.load(argv[2])
        if before.keys() != after.keys():
            print("different results:", sorted(set(before) ^ set(after)))
            return 1
        different = [name for name in before if not _same(before[name], after[name])]
        print(f"compared {len(before)} tensors bit for bit; different: {different or 'none'}")
        return 1 if different else 0
    if len(argv) != 1:
        print(__doc__)
        return 2
    results = _results()
    torch.save(results, argv[0])
    print(f"{len(results)} tensors saved to {argv[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
