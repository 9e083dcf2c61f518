"""Shared machinery that keeps a model exactly as the user handed it over."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

from .errors import warn

__all__ = [
    "autograd_ancestors",
    "batched_inputs",
    "cudnn_off",
    "depends_on",
    "evaluating",
    "model_dtype_device",
    "progress_bar",
]

T = TypeVar("T")


class _Shared:
    """Flags of objects that every thread sees (modules' ``training``, cuDNN's switch).

    The first caller to hold an object saves its flag, and the last one to let go restores it,
    whatever the order in which overlapping callers come and go: a caller that restored what it
    saw on entry would restore another caller's change (the second of two overlapping calls
    would find the model in eval mode, and leave it so). Entries are keyed by identity
    (parameters compare element-wise), exist only while someone holds the object (holding it
    alive that long) and are changed under one lock.
    """

    def __init__(self, read: Callable[[Any], bool], write: Callable[[Any, bool], None]) -> None:
        self._read, self._write = read, write
        self._lock = threading.Lock()
        self._held: dict[int, tuple[Any, int, bool]] = {}  # id -> (object, holders, saved flag)

    def hold(self, objects: list[Any], flag: bool) -> None:
        """Set the flag of ``objects`` (distinct) to ``flag``, saving it where none holds it."""
        with self._lock:
            taken: list[Any] = []
            try:
                for thing in objects:
                    entry = self._held.get(id(thing))
                    if entry is None:
                        self._held[id(thing)] = (thing, 1, self._read(thing))
                    else:
                        self._held[id(thing)] = (thing, entry[1] + 1, entry[2])
                    taken.append(thing)
                    # also where held already: a later caller gets the flag it asks for even
                    # if someone changed it in between
                    self._write(thing, flag)
            except BaseException:
                self._release(taken)
                raise

    def release(self, objects: list[Any]) -> None:
        """Let go of ``objects``; those that nobody holds any more get their saved flag back."""
        with self._lock:
            self._release(objects)

    def _release(self, objects: list[Any]) -> None:
        for thing in objects:
            _, holders, saved = self._held[id(thing)]
            if holders > 1:
                self._held[id(thing)] = (thing, holders - 1, saved)
            else:
                del self._held[id(thing)]
                self._write(thing, saved)


def _set_training(module: nn.Module, flag: bool) -> None:
    module.training = flag


_TRAINING = _Shared(lambda module: bool(module.training), _set_training)


def _set_cudnn(_: object, flag: bool) -> None:
    torch.backends.cudnn.enabled = flag


_CUDNN = _Shared(lambda _: bool(torch.backends.cudnn.enabled), _set_cudnn)
_CUDNN_FLAG = object()  # the one object whose flag _CUDNN keeps: cuDNN for the whole process


@contextmanager
def cudnn_off() -> Iterator[None]:
    """CuDNN off for the block, saved by the first caller in and restored by the last out.

    A process-wide flag (torch has no per-thread one): other threads run without cuDNN while
    the block runs, and get it back when the last overlapping block ends, whatever the order
    (``torch.backends.cudnn.flags`` restores what it saw on entry, which can leave it off).
    """
    _CUDNN.hold([_CUDNN_FLAG], False)
    try:
        yield
    finally:
        _CUDNN.release([_CUDNN_FLAG])


def autograd_ancestors(node: Any) -> set[Any]:
    """Every autograd node ``node`` reads from, itself included."""
    seen: set[Any] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if current is None or current in seen:
            continue
        seen.add(current)
        stack.extend(parent for parent, _ in current.next_functions)
    return seen


def depends_on(output: torch.Tensor, leaf: torch.Tensor) -> bool:
    """Whether ``output`` has autograd history from ``leaf``.

    Not ``output.requires_grad``: parameters keep theirs (netlens does not touch
    ``requires_grad``), so an output made from parameters alone requires gradients too.
    """
    if output.grad_fn is None:
        return False
    ancestors = autograd_ancestors(output.grad_fn)
    return any(getattr(node, "variable", None) is leaf for node in ancestors)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode for the block, then restore each module's own flag.

    Safe for overlapping calls from several threads on one model (or on a model and its
    submodules): each module's flag is saved by the first caller in and restored by the last
    caller out, so every caller runs in eval mode until it leaves and the model ends with its
    own per-module flags (a user may keep some submodules, say BatchNorm, in a mode different
    from the rest, so ``model.train(old)`` would not do). The flags are set directly, module by
    module: a model's own ``train()`` override is not called. Eval mode keeps BatchNorm's
    running statistics (and anything else a module updates only in training mode) unchanged.
    """
    modules = list(model.modules())
    _TRAINING.hold(modules, False)
    try:
        yield model
    finally:
        _TRAINING.release(modules)


def model_dtype_device(model: nn.Module) -> tuple[torch.dtype | None, torch.device | None]:
    """The dtype and device that floating-point inputs should have to enter the model.

    Those of the first floating-point parameter of the first module, in registration order,
    that holds floating-point parameters while none of its submodules does (a layer such as
    ``nn.Conv2d``, ``nn.Linear`` or ``nn.GRU``): the kind of module that receives the inputs
    (registration order is usually the order of the forward pass). Parameters held beside
    submodules (a float64 temperature or a class token on the model itself) are passed over,
    and so are buffers (normalisation constants, lengths, masks), which are often kept in
    another dtype than the layers. Failing such a module, the first floating-point buffer;
    ``(None, None)`` for a model without floating-point tensors.
    """
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if p.is_floating_point()]
        if own and not any(
            p.is_floating_point() for child in module.children() for p in child.parameters()
        ):
            return own[0].dtype, own[0].device
    for tensor in model.buffers():
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
        # the extras are not on PyPI yet: name the package, and the extra of a checkout
        warn(
            "progress=True needs tqdm (pip install tqdm; in a checkout of netlens, "
            "pip install -e '.[progress]'); going on without a bar."
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
    from .errors import NetlensTypeError, NetlensValueError
    from .hooks import Hooks

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
