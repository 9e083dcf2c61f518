"""The error hierarchy: one base class, each subclass also a builtin that fits.

Catching :class:`NetlensError` catches everything the library raises on purpose; catching the
builtin (``KeyError``, ``ValueError``, ``TypeError``) keeps working for code that does not know
about netlens. Every message says what was expected and what was received.

Warnings go through :func:`warn`, which points them at the user's line (the call into netlens),
whatever depth inside the library they are raised at.
"""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

__all__ = [
    "LayerNotFoundError",
    "NetlensError",
    "NetlensTypeError",
    "NetlensValueError",
    "NotRecordedError",
    "UnsupportedModelError",
    "describe",
    "user_stacklevel",
    "warn",
]

# Every module of the package lies under this directory (frames there are the library's own).
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def describe(value: object) -> str:
    """Say briefly what a received value is, for error messages."""
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        return f"{type(value).__name__} of shape {tuple(shape)} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning issued by the caller point at the user's line.

    Counted as ``warnings.warn`` counts, from the function that calls this one (level 1): the
    frame just outside the outermost netlens frame on the stack, so that a warning raised deep
    inside a technique, or inside a hook that torch calls, names the line that called netlens.
    """
    frame: FrameType | None = sys._getframe(1)
    level, last_inside = 1, 1
    while frame is not None:
        if frame.f_code.co_filename.startswith(_PACKAGE):
            last_inside = level
        frame, level = frame.f_back, level + 1
    return last_inside + 1


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` at the user's line (see :func:`user_stacklevel`)."""
    warnings.warn(message, category, stacklevel=user_stacklevel())


class NetlensError(Exception):
    """Base class of every error netlens raises on purpose."""


class _MessageKeyError(KeyError):
    # KeyError's str() is repr(message), which wraps the text in quotes and escapes newlines.
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class LayerNotFoundError(NetlensError, _MessageKeyError):
    """A layer spec names or matches no module of the model.

    The message lists close matches and, for small models, every layer name.
    """


class NotRecordedError(NetlensError, _MessageKeyError):
    """A recorded layer was read before it ran inside the ``record`` block."""


class NetlensValueError(NetlensError, ValueError):
    """An argument has the right type but a value netlens cannot use."""


class NetlensTypeError(NetlensError, TypeError):
    """An argument, or something the model returned, has a type netlens cannot use."""


class UnsupportedModelError(NetlensError, TypeError):
    """The model is of a kind the technique cannot see into (for example ``torch.compile``)."""


# Tracebacks and reprs show the public path (netlens.LayerNotFoundError), not the private module.
for _error in (
    NetlensError,
    LayerNotFoundError,
    NotRecordedError,
    NetlensValueError,
    NetlensTypeError,
    UnsupportedModelError,
):
    _error.__module__ = "netlens"
del _error
