"""The activation recorder: forward hooks that live only inside a ``with`` block."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ._core.checks import check_bool
from ._core.errors import (
    LayerNotFoundError,
    NetlensTypeError,
    NetlensValueError,
    NotRecordedError,
    describe,
)
from ._core.hooks import Hooks
from ._core.layers import LayerSpec
from ._core.ops import CallMode, mutated_tensors
from ._core.outputs import LayerView, Select, layer_views

__all__ = ["Recorder", "record"]


class _CopyOnWrite(CallMode):
    """Clone a recorded tensor just before an in-place op would overwrite it.

    An ``nn.ReLU(inplace=True)`` right after a recorded conv would otherwise turn the stored conv
    output into the ReLU's output. Cloning every output always costs 20-45% at batch 256;
    this clones only when a write into a recorded storage is about to happen. The mode is on
    the stack only during a forward pass of the model, from its first recorded tensor on.
    """

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self._recorder = recorder

    def handle(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self._recorder._storages:
            for target in mutated_tensors(func, args, kwargs):
                if isinstance(target, torch.Tensor):
                    self._recorder._protect(target)
        return func(*args, **kwargs)


# Torch function modes form a stack per thread, and ``with mode:`` pops whatever is on top when
# it ends. The copy-on-write mode is pushed in the middle of a forward pass, so it goes in at the
# height the stack had when the pass began: a mode that the model's own code entered since then
# stays above it, and its ``with`` block still pops that mode and not this one. torch's
# DeviceContext moves modes around the same way.


def _stack_height() -> int:
    return int(torch._C._len_torch_function_stack())


def _insert_mode(mode: TorchFunctionMode, height: int) -> None:
    """Put ``mode`` on this thread's mode stack with ``height`` modes below it (at most)."""
    above = [torch._C._pop_torch_function_stack() for _ in range(max(0, _stack_height() - height))]
    torch._C._push_on_torch_function_stack(mode)
    for other in reversed(above):
        torch._C._push_on_torch_function_stack(other)


def _remove_mode(mode: TorchFunctionMode) -> None:
    """Take ``mode`` off this thread's mode stack wherever it is; the others keep their order."""
    height = _stack_height()
    if not any(torch._C._get_function_stack_at(i) is mode for i in range(height)):
        return
    above = []
    while (top := torch._C._pop_torch_function_stack()) is not mode:
        above.append(top)
    for other in reversed(above):
        torch._C._push_on_torch_function_stack(other)


