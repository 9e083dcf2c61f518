"""Occlusion sensitivity (Zeiler & Fergus 2014): slide a patch over the input, watch the output.

:func:`occlusion` runs by stage, one module each: the arguments are checked into a job
(``job``; where the occluder goes: ``geometry``), a path computes every occluded copy (``choose``:
the plain path, ``plain``, or incremental inference, ``incremental``) into a tally of every
position (``tally``), and the result is built from it (``result``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from .._core.layers import LayerSpec
from .._core.outputs import Select
from .choose import run_job
from .job import Baseline, Scores, Target, check_job
from .result import OcclusionMap, occlusion_map

__all__ = ["OcclusionMap", "occlusion"]


def occlusion(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    window: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    baseline: Baseline = 0.0,
    target: Target = "pred",
    scores: Scores = "softmax",
    layer: LayerSpec | None = None,
    channel: int | Sequence[int] | torch.Tensor | None = None,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    incremental: bool | Literal["auto"] = "auto",
    progress: bool = False,
    select: Select | None = None,
    channel_dim: int | None = None,
) -> OcclusionMap:
    """Slide a baseline patch over each input and record how the model's output changes.

    As in Zeiler & Fergus (2014): for every position of the occluder it records the score of
    the target class, the most probable class and, with ``layer``, the summed activation of one
    channel; and it spreads the drops of the target score back over the input (``.attribution``,
    the quantity of ``captum.attr.Occlusion`` with the channel dim inside its window).

    Args:
        model: A classifier returning ``(N, classes)``, or any model with ``scores``.
        inputs: ``(N, ...)`` inputs with their batch dim: floating point and finite, or integer
            (token ids) with an integer ``baseline``.
        window: The occluder's size over the last ``len(window)`` dims; an int means the same
            size over every dim after dim 1 (the channel dim of images).
        stride: Step between positions, an int or one per window dim; default ``window`` (no
            overlap).
        baseline: The occluder's value: a number, ``"mean"`` (each input's own mean) or a tensor
            broadcastable to ``inputs``; for integer inputs an int (a [MASK] token id) or an
            integer tensor.
        target: The class to track: ``"pred"`` (the class predicted on each unoccluded input),
            an int, or one int per input.
        scores: ``"softmax"`` (probabilities), ``"logits"`` (the output as is) or a callable
            from the model's output to ``(N, classes)`` scores.
        layer: A layer spec (see :func:`find_layers`) naming one layer whose channel activation
            is recorded: its output (see ``select``) summed over everything but the batch and
            channel axes; its latest call per forward pass counts.
        channel: The channel to track, an int, or a list of channels (see
            :attr:`OcclusionMap.feature_activation`); by default, for each input, the channel
            with the largest summed activation on the unoccluded input, as in the paper.
        batch_size: Occluded copies per forward pass; default: as many as fit in
            ``memory_budget``.
        memory_budget: Bytes that one forward pass may take, counting the copies and the
            outputs of every module of the model on them (with incremental inference: the kept
            activations of the unoccluded inputs, and the boxes and windows each copy
            computes), when ``batch_size`` is not given. Default (None): 48 MiB on the CPU
            (passes whose activations stay near the caches run faster than bigger ones), 1 GiB
            on other devices.
        incremental: ``"auto"`` (default): incremental inference where the model allows it
            and it pays (it needs at most 80% of the plain path's multiply-adds, and those are
            at least 10**9: below, tracing costs about what it saves); else every copy through
            the whole model. ``True``: incremental inference, or a
            :class:`~netlens.NetlensValueError` that names the module or operation that prevents
            it (integer inputs, a model torch.fx cannot trace, a module with hooks, a first
            layer it does not know, a forward pass with side effects). ``False``: every occluded
            copy through the whole model.
        progress: Show a progress bar over the forward passes after the first (needs tqdm).
        select: Which part of the layer's output to read, when it returns several: an index, a
            key or a callable (see :func:`record`). By default a tuple or list gives its first
            tensor, a mapping its first tensor value, a ``PackedSequence`` its padded tensor.
        channel_dim: The channel axis of the layer's output, when its module's kind does not
            say it (``-1`` for channels-last stages); default by the module's kind.

    Returns:
        An :class:`OcclusionMap`.

    Raises:
        NetlensValueError: Inputs without their batch dim, a window larger than the input or of
            the wrong rank, a stride, batch size or budget that is not positive, a baseline of
            the wrong shape, non-finite inputs, a target class or a channel out of range, a
            target of the wrong length, a layer spec matching several layers, model outputs
            that are not ``(N, classes)``, or ``incremental=True`` where incremental inference
            cannot run.
        NetlensTypeError: Arguments of the wrong type, inputs that are neither floating point
            nor integer, or a baseline that is not an integer for integer inputs.

    Notes:
        The window covers the last ``len(window)`` dims of each input: for images ``(N, C, H, W)`` a
        window ``(h, w)`` hides a patch across all channels at once; for 1-D signals ``(N, C, L)`` a
        window ``(k,)`` hides a segment; for row sequences ``(N, T, F)`` a window ``(k, F)`` hides k
        rows; for token ids ``(N, T)`` a window ``(k,)`` hides k tokens. Positions are the full
        windows at ``0, s, 2s, ...`` in each dim, ``(size - window) // stride + 1`` of them. At a
        ragged edge (when ``stride`` does not divide ``size - window``) the last ``(size - window)
        % stride`` elements are covered by fewer windows or, with a stride larger than the window,
        by none: their attribution is then 0. (Captum adds a cut-off window there; the two agree
        whenever the positions tile the input exactly.)

        The inputs are moved to the model's device (floating ones to its floating dtype); the
        results come back on the inputs' device, floating results in the inputs' dtype. The model
        runs in eval mode (each module's ``training`` flag is restored afterwards) and without
        gradients, also under ``torch.inference_mode()``; the model itself is left as it was.

        By default the occluded copies are computed by **incremental inference** (Nakandala et al.,
        SIGMOD 2019) where the model allows it and it saves work: the model (traced with
        ``torch.fx``) runs once on the unoccluded inputs, keeping its activations, and each copy
        recomputes, layer by layer, only the box of each feature map its window can change, from
        the kept activations around it; past an operation that mixes every position (a flatten and
        a linear layer, global pooling, an operation it does not know) the rest of the network runs
        as usual. The results are the same as running each copy through the model, up to rounding.
        ``result.incremental`` says which way they were computed. Otherwise the occluded copies are
        built a chunk of positions at a time by scattering the baseline under every window of the
        chunk (no Python loop over positions), in a buffer reused from pass to pass, and evaluated
        ``batch_size`` copies per forward pass, or by default as many as fit in ``memory_budget``.
        The first pass, which also carries the unoccluded inputs, assumes activations of up to 256
        times the input's size and measures the real ones to size the passes after it. Peak memory
        thus stays bounded however many positions there are.

    Example:
        >>> import torch, torch.nn as nn
        >>> import netlens as nl
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(576, 3))
        >>> result = nl.occlusion(net, torch.randn(2, 1, 14, 14), window=(4, 4), stride=2)
        >>> result.probability.shape  # 6 x 6 occluder positions per input
        torch.Size([2, 6, 6])
        >>> result.attribution.shape
        torch.Size([2, 1, 14, 14])
        >>> result.incremental  # a small job: every copy went through the whole model
        False
        >>> fast = nl.occlusion(net, result.inputs, window=(4, 4), stride=2, incremental=True)
        >>> fast.incremental  # the conv computed only the box each window can change
        True
        >>> torch.allclose(fast.probability, result.probability, atol=1e-6)
        True
        >>> text = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(80, 2))
        >>> ids = torch.randint(1, 50, (3, 10))  # token ids; 0 plays [MASK]
        >>> nl.occlusion(text, ids, window=(1,), baseline=0).probability.shape
        torch.Size([3, 10])
    """
    job = check_job(
        model,
        inputs,
        window=window,
        stride=stride,
        baseline=baseline,
        target=target,
        scores=scores,
        layer=layer,
        channel=channel,
        batch_size=batch_size,
        memory_budget=memory_budget,
        incremental=incremental,
        progress=progress,
        select=select,
        channel_dim=channel_dim,
    )
    tally, incremental_used = run_job(job)
    return occlusion_map(job, tally, incremental_used)
