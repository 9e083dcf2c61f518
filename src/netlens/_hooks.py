"""Hook handles that are removed together: the one cleanup idiom of netlens."""

from __future__ import annotations

from types import TracebackType

from torch.utils.hooks import RemovableHandle

__all__ = ["Hooks"]


class Hooks:
    """Handles of registered hooks, removed all at once by :meth:`remove` or on leaving a block.

    Example:
        >>> import torch.nn as nn
        >>> net = nn.Linear(2, 2)
        >>> with Hooks() as hooks:
        ...     _ = hooks.add(net.register_forward_hook(lambda m, i, o: None))
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
