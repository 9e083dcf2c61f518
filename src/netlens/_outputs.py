"""What a layer's output is, where its batch and channel axes are: the one rule of netlens.

Every technique that takes a layer reads the layer's output through :class:`LayerView`:

- **Output selection** (:meth:`LayerView.tensor`). A tensor is used as is; a tuple or list gives
  its first tensor; a mapping (``dict``, a Hugging Face ``ModelOutput``) its first tensor value;
  a ``PackedSequence`` its padded tensor, batch-first or time-first as the module says.
  ``select=`` (an index, a key or a callable) picks another part first.
- **Batch axis**: dim 0, or dim 1 for a module with ``batch_first=False`` (recurrent layers,
  attention, transformer layers) and for the state of a recurrent layer (``select=1``). It is
  never inferred by comparing sizes.
- **Channel (unit) axis**: by the module's kind (:func:`default_channel_dim`), or what the user
  says with ``channel_dim=``.

Techniques work on the output *arranged* as ``(N, C, *rest)`` (:meth:`LayerView.arrange`) and
map back with :meth:`LayerView.unarrange`, so no technique keeps a rule of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from ._checks import as_int
from ._errors import NetlensTypeError, NetlensValueError, describe
from ._layers import LayerSpec, find_layer, find_layers, unwrap_parallel

__all__ = [
    "LayerView",
    "Select",
    "check_channel_dim",
    "check_select",
    "default_channel_dim",
    "first_tensor",
    "layer_view",
    "layer_views",
]

#: What ``select=`` accepts: an index into a tuple or list output, a key of a mapping output (or
#: an attribute name), or a function from the output to the tensor wanted.
Select: TypeAlias = int | str | Callable[[Any], Any]

# Modules whose units are on the last dim of their output: features of tokens, time steps or
# rows. By class, and for libraries netlens does not import (Hugging Face), by class name.
_LAST_DIM_KINDS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.LayerNorm,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.MultiheadAttention,
    nn.RNNBase,
    nn.RNNCellBase,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.Transformer,
)
_LAST_DIM_NAMES = ("Conv1D",)  # exact class names; LayerNorm, RMSNorm, ... match by suffix
_LAST_DIM_SUFFIXES = ("Attention", "Embeddings", "Embedding", "LayerNorm", "RMSNorm")
# Modules on (N, C, ...) tensors: the convolution family and what follows it.
_FIRST_DIM_KINDS: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd,
    nn.modules.pooling._MaxUnpoolNd,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.ChannelShuffle,
    nn.Fold,
)


def first_tensor(value: Any, module: nn.Module | None = None) -> torch.Tensor | None:
    """The tensor the default rule takes from a layer's output, or None if it holds none."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, PackedSequence):  # before tuple: a PackedSequence is a namedtuple
        batch_first = bool(getattr(module, "batch_first", False))
        padded, _ = pad_packed_sequence(value, batch_first=batch_first)
        return padded
    if isinstance(value, Mapping):
        items: Any = value.values()
    elif isinstance(value, (tuple, list)):
        items = value
    else:
        return None
    for item in items:
        found = first_tensor(item, module)
        if found is not None:
            return found
    return None


def check_select(select: object) -> Select | None:
    """``select`` if it is None, an int, a str or a callable, else raise."""
    if select is None or isinstance(select, str) or callable(select):
        return select
    index = as_int(select)
    if index is None:
        raise NetlensTypeError(
            "Expected select to be None, an index (int), a key (str) or a callable on the "
            f"layer's output, but got {describe(select)}."
        )
    return index


def check_channel_dim(channel_dim: object) -> int | None:
    """``channel_dim`` if it is None or an int, else raise."""
    if channel_dim is None:
        return None
    number = as_int(channel_dim)
    if number is None:
        raise NetlensTypeError(
            f"Expected channel_dim to be None or an int, but got {describe(channel_dim)}."
        )
    return number


def _kind(module: nn.Module) -> int | None:
    """The channel dim a module's kind implies: 1, -1, or None for kind-neutral modules."""
    if isinstance(module, _LAST_DIM_KINDS):
        return -1
    if isinstance(module, _FIRST_DIM_KINDS):
        return 1
    name = type(module).__name__
    if name in _LAST_DIM_NAMES or name.endswith(_LAST_DIM_SUFFIXES):
        return -1
    return None


def _permutation(module: nn.Module) -> tuple[int, ...] | None:
    """The dims of a parameter-free permute module (torchvision's ``Permute``), else None."""
    dims = getattr(module, "dims", None)
    if (
        isinstance(dims, (list, tuple))
        and dims
        and all(isinstance(d, int) for d in dims)
        and sorted(dims) == list(range(len(dims)))
        and next(module.parameters(), None) is None
    ):
        return tuple(dims)
    return None


def _through(dim: int, permutations: list[tuple[int, ...]]) -> int:
    """Where dim ``dim`` of a tensor ends up after the permutations, applied in order."""
    for dims in permutations:
        dim = dims.index(dim % len(dims))
    return dim


