"""Activation maximisation: synthesise the inputs that drive channels, units or objectives.

Every requested channel (or objective of :mod:`netlens.objectives`) gets its own input, or
``batch`` inputs, and all of them are optimised together as one batch (Olah, Mordvintsev &
Schubert 2017, "Feature Visualization", for the parametrisations, the decorrelated colours and
the transforms). Layers are read through the layer contract (:mod:`netlens._core.outputs`): their
channels are those every other technique sees. Two things make it fast: the forward pass stops
as soon as the deepest layer the objective reads has run (later layers cannot change the
objective), and for a plain ``nn.Conv2d`` or ``nn.Linear`` target whose channels are its own
output features only the one output channel each input is optimised for is computed.

:func:`maximize_activation` runs the stages, each in a module of its own:

* :mod:`.options`: the checked options, and what is maximised (the ``layer``/``channels``
  form, or objectives);
* :mod:`.readout`: the model probed once and run as far as the objectives read; the
  ``layer``/``channels`` form becomes channel terms (:mod:`.objectives`) there, once the
  layer's channel count is known;
* :mod:`.param` and :mod:`.transforms`: the inputs as a function of parameters, and the random
  transforms of each step;
* :mod:`.optimise`: the loop;
* :mod:`.result`: :class:`Maximization` and its pictures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack

import torch
from torch import nn

from .._core.checks import (
    check_bool,
    check_channels_fit,
    check_gradients_allowed,
    check_not_meta,
)
from .._core.hooks import user_hooks
from .._core.layers import LayerSpec, check_model
from .._core.model import cudnn_off, evaluating, model_dtype_device
from .._core.outputs import Select
from .optimise import FiniteWatch, optimise
from .options import (
    Decorrelate,
    Goal,
    Normalization,
    ObjectiveSpec,
    Options,
    check_diversity,
    check_goal,
    check_normalization_fits,
    check_options,
)
from .param import input_generators, input_pipeline
from .readout import PROBE_BATCH, ChannelMaps, EachObjective, Readout, channel_terms
from .result import Maximization
from .transforms import RandomTransform

__all__ = ["Maximization", "maximize_activation"]


def maximize_activation(
    model: nn.Module,
    layer: LayerSpec | None = None,
    channels: int | Sequence[int] | torch.Tensor | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    objective: ObjectiveSpec = "mean",
    steps: int = 256,
    lr: float = 0.05,
    param: str = "pixel",
    transforms: str | Sequence[str] | None = "default",
    l2: float = 0.0,
    tv: float = 0.0,
    value_range: tuple[float, float] | None = None,
    seed: int | None = None,
    progress: bool = False,
    batch: int | None = None,
    decorrelate: Decorrelate = False,
    normalize: Normalization | None = None,
    select: Select | None = None,
    channel_dim: int | None = None,
    blur_every: int = 0,
    blur_sigma: float = 0.5,
) -> Maximization:
    """Synthesise the inputs that drive channels of a layer, or objectives, as high as they go.

    Two forms. ``maximize_activation(model, layer, channels, ...)`` synthesises one input per
    channel (all channels of the layer by default) for ``objective="mean"``, ``"center"`` or a
    function of the channel's map. ``maximize_activation(model, objective=o, ...)``, with ``o``
    an objective of :mod:`netlens.objectives` (or a list of them) and no ``layer`` or
    ``channels``, synthesises one input per objective; an objective may combine channels,
    units, directions, class logits and diversity over several layers.

    Args:
        model: Any ``nn.Module`` taking floating-point batches ``(n, *input_shape)``.
        layer: The target layer, as for :func:`find_layers`; must select exactly one layer.
            Omitted (None) with objective expressions.
        channels: A channel (or unit) index, or a list of them; all channels of the layer by
            default. An int drops the channel dimension of the result, a list or None keeps it.
            Omitted with objective expressions.
        input_shape: The shape of one input without the batch dimension: ``(C, H, W)`` for
            images (any C and size), ``(T, F)`` for sequences. Completed from the model's first
            layer (its first module with parameters) where that says what is missing: the
            spatial size alone, ``(H, W)``, for a ``Conv2d`` first layer (its ``in_channels``
            added in front), nothing at all for an ``nn.Linear`` one.
        objective: ``"mean"`` of the channel's map (default), ``"center"``: the unit at the
            centre of the map (the value itself for a linear unit), or a function from the
            selected maps ``(n, *map)`` (row ``i``: the channel of input ``i``, the layer's
            output arranged ``(n, C, *map)``) to one value per input ``(n,)``, for example
            ``lambda maps: maps[:, -1]`` for the last time step of a recurrent unit. Or an
            objective of :mod:`netlens.objectives` (the result drops the objective dimension),
            or a list of them (one input each), without ``layer`` and ``channels``.
        steps: Adam steps.
        lr: Adam's learning rate.
        param: ``"pixel"`` (the input is the parameter) or ``"fourier"`` (a spectrum scaled by
            1/frequency over the spatial dims, the decorrelated parametrisation of Olah et al.
            2017, as Lucid's ``fft_image``).
        transforms: ``"default"``: a random jitter of about 1/14 of the size (whole pixels),
            scale in [0.9, 1.1] and rotation within +-10 degrees for images, a jitter along
            time for sequences; ``None``: none; or a list from ``"jitter"``, ``"scale"``,
            ``"rotate"``. Drawn afresh for every input at every step; edges are reflected.
        l2: Weight of the mean squared input value, per input.
        tv: Weight of the total variation (mean absolute difference of neighbours), per input.
        value_range: ``(low, high)`` bounds of the inputs (``(-1, 1)`` for netlens' CIFAR-10).
            With ``normalize``, the bounds of the pictures before it, (0, 1) by default;
            without, of the model's inputs, unbounded by default: netlens cannot know the
            range a model's inputs live in, and a bound in the wrong range would go unnoticed.
            lucent's image is ``param="fourier", decorrelate=True, value_range=(0, 1)``.
        seed: Makes the run repeatable; the global random state is never touched. Each
            channel (or objective, by its index) draws from its own generator, so a channel's
            input is the same alone or in a batch.
        progress: Show a progress bar (needs tqdm).
        batch: ``n`` inputs per channel or objective, from different starting noise, in a
            dimension of size ``n`` after the channel dimension of the results; None (default):
            one input and no such dimension. With
            :func:`~netlens.objectives.diversity` in the objective the ``n`` inputs of an
            objective are pushed apart (it needs ``n >= 2``).
        decorrelate: For RGB inputs ``(3, H, W)``: optimise the colours in a decorrelated basis
            (the parameter's 3 channels are mapped by a 3x3 matrix at every pixel, Lucid's
            ``to_valid_rgb(decorrelate=True)``). ``True``: ImageNet's colour statistics
            (Lucid's and lucent's matrix, :data:`netlens._color.IMAGENET_COLOR_SQRT`); a
            :class:`ColorStats` from :func:`color_stats`: the data's own; a 3x3 matrix: the
            square root of a colour covariance. The matrix is scaled so that its largest
            column has norm 1.
        normalize: ``(mean, std)``, each a number or one number per input channel, as
            torchvision's ``Normalize`` takes them: the model's inputs are ``(x - mean) /
            std`` of pictures ``x`` in ``value_range``. Results keep the model's inputs as
            ``images`` and the pictures as ``pixels``.
        select: Which part of the layer's output to maximise, for layers that return several:
            an index (into a tuple or list), a key (of a mapping) or a function of the output.
            Objective expressions take it per term instead.
        channel_dim: The channel axis of the layer's output, where the module's kind does not
            tell it (``-1`` for channels-last stages). Per term for objective expressions.
        blur_every: Blur the inputs every this many steps (0: never), a regulariser against
            high frequencies. With ``value_range`` the blur applies before the squash.
        blur_sigma: Standard deviation in pixels of that Gaussian blur.

    Returns:
        A :class:`Maximization` with the inputs, the objective reached and its history, in the
        dtype and on the device of the model's first layer (there are no user inputs to
        follow); see there for the shapes.

    Raises:
        LayerNotFoundError: See :func:`find_layers`.
        NetlensValueError: A layer spec selecting several layers, a channel out of range, an
            ``input_shape`` that does not fit the model, ``steps``, ``lr`` or ``batch`` not
            positive, a ``value_range`` with ``low >= high``, an unknown ``param``, transform
            or objective name, an objective function that does not return one value per
            channel, ``layer``, ``channels``, ``select`` or ``channel_dim`` given with objective
            expressions (or no ``layer`` without them), ``diversity`` with fewer than 2 inputs
            per objective, ``decorrelate`` for inputs without 3 channels or with a NaN or
            infinite matrix or :class:`ColorStats`, a ``normalize`` that is not finite, or whose
            ``std`` is not positive, in the dtype it is used in (float32 at least; the model's
            for the inputs it makes), a layer the objective reads that does not run, or a call
            inside ``torch.inference_mode()`` (which allows no gradients). Also, during the
            run, as soon as the inputs, the objective or its gradient become NaN or infinite:
            the message names the step and the channels or objectives (nothing is returned).
        NetlensTypeError: Arguments of the wrong type, complex ``normalize`` or
            ``decorrelate`` values among them.

    Notes:
        All inputs are optimised together as one batch with Adam: each input is the parameter of
        its own channel or objective only. Each step runs the model in eval mode (dropout off,
        BatchNorm on its running statistics) with frozen parameters, and only as far as the
        deepest layer read: the forward pass stops right after it (through to the output for
        :func:`~netlens.objectives.class_logit`); for a plain ``nn.Conv2d`` or ``nn.Linear`` target
        of the first form, whose channels are its own output features, only each input's own channel
        is computed. The model is left exactly as it was, also when this raises.

        Layers are read by the layer contract, as in every technique: a tuple or list gives its
        first tensor, a mapping its first tensor value, a ``PackedSequence`` its padded tensor
        (``select=`` picks another part); the channel axis follows from the module's kind (dim 1
        for the convolution family, the last dim for ``nn.Linear``, transformers-style ``Conv1D``,
        recurrent layers, attention, ...) or from ``channel_dim=``; the batch axis of a recurrent
        layer with ``batch_first=False`` is dim 1.

        An input is made as ``parameter -> spatial image (param) -> colours (decorrelate) -> value
        range -> normalize -> transforms -> model``. ``value_range=(low, high)`` keeps the inputs
        strictly inside the box by a smooth parametrisation, ``low + (high - low) * (tanh(z) + 1) /
        2`` of the unconstrained ``z``, rather than by clipping after each step: gradients stay
        informative everywhere, Adam's moments are not fought by a projection, and it composes with
        the Fourier parametrisation, whose pixels cannot be clipped one by one. With
        ``normalize=(mean, std)`` the inputs are pictures in ``value_range`` ((0, 1) by default)
        mapped by ``(x - mean) / std`` before the model, as torchvision's ``Normalize``.

    Example:
        >>> import netlens as nl
        >>> from netlens import objectives as obj
        >>> from netlens.models import LeNet5
        >>> net = LeNet5()
        >>> result = nl.maximize_activation(
        ...     net, "conv1", [0, 1, 2], input_shape=(1, 28, 28), steps=8,
        ...     value_range=(-1, 1), seed=0,
        ... )
        >>> result.images.shape, result.history.shape, result.channels
        (torch.Size([3, 1, 28, 28]), torch.Size([8, 3]), tensor([0, 1, 2]))
        >>> bool((result.images.abs() < 1).all())
        True
        >>> one = nl.maximize_activation(net, "conv1", 4, input_shape=(28, 28), steps=2)
        >>> one.images.shape, one.activations.shape, one.history.shape  # no channel dim
        (torch.Size([1, 28, 28]), torch.Size([]), torch.Size([2]))
        >>> both = nl.maximize_activation(
        ...     net, objective=obj.channel("conv2", 3) + 0.1 * obj.diversity("conv2"),
        ...     input_shape=(28, 28), batch=2, steps=2, seed=0,
        ... )
        >>> both.images.shape, both.activations.shape, both.layer
        (torch.Size([2, 1, 28, 28]), torch.Size([2]), 'conv2')
    """
    check_model(model)
    progress = check_bool("progress", progress)
    goal = check_goal(model, layer, channels, objective, select, channel_dim)
    options = check_options(
        model,
        input_shape=input_shape,
        steps=steps,
        lr=lr,
        l2=l2,
        tv=tv,
        param=param,
        transforms=transforms,
        seed=seed,
        batch=batch,
        blur_every=blur_every,
        blur_sigma=blur_sigma,
        decorrelate=decorrelate,
        normalize=normalize,
        value_range=value_range,
        progress=progress,
    )
    check_diversity(goal, options.batch)
    check_gradients_allowed("maximize_activation")
    check_not_meta(model)

    # the dtype the model takes its inputs in: its first layer's, not a float64 temperature's
    dtype, device = model_dtype_device(model)
    dtype = dtype or torch.get_default_dtype()
    device = device or torch.device("cpu")
    # The parametrisation and Adam's state live in at least float32 whatever the model's
    # dtype: in float16 Adam's eps (1e-8) rounds to 0 and squared gradients underflow, and
    # the images turned NaN from step 2. Inputs are cast to the model's dtype on the way in.
    work = torch.promote_types(dtype, torch.float32)
    check_normalization_fits(options.normalization, options.bounds, work, dtype)

    with ExitStack() as stack:
        # The parameters keep requires_grad (shared with every thread); the gradient is asked
        # for the parametrisation alone, so their .grad is never written.
        stack.enter_context(evaluating(model))
        stack.enter_context(torch.enable_grad())  # also when called under torch.no_grad()
        if device.type == "cuda" and any(isinstance(m, nn.RNNBase) for m in model.modules()):
            # cuDNN computes an RNN's backward only in training mode; the native kernels do
            # it in eval mode too, so dropout stays off and results are those of eval mode.
            stack.enter_context(cudnn_off())
        labels, name, values_of = _read(stack, model, goal, options, dtype, device)
        generators = input_generators(options.seed, labels, options.batch)
        parametrization, image = input_pipeline(
            options.param,
            generators,
            options.shape,
            colors=options.colors,
            bounds=options.bounds,
            normalization=options.normalization,
            dtype=work,
            device=device,
        )
        transform = (
            RandomTransform(options.transforms, generators, sequence=len(options.shape) == 2)
            if options.transforms
            else None
        )
        kind = "channel" if goal.objectives is None else "objective"
        names = [f"{kind} {label}" for label in labels]
        watch = FiniteWatch(options.steps, options.copies, names, dtype, device)
        history, final, reached = optimise(
            parametrization,
            image,
            transform,
            values_of,
            options,
            watch,
            dtype=dtype,
            device=device,
            name=name,
        )
    return _result(goal, options, labels, name, (history, final, reached), dtype, device)


def _read(
    stack: ExitStack,
    model: nn.Module,
    goal: Goal,
    options: Options,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[list[int], str, Callable[[torch.Tensor], torch.Tensor]]:
    """Probe the model once and set up the evaluation of what is maximised.

    The ``layer``/``channels`` form becomes one channel term per channel here, once the
    layer's channel count is known (all channels by default); its maps are evaluated together
    (:class:`ChannelMaps`), with hooks kept on ``stack`` while the layer is computed for one
    channel per input.

    Returns:
        Each input group's label (its channel, or its objective's index), the name of what is
        read (for results and the progress bar), and the function from a batch of inputs
        (``copies`` per label, label-major) to their values.
    """
    readout = Readout(model)
    zeros = torch.zeros((PROBE_BATCH, *options.shape), dtype=dtype, device=device)
    if goal.objectives is not None:
        each = EachObjective(readout, goal.objectives, options.copies)
        each.check(readout.probe(zeros, options.shape, options.note))
        return list(range(len(goal.objectives))), readout.layer_names(), each
    view = goal.view
    assert view is not None
    key = readout.read(view)
    hooked = user_hooks(view.module)
    recorded = readout.probe(zeros, options.shape, options.note).recorded[key]
    width = view.channels(recorded)
    chosen = list(range(width)) if goal.channels is None else goal.channels
    check_channels_fit("channels", chosen, width, view.name)
    terms = channel_terms(view, chosen, goal.reduction)
    maps = ChannelMaps(readout, key, terms, options.copies, device, recorded, hooked)
    stack.enter_context(maps.hooks())
    return chosen, view.name, maps


def _result(
    goal: Goal,
    options: Options,
    labels: list[int],
    name: str,
    run: tuple[list[torch.Tensor], torch.Tensor, torch.Tensor],
    dtype: torch.dtype,
    device: torch.device,
) -> Maximization:
    """The result, shaped as :class:`Maximization` says."""
    history, final, reached = run
    batch, shape = options.batch, options.shape
    grouped = (len(labels),) if batch is None else (len(labels), batch)
    trace = torch.stack(history).view(options.steps, *grouped)
    final = final.view(*grouped, *shape)
    reached = reached.view(grouped)
    listed, normalization = goal.listed, options.normalization
    return Maximization(
        images=final if listed else final[0],
        activations=reached if listed else reached[0],
        history=trace if listed else trace[:, 0],
        channels=torch.tensor(labels, dtype=torch.long),
        layer=name,
        objectives=goal.objectives,
        batch=batch,
        normalize=None
        if normalization is None
        else (normalization[0].to(device, dtype), normalization[1].to(device, dtype)),
        value_range=options.bounds,
    )
