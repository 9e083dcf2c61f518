"""The strongest activations of channels over a data set, with their projections and patches.

One pass over the data keeps a running top-k per channel (:mod:`netlens._deconvnet.ranking`,
which also merges the candidates of several ranks); then the kept activations are projected
with the deconvnet (:mod:`netlens._deconvnet.project`) and cut to their receptive fields
(:mod:`netlens._deconvnet.receptive`): the paper's Figure 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .._core.checks import (
    InputInfo,
    batches,
    check_bool,
    check_channels,
    check_gradients_allowed,
    check_int,
    prepare_inputs,
)
from .._core.distributed import (
    Group,
    gather,
    rank_of,
    resolve_group,
    same_group,
    sum_over_ranks,
)
from .._core.errors import NetlensTypeError, NetlensValueError, describe
from .._core.hooks import Hooks
from .._core.layers import LayerSpec, check_model, unwrap_parallel
from .._core.model import batched_inputs, evaluating, model_dtype_device, progress_bar
from .._core.outputs import LayerView, Select, layer_view
from .._core.render import Plottable, display, figure_axes, grid, set_title
from .._core.stop import counting_calls, run_until
from .._record import Recorder
from .project import Seeds, project, recorded, unravel
from .ranking import RunningTop, Winners, merge_shards, ranked, shard_of
from .receptive import crop, receptive_fields, sweep
from .rules import tensors_of, warn_nonlinear

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["DataPass", "Observer", "TopActivations", "finish", "search", "top_activations"]

# Memory that one chunk of projections, or of receptive-field probes, may take (estimated from
# the size of the module outputs up to the layer), and the most inputs in one chunk.
_WORKING_BYTES = 64 * 2**20
_MOST_PER_CHUNK = 256


# -- the pass over the data ----------------------------------------------------------------------


@dataclass
class DataPass:
    """What the pass over one rank's data found about a layer, besides its running top."""

    calls: int = 1  # how many times the layer runs per forward pass
    info: InputInfo | None = None  # where the data came from, None without data
    dtype: torch.dtype = torch.float32  # the dtype the model runs in
    elements: int = 1  # per input, the elements of the module outputs up to the layer


#: Called for each layer and batch of a :func:`search` with the layer's name, the inputs as given
#: and the layer's output for them arranged ``(N, C, *map)``.
Observer = Callable[[str, torch.Tensor, torch.Tensor], None]


def search(
    model: nn.Module,
    views: Mapping[str, LayerView],
    data: object,
    tops: Mapping[str, RunningTop],
    progress: bool,
    *,
    observe: Observer | None = None,
    desc: str = "top activations",
) -> dict[str, DataPass]:
    """One pass over ``data`` into each layer's running top (and ``observe``), all layers at once.

    Each forward pass stops after the last call of the deepest of the layers.
    """
    found = {name: DataPass() for name in views}
    recorder = Recorder(model, dict(views), detach=True, device=None)
    stops: dict[nn.Module, int] = {}
    with torch.no_grad():
        for batch in progress_bar(batches(data), enabled=progress, desc=desc):
            prepared, batch_info = prepare_inputs(batch, model, name="data")
            if not stops:
                with batched_inputs(model, tuple(prepared.shape)):
                    counted = _count_calls(model, views, prepared)
                for name, view in views.items():
                    calls, elements = counted[name]
                    found[name] = DataPass(calls, batch_info, prepared.dtype, elements)
                    stops[view.module] = max(stops.get(view.module, 1), calls)
            with recorder:
                run_until(model, stops, prepared)
            # Patches show the inputs as given: kept in their own dtype, not the model's.
            given = batch.detach().to(prepared.device, batch_info.dtype)
            for name, view in views.items():
                output = view.arrange(recorded(recorder, name), prepared.shape[0])
                tops[name].update(given, output)
                if observe is not None:
                    observe(name, given, output)
                del output
            # the layers' outputs must not live on through the next batch's forward pass
            recorder.clear()
            del prepared, given
    return found


