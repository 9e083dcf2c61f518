"""The activation recorder: forward hooks that live only inside a ``with`` block."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, suppress
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from ._errors import (
    LayerNotFoundError,
    NetlensError,
    NetlensValueError,
    NotRecordedError,
)
from ._layers import LayerSpec
from ._outputs import LayerView, Select, layer_views

__all__ = ["Recorder", "StopForward", "Target", "record"]

_INPLACE_DUNDERS = frozenset(
    f"__i{op}__"
    for op in (
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "pow",
        "and",
        "or",
        "xor",
        "lshift",
        "rshift",
        "matmul",
    )
)


def _inplace_flag_position(func: Callable[..., Any]) -> int | None:
    """Position of an ``inplace`` parameter (F.relu(x, True)), or None; cached per function."""
    try:
        return _INPLACE_POSITION_CACHE[func]
    except KeyError:
        pass
    except TypeError:  # unhashable callables
        return None
    position: int | None = None
    try:
        parameters = list(inspect.signature(func).parameters)
        if "inplace" in parameters:
            position = parameters.index("inplace")
    except (TypeError, ValueError):  # builtins without a signature
        pass
    _INPLACE_POSITION_CACHE[func] = position
    return position


_INPLACE_POSITION_CACHE: dict[Any, int | None] = {}


def _mutated_tensors(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[Any]:
    """The tensors a torch function call is about to write into (conservatively)."""
    name = getattr(func, "__name__", "")
    targets: list[Any] = []
    out = kwargs.get("out")
    if out is not None:
        targets.extend(out if isinstance(out, (tuple, list)) else [out])
    inplace = (name.endswith("_") and not name.startswith("__")) or name in _INPLACE_DUNDERS
    inplace = inplace or name == "__setitem__" or kwargs.get("inplace") is True
    if not inplace:
        position = _inplace_flag_position(func)
        inplace = position is not None and len(args) > position and args[position] is True
    if inplace and args:
        targets.append(args[0])
    return targets


class _CopyOnWrite(TorchFunctionMode):
    """Clone a recorded tensor just before an in-place op would overwrite it.

    An ``nn.ReLU(inplace=True)`` right after a recorded conv would otherwise turn the stored conv
    output into the ReLU's output. Cloning every output always costs 20-45% at batch 256;
    this clones only when a write into a recorded storage is about to happen.
    """

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self._recorder = recorder

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if self._recorder._storages:
            for target in _mutated_tensors(func, args, kwargs):
                if isinstance(target, torch.Tensor):
                    self._recorder._protect(target)
        return func(*args, **kwargs)


class Recorder(Mapping[str, torch.Tensor]):
    """Read-only mapping ``layer name -> output of its latest call``, filled inside ``record``.

    Besides the mapping interface: :meth:`calls` gives every call of a layer in the latest forward
    pass of the model, :attr:`layers` the selected modules.
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
        self._stack: ExitStack | None = None

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

    def _start_forward(self, module: nn.Module, args: Any) -> None:
        self._calls.clear()
        self._storages.clear()

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensor = self._views[name].tensor(output)
            if self._detach:
                tensor = tensor.detach()
            if self._device is not None:
                tensor = tensor.to(self._device)
            calls = self._calls.setdefault(name, [])
            calls.append(tensor)
            self._storages.setdefault(_storage_key(tensor), []).append((name, len(calls) - 1))

        return hook

    def _protect(self, target: torch.Tensor) -> None:
        entries = self._storages.pop(_storage_key(target), None)
        for name, index in entries or ():
            self._calls[name][index] = self._calls[name][index].clone()

    # -- context -----------------------------------------------------------------------------

    def __enter__(self) -> Recorder:
        stack = ExitStack()
        try:
            handles: list[RemovableHandle] = []
            stack.callback(_remove_all, handles)
            handles.append(self._model.register_forward_pre_hook(self._start_forward))
            for name, module in self._layers.items():
                handles.append(module.register_forward_hook(self._hook(name)))
            stack.enter_context(_CopyOnWrite(self))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        self._storages.clear()


def _remove_all(handles: list[RemovableHandle]) -> None:
    for handle in handles:
        handle.remove()


