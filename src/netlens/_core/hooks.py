"""Hooks that act only for the thread that installed them, removed together.

The one cleanup idiom of netlens, and its one rule for threads: a model may be shared (a served
model, a notebook with a background job), so a hook netlens puts on it must not act on another
thread's forward pass. Every hook goes through :meth:`Hooks.forward` or
:meth:`Hooks.forward_pre`, which wrap it so that it does nothing (returns ``None``: the other
thread's pass goes on untouched) when called from any thread but the one that added it, and
mark it so that netlens can tell its own hooks from the user's (:func:`is_ours`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = [
    "GLOBAL_HOOK_DICTS",
    "MODULE_HOOK_DICTS",
    "Hooks",
    "confined",
    "global_hooks",
    "global_user_hooks",
    "is_ours",
    "module_hooks",
    "user_hooks",
]

_MARK = "_netlens_thread"


def confined(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` as a hook that acts only when called from the current thread."""
    owner = threading.get_ident()

    @functools.wraps(function)
    def hook(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != owner:
            return None
        return function(*args, **kwargs)

    setattr(hook, _MARK, owner)
    return hook


def is_ours(hook: object) -> bool:
    """Whether ``hook`` is one that netlens installed (for any thread)."""
    return hasattr(hook, _MARK)


#: Every per-module hook dictionary of ``nn.Module``: what :func:`netlens.testing.model_unchanged`
#: compares, and the first two are what a forward pass calls.
MODULE_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
#: The process-wide hook dictionaries of ``torch.nn.modules.module`` (hooks for every module).
GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)
_FORWARD = GLOBAL_HOOK_DICTS[:2]


def module_hooks(module: nn.Module, names: tuple[str, ...] = MODULE_HOOK_DICTS) -> dict[str, Any]:
    """``module``'s hook dictionaries named ``names`` (those this torch version has)."""
    return {name: getattr(module, name) for name in names if hasattr(module, name)}


def global_hooks(names: tuple[str, ...] = GLOBAL_HOOK_DICTS) -> dict[str, Any]:
    """The process-wide hook dictionaries named ``names`` (those this torch version has)."""
    from torch.nn.modules import module as module_module

    return {name: getattr(module_module, name) for name in names if hasattr(module_module, name)}


def _any_user_hook(dictionaries: dict[str, Any]) -> bool:
    return any(not is_ours(hook) for hooks in dictionaries.values() for hook in hooks.values())


def user_hooks(module: nn.Module) -> bool:
    """Whether ``module`` has forward (pre-)hooks of the user's, not netlens' own.

    netlens' hooks of a call in another thread do nothing in this thread's passes: they do not
    count.
    """
    return _any_user_hook(module_hooks(module, MODULE_HOOK_DICTS[:2]))


def global_user_hooks() -> bool:
    """Whether forward (pre-)hooks of the user's are registered for every module."""
    return _any_user_hook(global_hooks(_FORWARD))


class Hooks:
    """Handles of registered hooks, removed all at once by :meth:`remove` or on leaving a block.

    Example:
        >>> import torch.nn as nn
        >>> net = nn.Linear(2, 2)
        >>> with Hooks() as hooks:
        ...     _ = hooks.forward(net, lambda m, i, o: None)
        ...     len(net._forward_hooks)
        1
        >>> len(net._forward_hooks)
        0
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def add(self, handle: RemovableHandle) -> RemovableHandle:
        """Keep ``handle`` for removal; returns it."""
        self._handles.append(handle)
        return handle

    def forward(
        self, module: nn.Module, hook: Callable[..., Any], **options: Any
    ) -> RemovableHandle:
        """A forward hook on ``module`` for this thread's passes only (see the module's doc)."""
        return self.add(module.register_forward_hook(confined(hook), **options))

    def forward_pre(
        self, module: nn.Module, hook: Callable[..., Any], **options: Any
    ) -> RemovableHandle:
        """A forward pre-hook on ``module`` for this thread's passes only."""
        return self.add(module.register_forward_pre_hook(confined(hook), **options))

    def remove(self) -> None:
        """Remove every hook added so far (each once, newest first)."""
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> Hooks:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()
