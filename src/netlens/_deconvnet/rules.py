"""The deconvnet's backward rules: a rectifying ReLU swapped in while the model runs.

Autograd already does two of the paper's three steps down a deconvnet: the backward of max
pooling routes the signal to the recorded argmax (unpooling with switches) and the backward of
a convolution is the convolution with the transposed filters. Only the ReLU needs another rule,
so :class:`Rectifier` swaps every ReLU call (``nn.ReLU``, ``F.relu``, ``torch.relu``,
``Tensor.relu`` and their in-place forms) for a function whose backward rectifies the signal
(also masked by the forward activation for guided backpropagation), through a torch function
mode that is active only during the forward pass. Every other nonlinearity is backpropagated
as a gradient; the rectifier notes those it meets, so that the projection can warn about the
ones on the path to the layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .._core.errors import warn
from .._core.hooks import Hooks
from .._core.model import autograd_ancestors
from .._core.ops import (
    NONLINEAR_NAMES,
    RELU_NAMES,
    CallMode,
    function_name,
    writes_first_argument,
)
from .._core.outputs import first_tensor

__all__ = ["Rectifier", "tensors_of", "warn_nonlinear"]


class _RectifiedReLU(torch.autograd.Function):
    """A ReLU whose backward rectifies the signal (deconvnet), also masked if ``guided``.

    Guided backpropagation masks the rectified signal by the forward activation.
    """

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, guided: bool, inplace: bool) -> torch.Tensor:
        if inplace:
            output = input.relu_()
            ctx.mark_dirty(output)
        else:
            output = input.relu()
        ctx.guided = guided
        if guided:
            ctx.save_for_backward(output)
        return output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        signal = grad.clamp(min=0)
        if ctx.guided:
            (output,) = ctx.saved_tensors
            signal = signal * (output > 0)
        return signal, None, None


class _Rectify(CallMode):
    """Swap ReLU calls for :class:`_RectifiedReLU` and note every other nonlinearity.

    Other nonlinearities are noted by the autograd node of their output, to warn about those
    on the path to the layer.
    """

    def __init__(self, guided: bool) -> None:
        super().__init__()
        self._guided = guided
        self.nonlinear: list[tuple[str, Any]] = []

    def handle(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        name = function_name(func)
        if (
            name in RELU_NAMES
            and args
            and isinstance(args[0], torch.Tensor)
            and args[0].requires_grad
            and torch.is_grad_enabled()
        ):
            inplace = writes_first_argument(func, args, kwargs)
            return _RectifiedReLU.apply(args[0], self._guided, inplace)  # type: ignore[no-untyped-call]
        result = func(*args, **kwargs)
        if name in NONLINEAR_NAMES:
            tensor = first_tensor(result)
            if tensor is not None and tensor.grad_fn is not None:
                self.nonlinear.append((name, tensor.grad_fn))
        return result


class Rectifier:
    """Inside its block, the model's ReLU calls rectify the backward signal.

    Also labels the autograd node of every leaf module's outputs with the module's name, so
    that :meth:`nonlinear_on_path` names the modules whose nonlinearities the rule does not
    cover. Enter it before a recorder, whose copy-on-write mode must sit above the rectifier's
    mode: it has to see an in-place ReLU call before the rectifier replaces it.

    Args:
        model: The model whose leaf modules are labelled.
        guided: Guided backpropagation (mask the signal by the forward activation) instead of
            the deconvnet rule.
    """

    def __init__(self, model: nn.Module, *, guided: bool) -> None:
        self._model = model
        self._mode = _Rectify(guided)
        self._module_outputs: dict[Any, str] = {}
        self._stack = ExitStack()

    def __enter__(self) -> Rectifier:
        with ExitStack() as stack:
            stack.enter_context(self._mode)
            hooks = stack.enter_context(Hooks())
            for name, module in _leaf_modules(self._model):
                hooks.forward(module, _note_output(name, self._module_outputs))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def nonlinear_on_path(self, output: torch.Tensor) -> list[str]:
        """Labels of the noted nonlinearities that ``output`` depends on, each once."""
        nonlinear = self._mode.nonlinear
        if not nonlinear:
            return []
        path = autograd_ancestors(output.grad_fn)
        labels: list[str] = []
        for name, node in nonlinear:
            if node in path:
                label = self._module_outputs.get(node, f"{name}()")
                if label not in labels:
                    labels.append(label)
        return labels


def _leaf_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if name and next(module.children(), None) is None:
            yield name, module


def tensors_of(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a module's output, a PackedSequence's as its data (not a padded copy)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, PackedSequence):
        yield value.data
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from tensors_of(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from tensors_of(item)


def _note_output(name: str, outputs: dict[Any, str]) -> Callable[[nn.Module, Any, Any], None]:
    """A hook that labels the autograd nodes of a module's outputs with the module's name."""

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        for tensor in tensors_of(output):
            if tensor.grad_fn is not None:
                outputs.setdefault(tensor.grad_fn, f"{name!r} ({type(module).__name__})")

    return hook


def warn_nonlinear(labels: list[str], name: str, rule: str) -> None:
    """Warn once that the path to the layer holds nonlinearities the rule does not cover."""
    if labels:
        warn(
            f"The path from the inputs to layer {name!r} passes through nonlinearities other than "
            f"ReLU: {', '.join(labels)}. The {rule} rule covers only ReLU; these are "
            "backpropagated as plain gradients, so the projection is not a true "
            f"{rule} projection."
        )
