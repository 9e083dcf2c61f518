"""The geometry of window operations (convolutions, pooling): one typed description.

A :class:`Window` holds, per spatial dim, the kernel, stride, padding (before the dim) and
dilation of a convolution or a pooling, with its ceil mode and what else tells how its windows
combine (groups, the divisor of average pooling). It is built from a module
(:meth:`Window.of_module`), from a functional call's arguments (:meth:`Window.convolution`,
:meth:`Window.pool`, or :func:`window_of_call` for a call seen by a torch function mode), or
from an adaptive pooling whose windows are all alike (:meth:`Window.adaptive`), and answers the
index arithmetic every user needs: the output size, the inputs an output reads and the outputs
an input range reaches.

Output index ``o`` along a dim reads the input indices ``o * stride - padding + dilation * t``
for ``t`` in ``range(kernel)``; indices outside the input are padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .ops import bind

__all__ = [
    "AVG_POOL_PARAMETERS",
    "CONVOLUTION_PARAMETERS",
    "MAX_POOL_PARAMETERS",
    "Window",
    "adaptive_bounds",
    "per_dim",
    "window_of_call",
]

WindowKind = Literal["conv", "max", "avg"]

# The parameters of the functional forms (F.conv2d, F.max_pool2d, F.avg_pool2d), in order.
CONVOLUTION_PARAMETERS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
MAX_POOL_PARAMETERS = (
    "input",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "ceil_mode",
    "return_indices",
)
AVG_POOL_PARAMETERS = (
    "input",
    "kernel_size",
    "stride",
    "padding",
    "ceil_mode",
    "count_include_pad",
    "divisor_override",
)


_POOL_PARAMETERS: tuple[tuple[Literal["max", "avg"], tuple[str, ...]], ...] = (
    ("max", MAX_POOL_PARAMETERS),
    ("avg", AVG_POOL_PARAMETERS),
)


def per_dim(value: Any, rank: int) -> tuple[int, ...]:
    """An int, or a sequence of ints (one, or one per dim), as ``rank`` ints."""
    if isinstance(value, int):
        return (value,) * rank
    values = tuple(int(v) for v in value)
    return values * rank if len(values) == 1 else values


def _stride(stride: Any, kernel: tuple[int, ...]) -> tuple[int, ...]:
    """A pooling's stride: the kernel where none is given (None, ``[]`` or ``()``)."""
    return (
        kernel if stride is None or stride == [] or stride == () else per_dim(stride, len(kernel))
    )


def _padding(padding: Any, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, ...]:
    """Padding before each dim; ``"same"`` pads ``(dilation * (kernel - 1)) // 2`` before."""
    if padding == "valid":
        return (0,) * len(kernel)
    if padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel, strict=True))
    return per_dim(padding, len(kernel))