def _count_calls(
    model: nn.Module, views: Mapping[str, LayerView], inputs: torch.Tensor
) -> dict[str, tuple[int, int]]:
    """Per layer, how often it runs per forward pass and the elements of module outputs up to it.

    The whole model runs once on the first input alone (on the whole batch where it fails on
    one input): later passes stop after the layers' last calls, and the elements (per input)
    size the chunks of projections.
    """
    try:
        return _counted_pass(model, views, inputs[:1])
    except Exception:
        if inputs.shape[0] == 1:
            raise
        return _counted_pass(model, views, inputs)  # a model that needs several inputs


def _counted_pass(
    model: nn.Module, views: Mapping[str, LayerView], inputs: torch.Tensor
) -> dict[str, tuple[int, int]]:
    total = 0
    at_layer: dict[nn.Module, int] = {}

    def count(module: nn.Module, args: Any, output: Any) -> None:
        nonlocal total
        total += sum(tensor.numel() for tensor in tensors_of(output))

    def at_call(module: nn.Module, args: Any, output: Any) -> None:
        at_layer[module] = total

    modules = [view.module for view in views.values()]
    with Hooks() as hooks, counting_calls(modules) as calls:
        for module in model.modules():
            if next(module.children(), None) is None:
                hooks.forward(module, count)
        for module in dict.fromkeys(modules):
            hooks.forward(module, at_call)
        model(inputs)
    return {
        name: (max(1, calls[view.module]), max(1, at_layer.get(view.module, 0) // inputs.shape[0]))
        for name, view in views.items()
    }


# -- projections, receptive fields, patches ------------------------------------------------------


class _UpTo(nn.Module):
    """A model run only until the last call of one of its layers: all a projection needs.

    It shares the model's submodules, parameters and buffers (nothing is copied, and the layers
    keep their names in messages) without being part of the model. Its ``forward`` runs the
    model and stops after the layer, so nothing past the layer is computed or kept for the
    backward pass.
    """

    def __init__(self, model: nn.Module, layer: nn.Module, calls: int) -> None:
        super().__init__()
        # Through __dict__: nn.Module.__setattr__ would register them, in the model's dicts.
        self.__dict__.update(
            _modules=model._modules,
            _parameters=model._parameters,
            _buffers=model._buffers,
            _target=(model, layer, calls),
        )

    def forward(self, inputs: torch.Tensor) -> None:
        """Run the model on ``inputs`` up to the layer."""
        model, layer, calls = self.__dict__["_target"]
        run_until(model, {layer: calls}, inputs)


def _per_chunk(elements: int, dtype: torch.dtype, copies: int) -> int:
    """Inputs per chunk when each keeps about ``copies`` of the module outputs up to the layer."""
    per_input = copies * elements * torch.empty((), dtype=dtype).element_size()
    return max(1, min(_MOST_PER_CHUNK, _WORKING_BYTES // max(1, per_input)))


def _project_and_cut(
    model: nn.Module,
    view: LayerView,
    found: DataPass,
    top: RunningTop,
    wanted: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    boxes: list[list[list[int]]],
    size: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches and cut-out deconvnet projections of kept activations, a chunk at a time.

    ``wanted`` holds, per activation, the input's index in this rank's data, the channel and
    the position in the map. Only one chunk of whole inputs and projections exists at a time.
    """
    indices, channel_index, positions = wanted
    upto = _UpTo(model, view.module, found.calls)
    # the forward pass keeps the module outputs for the backward pass, the rectifier copies
    # some, and the backward pass makes gradients of them
    chunk = _per_chunk(found.elements, found.dtype, copies=4)
    device = positions.device
    # Allocated before the loop, so that every allocation inside it is freed by its end:
    # results allocated in between would pin the allocator's freed memory to the process.
    assert found.info is not None
    count = indices.shape[0]
    patches = torch.zeros((count, *size), dtype=found.info.dtype, device=device)
    projections = torch.zeros((count, *size), dtype=found.dtype, device=device)
    labels: list[str] = []
    for start in range(0, count, chunk):
        part = slice(start, start + chunk)
        images = top.images_of(indices[part])
        seeds = Seeds(channel_index[None, part].to(device), positions[None, part].to(device))
        projected, _, _, found_labels = project(
            upto, view, images.to(device, found.dtype), seeds, "deconvnet", "activation"
        )
        patches[part] = crop(images, boxes[part], size)
        projections[part] = crop(projected[0], boxes[part], size)
        labels += [label for label in found_labels if label not in labels]
        del images, projected
    warn_nonlinear(labels, view.name, "deconvnet")
    return patches, projections


def finish(
    model: nn.Module,
    view: LayerView,
    top: RunningTop,
    found: DataPass,
    winners: Winners,
    listed: bool,
    group: Any,
) -> TopActivations:
    """Receptive fields, patches and projections of the winners, gathered from their ranks."""
    count, k = winners.values.shape
    dtype, device = model_dtype_device(model)
    if found.info is None:  # no data on this rank
        found = replace(found, info=InputInfo(device or torch.device("cpu"), winners.values.dtype))
        found.dtype = dtype or torch.float32
    assert found.info is not None
    device = device or found.info.device
    channels = torch.tensor(winners.channels)
    positions = unravel(winners.flat.reshape(-1), winners.map_shape)  # (C * k, d)
    where = (winners.owner.reshape(-1) == rank_of(group)).nonzero()[:, 0]
    rows, slots = where // k, winners.slot.reshape(-1)[where]
    # the winners may be some of the running top's channels (the atlas projects a large layer
    # in parts): their rows there, by channel
    if top.channels is not None and top.channels.shape[0] != count:
        row_of = {channel: row for row, channel in enumerate(top.channels.tolist())}
        top_rows = torch.tensor([row_of[channel] for channel in channels[rows].tolist()])
    else:
        top_rows = rows
    local = top.indices.cpu()[top_rows, slots] if where.numel() else where
    if local.numel():
        sample = top.images_of(local[:1])
    elif top.kept:
        sample = next(iter(top.kept.values()))[None]
    else:
        sample = torch.zeros((1, *winners.sample_shape), device=device)
    # Sweeping each map dimension through the centre finds the largest receptive field inside
    # the input (the patch size), even when every top activation sits at a border.
    swept = sweep(winners.map_shape, torch.device("cpu"))
    keys = torch.cat(
        [
            torch.cat([channels[rows, None], positions[where]], dim=1),
            torch.cat([channels[:1].expand(swept.shape[0], 1), swept], dim=1),
        ]
    )
    boxes = receptive_fields(
        model,
        view,
        sample.to(device, found.dtype),
        keys,
        found.calls,
        rows=_per_chunk(found.elements, torch.float64, copies=3),
    )
    extent = (boxes[:, :, 1] - boxes[:, :, 0]).amax(dim=0).tolist()
    # Every rank cuts its patches to the same size: the largest extent that any rank found.
    size = tuple(max(column) for column in zip(*gather(extent, group), strict=True))
    boxes = boxes[: where.shape[0]]
    patches, projections = _project_and_cut(
        model,
        view,
        found,
        top,
        (local, channels[rows], positions[where].to(device)),
        boxes.tolist(),
        size,
    )
    if group is None:  # this rank holds every winner, in order
        every_box, every_patch, every_projection = boxes, patches, projections
    else:
        # Each rank fills the rows of the winners it holds and leaves the others zero; a sum
        # over the ranks then gives every rank every row, in place: nothing is pickled, and no
        # rank holds more than the result (the rows of a large layer's patches and projections
        # are hundreds of megabytes). Adding zeros is exact.
        every_box = torch.zeros((count * k, *boxes.shape[1:]), dtype=torch.long)
        every_box[where] = boxes
        every_patch = torch.zeros((count * k, *size), dtype=found.info.dtype, device=device)
        every_patch[where.to(device)] = patches.to(every_patch)
        every_projection = torch.zeros((count * k, *size), dtype=found.dtype, device=device)
        every_projection[where.to(device)] = projections.to(every_projection)
        del patches, projections
        for tensor in (every_box, every_patch, every_projection):
            sum_over_ranks(tensor, group)
    restore = found.info.restore

    def per_channel(flat: torch.Tensor) -> torch.Tensor:
        # (C * k, ...) -> (C, k, ...): kept for a list of channels, dropped for one int channel
        tensor = flat.reshape(count, k, *flat.shape[1:])
        return restore(tensor if listed else tensor[0])

    return TopActivations(
        layer=view.name,
        channels=channels,
        activations=per_channel(winners.values.reshape(-1)),
        indices=per_channel(winners.indices.reshape(-1)),
        positions=per_channel(positions),
        boxes=per_channel(every_box),
        patches=per_channel(every_patch),
        projections=per_channel(every_projection),
        samples=winners.samples,
        _reduced_over=group,
        _select=_describe_select(view.select),
        _channel_dim=view.channel_dim,
    )


def _describe_select(select: object) -> str:
    """``select=`` as results compare it across shards and processes (so not by identity)."""
    if select is None:
        return "the default rule"
    if not callable(select):
        return repr(select)
    name = getattr(select, "__qualname__", None) or type(select).__qualname__
    module = getattr(select, "__module__", None) or type(select).__module__
    code = getattr(select, "__code__", None)
    line = f", line {code.co_firstlineno}" if code is not None else ""
    return f"{name} ({module}{line})"


# -- the public function -------------------------------------------------------------------------


def top_activations(
    model: nn.Module,
    data: torch.Tensor | Iterable[Any],
    layer: LayerSpec,
    *,
    channels: int | Sequence[int] | torch.Tensor | None = None,
    k: int = 9,
    progress: bool = False,
    select: Select | None = None,
    channel_dim: int | None = None,
    group: Group = None,
) -> TopActivations:
    """Find the k strongest activations of each channel over a data set and project them.

    One pass over ``data`` keeps, per channel, the ``k`` inputs with the largest value of the
    channel's map (one entry per input, at its strongest location) in a running top-k; memory
    grows with ``channels x k``, not with the data. Equal values are ordered by the inputs'
    index in the data. Then the receptive field of each of those activations is computed (the
    input elements it depends on: from the geometry of the layers on the way, or by a gradient
    probe of one input where the path holds operations of unknown geometry) and both the input
    patch under it and the deconvnet projection of the activation are cut out: the paper's
    Figure 2, drawn by :meth:`TopActivations.plot`. Only the first forward pass runs the model
    past the layer (to count the layer's calls); projections and probes stop at it.

    The layer is read as :func:`deconvnet` reads it (``select=``, ``channel_dim=``, the batch
    axis from the module), and the model runs in eval mode as there, its parameters left alone
    (gradients go to the inputs only). A model wrapped in ``DistributedDataParallel`` or
    ``DataParallel`` runs as the model it wraps.

    With ``group``, each rank of a ``torch.distributed`` process group passes over its own
    shard of the data and the ranks combine their candidates before projecting: every rank
    returns the same result, equal to one pass over the shards concatenated in rank order
    (``indices`` count in that concatenation). Each rank projects the winners from its shard;
    their patches and projections travel to the other ranks.

    Args:
        model: The network.
        data: A tensor of inputs, or an iterable of batches (a ``DataLoader``): tensors or
            ``(inputs, targets, ...)`` tuples, floating-point. They run on the model's device
            and in its dtype; the results come back on the device and in the dtype of the
            first batch.
        layer: One layer, as for :func:`deconvnet`.
        channels: A channel, or a list of them; by default all channels of the layer.
        k: How many activations to keep per channel.
        progress: Show a progress bar over the batches (needs tqdm).
        select: Which part of the layer's output to read, as for :func:`record`.
        channel_dim: The channel axis of the layer's output, where the module's kind does not
            say it.
        group: None (this process's data alone), ``"default"`` (the initialised default
            process group) or a ``torch.distributed`` process group to combine over. Every
            rank of the group calls ``top_activations`` with the same arguments and its own
            data; a rank may have none.

    Returns:
        The :class:`TopActivations`.

    Raises:
        NetlensValueError: Fewer than ``k`` inputs in ``data`` (in all shards together, with
            ``group``), inputs of varying shapes, and the errors of :func:`deconvnet`. With
            ``group``, an error in one rank's pass is raised on every rank.
        NetlensTypeError: ``data`` that is neither a tensor nor an iterable of batches, or
            batches that are not floating-point tensors.

    Example:
        >>> import torch
        >>> import netlens as nl
        >>> from netlens.models import LeNet5
        >>> model = LeNet5().eval()
        >>> loader = torch.utils.data.DataLoader(torch.randn(40, 1, 28, 28), batch_size=16)
        >>> top = nl.top_activations(model, loader, "conv2", channels=[3, 5], k=4)
        >>> top.activations.shape, top.patches.shape  # 14x14 receptive fields
        (torch.Size([2, 4]), torch.Size([2, 4, 1, 14, 14]))
        >>> nl.top_activations(model, loader, "conv2", channels=3, k=4).patches.shape
        torch.Size([4, 1, 14, 14])
    """
    check_model(model)
    progress = check_bool("progress", progress)
    view = layer_view(model, layer, select=select, channel_dim=channel_dim)
    runner = unwrap_parallel(model)
    wanted, listed = (None, True) if channels is None else check_channels("channels", channels)
    k = check_int("k", k)
    process_group = resolve_group(group)
    check_gradients_allowed("top_activations")
    top = RunningTop(view.name, k, wanted)
    with evaluating(runner):
        found, failure = DataPass(), None
        try:
            found = search(runner, {view.name: view}, data, {view.name: top}, progress)[view.name]
        except Exception as error:
            if process_group is None:
                raise
            failure = error  # raised after every rank has reported, so that none waits
        shards = gather(shard_of(top, failure), process_group)
        if failure is not None:
            raise failure
        for rank, shard in enumerate(shards):
            if shard.failure is not None:
                raise NetlensValueError(
                    "Expected every rank of the group to pass over its data, but rank "
                    f"{rank} raised {shard.failure}"
                )
        winners = merge_shards(shards, k)
        return finish(runner, view, top, found, winners, listed, process_group)


# -- the result ------------------------------------------------------------------------------------

# What a result records as its group when it was merged with an all-reduced result, or when it
# was all-reduced in another process (a process group does not pickle): all_reduce refuses it.
_MIXED = "merged with an all-reduced result"
_ELSEWHERE = "all-reduced in another process"


@dataclass(frozen=True, eq=False)
class TopActivations(Plottable):
    """The strongest activations of channels over a data set, from :func:`top_activations`.

    For each channel, the ``k`` inputs on which it responded most (its largest value over the
    map, one entry per input), strongest first and equal values by index, with the input patch
    under the receptive field of that activation and the deconvnet projection of the
    activation, cut out the same way. For a list of channels (or all of them) every field but
    ``channels`` starts with a channel dimension ``C``; for one int channel it has none.
    Tensors are on the device of the data, and floating ones in its dtype.

    Results over shards of a data set combine exactly (:meth:`merge`, :meth:`all_reduce`): the
    candidates' patches and projections travel with them.

    Attributes:
        layer: The layer's name.
        channels: The channels, a 1-D tensor (one entry for an int channel).
        activations: The activation values, ``(C, k)``, strongest first.
        indices: Each input's index in the data, counted in iteration order (over shards: in
            the shards concatenated, see :meth:`merge`), ``(C, k)``.
        positions: Each activation's position in the channel's map (the layer's output without
            its batch and channel axes), ``(C, k, d)``.
        boxes: The receptive field of each activation in its input, ``[start, stop)`` for each
            input dimension after the batch one, clipped to the input, ``(C, k, n, 2)``.
        patches: The inputs under the receptive fields, ``(C, k, *patch)``, ``patch`` being
            the extent of the largest receptive field inside the input; where a receptive
            field reaches past the input's border the patch is zero (as zero padding is).
        projections: The deconvnet projections, cut out and padded like ``patches``.
        samples: How many inputs the data held (over shards: all of them).
    """

    layer: str
    channels: torch.Tensor
    activations: torch.Tensor
    indices: torch.Tensor
    positions: torch.Tensor
    boxes: torch.Tensor
    patches: torch.Tensor
    projections: torch.Tensor
    samples: int
    # The process group this result was reduced over (None: one shard's result).
    _reduced_over: Any = field(default=None, repr=False)
    # How the layer's output was read: select= (described) and the channel axis.
    _select: str = field(default="the default rule", repr=False)
    _channel_dim: int | None = field(default=None, repr=False)

    _PER_CANDIDATE = ("activations", "indices", "positions", "boxes", "patches", "projections")

    def merge(self, other: TopActivations) -> TopActivations:
        """The result over this result's data followed by ``other``'s, as one pass would give.

        ``other``'s indices count on after this result's ``samples``; equal values keep the
        smaller index, so ``a.merge(b)`` prefers ``a``'s inputs. Patches and projections come
        with their candidates. Neither result changes.

        Results in different floating dtypes (shards of float16 and float32 data) are ranked
        and returned in the wider dtype (``torch.promote_types``), whichever comes first: no
        candidate is rounded, so ``a.merge(b)`` and ``b.merge(a)`` rank alike.

        Args:
            other: The result for another shard: same layer, channels given the same way (one
                int, or a list), same ``select=`` and ``channel_dim=``, ``k`` and patch size.

        Returns:
            The merged :class:`TopActivations`, on this result's device.

        Raises:
            NetlensTypeError: ``other`` is not a ``TopActivations``.
            NetlensValueError: The results differ in any of the above; the message names what
                differs.

        Example:
            >>> import torch
            >>> import netlens as nl
            >>> from netlens.models import LeNet5
            >>> model, data = LeNet5().eval(), torch.randn(30, 1, 28, 28)
            >>> def top(part):
            ...     return nl.top_activations(model, part, "conv1", channels=[0, 7], k=3)
            >>> merged = top(data[:10]).merge(top(data[10:]))
            >>> whole = top(data)
            >>> torch.equal(merged.indices, whole.indices), merged.samples
            (True, 30)
        """
        if not isinstance(other, TopActivations):
            raise NetlensTypeError(
                f"Expected a TopActivations to merge, but got {describe(other)}."
            )
        mine, theirs = self._described(), other._described()
        for what, value in mine.items():
            if value != theirs[what]:
                raise NetlensValueError(
                    f"Expected a result with the same {what} to merge, but this one has {value} "
                    f"and the other {theirs[what]}."
                )
        single = self.activations.dim() == 1
        k = self.activations.shape[-1]

        def both(name: str) -> torch.Tensor:
            first, second = getattr(self, name), getattr(other, name).to(self.activations.device)
            if name == "indices":
                second = second + self.samples
            if name in ("activations", "patches", "projections"):
                # the wider dtype: a float16 shard must not round float32 candidates to ties
                wider = torch.promote_types(first.dtype, second.dtype)
                first, second = first.to(wider), second.to(wider)
            joined = torch.cat([first, second], dim=0 if single else 1)
            return joined.unsqueeze(0) if single else joined

        values, indices = both("activations"), both("indices")
        order = ranked(values, indices, k)
        merged: dict[str, torch.Tensor] = {}
        for name in self._PER_CANDIDATE:
            joined = (
                values if name == "activations" else indices if name == "indices" else both(name)
            )
            index = order.reshape(*order.shape, *[1] * (joined.dim() - 2)).expand(
                *order.shape, *joined.shape[2:]
            )
            picked = joined.gather(1, index)
            merged[name] = picked[0] if single else picked
        reduced = self._reduced_over is not None or other._reduced_over is not None
        return TopActivations(
            layer=self.layer,
            channels=self.channels,
            samples=self.samples + other.samples,
            _reduced_over=_MIXED if reduced else None,
            _select=self._select,
            _channel_dim=self._channel_dim,
            **merged,
        )

    def all_reduce(self, group: Group = None) -> TopActivations:
        """The result over the data of every rank of a ``torch.distributed`` group, on every rank.

        Every rank passes its own result; each gathers all of them and merges them in rank
        order (:meth:`merge`), so every rank returns the same result, equal to one pass over
        the ranks' data concatenated in rank order. Patches and projections travel with the
        candidates. This result does not change.

        Calling it again on the result over the same group returns that result unchanged (no
        communication): it already holds every rank's data. A result reduced over another
        group, or merged with a reduced result, is refused, since its data would be counted
        once per rank.

        Args:
            group: A process group, or ``"default"`` or None for the default group.

        Returns:
            The reduced :class:`TopActivations`, on this result's device.

        Raises:
            NetlensValueError: torch.distributed is not initialised, the result is already
                reduced over another group, or the ranks' results do not merge.
        """
        process_group = resolve_group(group, default=True)
        if same_group(self._reduced_over, process_group):
            return self
        if self._reduced_over is not None:
            raise NetlensValueError(
                "Expected the result of one rank's data to all_reduce, but this result already "
                "holds data of other ranks (it was all-reduced over another group, or merged "
                "with an all-reduced result): reducing it again would count that data once per "
                "rank."
            )
        device = self.activations.device
        parts = gather(self._on(torch.device("cpu")), process_group)
        merged: TopActivations = parts[0]
        for part in parts[1:]:
            merged = merged.merge(part)
        return replace(merged._on(device), _reduced_over=process_group)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if state["_reduced_over"] is not None and not isinstance(state["_reduced_over"], str):
            state["_reduced_over"] = _ELSEWHERE
        return state

    def _on(self, device: torch.device) -> TopActivations:
        moved = {name: getattr(self, name).to(device) for name in self._PER_CANDIDATE}
        return replace(self, _reduced_over=None, **moved)

    def _described(self) -> dict[str, object]:
        return {
            "layer": self.layer,
            "channel form": "one int channel"
            if self.activations.dim() == 1
            else "a list of channels",
            "select": self._select,
            "channel_dim": self._channel_dim,
            "channels": self.channels.tolist(),
            "k": self.activations.shape[-1],
            "patch size": tuple(self.patches.shape[self.activations.dim() :]),
            "input dims": self.boxes.shape[-2],
        }

    def __repr__(self) -> str:
        return (
            f"TopActivations(layer={self.layer!r}, channels={self.channels.tolist()}, "
            f"k={self.activations.shape[-1]}, patches={tuple(self.patches.shape)})"
        )

    def plot(self, ax: Axes | None = None, *, ncols: int | None = None) -> tuple[Figure, Axes]:
        """Draw the paper's Figure 2: per channel, the projections beside the input patches.

        Each channel is a block: a square grid of its ``k`` projections (strongest first, row
        by row; each scaled on its own and centred, zero mid-grey) on the left and the grid of
        the matching input patches on the right, all patches on one common value range.

        Args:
            ax: Draw on this ``Axes``; by default on a new ``Figure``.
            ncols: Channel blocks per row; by default about the square root of half the
                number of channels (blocks are twice as wide as high).

        Returns:
            The ``(Figure, Axes)`` drawn on.
        """
        # One int channel has no channel dimension: (k,) activations.
        single = self.activations.dim() == 1
        projections_all = self.projections.unsqueeze(0) if single else self.projections
        patches_all = self.patches.unsqueeze(0) if single else self.patches
        count, k = projections_all.shape[:2]
        side = math.ceil(math.sqrt(k))
        ncols = max(1, min(count, ncols or round(math.sqrt(count / 2)) or 1))
        # Patches are inputs: one range for all, so that they compare as the inputs do.
        span = (float(patches_all.min()), float(patches_all.max()))
        tile_height, tile_width = display(patches_all[0, 0], centred=False).shape[:2]
        band, gap = max(3, tile_height // 2), max(2, tile_width // 2)
        blocks = []
        for channel in range(count):
            projections = grid([display(p, centred=True) for p in projections_all[channel]], side)
            patches = grid(
                [display(p, centred=False, value_range=span) for p in patches_all[channel]], side
            )
            spacer = np.ones((projections.shape[0], max(2, tile_width // 3), 3))
            label = np.ones((band, 2 * projections.shape[1] + spacer.shape[1], 3))
            side_by_side = np.concatenate([projections, spacer, patches], axis=1)
            blocks.append(np.concatenate([label, side_by_side], axis=0))
        block_height, block_width = blocks[0].shape[:2]
        title = f"top-{k} activations of layer {self.layer!r}"
        fig, ax = figure_axes(
            ax,
            width=0.45 * ncols * (2 * side + 1) + 0.5,
            height=0.5 * math.ceil(count / ncols) * (side + 0.6) + 0.6,
            title=(title, "medium"),
        )
        ax.imshow(grid(blocks, ncols, gap=gap), interpolation="nearest")
        for channel in range(count):
            row, column = divmod(channel, ncols)
            x, y = column * (block_width + gap), row * (block_height + gap) + band - 1
            ax.text(x, y, f"channel {int(self.channels[channel])}", fontsize="small", va="bottom")
        ax.set_axis_off()
        set_title(ax, title, fontsize="medium")
        return fig, ax
