"""The objectives of activation maximisation; :mod:`netlens.objectives` is their public home.

The module's documentation, for users, is that of :mod:`netlens.objectives`. An
:class:`Objective` is a weighted sum of terms, each one quantity read from one layer (or from
the model's output). The terms that read one channel's map (:class:`_ChannelTerm`: ``channel``,
``neuron``, and the ``objective=`` callable of the ``layer``/``channels`` form) take the map and
reduce it in two steps, so that the maps of many inputs can be reduced in one call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

import torch
import torch.nn.functional as F

from .._core.checks import (
    as_number,
    check_bool,
    check_channel_dim,
    check_index,
    check_position,
    non_finite,
)
from .._core.errors import NetlensTypeError, NetlensValueError, describe
from .._core.layers import LayerSpec
from .._core.outputs import Select, check_select

#: What a term reads: ``read(term)`` is the arranged ``(n, C, *map)`` output of the term's layer
#: (or of the model, for a class logit) for the n inputs the objective is evaluated on.
Read: TypeAlias = Callable[["_Term"], torch.Tensor]


class Objective:
    """A quantity to maximise, one value per input: a weighted sum of terms.

    Made by :func:`channel`, :func:`neuron`, :func:`direction`, :func:`class_logit` and
    :func:`diversity`, and combined with ``+``, ``-``, ``*`` and ``/`` by numbers (``sum()``
    of objectives works too; a number may be a Python or numpy number or a 0-d real tensor).
    Objectives are immutable and compare by identity; ``repr`` spells one out, ``str`` gives a
    short label (the titles of :meth:`Maximization.plot`). ``Objective(other.terms)`` rebuilds
    one from its ``(weight, term)`` pairs; weights must stay finite.

    Example:
        >>> from netlens import objectives as obj
        >>> combined = obj.channel("conv2", 3) - 0.5 * obj.channel("conv1", 0)
        >>> combined
        channel('conv2', 3) - 0.5 * channel('conv1', 0)
        >>> str(combined + 10 * obj.diversity("conv2"))
        'conv2:3 - 0.5*conv1:0 + 10*diversity(conv2)'
    """

    __slots__ = ("_parts",)

    def __init__(self, parts: tuple[tuple[float, _Term], ...]) -> None:
        self._parts = _check_parts(parts)

    @property
    def terms(self) -> tuple[tuple[float, Any], ...]:
        """The ``(weight, term)`` pairs of the sum, in the order written."""
        return self._parts

    # -- combining -------------------------------------------------------------------------

    def __add__(self, other: object) -> Objective:
        return Objective(self._parts + _other(other, "+")._parts)

    def __radd__(self, other: object) -> Objective:
        if isinstance(other, (int, float)) and not isinstance(other, bool) and other == 0:
            return self  # the start value of sum(objectives)
        return _other(other, "+") + self

    def __sub__(self, other: object) -> Objective:
        return self + (-_other(other, "-"))

    def __rsub__(self, other: object) -> Objective:
        return _other(other, "-") - self

    def __mul__(self, factor: object) -> Objective:
        number = _factor(factor)
        return Objective(tuple((_scaled(weight, number), term) for weight, term in self._parts))

    def __rmul__(self, factor: object) -> Objective:
        return self * factor

    def __truediv__(self, factor: object) -> Objective:
        number = _factor(factor)
        if number == 0:
            raise NetlensValueError("Expected a number other than 0 to divide by, but got 0.")
        parts = tuple((_scaled(weight, 1.0, number), term) for weight, term in self._parts)
        return Objective(parts)

    def __neg__(self) -> Objective:
        return self * -1.0

    def __pos__(self) -> Objective:
        return self

    # -- showing ---------------------------------------------------------------------------

    def __repr__(self) -> str:
        return _join([(weight, repr(term)) for weight, term in self._parts], " * ")

    def __str__(self) -> str:
        return _join([(weight, term.label()) for weight, term in self._parts], "*")

    # -- evaluating (for maximize_activation) ---------------------------------------------------

    def _values(self, read: Read) -> torch.Tensor:
        """One value per input: the weighted sum of the terms' values."""
        (first_weight, first), *rest = self._parts
        total = first_weight * first.value(read(first))
        for weight, term in rest:
            total = total + weight * term.value(read(term))
        return total


