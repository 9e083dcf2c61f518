"""Layer lookup: turn a user's layer spec into named modules of a model."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from contextlib import suppress
from typing import TypeAlias, cast

import torch
from torch import nn

from .errors import (
    LayerNotFoundError,
    NetlensTypeError,
    NetlensValueError,
    UnsupportedModelError,
    describe,
)

__all__ = [
    "LayerSpec",
    "check_model",
    "find_layer",
    "find_layers",
    "named_modules",
    "select_layers",
    "unwrap_parallel",
]

#: What :func:`find_layers` accepts: a dotted name, a glob, a module class, a module object, or
#: a list of these.
LayerSpec: TypeAlias = (
    str | type[nn.Module] | nn.Module | Sequence[str | type[nn.Module] | nn.Module]
)

_GLOB_CHARS = frozenset("*?[")
# What DistributedDataParallel and DataParallel put before the names of the wrapped model.
_PARALLEL_PREFIX = "module."
# Below this many layers an unknown-name error lists every name; above, only close matches.
_LIST_ALL_BELOW = 40


def check_model(model: object) -> nn.Module:
    """Return ``model`` if it is an ``nn.Module`` that hooks can see into, else raise."""
    if not isinstance(model, nn.Module):
        raise NetlensTypeError(
            f"Expected model to be a torch.nn.Module, but got {describe(model)}."
        )
    if _is_compiled(model):
        raise UnsupportedModelError(
            "Expected an eager nn.Module, but got a torch.compile'd model: hooks added after "
            "compilation are ignored by the compiled graph (pytorch#117758), so netlens would "
            "silently see nothing. Pass the original module instead (model._orig_mod) and call "
            "that one while netlens is working."
        )
    if isinstance(model, torch.jit.ScriptModule):
        raise NetlensTypeError(_torchscript_message("model", model))
    _check_tree(model)
    return model


def _torchscript_message(what: str, module: nn.Module) -> str:
    return (
        f"Expected {what} to be an eager nn.Module, but got a TorchScript module "
        f"({type(module).__name__}, from torch.jit.script or torch.jit.trace): TorchScript "
        "modules cannot be hooked (scripted ones refuse hooks, traced ones never run them), so "
        "netlens cannot see their layers. Pass the original nn.Module, the one that was "
        "scripted or traced."
    )


def _check_tree(model: nn.Module) -> None:
    """Raise if a module contains itself: a submodule that refers back to one of its parents.

    torch's own recursive walks (``train``, ``eval``, ``to``, ``state_dict``) never end on such a
    model; netlens says where the loop is instead.
    """
    # Depth first, iteratively; a module shared by several parents (a DAG) is no loop, a
    # module met again while it is still on the path is.
    on_path: set[int] = set()
    done: set[int] = set()
    stack: list[tuple[str, nn.Module, bool]] = [("", model, False)]
    names: dict[int, str] = {}
    while stack:
        name, module, leaving = stack.pop()
        key = id(module)
        if leaving:
            on_path.discard(key)
            done.add(key)
            continue
        if key in done:
            continue
        on_path.add(key)
        names[key] = name
        stack.append((name, module, True))
        for child_name, child in module._modules.items():
            if child is None:
                continue
            path = f"{name}.{child_name}" if name else child_name
            if id(child) in on_path:
                parent = names[id(child)]
                raise NetlensValueError(
                    "Expected the model's modules to form a tree, but "
                    f"{path!r} is {'the model itself' if not parent else repr(parent)}, "
                    "which contains it: a module registered inside itself (for example "
                    "self.block.owner = self). torch's own train(), eval(), to() and state_dict() "
                    "recurse forever on such a model. Keep the back reference out of the module "
                    "tree (a weakref.ref, or object.__setattr__(self.block, 'owner', self))."
                )
            if id(child) not in done:
                stack.append((path, child, False))


def named_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``name -> module`` of ``model``, a module registered under several names once each.

    Unlike ``model.named_modules()``, which lists a shared module under its first name only,
    every name works (``model.b = model.a``: both ``"a"`` and ``"b"``). The model must be a tree
    (:func:`check_model`).
    """
    return dict(model.named_modules(remove_duplicate=False))


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The model inside ``DistributedDataParallel`` or ``DataParallel`` wrappers, else ``model``.

    Techniques run the wrapped model itself: the wrapper's forward adds gradient and buffer
    synchronisation between processes, which only training needs, and which would wait forever
    for ranks that run a different number of forward passes.
    """
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        inner = model.module
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


def _is_compiled(module: nn.Module) -> bool:
    # torch._dynamo.eval_frame.OptimizedModule; checked by name so that importing netlens never
    # imports dynamo.
    return type(module).__name__ == "OptimizedModule" and hasattr(module, "_orig_mod")


def _glob_match(pattern: str, name: str) -> bool:
    """Match dotted names part by part: ``*`` stays inside one part, ``**`` spans any number."""
    pattern_parts = pattern.split(".")
    name_parts = name.split(".") if name else []

    def match(p: int, n: int) -> bool:
        if p == len(pattern_parts):
            return n == len(name_parts)
        if pattern_parts[p] == "**":
            return any(match(p + 1, k) for k in range(n, len(name_parts) + 1))
        return (
            n < len(name_parts)
            and fnmatch.fnmatchcase(name_parts[n], pattern_parts[p])
            and match(p + 1, n + 1)
        )

    return match(0, 0)


def _unknown_name_message(spec: str, names: list[str]) -> str:
    close = difflib.get_close_matches(spec, names, n=5, cutoff=0.5)
    message = f"Expected a layer name of the model, but got {spec!r}, which names no module."
    if close:
        message += " Did you mean: " + ", ".join(repr(n) for n in close) + "?"
    if len(names) < _LIST_ALL_BELOW:
        message += " The model's layers are: " + ", ".join(repr(n) for n in names) + "."
    else:
        message += (
            f" The model has {len(names)} layers; print(dict(model.named_modules())) lists them."
        )
    return message


def _once(found: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """``found`` with each module once, under its first name (in model order)."""
    seen: set[int] = set()
    kept = {}
    for name, module in found.items():
        if id(module) not in seen:
            seen.add(id(module))
            kept[name] = module
    return kept


def _first_names(named: dict[str, nn.Module]) -> list[str]:
    """The names to show: each module under its first name, the model itself left out."""
    return [name for name in _once(named) if name]


def _find_one(
    model: nn.Module,
    spec: str | type[nn.Module] | nn.Module,
    named: dict[str, nn.Module],
    name: str,
) -> dict[str, nn.Module]:
    try:
        return _find_spec(model, spec, named, name)
    except LayerNotFoundError as error:
        # "module.conv1", as a DistributedDataParallel or DataParallel wrapper names it (in
        # its state_dict too): the wrapped model's "conv1".
        if isinstance(spec, str) and spec.startswith(_PARALLEL_PREFIX):
            with suppress(LayerNotFoundError):
                return _find_one(model, spec[len(_PARALLEL_PREFIX) :], named, name)
        raise error from None


def _find_spec(
    model: nn.Module,
    spec: str | type[nn.Module] | nn.Module,
    named: dict[str, nn.Module],
    name: str,
) -> dict[str, nn.Module]:
    if isinstance(spec, str):
        if not spec.strip():
            raise NetlensValueError(
                f"Expected {name} to be a non-empty layer name or glob, but got an empty string."
            )
        if spec in named:
            return {spec: named[spec]}
        if _GLOB_CHARS & set(spec):
            found = _once(
                {key: module for key, module in named.items() if key and _glob_match(spec, key)}
            )
            if not found:
                raise LayerNotFoundError(
                    f"Expected the glob {spec!r} to match at least one layer, but it matched none "
                    "('*' stays within one dotted part, '**' spans several)."
                    + _unknown_name_message(spec, _first_names(named)).split(
                        "which names no module.", 1
                    )[1]
                )
            return found
        raise LayerNotFoundError(_unknown_name_message(spec, _first_names(named)))
    if isinstance(spec, type):
        if not issubclass(spec, nn.Module):
            raise NetlensTypeError(
                f"Expected {name} to be a subclass of torch.nn.Module when it is a class, but "
                f"got {spec.__name__}."
            )
        found = _once(
            {key: module for key, module in named.items() if key and isinstance(module, spec)}
        )
        if not found and isinstance(model, spec):
            found = {"": model}
        if not found:
            kinds = sorted({type(m).__name__ for key, m in named.items() if key})
            raise LayerNotFoundError(
                f"Expected at least one layer of type {spec.__name__}, but the model has none; "
                f"its layer types are: {', '.join(kinds) or 'none'}."
            )
        return found
    if isinstance(spec, nn.Module):
        spec = unwrap_parallel(spec)
        for key, module in named.items():
            if module is spec:
                return {key: module}
        raise LayerNotFoundError(
            f"Expected a module that is part of the model, but got a {type(spec).__name__} "
            "that is not among model.modules()."
        )
    raise NetlensTypeError(
        f"Expected {name} to be a layer spec (a dotted name, a glob, a module class, a module, "
        f"or a list of these), but got {describe(spec)}."
    )


def find_layers(model: nn.Module, spec: LayerSpec) -> dict[str, nn.Module]:
    """Select layers of a model by name, glob, type or identity.

    Args:
        model: Any ``nn.Module``.
        spec: A dotted name (``"features.3"``), a glob (``"conv*"``, ``"encoder.*.relu"``; ``*``
            stays inside one dotted part and ``**`` spans any number of parts), a module class
            (``nn.Conv2d``, subclasses included), a module object of the model, or a list of
            these. A class matches the model itself (under the name ``""``) only when no
            submodule matches.

    A model wrapped in ``torch.nn.parallel.DistributedDataParallel`` or ``torch.nn.DataParallel``
    is looked through: layers are found in the wrapped model and named as in it (``"conv1"``, as
    without the wrapper), and a name with the wrappers' ``module.`` prefix (``"module.conv1"``,
    as in their ``state_dict``) names the same layer, for a wrapped model or not.

    Returns:
        An ordered ``{name: module}`` dict in the order of ``model.named_modules()`` for one spec,
        and in the order of the list for a list. A module registered under several names
        (``model.b = model.a``) is found by each of them; a glob or a type matches it once,
        under its first name.

    Raises:
        LayerNotFoundError: An unknown name (the message lists close matches), or a glob or type
            that matches nothing.
        NetlensTypeError: A model that is not an ``nn.Module``, a TorchScript model or layer
            (``torch.jit.script``, ``torch.jit.trace``: hooks cannot see into them), or a spec
            of another type.
        NetlensValueError: An empty spec, or a model that contains itself (a submodule that
            refers back to one of its parents).
        UnsupportedModelError: A ``torch.compile``'d model, whose hooks would never run.

    Example:
        >>> import torch.nn as nn
        >>> import netlens as nl
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3))
        >>> list(nl.find_layers(net, nn.Conv2d))
        ['0', '2']
        >>> list(nl.find_layers(net, ["1", "2"]))
        ['1', '2']
        >>> list(nl.find_layers(nn.DataParallel(net), ["module.0", "2"]))
        ['0', '2']
    """
    return select_layers(model, spec, name="spec")


def select_layers(model: nn.Module, spec: object, *, name: str) -> dict[str, nn.Module]:
    """:func:`find_layers`, its messages naming the argument ``name`` the user passed ``spec`` as.

    ``find_layers`` calls it ``spec``; the techniques ``layer`` or ``layers``.
    """
    check_model(model)
    model = unwrap_parallel(model)
    named = named_modules(model)
    specs: Sequence[object]
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise NetlensValueError(
                f"Expected {name} to hold at least one layer spec, but got an empty list."
            )
        specs = spec
    else:
        specs = [spec]
    found: dict[str, nn.Module] = {}
    for item in specs:
        found.update(_find_one(model, cast("str | type[nn.Module] | nn.Module", item), named, name))
    for key in found:
        _check_not_inside_compiled(model, key)
    return found


def find_layer(model: nn.Module, spec: object, *, name: str = "layer") -> tuple[str, nn.Module]:
    """Resolve ``spec`` like :func:`find_layers`, requiring that it selects exactly one layer."""
    found = select_layers(model, spec, name=name)
    if len(found) != 1:
        raise NetlensValueError(
            f"Expected {name} to select exactly one layer, but {spec!r} selected {len(found)}: "
            + ", ".join(repr(key) for key in list(found)[:10])
            + "."
        )
    ((key, module),) = found.items()
    return key, module


def _check_not_inside_compiled(model: nn.Module, name: str) -> None:
    parts = name.split(".") if name else []
    module = model
    for part in parts:
        if _is_compiled(module) or isinstance(module, torch.jit.ScriptModule):
            break
        module = getattr(module, part)
    else:
        if not _is_compiled(module) and not isinstance(module, torch.jit.ScriptModule):
            return
    if isinstance(module, torch.jit.ScriptModule):
        raise NetlensTypeError(_torchscript_message(f"layer {name!r} and its parents", module))
    raise UnsupportedModelError(
        f"Expected layer {name!r} to run eagerly, but it lies inside a torch.compile'd module: "
        "hooks added after compilation are ignored (pytorch#117758). Record from the module "
        "before compiling it, or from its _orig_mod."
    )
