"""``netlens.atlas``: a browsable microscope of a model, built in one pass over the data.

The build runs in stages, each kept for a rerun (:mod:`netlens._atlas.store`): the one pass over
the data for every layer at once (:mod:`netlens._atlas.collect`), then per layer the deconvnet
projections of its winners and its feature visualisations (:mod:`netlens._atlas.pictures`), then
the site (:mod:`netlens._atlas.site`) of the resulting :class:`~netlens.Atlas`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._core.checks import InputInfo, check_bool, check_gradients_allowed, check_int
from .._core.distributed import Group, rank_of, resolve_group
from .._core.errors import NetlensTypeError, NetlensValueError, describe
from .._core.layers import LayerSpec, check_model, unwrap_parallel
from .._core.model import evaluating, progress_bar
from .._core.outputs import LayerView, Select, layer_views
from .._deconvnet.ranking import RunningTop, Winners
from .._deconvnet.top import DataPass, TopActivations, finish
from .._occlusion.result import OcclusionMap
from .._stats import ChannelStats
from .cards import Atlas, AtlasLayer
from .collect import LayerPass, PassResult, data_pass
from .histogram import Histogram
from .inputs import Occluded, check_inputs, occlude
from .pictures import feature_visualisations, weight_pictures
from .site import clear_layer, slug, write_channels, write_front, write_layer_page
from .store import Store, fingerprint

__all__ = ["atlas"]


def atlas(
    model: nn.Module,
    data: torch.Tensor | Iterable[Any],
    layers: LayerSpec,
    *,
    out: str | os.PathLike[str] | None = None,
    k: int = 9,
    maximize: bool | Sequence[str] = True,
    steps: int = 128,
    diverse: int = 0,
    seed: int = 0,
    inputs_for_occlusion: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    group: Group = None,
    resume: bool = True,
    progress: bool = False,
    select: Select | None = None,
    channel_dim: int | None = None,
) -> Atlas:
    """Build an atlas of ``layers``: what each of their channels responds to, over ``data``.

    One pass over ``data`` gathers, for every channel of every layer at once, its statistics,
    the histogram of its activations and its ``k`` strongest data-set examples; then the
    examples are cut to their receptive fields beside their deconvnet projections (Zeiler &
    Fergus' Figure 2), each layer's channels get a feature visualisation
    (:func:`maximize_activation`, all of a layer's channels in a few batches), and weights that
    make a picture (first-layer filters, a linear unit over the input, a recurrent unit's input
    weights) are kept. With ``out``, the atlas is written as a static site there: an index of
    the layers, a page per layer with all its channels (sortable), and a page per channel at a
    stable address, ``out/<layer>/<channel>.html``; it opens from the file system.

    Histograms count every value in fine bins that do not depend on the data (about 2% of a
    value wide, see :class:`ChannelCard`), so that one pass suffices and shards add up exactly;
    the pictures spread them over 32 bins between each channel's smallest and largest value.

    Layers are read by the layer contract (``select=``, ``channel_dim=``), as every technique
    reads them: a recurrent layer's units are its hidden features, its examples are the
    sequences (their rows up to the strongest step) that drive a unit most. The model runs in
    eval mode and is left exactly as it was.

    Args:
        model: The network.
        data: A tensor of inputs or an iterable of batches (a ``DataLoader``), as for
            :func:`activation_stats`; floating-point inputs.
        layers: The layers, as for :func:`find_layers` (names, globs, classes).
        out: A folder to write the site into (created; a layer's pages are replaced whole);
            ``None`` builds the atlas in memory only.
        k: Data-set examples per channel.
        maximize: Whether to synthesise feature visualisations: for every layer (True), none
            (False) or the layers named in a list (names among ``layers``).
        steps: Optimisation steps of each feature visualisation.
        diverse: Further feature visualisations per channel, pushed apart by
            :func:`netlens.objectives.diversity` (0: none).
        seed: Seed of the feature visualisations (each channel's run is seeded by it and the
            channel, so a channel's picture does not depend on the others).
        inputs_for_occlusion: A few inputs (``(n, *input)``) to give a page each with their
            occlusion maps (Zeiler & Fergus' Figure 7: an occluder of a quarter of each dim,
            moved by half of itself) and their five most probable classes.
        class_names: Names of the model's classes, for those pages.
        group: None, ``"default"`` or a ``torch.distributed`` process group: each rank passes
            over its own shard of the data (shards are numbered as concatenated in rank
            order) and optimises its share of the channels; every rank returns the same atlas
            and rank 0 writes the site.
        resume: With ``out``, reuse the stages an earlier, interrupted build of the same model,
            data size and options finished (kept in ``out/.atlas-state``).
        progress: Show progress bars (needs tqdm).
        select: Which part of each layer's output to read, as for :func:`record`.
        channel_dim: The channel axis, where a layer's kind does not say it (an int, for every
            layer).

    Returns:
        The :class:`Atlas`; ``atlas[layer][channel]`` is a :class:`ChannelCard`.

    Raises:
        NetlensValueError: Fewer than ``k`` inputs, and the errors of :func:`top_activations`
            and :func:`maximize_activation`.
        NetlensTypeError: Arguments of the wrong type.

    Example:
        >>> import torch
        >>> import netlens as nl
        >>> from netlens.models import LeNet5
        >>> model = LeNet5().eval()
        >>> data = torch.utils.data.DataLoader(torch.randn(32, 1, 28, 28), batch_size=16)
        >>> book = nl.atlas(model, data, ["conv1", "conv2"], k=4, steps=4)
        >>> book["conv2"][3].patches.shape  # four 14x14 receptive fields
        torch.Size([4, 1, 14, 14])
    """
    check_model(model)
    k = check_int("k", k)
    steps = check_int("steps", steps)
    diverse = check_int("diverse", diverse, minimum=0)
    seed = check_int("seed", seed, minimum=0)
    resume = check_bool("resume", resume)
    progress = check_bool("progress", progress)
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise NetlensTypeError(
            f"Expected out to be a str, a path or None, but got {describe(out)}."
        )
    folder = None if out is None else Path(out)
    names = None if class_names is None else _check_names(class_names)
    check_gradients_allowed("atlas")
    views = layer_views(model, layers, select=select, channel_dim=channel_dim)
    visualised = _check_maximize(maximize, list(views))
    process_group = resolve_group(group)
    runner = unwrap_parallel(model)
    options = {
        "layers": list(views),
        "k": k,
        "maximize": sorted(visualised),
        "steps": steps,
        "diverse": diverse,
        "seed": seed,
        "select": repr(select),
        "channel_dim": channel_dim,
    }
    store = Store(
        folder,
        fingerprint(runner, options),
        resume=resume,
        writer=rank_of(process_group) == 0,
    )
    seconds: dict[str, float] = {}
    writes = folder is not None and rank_of(process_group) == 0
    model_name, written = type(runner).__name__, 0
    with evaluating(runner):
        result = _pass_stage(runner, views, data, k, progress, process_group, store, seconds)
        built = {}
        for name, view in progress_bar(
            views.items(), enabled=progress and len(views) > 1, desc="atlas: layers"
        ):
            features, more = None, None
            if name in visualised:
                features, more = _features_stage(
                    runner, view, result, steps, diverse, seed, process_group, store, seconds
                )
            if writes:
                assert folder is not None
                clear_layer(folder, name)
            # A large layer is projected a part at a time; with a site, each part's pages are
            # written at once and the part read back mapped from its stage file, so that the
            # layer's patches and projections are never all in memory.
            parts: list[TopActivations] = []
            channels = result.layers[name].stats.num_channels
            for number, start in enumerate(range(0, channels, PART)):
                chunk = range(start, min(start + PART, channels))
                parts.append(
                    _examples_part(
                        runner, view, result, chunk, number, process_group, store, seconds
                    )
                )
                if writes:
                    assert folder is not None
                    started = time.perf_counter()
                    partial = _layer(
                        view, result.layers[name], tuple(parts), features, more, result
                    )
                    written += write_channels(model_name, partial, chunk, folder)
                    seconds["site"] = seconds.get("site", 0.0) + time.perf_counter() - started
                    mapped = store.load(_part_stage(name, number), mapped=True)
                    if mapped is not None:
                        parts[-1] = TopActivations(**mapped)
            result.tops.pop(name, None)  # the winners' inputs: projected, no longer needed
            built[name] = _layer(view, result.layers[name], tuple(parts), features, more, result)
            if writes:
                assert folder is not None
                written += write_layer_page(model_name, built[name], folder)
        occluded = None
        if inputs_for_occlusion is not None:
            chosen = check_inputs(inputs_for_occlusion, result.input_shape)
            occluded = _occlusion_stage(runner, chosen, store, seconds)
    book = Atlas(
        model=model_name,
        samples=result.samples,
        input_shape=result.input_shape,
        k=k,
        layers=built,
        seconds=seconds,
        occluded=occluded,
        class_names=names,
    )
    if not writes:
        return book
    assert folder is not None
    started = time.perf_counter()
    written += write_front(book, folder)
    seconds["site"] = seconds.get("site", 0.0) + time.perf_counter() - started
    return replace(book, out=folder, site_bytes=written)


def _check_maximize(maximize: object, names: list[str]) -> set[str]:
    """The layers to visualise: all, none, or those named (each among the atlas' layers)."""
    if isinstance(maximize, (bool, np.bool_)):
        return set(names) if maximize else set()
    if isinstance(maximize, str) or not isinstance(maximize, Sequence):
        raise NetlensTypeError(
            "Expected maximize to be a bool or a list of layer names, but got "
            f"{describe(maximize)}."
        )
    unknown = [name for name in maximize if name not in names]
    if unknown:
        raise NetlensValueError(
            f"Expected maximize to name layers of the atlas ({names}), but got {unknown}."
        )
    return set(maximize)


def _check_names(class_names: object) -> tuple[str, ...]:
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise NetlensTypeError(
            f"Expected class_names to be a list of str, but got {describe(class_names)}."
        )
    if not all(isinstance(name, str) for name in class_names):
        raise NetlensTypeError(f"Expected class_names to hold str only, but got {class_names!r}.")
    return tuple(class_names)


def _occlusion_stage(
    model: nn.Module, inputs: torch.Tensor, store: Store, seconds: dict[str, float]
) -> Occluded:
    """The chosen inputs' occlusion maps, or what an earlier build kept of them."""
    kept = store.load("occlusion")
    if kept is not None and torch.equal(kept["inputs"], inputs.detach().cpu()):
        return Occluded(OcclusionMap(**kept["occlusion"]), kept["classes"], kept["probabilities"])
    started = time.perf_counter()
    occluded = occlude(model, inputs)
    seconds["occlusion"] = time.perf_counter() - started
    packed = {
        field.name: getattr(occluded.occlusion, field.name)
        for field in dataclasses.fields(occluded.occlusion)
    }
    store.save(
        "occlusion",
        {
            "inputs": inputs.detach().cpu(),
            "occlusion": packed,
            "classes": occluded.classes,
            "probabilities": occluded.probabilities,
        },
    )
    return occluded


def _pass_stage(
    model: nn.Module,
    views: dict[str, LayerView],
    data: object,
    k: int,
    progress: bool,
    group: Any,
    store: Store,
    seconds: dict[str, float],
) -> PassResult:
    """The pass over the data, or what an earlier build kept of it."""
    kept = store.load("pass")
    if kept is not None:
        return _unpacked_pass(kept, views, k)
    started = time.perf_counter()
    result = data_pass(model, views, data, k, progress=progress, group=group)
    seconds["pass"] = time.perf_counter() - started
    store.save("pass", _packed_pass(result))
    return result


#: Channels projected together: a part of a large layer (its patches and projections are in
#: memory at once; 64 of layer4 of a ResNet at 64 px take 54 MiB).
PART = 64


def _part_stage(layer: str, number: int) -> str:
    return f"examples/{_stage_name(layer)}/{number}"


def _examples_part(
    model: nn.Module,
    view: LayerView,
    result: PassResult,
    chunk: range,
    number: int,
    group: Any,
    store: Store,
    seconds: dict[str, float],
) -> TopActivations:
    """Some of a layer's winners cut to their receptive fields, with their projections."""
    stage = _part_stage(view.name, number)
    kept = store.load(stage, mapped=True)  # read where looked at
    if kept is not None:
        return TopActivations(**kept)
    started = time.perf_counter()
    layer = result.layers[view.name]
    winners = _rows(layer.winners, chunk)
    top = finish(model, view, result.tops[view.name], layer.found, winners, True, group)
    seconds["examples"] = seconds.get("examples", 0.0) + time.perf_counter() - started
    store.save(stage, _packed_top(top))
    return top


def _rows(winners: Winners, chunk: range) -> Winners:
    """The winners of the channels ``chunk`` (positions in the layer's channel list)."""
    rows = slice(chunk.start, chunk.stop)
    return dataclasses.replace(
        winners,
        channels=winners.channels[rows],
        values=winners.values[rows],
        indices=winners.indices[rows],
        flat=winners.flat[rows],
        owner=winners.owner[rows],
        slot=winners.slot[rows],
    )


def _features_stage(
    model: nn.Module,
    view: LayerView,
    result: PassResult,
    steps: int,
    diverse: int,
    seed: int,
    group: Any,
    store: Store,
    seconds: dict[str, float],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's feature visualisations, or what an earlier build kept of them."""
    stage = f"features/{_stage_name(view.name)}"
    kept = store.load(stage)
    if kept is not None:
        return kept["features"], kept.get("diverse")
    started = time.perf_counter()
    low, high = result.value_range
    if not high > low:
        low, high = low - 1.0, high + 1.0
    features, more = feature_visualisations(
        model,
        view,
        result.layers[view.name].stats.num_channels,
        result.input_shape,
        steps=steps,
        diverse=diverse,
        value_range=(low, high),
        seed=seed,
        group=group,
    )
    seconds["features"] = seconds.get("features", 0.0) + time.perf_counter() - started
    store.save(stage, {"features": features} | ({} if more is None else {"diverse": more}))
    return features, more


def _layer(
    view: LayerView,
    layer: LayerPass,
    parts: tuple[TopActivations, ...],
    features: torch.Tensor | None,
    more: torch.Tensor | None,
    result: PassResult,
) -> AtlasLayer:
    module = view.module
    return AtlasLayer(
        name=view.name,
        kind=type(module).__name__,
        output_shape=layer.output_shape,
        parameters=sum(parameter.numel() for parameter in module.parameters()),
        stats=layer.stats,
        histogram=layer.histogram,
        parts=parts,
        features=features,
        diverse=more,
        weights=weight_pictures(module, result.input_shape),
        saturated=layer.saturated,
    )


def _stage_name(layer: str) -> str:
    return slug(layer)


# -- what the store keeps: plain tensors, numbers and strings ----------------------------------


def _packed_top(top: TopActivations) -> dict[str, Any]:
    return {
        "layer": top.layer,
        "channels": top.channels,
        "activations": top.activations,
        "indices": top.indices,
        "positions": top.positions,
        "boxes": top.boxes,
        "patches": top.patches,
        "projections": top.projections,
        "samples": top.samples,
    }


def _packed_pass(result: PassResult) -> dict[str, Any]:
    return {
        "samples": result.samples,
        "input_shape": list(result.input_shape),
        "value_range": list(result.value_range),
        "layers": {
            name: {
                "stats": {
                    field: getattr(layer.stats, field)
                    for field in (
                        "channels",
                        "mean",
                        "std",
                        "min",
                        "max",
                        "zero_fraction",
                        "count",
                        "nan_count",
                        "inf_count",
                    )
                },
                "histogram": layer.histogram.counts,
                "saturated": layer.saturated,
                "output_shape": list(layer.output_shape),
                "winners": _plain(layer.winners),
                "found": _plain(layer.found),
                "top": _packed_running(result.tops[name]),
            }
            for name, layer in result.layers.items()
        },
    }


def _plain(value: Any) -> dict[str, Any]:
    """A dataclass as a dict of its fields (tuples as lists, an InputInfo as a dict)."""
    packed = {}
    for field in dataclasses.fields(value):
        item = getattr(value, field.name)
        if isinstance(item, InputInfo):
            item = {"device": str(item.device), "dtype": item.dtype}
        elif isinstance(item, tuple):
            item = list(item)
        packed[field.name] = item
    return packed


def _packed_running(top: RunningTop) -> dict[str, Any]:
    keys = sorted(top.kept)
    return {
        "seen": top.seen,
        "channels": top.channels,
        "sample_shape": list(top.sample_shape),
        "map_shape": list(top.map_shape),
        "values": top.values,
        "indices": top.indices,
        "flat": top.flat,
        "kept_keys": keys,
        "kept": [top.kept[key] for key in keys],
    }


def _unpacked_running(name: str, k: int, saved: dict[str, Any]) -> RunningTop:
    top = RunningTop(name, k, None)
    top.seen, top.channels = saved["seen"], saved["channels"]
    top.sample_shape, top.map_shape = tuple(saved["sample_shape"]), tuple(saved["map_shape"])
    top.values, top.indices, top.flat = saved["values"], saved["indices"], saved["flat"]
    top.kept = dict(zip(saved["kept_keys"], saved["kept"], strict=True))
    return top


def _unpacked_pass(kept: dict[str, Any], views: dict[str, LayerView], k: int) -> PassResult:
    """A pass read back, with what projecting its winners needs."""
    layers, tops = {}, {}
    for name in views:
        saved = kept["layers"][name]
        winners = dict(saved["winners"])
        for key in ("sample_shape", "map_shape"):
            winners[key] = tuple(winners[key])
        found = dict(saved["found"])
        if found["info"] is not None:
            info = found["info"]
            found["info"] = InputInfo(torch.device(info["device"]), info["dtype"])
        layers[name] = LayerPass(
            stats=ChannelStats(**saved["stats"], layer=name),
            histogram=Histogram(saved["histogram"]),
            saturated=saved["saturated"],
            winners=Winners(**winners),
            found=DataPass(**found),
            output_shape=tuple(saved["output_shape"]),
        )
        tops[name] = _unpacked_running(name, k, saved["top"])
    return PassResult(
        layers,
        tops,
        kept["samples"],
        tuple(kept["input_shape"]),
        (float(kept["value_range"][0]), float(kept["value_range"][1])),
    )