def _width(module: nn.Module) -> int | None:
    """How many channels the output of a module of definite kind has, where it says."""
    if isinstance(module, nn.RNNBase):
        size = module.proj_size or module.hidden_size
        return int(size * (2 if module.bidirectional else 1))
    for attribute in ("out_features", "out_channels", "num_features", "embedding_dim"):
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return value
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    if isinstance(module, nn.GroupNorm):
        return int(module.num_channels)
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[1])
    return None


# (channel dim, width of the module the kind came from); the width is None when unknown.
_Kind: TypeAlias = tuple[int, int | None]


def _last_kind(module: nn.Module, after: list[tuple[int, ...]]) -> _Kind | None:
    """The channel dim of a container's output: that of its last module of a definite kind.

    ``after`` collects the permute modules met on the way back, in forward order.
    """
    own = _kind(module)
    if own is not None:
        return _through(own, after), _width(module)
    permutation = _permutation(module)
    if permutation is not None:
        after.insert(0, permutation)
        return None
    for child in reversed(list(module.children())):
        found = _last_kind(child, after)
        if found is not None:
            return found
    return None


def _inherited_kind(model: nn.Module, name: str) -> _Kind | None:
    """The kind of layer ``name`` when it has none of its own (see default_channel_dim)."""
    module = model.get_submodule(name) if name else model
    permutation = _permutation(module)
    after: list[tuple[int, ...]] = [] if permutation is None else [permutation]
    for child in reversed(list(module.children())):
        found = _last_kind(child, after)
        if found is not None:
            return found
    parts = name.split(".") if name else []
    while parts:
        parent = model.get_submodule(".".join(parts[:-1])) if len(parts) > 1 else model
        siblings = list(parent.named_children())
        position = next(i for i, (child, _) in enumerate(siblings) if child == parts[-1])
        for _, sibling in reversed(siblings[:position]):
            found = _last_kind(sibling, after)
            if found is not None:
                return found
        parts = parts[:-1]
    return (_through(1, after), None) if after else None


def default_channel_dim(model: nn.Module, name: str) -> int:
    """The channel dim of layer ``name`` by its kind, before seeing its output.

    A module of a definite kind gives it (convolution family: 1; Linear, Conv1D, LayerNorm,
    Embedding, attention, recurrent: -1). A container takes the kind of its last module of a
    definite kind, mapped through parameter-free permute modules after it. A kind-neutral module
    (an activation, dropout, a block of unknown kind) inherits the kind of the module registered
    before it in its parent, and so on up the parents. With nothing to go by: 1.
    :meth:`LayerView.dims` also checks an inherited kind against the output.
    """
    module = model.get_submodule(name) if name else model
    own = _kind(module)
    if own is not None:
        return own
    inherited = _inherited_kind(model, name)
    return 1 if inherited is None else inherited[0]


def _batch_dim(module: nn.Module, select: Select | None) -> int:
    if isinstance(module, nn.RNNBase) and select == 1:
        return 1  # the state (h_n or (h_n, c_n)): (layers * directions, N, H)
    return 1 if getattr(module, "batch_first", True) is False else 0