def _storage_key(tensor: torch.Tensor) -> int:
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # tensors without storage (meta, some subclasses)
        return id(tensor)


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

    A recorded tensor keeps its value even if the model later overwrites it in place (an
    ``nn.ReLU(inplace=True)`` after a conv): the recorder clones a recorded tensor just before
    an in-place operation would write into it, and never otherwise.

    Args:
        model: Any ``nn.Module`` (not a ``torch.compile``'d one: pass its ``_orig_mod``).
        layers: Which layers, as for :func:`find_layers`.
        detach: Store detached tensors (default). ``False`` keeps the autograd graph, so the
            recorded tensors can be differentiated.
        device: Move each recorded tensor there (for example ``"cpu"`` to save GPU memory).
        select: Which part of a layer's output to store, for layers that return several: an
            index (into a tuple or list), a key (of a mapping such as a Hugging Face
            ``ModelOutput``) or a function of the output. By default a tensor is stored as is,
            a tuple or list gives its first tensor (LSTM's ``(output, (h, c))``: ``output``),
            a mapping its first tensor value and a ``PackedSequence`` its padded tensor.
        channel_dim: The channel axis of the recorded layers, for techniques that build on the
            recording (:class:`ActivationGrid`); by default it follows from each module's kind.

    Returns:
        The :class:`Recorder`, a read-only mapping filled as the model runs.

    Raises:
        LayerNotFoundError: See :func:`find_layers`.
        NotRecordedError: When reading a layer that has not run inside the block.
        NetlensTypeError: When ``select`` returns a non-tensor, or a layer returns no tensor.

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
    views = layer_views(model, layers, select=select, channel_dim=channel_dim)
    return Recorder(model, views, detach=detach, device=device)


# -- running a model up to one layer -----------------------------------------------------------


class StopForward(BaseException):
    """Raised from a hook once the target layer has run, to skip the rest of the forward pass.

    A ``BaseException``, so that a model's own ``except Exception`` cannot swallow it.
    """


class Target:
    """Runs the model just far enough to get one layer's output, arranged ``(N, C, *rest)``.

    The recorder's hooks (and its copy-on-write mode) are in place only during each forward
    pass. :meth:`probe` runs the whole model once first, to count the layer's calls per forward:
    later passes stop right after the last of them.
    """

    def __init__(self, model: nn.Module, view: LayerView) -> None:
        self.model = model
        self.view = view
        self.recorder = Recorder(model, {view.name: view}, detach=False, device=None)
        self.calls = 1
        self._seen = 0

    def _stop(self, module: nn.Module, args: Any, output: Any) -> None:
        self._seen += 1
        if self._seen >= self.calls:
            raise StopForward

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """The layer's output for ``inputs``, arranged ``(N, C, *rest)``."""
        self._seen = 0
        with self.recorder:
            # registered after the recorder's hook, so that the output is stored first
            handle = self.view.module.register_forward_hook(self._stop)
            try:
                with suppress(StopForward):
                    self.model(inputs)
            finally:
                handle.remove()
            output = self.recorder[self.view.name]
        return self.view.arrange(output, inputs.shape[0])

    def probe(self, inputs: torch.Tensor, what: str) -> torch.Tensor:
        """Run the whole model once: count the layer's calls, check the output's shape.

        ``what`` describes the inputs for messages (for example "inputs of input_shape (1, 28,
        28)"). Returns the arranged output.
        """
        name = self.view.name
        with self.recorder:
            try:
                with torch.no_grad():
                    self.model(inputs)
            except NetlensError:
                raise
            except Exception as error:
                # A model may fail after the target layer (a linear layer sized for another
                # input size); the layer's output is all that is needed.
                if name not in self.recorder:
                    raise NetlensValueError(
                        f"Expected the model to run on {what}, but it raised "
                        f"{type(error).__name__} before reaching layer {name!r}: {error}"
                    ) from error
        if name not in self.recorder:
            raise NetlensValueError(
                f"Expected layer {name!r} to run in the model's forward pass, but it did not run "
                f"on {what}."
            )
        self.calls = len(self.recorder.calls(name))
        return self.view.arrange(self.recorder[name], inputs.shape[0])