@dataclass(frozen=True)
class Window:
    """A convolution or pooling over ``rank`` spatial dims, as its windows see the input.

    Attributes:
        kind: ``"conv"``, ``"max"`` (max pooling) or ``"avg"`` (average pooling).
        kernel: The kernel size per spatial dim.
        stride: The stride per spatial dim.
        padding: The padding before each spatial dim (``"same"`` may pad one more after).
        dilation: The dilation per spatial dim (1 for average pooling).
        ceil_mode: Whether a pooling's output size rounds up.
        groups: A convolution's groups.
        count_include_pad: Whether average pooling divides by windows that include padding.
        divisor_override: Average pooling's fixed divisor, or None.

    Example:
        >>> window = Window.of_module(torch.nn.Conv2d(1, 1, 3, stride=2, padding=1))
        >>> window.output_size((8, 8)), window.extent((2, 2))
        ((4, 4), (5, 5))
    """

    kind: WindowKind
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    ceil_mode: bool = False
    groups: int = 1
    count_include_pad: bool = True
    divisor_override: int | None = None

    # -- making one ------------------------------------------------------------------------

    @staticmethod
    def convolution(
        kernel: Sequence[int],
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
    ) -> Window:
        """A convolution of ``kernel`` (the weight's ``shape[2:]``), with F.conv*d's arguments."""
        kernel = tuple(int(k) for k in kernel)
        dilations = per_dim(dilation, len(kernel))
        return Window(
            "conv",
            kernel,
            per_dim(stride, len(kernel)),
            _padding(padding, kernel, dilations),
            dilations,
            groups=int(groups),
        )

    @staticmethod
    def pool(
        kind: Literal["max", "avg"],
        rank: int,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        dilation: Any = 1,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ) -> Window:
        """A max or average pooling over ``rank`` dims, from F.max_pool*d or F.avg_pool*d.

        The arguments after ``padding`` go by keyword: the two orders differ there, and
        average pooling has no dilation.
        """
        kernel = per_dim(kernel_size, rank)
        return Window(
            kind,
            kernel,
            _stride(stride, kernel),
            per_dim(padding, rank),
            per_dim(dilation, rank),
            ceil_mode=bool(ceil_mode),
            count_include_pad=bool(count_include_pad),
            divisor_override=divisor_override,
        )

    @staticmethod
    def adaptive(
        kind: Literal["max", "avg"], size: Sequence[int], output_size: Sequence[int]
    ) -> Window | None:
        """An adaptive pooling from ``size`` to ``output_size`` as a plain one, or None.

        Only where every output size divides its input size are the windows all alike.
        """
        if any(s % o for s, o in zip(size, output_size, strict=True)):
            return None
        kernel = tuple(s // o for s, o in zip(size, output_size, strict=True))
        return Window.pool(kind, len(kernel), kernel, kernel)

    @staticmethod
    def of_module(module: nn.Module) -> Window | None:
        """The window of a convolution, max or average pooling module; None for other modules.

        Only the geometry: a caller that computes the operation itself checks what it needs
        besides (``padding_mode``, ``return_indices``).
        """
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            padding: Any = module.padding  # a tuple of ints or "same" / "valid"
            return Window.convolution(
                module.kernel_size, module.stride, padding, module.dilation, module.groups
            )
        if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            return Window.pool(
                "max",
                int(type(module).__name__[-2]),
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                module.ceil_mode,
            )
        if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
            return Window.pool(
                "avg",
                int(type(module).__name__[-2]),
                module.kernel_size,
                module.stride,
                module.padding,
                ceil_mode=module.ceil_mode,
                count_include_pad=module.count_include_pad,
                divisor_override=getattr(module, "divisor_override", None),
            )
        return None

    # -- index arithmetic ------------------------------------------------------------------

    @property
    def rank(self) -> int:
        """The number of spatial dims."""
        return len(self.kernel)

    @property
    def reach(self) -> tuple[int, ...]:
        """Per dim, how far a window's last input lies past its first: ``dilation * (k - 1)``."""
        return tuple(d * (k - 1) for d, k in zip(self.dilation, self.kernel, strict=True))

    def output_size(self, size: Sequence[int], *, ceil_mode: bool | None = None) -> tuple[int, ...]:
        """The output size for an input of spatial ``size``, as torch computes it.

        Args:
            size: The input's spatial size.
            ceil_mode: Round up (a pooling's ceil mode); by default the window's own.

        Returns:
            The output's spatial size.
        """
        ceil = self.ceil_mode if ceil_mode is None else ceil_mode
        sizes = []
        for length, stride, pad, reach in zip(
            size, self.stride, self.padding, self.reach, strict=True
        ):
            span = length + 2 * pad - reach - 1
            count = (-(-span // stride) if ceil else span // stride) + 1
            # torch's rule: the last window must start inside the input or its left padding
            if ceil and (count - 1) * stride >= length + pad:
                count -= 1
            sizes.append(count)
        return tuple(sizes)

    def extent(self, outputs: Sequence[int]) -> tuple[int, ...]:
        """The input extent that a box of ``outputs`` consecutive outputs per dim reads."""
        return tuple(
            (count - 1) * stride + reach + 1
            for count, stride, reach in zip(outputs, self.stride, self.reach, strict=True)
        )

    def input_start(self, outputs: torch.Tensor) -> torch.Tensor:
        """The first input index each output's window reads (negative in the padding).

        Args:
            outputs: Output indices, one column per spatial dim (``(..., rank)``).

        Returns:
            ``outputs * stride - padding``, shaped like ``outputs``.
        """
        return outputs * torch.tensor(self.stride) - torch.tensor(self.padding)

    def outputs_reading(
        self, first: torch.Tensor, stop: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The outputs whose window reads an input of the box ``[first, stop)``, unclipped.

        Args:
            first: The box's first input index per dim (``(..., rank)``, int64).
            stop: One past its last input index per dim.

        Returns:
            ``[first, stop)`` of the outputs, not clipped to the output's size: a box that a
            stride skips gives an empty range.
        """
        stride, pad = torch.tensor(self.stride), torch.tensor(self.padding)
        reach = torch.tensor(self.reach)
        low = -torch.div(-(first + pad - reach), stride, rounding_mode="floor")
        high = torch.div(stop - 1 + pad, stride, rounding_mode="floor") + 1
        return low, high


def adaptive_bounds(size: int, output_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The window ``[start, stop)`` of each output of an adaptive pooling along one dim.

    Args:
        size: The input's size along the dim.
        output_size: The output's size along it.

    Returns:
        ``starts`` and ``stops``, int64 of length ``output_size``, as torch computes them.
    """
    positions = torch.arange(output_size)
    starts = (positions * size) // output_size
    stops = ((positions + 1) * size + output_size - 1) // output_size
    return starts, stops


def window_of_call(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Window | None:
    """The window of a convolution or pooling call as a torch function mode sees it, or None.

    Args:
        name: The function's name (``"conv2d"``, ``"max_pool2d_with_indices"``,
            ``"avg_pool1d"``); other names give None.
        args: The call's positional arguments (the input first).
        kwargs: Its keyword arguments.

    Returns:
        The :class:`Window`, or None for a call that is not a window operation.

    Raises:
        TypeError: Arguments that are not ints where the geometry needs them.
        ValueError: Likewise, or a convolution's weight and input of different ranks.
    """
    if name in ("conv1d", "conv2d", "conv3d"):
        bound = bind(args, kwargs, CONVOLUTION_PARAMETERS)
        weight = bound["weight"]
        return Window.convolution(
            weight.shape[2:],
            bound.get("stride", 1),
            bound.get("padding", 0),
            bound.get("dilation", 1),
            bound.get("groups", 1),
        )
    for kind, parameters in _POOL_PARAMETERS:
        prefix = f"{kind}_pool"
        if name.startswith(prefix) and name[len(prefix) : len(prefix) + 2] in ("1d", "2d", "3d"):
            bound = bind(args, kwargs, parameters)
            options = {key: bound[key] for key in parameters[2:] if key in bound}
            options.pop("return_indices", None)
            return Window.pool(kind, int(name[len(prefix)]), bound["kernel_size"], **options)
    return None