class Recorder(Mapping[str, torch.Tensor]):
    """Read-only mapping ``layer name -> output of its latest call``, filled inside ``record``.

    Besides the mapping interface: :meth:`calls` gives every call of a layer in the latest forward
    pass of the model, :attr:`layers` the selected modules.

    A recorder belongs to the thread that enters it: forward passes run by other threads (or
    by ``nn.DataParallel``'s replicas) are not recorded. It can be entered again once its block
    has ended, but not while it is active.
    """

    def __init__(
        self,
        model: nn.Module,
        views: dict[str, LayerView],
        *,
        detach: bool,
        device: torch.device | str | None,
    ) -> None:
        self._model = model
        self._views = views
        self._layers = {name: view.module for name, view in views.items()}
        self._detach = detach
        self._device = torch.device(device) if device is not None else None
        self._calls: dict[str, list[torch.Tensor]] = {}
        # storage pointer -> (name, call index) of recorded tensors that alias the model's own
        # tensors, for copy-on-write.
        self._storages: dict[int, list[tuple[str, int]]] = {}
        self._lock = threading.Lock()
        self._owner: int | None = None  # ident of the thread inside the block
        self._hooks: Hooks | None = None
        self._in_pass = False
        self._pass_height = 0  # height of the mode stack when the current pass began
        self._mode: _CopyOnWrite | None = None

    @property
    def layers(self) -> dict[str, nn.Module]:
        """The selected ``{name: module}``, whether they ran or not."""
        return dict(self._layers)

    def calls(self, name: str) -> list[torch.Tensor]:
        """Every output of layer ``name`` in the latest forward pass, in call order.

        A module used several times in one forward (a shared block, an activation module reused)
        has one entry per call; the mapping itself holds the last one.
        """
        self._check_known(name)
        if name not in self._calls:
            raise NotRecordedError(self._not_recorded_message(name))
        return list(self._calls[name])

    def clear(self) -> None:
        """Forget everything recorded so far."""
        self._calls.clear()
        self._storages.clear()

    def __getitem__(self, name: str) -> torch.Tensor:
        self._check_known(name)
        if name not in self._calls:
            raise NotRecordedError(self._not_recorded_message(name))
        return self._calls[name][-1]

    def __iter__(self) -> Iterator[str]:
        return iter([name for name in self._layers if name in self._calls])

    def __len__(self) -> int:
        return sum(name in self._calls for name in self._layers)

    def __contains__(self, name: object) -> bool:
        return name in self._calls

    def __repr__(self) -> str:
        parts = [
            f"{name!r}: {tuple(self._calls[name][-1].shape)}"
            if name in self._calls
            else f"{name!r}: -"
            for name in self._layers
        ]
        return "Recorder({" + ", ".join(parts) + "})"

    def _check_known(self, name: str) -> None:
        if name not in self._layers:
            close = [n for n in self._layers if name in n or n in name] or list(self._layers)[:10]
            raise LayerNotFoundError(
                f"Expected one of the recorded layers, but got {name!r}; recorded layers: "
                + ", ".join(repr(n) for n in close)
                + "."
            )

    def _not_recorded_message(self, name: str) -> str:
        return (
            f"Expected layer {name!r} to have run inside the record block, but it has not been "
            "called yet: run a forward pass of the model inside the block, and check that the "
            "forward actually uses this layer."
        )

    # -- hooks -------------------------------------------------------------------------------
    # Every hook first checks the thread: the hooks sit on modules that any thread may call.

    def _start_forward(self, module: nn.Module, args: Any) -> None:
        if threading.get_ident() != self._owner:
            return
        # a pass left by an exception that is not an Exception (always_call hooks skip those)
        self._release()
        self._calls.clear()
        self._in_pass = True
        self._pass_height = _stack_height()

    def _end_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        if threading.get_ident() != self._owner:
            return
        self._in_pass = False
        self._release()

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        view = self._views[name]

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if threading.get_ident() != self._owner:
                return
            tensor = view.tensor(output)
            stored = tensor.detach() if self._detach else tensor
            if self._device is not None:
                stored = stored.to(self._device)
            calls = self._calls.setdefault(name, [])
            calls.append(stored)
            if not self._in_pass:
                return  # a layer called on its own, outside a forward pass of the model
            key = _storage_key(stored)
            if self._device is not None and key != _storage_key(tensor):
                return  # a copy: nothing the model does can change it
            self._storages.setdefault(key, []).append((name, len(calls) - 1))
            if self._mode is None:
                self._mode = _CopyOnWrite(self)
                _insert_mode(self._mode, self._pass_height)

        return hook

    def _protect(self, target: torch.Tensor) -> None:
        entries = self._storages.pop(_storage_key(target), None)
        for name, index in entries or ():
            self._calls[name][index] = self._calls[name][index].clone()

    def _release(self) -> None:
        """Take the copy-on-write mode off the stack: the pass is over."""
        self._storages.clear()
        mode, self._mode = self._mode, None
        if mode is not None:
            _remove_mode(mode)

    # -- context -----------------------------------------------------------------------------

    def __enter__(self) -> Recorder:
        with self._lock:
            if self._owner is not None:
                raise NetlensValueError(
                    "Expected a recorder that is not recording, but this one is already inside "
                    "its with block: a recorder can be entered again once its block has ended. "
                    "For nested blocks, make a second recorder with netlens.record(...)."
                )
            hooks = Hooks()
            try:
                hooks.forward_pre(self._model, self._start_forward)
                for name, module in self._layers.items():
                    hooks.forward(module, self._hook(name))
                # after the layers' hooks, so that the model's own output is recorded first;
                # always_call: also when the forward raises, to end the pass
                hooks.forward(self._model, self._end_forward, always_call=True)
            except BaseException:
                hooks.remove()
                raise
            self._hooks = hooks
            self._owner = threading.get_ident()
            self._in_pass = False
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            hooks, self._hooks = self._hooks, None
            if hooks is not None:
                hooks.remove()
            self._in_pass = False
            self._release()
            self._owner = None


