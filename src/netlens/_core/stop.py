"""Running a model only as far as some of its layers: the one stop-at-layer mechanism.

Techniques that read a layer (activation maximisation, receptive fields, top activations) need
nothing computed after that layer's last call, and a forward pass cut short there is cheaper
and keeps less for the backward pass. Here is the one way netlens does it:

* :func:`counting_calls` counts how often each module runs in a whole forward pass (a shared
  block, a reused activation module run several times; the last call is the one read);
* :class:`StopAt` installs hooks (through :class:`~netlens._core.hooks.Hooks`, so they act for
  this thread only) that end a forward pass once every watched module has made its last call,
  or just before that call (``before=True``, for a caller that needs the module's input);
* :func:`run_until` is one such pass.

The pass ends by an exception raised from a hook, a ``BaseException`` so that a model's own
``except Exception`` cannot swallow it; :meth:`StopAt.run` suppresses it, and only its own: a
stop of an enclosing pass goes on up. Hooks that must see the last call (a recorder, a hook
that keeps the output or the input) are registered before the stop's, since hooks run in
registration order: enter the recorder first, then the :class:`StopAt`.

Example:
    >>> import torch, torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> seen = []
    >>> _ = net[0].register_forward_hook(lambda m, i, o: seen.append(o))
    >>> with counting_calls([net[0]]) as calls:
    ...     _ = net(torch.randn(4, 2))  # a whole pass, to count
    >>> calls[net[0]]
    1
    >>> with StopAt(calls) as stop:
    ...     stop.run(net, torch.randn(4, 2)) is None  # stopped after net[0]: no output
    True
    >>> len(seen), len(net[0]._forward_hooks)  # the stop's hook is gone again
    (2, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import nn

from .hooks import Hooks

__all__ = ["StopAt", "counting_calls", "run_until"]


class _Stopped(BaseException):
    """Raised from a hook to end a forward pass; carries the :class:`StopAt` that raised it.

    A ``BaseException``, so that a model's own ``except Exception`` cannot swallow it.
    """

    def __init__(self, stop: StopAt) -> None:
        super().__init__()
        self.stop = stop


@contextmanager
def counting_calls(modules: Iterable[nn.Module]) -> Iterator[dict[nn.Module, int]]:
    """Count each module's calls in the forward passes run inside the block.

    Args:
        modules: The modules to count.

    Yields:
        ``{module: calls}``, filled as the block runs (0 for a module that has not run); a
        mapping that :class:`StopAt` takes as it is.
    """
    counts: dict[nn.Module, int] = {}
    with Hooks() as hooks:
        for module in modules:
            if module in counts:
                continue
            counts[module] = 0
            hooks.forward(module, _counter(counts, module))
        yield counts


def _counter(counts: dict[nn.Module, int], module: nn.Module) -> Callable[..., None]:
    def count(*_: Any) -> None:
        counts[module] += 1

    return count


class StopAt:
    """Ends forward passes once every watched module has made its last call of the pass.

    Hooks are in place inside the ``with`` block (removed on leaving it, also when it raises);
    each :meth:`run` inside it is one forward pass, counted from zero. Several modules stop the
    pass together: at the last of their last calls. An empty ``calls`` never stops a pass (the
    model runs through to its output).

    Args:
        calls: How many times each watched module runs per forward pass (see
            :func:`counting_calls`); a count below 1 counts as 1.
        before: Stop just before the last call (forward pre-hooks) instead of just after it.

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Tanh())
        >>> with StopAt({net[1]: 1}, before=True) as stop:
        ...     print(stop.run(net, torch.randn(1, 2)))
        None
        >>> with StopAt({}) as stop:  # nothing watched: the whole pass
        ...     stop.run(net, torch.randn(1, 2)).shape
        torch.Size([1, 2])
    """

    def __init__(self, calls: Mapping[nn.Module, int], *, before: bool = False) -> None:
        self.calls = {module: max(1, count) for module, count in calls.items()}
        self.before = before
        self._seen = dict.fromkeys(self.calls, 0)
        self._hooks: Hooks | None = None

    def _hook(self, module: nn.Module) -> Callable[..., None]:
        def stop(*_: Any) -> None:
            self._seen[module] += 1
            if all(self._seen[watched] >= count for watched, count in self.calls.items()):
                raise _Stopped(self)

        return stop

    def run(self, model: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One forward pass of ``model`` inside the block: its output, or None where it stopped.

        Args:
            model: The model (or any callable that runs the watched modules).
            *args: Its positional arguments.
            **kwargs: Its keyword arguments.

        Returns:
            What ``model`` returned, or None when the pass was stopped.
        """
        self._seen = dict.fromkeys(self.calls, 0)
        try:
            return model(*args, **kwargs)
        except _Stopped as stopped:
            if stopped.stop is not self:
                raise  # the stop of an enclosing pass
            return None

    def __enter__(self) -> StopAt:
        hooks = Hooks()
        try:
            for module in self.calls:
                if self.before:
                    hooks.forward_pre(module, self._hook(module))
                else:
                    hooks.forward(module, self._hook(module))
        except BaseException:
            hooks.remove()
            raise
        self._hooks = hooks
        return self

    def __exit__(self, *exc_info: object) -> None:
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            hooks.remove()


def run_until(
    model: Callable[..., Any],
    calls: Mapping[nn.Module, int],
    *args: Any,
    before: bool = False,
    **kwargs: Any,
) -> Any:
    """One forward pass of ``model`` that stops as :class:`StopAt` ``(calls, before=before)`` says.

    Hooks registered on the watched modules before this call run before the stop (forward
    hooks run in registration order), so that a recorder still sees the last output.

    Args:
        model: The model.
        calls: How many times each watched module runs per forward pass.
        *args: The model's positional arguments.
        before: Stop just before the last call instead of just after it.
        **kwargs: The model's keyword arguments.

    Returns:
        What ``model`` returned, or None when the pass was stopped.
    """
    with StopAt(calls, before=before) as stop:
        return stop.run(model, *args, **kwargs)