@dataclass(frozen=True)
class LayerView:
    """How to read one layer's output: which part, which axis is the batch, which the channel.

    Attributes:
        name: The layer's name in the model.
        module: The layer.
        select: What the user passed as ``select=`` (None: the default rule).
        channel_dim: The channel axis as the user gave it or the module's kind implies.
        batch_dim: The batch axis of the selected output.
        inherited_width: For a channel axis inherited from another module (a block's last
            module, the module before an activation), that module's channel count: an output
            whose size on that axis differs is not explained by the inherited kind, and is read
            with its channels on dim 1 instead. None when the axis is the module's own or the
            user's.
    """

    name: str
    module: nn.Module
    select: Select | None
    channel_dim: int
    batch_dim: int
    inherited_width: int | None = None

    def tensor(self, output: Any) -> torch.Tensor:
        """The tensor of a raw output that the technique looks at."""
        part = output
        if self.select is not None:
            part = self._apply_select(output)
            if isinstance(part, torch.Tensor):
                return part
        found = first_tensor(part, self.module)
        if found is None:
            raise NetlensTypeError(self._no_tensor_message(part))
        return found

    def _apply_select(self, output: Any) -> Any:
        select = self.select
        try:
            if isinstance(select, int):
                if isinstance(output, (tuple, list)) and not isinstance(output, PackedSequence):
                    return output[select]
                raise NetlensTypeError(
                    f"Expected layer {self.name!r} to return a tuple or list for select={select},"
                    f" but it returned {describe(output)}."
                )
            if isinstance(select, str):
                if isinstance(output, Mapping):
                    return output[select]
                if hasattr(output, select):
                    return getattr(output, select)
                raise NetlensTypeError(
                    f"Expected layer {self.name!r} to return a mapping or an object with "
                    f"{select!r} for select={select!r}, but it returned {describe(output)}."
                )
            assert select is not None
            return select(output)
        except (IndexError, KeyError) as error:
            keys = list(output) if isinstance(output, Mapping) else f"{len(output)} items"
            raise NetlensValueError(
                f"Expected select={select!r} to pick a part of the output of layer "
                f"{self.name!r}, but it has none such (it has {keys})."
            ) from error

    def _no_tensor_message(self, value: Any) -> str:
        if self.select is not None:
            return (
                f"Expected select={self.select!r} to pick a tensor from the output of layer "
                f"{self.name!r}, but it picked {describe(value)}."
            )
        return (
            f"Expected layer {self.name!r} to return a tensor, a tuple or list holding one, a "
            f"mapping of tensors or a PackedSequence, but it returned {describe(value)}; pass "
            "select= (an index, a key or a callable) to pick a tensor from it."
        )

    def dims(self, tensor: torch.Tensor) -> tuple[int, int]:
        """The batch and channel axes of the selected tensor, as non-negative dims."""
        rank = tensor.dim()
        if rank < 2:
            raise NetlensValueError(
                f"Expected layer {self.name!r} to output a batch of at least 2 dims (batch, "
                f"channels, ...), but it output {describe(tensor)}."
            )
        batch = self.batch_dim
        dim = self.channel_dim
        if self.inherited_width is not None and (
            not -rank <= dim < rank or tensor.shape[dim] != self.inherited_width
        ):
            # The inherited kind does not explain this output (a block that returns something
            # else than its last module's output): no kind to go by, channels on dim 1.
            dim = 1 if batch != 1 else 2 % rank
        if not -rank <= dim < rank:
            raise NetlensValueError(
                f"Expected channel_dim in [{-rank}, {rank}) for the {rank}-d output of layer "
                f"{self.name!r} (shape {tuple(tensor.shape)}), but got {self.channel_dim}."
            )
        channel = dim % rank
        if channel == batch:
            raise NetlensValueError(
                f"Expected the channel axis of layer {self.name!r} to differ from its batch axis "
                f"(dim {batch}), but channel_dim={self.channel_dim} names it too "
                f"(output shape {tuple(tensor.shape)})."
            )
        return batch, channel

    def order(self, tensor: torch.Tensor) -> list[int]:
        """The permutation that arranges the tensor as ``(N, C, *rest)``."""
        batch, channel = self.dims(tensor)
        return [batch, channel, *(d for d in range(tensor.dim()) if d not in (batch, channel))]

    def arrange(self, tensor: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """The selected tensor as ``(N, C, *rest)`` (a view), checking the batch size."""
        arranged = tensor.permute(self.order(tensor))
        if batch is not None and arranged.shape[0] != batch:
            raise NetlensValueError(
                f"Expected the output of layer {self.name!r} to hold the batch of {batch} inputs "
                f"on dim {self.batch_dim}, but its shape is {tuple(tensor.shape)}. A module with "
                "batch_first=False has its batch on dim 1; pass select= when the layer returns "
                "several tensors."
            )
        return arranged

    def unarrange(self, arranged: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`arrange`: ``(N, C, *rest)`` back to the layout of ``like``."""
        order = self.order(like)
        inverse = [order.index(d) for d in range(len(order))]
        return arranged.permute(inverse)

    def channels(self, tensor: torch.Tensor) -> int:
        """How many channels the selected tensor has."""
        return int(tensor.shape[self.dims(tensor)[1]])


def _view(
    model: nn.Module, name: str, module: nn.Module, select: Select | None, channel_dim: int | None
) -> LayerView:
    batch_dim = _batch_dim(module, select)
    if channel_dim is not None:
        return LayerView(name, module, select, channel_dim, batch_dim)
    own = _kind(module)
    if own is not None:
        return LayerView(name, module, select, own, batch_dim)
    inherited = _inherited_kind(model, name)
    if inherited is None:
        return LayerView(name, module, select, 1, batch_dim)
    return LayerView(name, module, select, inherited[0], batch_dim, inherited[1])


def layer_view(
    model: nn.Module,
    layer: LayerSpec,
    *,
    select: object = None,
    channel_dim: object = None,
) -> LayerView:
    """Resolve one layer (see :func:`~netlens.find_layers`) with its reading rule."""
    model = unwrap_parallel(model)  # names are those of a DDP/DataParallel-wrapped model
    name, module = find_layer(model, layer)
    return _view(model, name, module, check_select(select), check_channel_dim(channel_dim))


def layer_views(
    model: nn.Module,
    layers: LayerSpec,
    *,
    select: object = None,
    channel_dim: object = None,
) -> dict[str, LayerView]:
    """Resolve several layers, each with its reading rule."""
    model = unwrap_parallel(model)  # names are those of a DDP/DataParallel-wrapped model
    checked_select = check_select(select)
    checked_dim = check_channel_dim(channel_dim)
    return {
        name: _view(model, name, module, checked_select, checked_dim)
        for name, module in find_layers(model, layers).items()
    }
