"""What the objectives read: the model run as far as they need, and one value per input.

A :class:`Readout` holds the layers read (one view per distinct layer, ``select=`` and
``channel_dim=``), runs the whole model once on zero inputs (:meth:`Readout.probe`: it checks
``input_shape`` and counts each layer's calls), then runs it once per step only until every
layer read has made its last call (:class:`~netlens._core.stop.StopAt`; through to the output
when a term reads it). Layers are read through the layer contract
(:mod:`netlens._core.outputs`), arranged ``(n, C, *map)``.

Two ways to turn what was read into values, one per input:

* :class:`EachObjective` evaluates a list of objectives, objective ``k`` on its own rows of
  the batch (so that diversity compares the inputs of one objective only);
* :class:`ChannelMaps` evaluates objectives that are each one channel term of one layer (the
  ``layer``/``channels`` form of :func:`~netlens.maximize_activation`): the map of each input's
  channel is gathered, and all maps are reduced in one call. For a plain ``nn.Conv2d`` or
  ``nn.Linear`` layer whose channels are its own output features, :class:`_SlicedLayer` computes
  only those maps, from the layer's input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .._core.errors import NetlensError, NetlensValueError, describe
from .._core.hooks import Hooks
from .._core.model import batched_inputs
from .._core.outputs import LayerView, first_tensor, layer_view
from .._core.stop import StopAt
from .._record import Recorder
from .objectives import Objective, _Channel, _ChannelTerm, _MapFunction, _Neuron, _Term

__all__ = [
    "PROBE_BATCH",
    "ChannelMaps",
    "EachObjective",
    "Probed",
    "Readout",
    "channel_terms",
]

# The batch of zero inputs the first, full forward pass runs on (2, so that a batch axis cannot
# be mistaken for a size-1 dim).
PROBE_BATCH = 2
# The name a result gives the model's output when an objective reads it (class_logit).
_OUTPUT = "output"


@dataclass(frozen=True)
class Probed:
    """What the probe read, by the readout's keys.

    Attributes:
        recorded: Each layer's output as recorded (after ``select``, not arranged).
        arranged: The same arranged ``(n, C, *map)``.
        output: The model's output arranged ``(n, classes, ...)`` when a term reads it.
    """

    recorded: dict[str, torch.Tensor]
    arranged: dict[str, torch.Tensor]
    output: torch.Tensor | None


class Readout:
    """The layers (and the output) that objectives read, and the model run to get them.

    Evaluators say what they read (:meth:`read`, :attr:`needs_output`) before :meth:`probe`;
    equal views are read once, whichever terms share them.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.views: dict[str, LayerView] = {}
        self.needs_output = False
        self.calls: dict[str, int] = {}
        self.order: list[str] = []  # by when each layer ran in the probe
        self._recorder: Recorder | None = None

    def read(self, view: LayerView) -> str:
        """Read ``view``'s layer: its key (an equal view's, when one is read already)."""
        key = next((k for k, seen in self.views.items() if seen == view), None)
        if key is None:
            key = f"{len(self.views)}:{view.name}"
            self.views[key] = view
        return key

    @property
    def recorder(self) -> Recorder:
        """The recorder of every layer read (made once they are all known, at the probe)."""
        if self._recorder is None:
            self._recorder = Recorder(self.model, self.views, detach=False, device=None)
        return self._recorder

    def layer_names(self) -> str:
        """The layers read, in the model's order, then ``"output"``: for results."""
        names = list(dict.fromkeys(self.views[key].name for key in self.order))
        if self.needs_output:
            names.append(_OUTPUT)
        return ", ".join(names)

    def _names(self, keys: list[str]) -> str:
        """The layers of keys as the user named them ("layer 'spare'"), for messages."""
        names = list(dict.fromkeys(self.views[key].name for key in keys))
        listed = ", ".join(repr(name) for name in names)
        return f"layer {listed}" if len(names) == 1 else f"layers {listed}"

    def probe(self, inputs: torch.Tensor, shape: tuple[int, ...], note: str = "") -> Probed:
        """Run the whole model once: check ``input_shape``, count each layer's calls.

        A failure before any layer read is a matter of ``input_shape`` (an input the model does
        not take, or one without its batch dimension reaching a convolution or recurrent
        layer); a failure at or after one (``select=``, ``channel_dim=``) is reported as it is.
        A model may fail after the layers read (a linear layer sized for another input size):
        their outputs are all that is needed, unless a term reads the model's output. ``note``
        says how ``input_shape`` was completed, for messages.

        Returns:
            What the probe read.
        """
        reached: list[bool] = []
        ran: list[str] = []
        returned: Any = None
        what = f"a batch of inputs of input_shape {shape}"

        def first_run(key: str) -> Callable[[nn.Module, Any, Any], None]:
            return lambda module, args, output: None if key in ran else ran.append(key)

        try:
            with (
                batched_inputs(self.model, tuple(inputs.shape), unbatched_hint=None),
                Hooks() as hooks,
                self.recorder,
                torch.no_grad(),
            ):
                # added after batched_inputs' checks, so that they see only inputs they let pass
                for key, view in self.views.items():
                    hooks.forward_pre(view.module, lambda m, a: reached.append(True))
                    hooks.forward(view.module, first_run(key))
                try:
                    returned = self.model(inputs)
                except NetlensError:
                    raise
                except Exception as error:
                    missing = [key for key in self.views if key not in ran]
                    if self.needs_output or missing:
                        where = f" before reaching {self._names(missing)}" if missing else ""
                        raise NetlensValueError(
                            f"Expected the model to run on {what}, but it raised "
                            f"{type(error).__name__}{where}: {error}"
                        ) from error
        except NetlensValueError as error:
            if reached:
                raise
            raise NetlensValueError(
                "Expected input_shape to be the shape of one input of the model without its "
                f"batch dimension, but got {shape}{note}: a batch of such inputs, "
                f"{tuple(inputs.shape)}, does not fit the model. {error}"
            ) from error
        missing = [key for key in self.views if key not in ran]
        if missing:
            raise NetlensValueError(
                "Expected every layer the objective reads to run in the model's forward pass, "
                f"but {self._names(missing)} did not run on inputs of input_shape {shape}{note}."
            )
        self.calls = {key: len(self.recorder.calls(key)) for key in self.views}
        self.order = ran
        recorded = {key: self.recorder[key] for key in self.views}
        arranged = self.arrange(recorded, inputs.shape[0])  # checks the batch axis
        self.recorder.clear()
        output = _arrange_output(returned, inputs.shape[0]) if self.needs_output else None
        return Probed(recorded, arranged, output)

    def arrange(self, recorded: dict[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
        """Recorded outputs arranged ``(n, C, *map)``."""
        return {key: self.views[key].arrange(recorded[key], batch) for key in self.views}

    def run(self, inputs: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The arranged outputs of the layers read, and of the model when a term reads it."""
        calls: dict[nn.Module, int] = {}
        if not self.needs_output:
            for key, view in self.views.items():
                calls[view.module] = self.calls[key]
        with self.recorder:
            # entered after the recorder, so that the last outputs are stored before the stop
            with StopAt(calls) as stop:
                returned = stop.run(self.model, inputs)
            missing = [key for key in self.views if key not in self.recorder]
            if missing:
                raise NetlensValueError(
                    f"Expected every layer the objective reads to run in every forward pass, "
                    f"as in the first one, but {self._names(missing)} did not run in this one."
                )
            recorded = {key: self.recorder[key] for key in self.views}
        self.recorder.clear()
        output = _arrange_output(returned, inputs.shape[0]) if self.needs_output else None
        return self.arrange(recorded, inputs.shape[0]), output


def _arrange_output(returned: Any, batch: int) -> torch.Tensor:
    """The model's output ``(N, ..., classes)`` arranged ``(N, classes, ...)``."""
    output = first_tensor(returned)
    if output is None or output.dim() < 2 or output.shape[0] != batch:
        raise NetlensValueError(
            f"Expected the model to return a batch of {batch} class scores (N, classes) for "
            f"class_logit, but it returned {describe(returned)}."
        )
    return output.movedim(-1, 1)


class EachObjective:
    """``inputs -> values``: objective ``k`` of the rows ``k * copies`` to ``(k + 1) * copies``.

    Args:
        readout: Reads the layers of every term (they are added to it here).
        objectives: The objectives, one per group of ``copies`` inputs.
        copies: Inputs per objective.
    """

    def __init__(self, readout: Readout, objectives: Sequence[Objective], copies: int) -> None:
        self.readout = readout
        self.objectives = objectives
        self.copies = copies
        self.keys: dict[int, str] = {}  # id(term) -> the readout's key of its layer
        model = readout.model
        for objective in objectives:
            for _, term in objective.terms:
                if term.layer is None:
                    readout.needs_output = True
                    continue
                view = layer_view(
                    model, term.layer, select=term.select, channel_dim=term.channel_dim
                )
                self.keys[id(term)] = readout.read(view)

    def _values(
        self,
        objective: Objective,
        outputs: dict[str, torch.Tensor],
        output: torch.Tensor | None,
        rows: slice,
    ) -> torch.Tensor:
        def read(term: _Term) -> torch.Tensor:
            tensor = output if term.layer is None else outputs[self.keys[id(term)]]
            assert tensor is not None
            return tensor[rows]

        return objective._values(read)

    def check(self, probed: Probed) -> None:
        """Evaluate every objective on the probe's outputs: checks channels, positions, sizes."""
        with torch.no_grad():
            for objective in self.objectives:
                self._values(objective, probed.arranged, probed.output, slice(None))

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """One value per input."""
        outputs, output = self.readout.run(inputs)
        copies = self.copies
        values = [
            self._values(objective, outputs, output, slice(k * copies, (k + 1) * copies))
            for k, objective in enumerate(self.objectives)
        ]
        return torch.cat(values)


class ChannelMaps:
    """``inputs -> values`` for objectives that each read one channel of the same layer.

    Input ``i`` is optimised for the channel of objective ``i // copies``; the map of that
    channel is taken for each input, and the maps of all inputs go through the terms'
    reduction (:meth:`~netlens._maximize.objectives._ChannelTerm.reduce`) in one call. Where
    :meth:`_SlicedLayer.applies`, only those maps are computed: keep :meth:`hooks` on while
    evaluating.

    Args:
        readout: The readout of the layer (probed).
        key: The layer's key in the readout.
        terms: One channel term per objective, all of one kind and reduction.
        copies: Inputs per objective.
        device: Where the inputs are (and the channel of each, an index).
        recorded: The layer's output in the probe (after ``select``), to tell whether the
            sliced computation applies.
        hooked: Whether the user has hooks of their own on the layer.
    """

    def __init__(
        self,
        readout: Readout,
        key: str,
        terms: Sequence[_ChannelTerm],
        copies: int,
        device: torch.device,
        recorded: torch.Tensor,
        hooked: bool,
    ) -> None:
        self.readout = readout
        self.key = key
        self.reduce = terms[0].reduce
        channels = [term.channel for term in terms]
        self.index = torch.tensor(channels, device=device).repeat_interleave(copies)
        view = readout.views[key]
        self.sliced = (
            _SlicedLayer(readout.model, view, self.index)
            if _SlicedLayer.applies(view, recorded, readout.calls[key], hooked)
            else None
        )

    def hooks(self) -> AbstractContextManager[None]:
        """The hooks the sliced computation needs (none when the layer runs in full)."""
        return nullcontext() if self.sliced is None else self.sliced.stopping()

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """One value per input."""
        if self.sliced is not None:
            maps = self.sliced(inputs)[:, 0]
        else:
            arranged = self.readout.run(inputs)[0][self.key]
            maps = arranged[torch.arange(arranged.shape[0], device=arranged.device), self.index]
        return self.reduce(maps)


def channel_terms(
    view: LayerView,
    channels: Sequence[int],
    reduction: str | Callable[[torch.Tensor], torch.Tensor],
) -> list[_ChannelTerm]:
    """The ``layer``/``channels`` form as channel terms, one per channel.

    ``"mean"`` is :func:`~netlens.objectives.channel`, ``"center"`` is
    :func:`~netlens.objectives.neuron` at the centre, a function of the maps is a term of its
    own. The terms name the layer, ``select`` and channel axis of ``view``, through which they
    are read (:class:`ChannelMaps`).
    """
    where = (view.name, view.select, view.channel_dim)
    if reduction == "mean":
        return [_Channel(*where, channel) for channel in channels]
    if reduction == "center":
        return [_Neuron(*where, channel, None) for channel in channels]
    function = cast(Callable[[torch.Tensor], torch.Tensor], reduction)
    return [_MapFunction(*where, channel, function) for channel in channels]


class _SlicedLayer:
    """A layer's output computed for one channel per input only.

    The forward pass stops at the layer's input; then input ``i`` meets only the weights of
    its own channel: a grouped convolution, or a row of the linear layer. Used only where it
    equals the full layer under the layer contract (:meth:`applies`).
    """

    def __init__(self, model: nn.Module, view: LayerView, channels: torch.Tensor) -> None:
        self.model = model
        self.module = cast("nn.Conv2d | nn.Linear", view.module)
        self.name = view.name
        self.channels = channels
        self._captured: list[torch.Tensor] = []
        self._stop: StopAt | None = None

    @staticmethod
    def applies(view: LayerView, output: torch.Tensor, calls: int, hooked: bool) -> bool:
        """Whether computing one channel per input equals the full layer under ``view``.

        ``output`` is the layer's selected output on the probe's inputs.
        """
        module = view.module
        # A subclass may override forward, and a hook of the user's own on the layer could
        # change its output: such layers run in full. So do layers read through select=, and
        # those whose channel axis (by kind or channel_dim=) is not their own output feature
        # axis (a Linear on (N, T, D) read with channel_dim=1 has the tokens as channels).
        if calls != 1 or hooked or view.select is not None:
            return False
        batch, channel = view.dims(output)
        if type(module) is nn.Linear:
            return batch == 0 and channel == output.dim() - 1
        return (
            type(module) is nn.Conv2d
            and module.groups == 1
            and module.padding_mode == "zeros"
            and (batch, channel) == (0, 1)
        )

    @contextmanager
    def stopping(self) -> Iterator[None]:
        """Keep the hooks that capture the layer's input and stop the pass right there."""
        with Hooks() as hooks:
            # before the stop's hook, which ends the pass before the layer runs
            hooks.forward_pre(self.module, lambda module, args: self._captured.append(args[0]))
            with StopAt({self.module: 1}, before=True) as stop:
                self._stop = stop
                try:
                    yield
                finally:
                    self._stop = None

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(n, 1, *map)``: channel ``channels[i]`` of input ``i``."""
        assert self._stop is not None, "inside stopping() only"
        self._captured.clear()
        self._stop.run(self.model, inputs)
        if not self._captured:
            raise NetlensValueError(
                "Expected every layer the objective reads to run in every forward pass, as in "
                f"the first one, but layer {self.name!r} did not run in this one."
            )
        features = self._captured.pop()
        # detached: the gradient goes to the inputs alone, the parameters keep requires_grad
        weight = self.module.weight.detach()[self.channels]
        bias = self.module.bias.detach()[self.channels] if self.module.bias is not None else None
        if isinstance(self.module, nn.Linear):
            shape = (features.shape[0],) + (1,) * (features.dim() - 2) + (-1,)
            out = (features * weight.view(shape)).sum(-1)
            if bias is not None:
                out = out + bias.view(shape[:-1])
            return out.unsqueeze(1)
        conv = self.module
        count = features.shape[0]
        # channels_last: on CPU a convolution with many groups ran about 3x faster in this
        # layout (LeNet5's conv2, 64 groups; benchmarks/maximize.py).
        grouped: torch.Tensor = _GroupedLayout.apply(features)  # type: ignore[no-untyped-call]
        weight = weight.contiguous(memory_format=torch.channels_last)
        padding: Any = conv.padding  # a tuple of ints or "same" / "valid"
        out = F.conv2d(grouped, weight, bias, conv.stride, padding, conv.dilation, count)
        return out.view(count, 1, *out.shape[2:])


class _GroupedLayout(torch.autograd.Function):
    """``(N, C, H, W)`` features as one channels-last image ``(1, N * C, H, W)``.

    The gradient goes back in the features' own memory layout: a channels-last gradient
    reaching a channels-last max-pool keeps PyTorch's CPU kernels on their fast path, where a
    plain ``reshape`` would hand back a contiguous one and cost two full copies in the pool's
    backward (benchmarks/lucent_compare.py).
    """

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor) -> torch.Tensor:
        ctx.shape = features.shape
        ctx.layout = (
            torch.channels_last
            if features.is_contiguous(memory_format=torch.channels_last)
            and not features.is_contiguous()
            else torch.contiguous_format
        )
        flat = features.reshape(1, -1, *features.shape[2:])
        return flat.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor) -> torch.Tensor:
        return gradient.reshape(ctx.shape).contiguous(memory_format=ctx.layout)
