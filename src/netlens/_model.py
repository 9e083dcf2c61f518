"""Shared machinery that keeps a model exactly as the user handed it over."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["batched_inputs", "evaluating", "frozen", "model_dtype_device", "progress_bar"]

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


_UNBATCHED_HINT = "one input without its batch dimension? Add it with inputs.unsqueeze(0)."


@contextmanager
def batched_inputs(
    model: nn.Module, shape: tuple[int, ...], *, unbatched_hint: str | None = _UNBATCHED_HINT
) -> Iterator[None]:
    """Refuse, with a clear message, inputs that reach a layer without their batch dimension.

    PyTorch's convolutions and recurrent layers also accept one unbatched input (``(C, H, W)``
    for ``Conv2d``); a technique handed such an input would take its channels for the batch.
    While the block runs, every convolution and recurrent layer checks the rank of what it
    receives, and every embedding refuses floating-point inputs (token ids must be integers);
    ``shape`` is the shape of the inputs the user passed, for the message. Meant for
    the first forward pass of a technique only (its cost is one Python call per such layer).
    ``unbatched_hint`` ends the message when the rank is one short (None: no hint), for
    techniques whose inputs the user does not pass as a tensor.
    """
    from ._errors import NetlensTypeError, NetlensValueError
    from ._hooks import Hooks

    def check(name: str, expected: int, layout: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            received = args[0] if args else None
            if not isinstance(received, torch.Tensor) or received.dim() == expected:
                return
            unbatched = received.dim() == expected - 1
            raise NetlensValueError(
                f"Expected inputs with a batch dimension, so that layer {name!r} "
                f"({type(module).__name__}) receives {layout}, but it received shape "
                f"{tuple(received.shape)} from inputs of shape {shape}"
                + (f": {unbatched_hint}" if unbatched and unbatched_hint else ".")
            )

        return hook

    def check_ids(name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            received = args[0] if args else None
            if isinstance(received, torch.Tensor) and received.is_floating_point():
                raise NetlensTypeError(
                    f"Expected integer token ids to reach layer {name!r} "
                    f"({type(module).__name__}), but it received floating-point values of shape "
                    f"{tuple(received.shape)}: a technique that follows gradients to the input "
                    "cannot run through an embedding lookup. Apply it to the part of the model "
                    "after the embedding, on embedded inputs."
                )

        return hook

    with Hooks() as hooks:
        for name, module in model.named_modules():
            if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
                hooks.forward_pre(module, check_ids(name))
            elif isinstance(module, nn.modules.conv._ConvNd):
                spatial = len(module.kernel_size)
                layout = "(N, C, " + ", ".join("DHW"[3 - spatial :]) + ")"
                hooks.forward_pre(module, check(name, spatial + 2, layout))
            elif isinstance(module, nn.RNNBase):
                layout = "(N, T, F)" if module.batch_first else "(T, N, F)"
                hooks.forward_pre(module, check(name, 3, layout))
        yield
