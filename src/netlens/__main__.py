r"""``python -m netlens atlas``: build a model's atlas without writing a script.

    python -m netlens atlas mypackage.models:make_model --checkpoint model.pt \
        --data mypackage.data:test_set --layers conv1 conv2 fc1 --out atlas

``MODEL`` and ``--data`` name a callable as ``package.module:function`` (importable from the
current folder or the installed packages). The model's callable returns an ``nn.Module``; the
data's returns a tensor of inputs, a ``Dataset`` (read in batches of ``--batch-size``) or an
iterable of batches. ``--checkpoint`` is a state dict saved with ``torch.save`` (or a dict that
holds one under ``"model"`` or ``"state_dict"``), loaded with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _load_callable(spec: str, what: str) -> Callable[[], Any]:
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise SystemExit(
            f"netlens atlas: expected {what} as package.module:callable, but got {spec!r}."
        )
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the current folder, as `python -m` users expect
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SystemExit(
            f"netlens atlas: cannot import {module_name!r} ({what}): {error}"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise SystemExit(f"netlens atlas: {module_name!r} has no {attribute!r} ({what}).")
        target = getattr(target, part)
    if not callable(target):
        raise SystemExit(f"netlens atlas: {spec!r} ({what}) is not callable.")
    return target  # type: ignore[no-any-return]


def _state_dict(path: Path) -> dict[str, Any]:
    import torch

    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(loaded.get(key), dict):
                return loaded[key]  # type: ignore[no-any-return]
        return loaded
    raise SystemExit(f"netlens atlas: {str(path)!r} holds no state dict.")


def _batches(data: Any, batch_size: int, limit: int | None) -> Any:
    import torch
    from torch.utils.data import DataLoader, Dataset, Subset

    if isinstance(data, torch.Tensor):
        data = data[:limit] if limit is not None else data
        return [data[start : start + batch_size] for start in range(0, data.shape[0], batch_size)]
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        if limit is not None:
            data = Subset(data, range(min(limit, len(data))))
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    return data


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m netlens", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    atlas = commands.add_parser(
        "atlas",
        help="build a browsable atlas of a model's layers and channels",
        description="Build a static site of a model's layers and channels (open OUT/index.html).",
    )
    atlas.add_argument("model", metavar="MODEL", help="package.module:callable returning the model")
    atlas.add_argument("--data", required=True, help="package.module:callable returning the data")
    atlas.add_argument("--layers", nargs="+", required=True, help="layer names or globs")
    atlas.add_argument("--out", required=True, type=Path, help="the site's folder")
    atlas.add_argument("--checkpoint", type=Path, help="a state dict to load into the model")
    atlas.add_argument("--k", type=int, default=9, help="data-set examples per channel (9)")
    atlas.add_argument("--batch-size", type=int, default=128, help="inputs per batch (128)")
    atlas.add_argument("--limit", type=int, help="use only the first LIMIT inputs")
    atlas.add_argument("--steps", type=int, default=128, help="feature visualisation steps (128)")
    atlas.add_argument("--diverse", type=int, default=0, help="extra diverse visualisations (0)")
    atlas.add_argument(
        "--no-maximize", action="store_true", help="leave out the feature visualisations"
    )
    atlas.add_argument("--no-resume", action="store_true", help="start afresh in OUT")
    atlas.add_argument("--device", default=None, help="run on this device (e.g. cuda)")
    atlas.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    arguments = _parser().parse_args(argv)
    import torch

    import netlens as nl

    model = _load_callable(arguments.model, "MODEL")()
    if not isinstance(model, torch.nn.Module):
        raise SystemExit(f"netlens atlas: MODEL returned {type(model).__name__}, not an nn.Module.")
    if arguments.checkpoint is not None:
        model.load_state_dict(_state_dict(arguments.checkpoint))
    if arguments.device is not None:
        model = model.to(arguments.device)
    data = _batches(
        _load_callable(arguments.data, "--data")(), arguments.batch_size, arguments.limit
    )
    result = nl.atlas(
        model,
        data,
        arguments.layers,
        out=arguments.out,
        k=arguments.k,
        maximize=not arguments.no_maximize,
        steps=arguments.steps,
        diverse=arguments.diverse,
        resume=not arguments.no_resume,
        progress=not arguments.quiet,
    )
    index = (arguments.out / "index.html").resolve()
    print(f"atlas of {result.model}: {index} ({result.site_bytes / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
