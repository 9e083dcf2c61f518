"""Tracing for incremental inference: the model's ``torch.fx`` graph, taken privately.

The tracer works on a shadow of the model's module tree, so that neither the model nor another
thread sees anything change; a forward pass that changes the model's attributes as it runs (a
side effect a traced graph would not repeat), a module with the user's hooks, or a forward that
torch.fx cannot trace is refused with :class:`Unavailable`, the refusal every stage of the
engine raises.
"""

from __future__ import annotations

import copy
import inspect
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, cast

from torch import nn
from torch.fx import Graph, Tracer

from ..._core.hooks import global_user_hooks, user_hooks

__all__ = ["Unavailable", "trace_graph"]


class Unavailable(Exception):
    """Incremental inference cannot run on this model; the message says what prevents it."""


def _hooked(model: nn.Module) -> str | None:
    """The first module with forward hooks of the user's, which the engine would bypass, or None.

    netlens' own hooks act only for the thread that installed them (see ``_hooks``): another
    thread's, found here, do nothing in this thread's passes and do not count.
    """
    if global_user_hooks():
        return "global forward hooks (torch.nn.modules.module.register_module_forward_hook)"
    for name, module in model.named_modules():
        if user_hooks(module):
            return f"module {name or 'model'!r} ({type(module).__name__}) has forward hooks"
    return None


@dataclass
class _Snapshot:
    """The attributes of every module, to see and undo what a traced forward pass changed."""

    entries: list[tuple[nn.Module, dict[str, Any], dict[str, Any]]]

    @staticmethod
    def take(model: nn.Module) -> _Snapshot:
        entries = []
        for module in model.modules():
            attributes = dict(vars(module))
            contents = {
                key: copy.copy(value)
                for key, value in attributes.items()
                if type(value) in (list, dict, set)
            }
            entries.append((module, attributes, contents))
        return _Snapshot(entries)

    def restore(self, names: dict[nn.Module, str]) -> list[str]:
        """Put every attribute back; say which ones the forward pass changed itself."""
        changed = []
        for module, attributes, contents in self.entries:
            now = vars(module)
            where = names.get(module, "?") or "model"
            for key in list(now):
                if key not in attributes:
                    if not key.startswith("_tensor_constant"):  # the tracer's own, not the model's
                        changed.append(f"{where}.{key}")
                    del now[key]
            for key, value in attributes.items():
                if now.get(key, _MISSING) is not value:
                    changed.append(f"{where}.{key}")
                    now[key] = value
                if key in contents and not _same_contents(value, contents[key]):
                    changed.append(f"{where}.{key}")
                    _put_back(value, contents[key])
        return changed


_MISSING = object()


def _same_contents(value: Any, saved: Any) -> bool:
    if isinstance(value, list):
        return len(value) == len(saved) and all(a is b for a, b in zip(value, saved, strict=True))
    if isinstance(value, dict):
        return value.keys() == saved.keys() and all(value[k] is saved[k] for k in value)
    return bool(value == saved)


def _put_back(value: Any, saved: Any) -> None:
    if isinstance(value, list):
        value[:] = saved
    else:
        value.clear()
        value.update(saved)