def _check_parts(parts: object) -> tuple[tuple[float, _Term], ...]:
    """The ``(weight, term)`` pairs of an objective, weights as finite floats."""
    expected = (
        "a non-empty tuple of (weight, term) pairs, such as another objective's .terms (made "
        "by the functions of netlens.objectives)"
    )
    if not isinstance(parts, (tuple, list)) or not all(
        isinstance(part, tuple) and len(part) == 2 and isinstance(part[1], _Term) for part in parts
    ):
        raise NetlensTypeError(f"Expected {expected}, but got {describe(parts)}.")
    if not parts:
        raise NetlensValueError(
            f"Expected at least one (weight, term) pair in an objective: {expected}; but got none."
        )
    return tuple((_factor(weight, "a weight of an objective"), term) for weight, term in parts)


def _other(value: object, operator: str) -> Objective:
    if not isinstance(value, Objective):
        raise NetlensTypeError(
            f"Expected an Objective on both sides of {operator!r} (objectives combine with "
            f"objectives, and scale by numbers with '*'), but got {describe(value)}."
        )
    return value


def _factor(value: object, what: str = "a number to scale an objective by") -> float:
    """A real number (Python, numpy, or a 0-d real tensor) as a finite float."""
    number = as_number(value)
    if number is None:
        raise NetlensTypeError(
            f"Expected {what} (a real number or a 0-d real tensor), but got {describe(value)}."
        )
    if not math.isfinite(number):
        raise NetlensValueError(f"Expected {what} to be a finite number, but got {number}.")
    return number


def _scaled(weight: float, factor: float, divisor: float = 1.0) -> float:
    """``weight * factor / divisor``, refused where it leaves the floats (``1e200 * 1e200``)."""
    result = weight * factor / divisor
    if not math.isfinite(result):
        raise NetlensValueError(
            "Expected the weights of an objective to stay finite numbers, but scaling the weight "
            f"{weight:g} by {factor:g}" + (f" / {divisor:g}" if divisor != 1.0 else "") + " gives "
            f"{result}."
        )
    return result


def _join(parts: Sequence[tuple[float, str]], times: str) -> str:
    text = ""
    for index, (weight, label) in enumerate(parts):
        sign = "-" if weight < 0 else "+"
        size = abs(weight)
        scaled = label if size == 1 else f"{size:g}{times}{label}"
        if index == 0:
            text = ("-" if sign == "-" else "") + scaled
        else:
            text += f" {sign} {scaled}"
    return text


# -- terms ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Term:
    """One quantity read from one layer's arranged output ``(n, C, *map)``.

    ``layer`` None reads the model's output (class axis last, arranged to dim 1). ``repr``
    spells the term as the call that makes it: ``_kind(layer, <_arguments()>, select=...)``.
    """

    layer: LayerSpec | None
    select: Select | None
    channel_dim: int | None

    #: The name of the function that makes the term, for ``repr``.
    _kind: ClassVar[str] = ""

    def value(self, arranged: torch.Tensor) -> torch.Tensor:
        """One value per input, ``(n,)``."""
        raise NotImplementedError

    def label(self) -> str:
        """A short label, for titles."""
        raise NotImplementedError

    def _arguments(self) -> str:
        """The arguments after the layer in ``repr`` (each with its leading ``", "``)."""
        return ""

    def __repr__(self) -> str:
        extra = ""
        if self.select is not None:
            extra += f", select={self.select!r}"
        if self.channel_dim is not None:
            extra += f", channel_dim={self.channel_dim}"
        layer = repr(self.layer) if isinstance(self.layer, str) else self._name()
        return f"{self._kind}({layer}{self._arguments()}{extra})"

    def _name(self) -> str:
        """A short name of the layer spec (a module object or class by its class name)."""
        if isinstance(self.layer, str):
            return self.layer
        if isinstance(self.layer, type):
            return self.layer.__name__
        return f"<{type(self.layer).__name__}>"

    def _channel_map(self, arranged: torch.Tensor, channel: int, what: str) -> torch.Tensor:
        count = arranged.shape[1]
        if channel >= count:
            raise NetlensValueError(
                f"Expected {what} in [0, {count}) for {self!r}: layer {self._name()!r} has "
                f"{count}, but got {channel}."
            )
        return arranged[:, channel]


def _mean_over_map(maps: torch.Tensor) -> torch.Tensor:
    return maps.flatten(1).mean(1) if maps.dim() > 1 else maps