def _storage_key(tensor: torch.Tensor) -> int:
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # tensors without storage (meta, some subclasses)
        return id(tensor)


def _check_device(device: object) -> torch.device | None:
    if device is None or isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise NetlensTypeError(
            f"Expected device to be None, a str or a torch.device, but got {describe(device)}."
        )
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise NetlensValueError(
            f"Expected device to name a device such as 'cpu' or 'cuda:0', but got {device!r}."
        ) from error


def record(
    model: nn.Module,
    layers: LayerSpec,
    *,
    detach: bool = True,
    device: torch.device | str | None = None,
    select: Select | None = None,
    channel_dim: int | None = None,
) -> Recorder:
    """Record the outputs of selected layers during every forward pass inside a ``with`` block.

    Hooks are registered when the block starts and removed when it ends, also when it raises.
    Each forward pass of ``model`` starts a fresh recording; ``recorder[name]`` is the output
    of the latest call of that layer and ``recorder.calls(name)`` all calls in that pass.

    A recorded tensor keeps its value even if the model overwrites it in place later in the
    pass (an ``nn.ReLU(inplace=True)`` after a conv): during each forward pass the recorder
    clones a recorded tensor just before an in-place operation would write into it, and never
    otherwise. Outside the model's forward passes nothing is watched: writing in place into the
    model's output after the pass also changes the recorded output of the last layer.

    A recorder sees only the forward passes of the thread that entered it, so that several
    threads can record the same model at once, each with its own recorder. Entering a recorder
    that is already active (``with rec:`` inside ``with rec:``) raises an error; two recorders
    on the same model can be nested.

    Args:
        model: Any ``nn.Module`` (not a ``torch.compile``'d one: pass its ``_orig_mod``).
        layers: Which layers, as for :func:`find_layers`.
        detach: Store detached tensors (default). ``False`` keeps the autograd graph, so the
            recorded tensors can be differentiated.
        device: Move each recorded tensor there (for example ``"cpu"`` to save GPU memory).
        select: Which part of a layer's output to store, for layers that return several: an
            index (into a tuple or list), a key (of a mapping such as a Hugging Face
            ``ModelOutput``, or an attribute name) or a function of the output. By default a
            tensor is stored as is, a tuple or list gives its first tensor (LSTM's
            ``(output, (h, c))``: ``output``), a mapping its first tensor value and a
            ``PackedSequence`` its padded tensor. What ``select`` picks goes through the same
            rule, so ``select=1`` on an LSTM stores ``h``.
        channel_dim: The channel axis of the recorded layers, as every function that takes a
            layer accepts it (by default it follows from each module's kind); techniques built
            on a recorder read it. The outputs are stored as the layers return them: pass the
            same ``channel_dim`` to :class:`ActivationGrid` to draw channels-last maps.

    Returns:
        The :class:`Recorder`, a read-only mapping filled as the model runs.

    Raises:
        LayerNotFoundError: See :func:`find_layers`.
        NotRecordedError: When reading a layer that has not run inside the block.
        NetlensTypeError: For an argument of the wrong type (``layers``, ``detach``, ``device``,
            ``select``, ``channel_dim``); during the forward pass, when a layer's output (or what
            ``select`` picks from it) holds no tensor.
        NetlensValueError: When ``select`` names a part the output does not have, and when
            entering a recorder that is already active.

    Example:
        >>> import torch, torch.nn as nn
        >>> import netlens as nl
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Flatten())
        >>> with nl.record(net, ["0", "1"]) as rec:
        ...     _ = net(torch.randn(2, 1, 5, 5))
        >>> rec["0"].shape
        torch.Size([2, 4, 3, 3])
        >>> bool((rec["0"] < 0).any())  # the conv output survived the in-place ReLU
        True
        >>> len(net._forward_hooks)  # no hook is left behind
        0
    """
    detach = check_bool("detach", detach)
    views = layer_views(model, layers, select=select, channel_dim=channel_dim)
    return Recorder(model, views, detach=detach, device=_check_device(device))
