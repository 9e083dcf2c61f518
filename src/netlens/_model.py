"""Shared machinery that keeps a model exactly as the user handed it over."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["evaluating", "frozen", "model_dtype_device", "progress_bar"]

T = TypeVar("T")


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode for the block, then restore each module's own flag.

    ``model.train(old)`` would not do: a user may keep some submodules (say BatchNorm) in a mode
    different from the rest.
    """
    flags = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Turn off ``requires_grad`` of every parameter for the block, then restore it.

    Techniques that backpropagate to the input thus never touch ``param.grad``.
    """
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        for param, _ in flags:
            param.requires_grad_(False)
        yield model
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def model_dtype_device(model: nn.Module) -> tuple[torch.dtype | None, torch.device | None]:
    """The dtype and device of the model's first floating-point parameter or buffer, if any."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
    return None, None


def progress_bar(iterable: Iterable[T], *, enabled: bool, **kwargs: Any) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm bar when ``enabled`` and tqdm is installed, else return it."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        import warnings

        warnings.warn(
            "progress=True needs tqdm (pip install 'netlens[progress]'); going on without a bar.",
            stacklevel=3,
        )
        return iterable
    return tqdm(iterable, **kwargs)  # type: ignore[no-any-return]