@dataclass(frozen=True, eq=False, repr=False)
class _ChannelTerm(_Term):
    """A quantity of one channel's map: :meth:`reduce` of the map ``(n, *map)``.

    Reading the map and reducing it are apart, so that the maps of many such terms (one
    channel per input) can be reduced in one call.
    """

    channel: int

    def reduce(self, maps: torch.Tensor) -> torch.Tensor:
        """One value per row of ``maps``, ``(n, *map)``: each the map of this term's channel."""
        raise NotImplementedError

    def value(self, arranged: torch.Tensor) -> torch.Tensor:
        """One value per input, ``(n,)``."""
        return self.reduce(self._channel_map(arranged, self.channel, "a channel"))

    def _arguments(self) -> str:
        return f", {self.channel}"

    def label(self) -> str:
        """``layer:channel``."""
        return f"{self._name()}:{self.channel}"


@dataclass(frozen=True, eq=False, repr=False)
class _Channel(_ChannelTerm):
    _kind: ClassVar[str] = "channel"

    def reduce(self, maps: torch.Tensor) -> torch.Tensor:
        """The mean over the map."""
        return _mean_over_map(maps)


@dataclass(frozen=True, eq=False, repr=False)
class _Neuron(_ChannelTerm):
    position: tuple[int, ...] | None

    _kind: ClassVar[str] = "neuron"

    def reduce(self, maps: torch.Tensor) -> torch.Tensor:
        """The value at ``position`` of the map (its centre when None)."""
        size = tuple(maps.shape[1:])
        position = tuple(n // 2 for n in size) if self.position is None else self.position
        if len(position) != len(size) or not all(
            0 <= p < n for p, n in zip(position, size, strict=True)
        ):
            raise NetlensValueError(
                f"Expected a position of {len(size)} indices inside the map of shape {size} of "
                f"layer {self._name()!r} for {self!r}, but got {position}."
            )
        index: tuple[slice | int, ...] = (slice(None), *position)
        return maps[index]

    def _arguments(self) -> str:
        return f", {self.channel}" + ("" if self.position is None else f", {self.position}")

    def label(self) -> str:
        """``layer:channel@position``."""
        where = "centre" if self.position is None else ",".join(map(str, self.position))
        return f"{self._name()}:{self.channel}@{where}"


@dataclass(frozen=True, eq=False, repr=False)
class _MapFunction(_ChannelTerm):
    """A function of the channel's map: the ``objective=`` callable of the layer form.

    Not made by any public function: :func:`~netlens.maximize_activation` makes these terms
    for ``objective=callable`` with ``layer`` and ``channels``, and reduces the maps of all
    inputs in one call of the function.
    """

    function: Callable[[torch.Tensor], torch.Tensor]

    _kind: ClassVar[str] = "map_function"

    def reduce(self, maps: torch.Tensor) -> torch.Tensor:
        """The function of the maps, checked to give one value per map."""
        values = self.function(maps)
        if not isinstance(values, torch.Tensor) or values.shape != (maps.shape[0],):
            raise NetlensValueError(
                f"Expected the objective to return one value per channel, a tensor of shape "
                f"({maps.shape[0]},) from maps of shape {tuple(maps.shape)}, but it returned "
                f"{describe(values)}."
            )
        return values

    def _arguments(self) -> str:
        return f", {self.channel}, {self.function!r}"


@dataclass(frozen=True, eq=False, repr=False)
class _Direction(_Term):
    vector: torch.Tensor
    cosine: bool

    _kind: ClassVar[str] = "direction"

    def value(self, arranged: torch.Tensor) -> torch.Tensor:
        count = arranged.shape[1]
        if self.vector.numel() != count:
            raise NetlensValueError(
                f"Expected a direction vector of {count} entries, one per channel of layer "
                f"{self._name()!r}, but got {self.vector.numel()}."
            )
        shape = (1, count) + (1,) * (arranged.dim() - 2)
        vector = self.vector.to(arranged.dtype)  # on the CPU still: checked without a sync
        bad = non_finite(vector)
        if bad is not None:
            raise NetlensValueError(
                f"Expected a direction vector that the layer's dtype {arranged.dtype} holds, but "
                f"the vector of {self!r}, with entries up to {float(self.vector.abs().max()):g} "
                f"in magnitude, has {bad} entries in that dtype: scale it down."
            )
        vector = vector.to(arranged.device).view(shape)
        if self.cosine:
            along = F.cosine_similarity(arranged, vector.expand_as(arranged), dim=1)
        else:
            along = (arranged * vector).sum(1)
        return _mean_over_map(along)

    def _arguments(self) -> str:
        cosine = ", cosine=True" if self.cosine else ""
        return f", <vector of {self.vector.numel()}>{cosine}"

    def label(self) -> str:
        """``layer:direction``."""
        return f"{self._name()}:direction"


@dataclass(frozen=True, eq=False, repr=False)
class _ClassLogit(_Term):
    index: int
    log_probability: bool

    def value(self, arranged: torch.Tensor) -> torch.Tensor:
        scores = arranged.log_softmax(1) if self.log_probability else arranged
        return _mean_over_map(self._channel_map(scores, self.index, "a class"))

    def __repr__(self) -> str:
        extra = ", log_probability=True" if self.log_probability else ""
        return f"class_logit({self.index}{extra})"

    def label(self) -> str:
        """``logit k`` or ``log p(k)``."""
        return f"log p({self.index})" if self.log_probability else f"logit {self.index}"

    def _name(self) -> str:
        return "output"


@dataclass(frozen=True, eq=False, repr=False)
class _Diversity(_Term):
    _kind: ClassVar[str] = "diversity"

    def value(self, arranged: torch.Tensor) -> torch.Tensor:
        count = arranged.shape[0]
        features = arranged.flatten(2) if arranged.dim() > 2 else arranged[..., None]
        grams = features @ features.transpose(1, 2)  # (n, C, C): channel correlations
        grams = F.normalize(grams.flatten(1), dim=1)
        similarity = grams @ grams.T  # (n, n) cosine similarities of the Gram matrices
        return -(similarity.sum(1) - similarity.diagonal()) / count

    def label(self) -> str:
        """``diversity(layer)``."""
        return f"diversity({self._name()})"


# -- the public constructors ------------------------------------------------------------------


def _layer(layer: object) -> LayerSpec:
    if isinstance(layer, (str, torch.nn.Module)) or (
        isinstance(layer, type) and issubclass(layer, torch.nn.Module)
    ):
        return layer
    raise NetlensTypeError(
        "Expected layer to name one layer (a dotted name, a glob, a module class or a module "
        f"object), but got {describe(layer)}."
    )


def _where(select: object, channel_dim: object) -> tuple[Select | None, int | None]:
    return check_select(select), check_channel_dim("channel_dim", channel_dim, optional=True)


def _alone(term: _Term) -> Objective:
    """The objective of one term, of weight 1."""
    return Objective(((1.0, term),))


def channel(
    layer: LayerSpec, channel: int, *, select: Select | None = None, channel_dim: int | None = None
) -> Objective:
    """The mean of a channel's map over all positions (of a unit, its value).

    Args:
        layer: The layer, as for :func:`netlens.find_layers`; must select exactly one layer.
        channel: The channel (or unit) index on the layer's channel axis.
        select: Which part of the layer's output, as in every function that takes a layer.
        channel_dim: The layer's channel axis, where its kind does not tell it.

    Returns:
        An :class:`Objective`.

    Example:
        >>> from netlens import objectives as obj
        >>> obj.channel("features.3", 12)
        channel('features.3', 12)
    """
    index = check_index("channel", channel)
    return _alone(_Channel(_layer(layer), *_where(select, channel_dim), index))


def neuron(
    layer: LayerSpec,
    channel: int,
    position: int | Sequence[int] | None = None,
    *,
    select: Select | None = None,
    channel_dim: int | None = None,
) -> Objective:
    """The value of a channel at one position of its map: one unit.

    Args:
        layer: The layer, as for :func:`netlens.find_layers`.
        channel: The channel index.
        position: Indices into the channel's map, one per map dimension (``(y, x)`` for a conv
            layer, ``t`` for a recurrent layer), each counted from the start of its dimension
            (non-negative, as every netlens position; the last of ``T`` steps is ``T - 1``); by
            default the centre, ``size // 2`` along each dimension (as ``objective="center"``).
        select: Which part of the layer's output.
        channel_dim: The layer's channel axis, where its kind does not tell it.

    Returns:
        An :class:`Objective`: the unit's value.

    Example:
        >>> from netlens import objectives as obj
        >>> obj.neuron("conv1", 4, (14, 14)), obj.neuron("rnn", 2, 7)
        (neuron('conv1', 4, (14, 14)), neuron('rnn', 2, (7,)))
    """
    where = None if position is None else check_position("position", position)
    index = check_index("channel", channel)
    return _alone(_Neuron(_layer(layer), *_where(select, channel_dim), index, where))


def direction(
    layer: LayerSpec,
    vector: torch.Tensor | Sequence[float],
    *,
    cosine: bool = False,
    select: Select | None = None,
    channel_dim: int | None = None,
) -> Objective:
    """How far the activations point along a direction of the layer's channel space.

    At each position of the map, the dot product of the activation vector (one entry per
    channel) with ``vector``, averaged over positions (Lucid's ``direction``); with
    ``cosine=True`` the cosine similarity instead (lucent's ``direction``), which rewards the
    angle only, not the length.

    Args:
        layer: The layer, as for :func:`netlens.find_layers`.
        vector: One number per channel of the layer (a 1-D tensor, array or list).
        cosine: Cosine similarity instead of the dot product.
        select: Which part of the layer's output.
        channel_dim: The layer's channel axis, where its kind does not tell it.

    Returns:
        An :class:`Objective`.

    Example:
        >>> import torch
        >>> from netlens import objectives as obj
        >>> obj.direction("conv2", torch.ones(64), cosine=True)
        direction('conv2', <vector of 64>, cosine=True)
    """
    cosine = check_bool("cosine", cosine)
    try:
        values = torch.as_tensor(vector).detach()
    except (TypeError, ValueError, RuntimeError) as error:
        raise NetlensTypeError(
            f"Expected vector to be a 1-D tensor of numbers, but got {describe(vector)}."
        ) from error
    if values.dtype == torch.bool or values.is_complex():
        raise NetlensTypeError(
            f"Expected vector to hold real numbers, but got {describe(vector)}: a complex vector "
            "would lose its imaginary part, and a bool one is not a direction."
        )
    if values.dim() != 1 or values.numel() == 0:
        raise NetlensValueError(
            f"Expected vector to be a non-empty 1-D tensor of numbers, one per channel, but got "
            f"{describe(vector)}."
        )
    if values.is_meta:
        raise NetlensValueError(
            "Expected vector with values, but got a tensor on the 'meta' device (shapes only)."
        )
    values = values.to("cpu", torch.float64).clone()
    bad = non_finite(values)
    if bad is not None:
        where = torch.nonzero(~torch.isfinite(values)).flatten().tolist()
        raise NetlensValueError(
            f"Expected vector to be finite, but it holds {bad} values (at entries "
            f"{where[:10]}{', ...' if len(where) > 10 else ''})."
        )
    return _alone(_Direction(_layer(layer), *_where(select, channel_dim), values, cosine))


def class_logit(index: int, *, log_probability: bool = False) -> Objective:
    """A class score of the model's output: the logit, or its log-probability.

    The output is the model's return value read by the layer contract's rule (a tuple gives
    its first tensor, a mapping its first tensor value), classes on its last axis (averaged
    over any axes between the batch and the classes). With ``log_probability=True`` the
    log-softmax over classes: raising it also lowers the other classes, where the plain logit
    can grow with all of them.

    Args:
        index: The class index.
        log_probability: Maximise ``log_softmax(logits)[index]`` instead of the logit.

    Returns:
        An :class:`Objective`. The model runs to its output for it, every step.

    Example:
        >>> from netlens import objectives as obj
        >>> obj.class_logit(3) - obj.class_logit(5)
        class_logit(3) - class_logit(5)
    """
    log_probability = check_bool("log_probability", log_probability)
    return _alone(_ClassLogit(None, None, None, check_index("index", index), log_probability))


def diversity(
    layer: LayerSpec, *, select: Select | None = None, channel_dim: int | None = None
) -> Objective:
    """How different the inputs of a batch are at a layer: pushes them apart when maximised.

    For the ``batch=n`` inputs of one objective: each input's Gram matrix of the layer's
    channels (their correlations over the map, as in style transfer), scaled to unit norm; an
    input's value is minus the sum of the cosine similarities of its Gram matrix with those of
    the other ``n - 1`` inputs, divided by ``n``. The values sum to what lucent's
    ``diversity`` returns; lucent minimises its objectives and so subtracts it, netlens
    maximises and adds it (lucent's ``channel(...) - 1e2 * diversity(...)`` is
    ``channel(...) + 1e2 * diversity(...)`` here). It needs ``batch >= 2``.

    Args:
        layer: The layer, as for :func:`netlens.find_layers`.
        select: Which part of the layer's output.
        channel_dim: The layer's channel axis, where its kind does not tell it.

    Returns:
        An :class:`Objective`: higher for inputs less alike.

    Example:
        >>> from netlens import objectives as obj
        >>> obj.channel("conv2", 7) + 100 * obj.diversity("conv2")
        channel('conv2', 7) + 100 * diversity('conv2')
    """
    return _alone(_Diversity(_layer(layer), *_where(select, channel_dim)))