class _PrivateTracer(Tracer):
    """torch.fx's tracer without its process-wide patches.

    ``Tracer.trace`` replaces ``nn.Module.__call__`` and ``__getattr__`` for the whole process
    while it runs, so that a plain forward pass in another thread meanwhile gets a ``Proxy``
    back. This tracer instead runs the model's forward on a *shadow* of its module tree: a copy
    of every module object (sharing its parameters and buffers, with copies of its lists and
    dicts) whose class is a subclass that routes its calls to this tracer. Nothing the user's
    model, another thread or torch can see is changed: the shadow is this call's alone.
    Parameters reach the graph as ``get_attr`` nodes where an operation meets them
    (``Tracer.create_arg``), not through a patched ``__getattr__``; ``torch.fx.wrap``'ed and
    ``math`` functions are not wrapped (a model that needs them is refused: its tracing fails).
    """

    def __init__(self, leaf: nn.Module | None) -> None:
        super().__init__(autowrap_modules=cast(Any, ()), autowrap_functions=())
        self.leaf = leaf
        self.originals: dict[int, nn.Module] = {}  # id(shadow) -> the user's module

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        original = self.originals.get(id(m), m)
        return original is self.leaf or super().is_leaf_module(original, module_qualified_name)

    def shadow(self, model: nn.Module) -> nn.Module:
        """The shadow of ``model``'s tree (a module under two names stays one module)."""
        made: dict[int, nn.Module] = {}
        classes: dict[type, type] = {}

        def copy_of(module: nn.Module) -> nn.Module:
            found = made.get(id(module))
            if found is not None:
                return found
            cls = type(module)
            if cls not in classes:
                classes[cls] = type(
                    cls.__name__,
                    (cls,),
                    {"__call__": _shadow_call, "__module__": cls.__module__},
                )
            shadow: nn.Module = object.__new__(classes[cls])
            made[id(module)] = shadow
            state = {
                key: copy.copy(value) if type(value) in _CONTAINERS else value
                for key, value in vars(module).items()
            }
            state["_modules"] = {
                name: None if child is None else copy_of(child)
                for name, child in module._modules.items()
            }
            state[_TRACER] = self
            vars(shadow).update(state)
            self.originals[id(shadow)] = module
            return shadow

        try:
            return copy_of(model)
        except Exception as error:  # a class that cannot be subclassed or copied
            raise Unavailable(
                f"the model's modules cannot be traced privately ({type(error).__name__}: {error})"
            ) from error

    def trace_shadow(self, root: nn.Module, concrete: dict[str, Any]) -> Graph:
        """The graph of ``root`` (a shadow): what ``Tracer.trace`` does, minus its patches."""
        self.root = root
        self.root_module_name = type(root).__name__
        self.submodule_paths = {module: name for name, module in root.named_modules()}
        self.graph = Graph(tracer_cls=type(self))
        self.tensor_attrs = {}
        forward = type(self.originals[id(root)]).forward
        function, args = self.create_args_for_root(forward, True, concrete or None)
        self.create_node("output", "output", (self.create_arg(function(*args)),), {})
        self.submodule_paths = None
        return self.graph


_CONTAINERS = (list, dict, set, OrderedDict)
_TRACER = "_netlens_tracer"


def _shadow_call(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """A shadow module's call: the tracer records it as one call or traces its forward."""
    tracer: _PrivateTracer = vars(self)[_TRACER]
    return tracer.call_module(self, self.forward, args, kwargs)


def trace_graph(model: nn.Module, leaf: nn.Module | None) -> tuple[Graph, dict[str, Any]]:
    """The model's graph (``leaf`` kept as one call) and the values of its attributes.

    Raises:
        Unavailable: Saying what prevents tracing the model.
    """
    hooked = _hooked(model)
    if hooked is not None:
        raise Unavailable(f"{hooked}, which incremental inference would not run")
    parameters = list(inspect.signature(model.forward).parameters.values())
    if not parameters or parameters[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise Unavailable("the model's forward takes no single positional input")
    concrete = {}
    for parameter in parameters[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.default is parameter.empty:
            raise Unavailable(
                f"the model's forward takes more than one required argument ({parameter.name!r})"
            )
        concrete[parameter.name] = parameter.default
    tracer = _PrivateTracer(leaf)
    root = tracer.shadow(model)
    names = {module: name for name, module in root.named_modules()}
    snapshot = _Snapshot.take(root)
    try:
        graph = tracer.trace_shadow(root, concrete)
        attributes = {
            str(node.target): _attribute(root, str(node.target))
            for node in graph.nodes
            if node.op == "get_attr"
        }
    except Unavailable:
        raise
    except Exception as error:  # any failure of the tracer: the model is not traceable
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise Unavailable(
            f"torch.fx cannot trace the model ({type(error).__name__}: {text[:200]})"
        ) from error
    # The shadow is thrown away; what its forward changed on it tells of side effects that a
    # traced graph would not repeat.
    changed = [name for name in snapshot.restore(names) if not name.endswith(f".{_TRACER}")]
    if changed:
        raise Unavailable(
            f"the model's forward changes {', '.join(sorted(set(changed)))} as it runs, which a "
            "traced graph would not do"
        )
    return graph, attributes


def _attribute(model: nn.Module, target: str) -> Any:
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part)
    return value
