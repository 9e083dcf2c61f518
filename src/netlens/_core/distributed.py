"""torch.distributed for data-set-wide results: which process group, and gathering across it.

Only what merging results needs: every rank sends its partial result to every other rank
(``all_gather_object`` for any picklable value, ``all_gather`` for tensors of one shape), and
each merges them in rank order, so every rank ends with the same result. ``torch.distributed``
is imported only when a group is used: netlens calls it nowhere else.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import NetlensTypeError, NetlensValueError, describe

__all__ = [
    "Group",
    "collective_device",
    "gather",
    "gather_tensors",
    "rank_of",
    "resolve_group",
    "same_group",
    "sum_over_ranks",
    "world_size",
]

#: What ``group=`` accepts: None (no reduction), ``"default"`` or a process group.
Group = Any


def resolve_group(group: object, *, default: bool = False) -> Any:
    """The process group that ``group`` names, or None for no reduction.

    ``group`` is None, ``"default"`` (the initialised default group) or a
    ``torch.distributed.ProcessGroup`` that this rank belongs to. With ``default=True`` None
    means the default group too (as in ``all_reduce(group=None)``).
    """
    if group is None and not default:
        return None
    import torch.distributed as dist

    if group is None or isinstance(group, str):
        if group is not None and group != "default":
            raise NetlensValueError(
                f'Expected group to be a process group or "default", but got {group!r}.'
            )
        if not (dist.is_available() and dist.is_initialized()):
            raise NetlensValueError(
                "Expected an initialised torch.distributed default process group, but there is "
                "none: call torch.distributed.init_process_group first (torchrun sets up its "
                "environment)."
            )
        return dist.group.WORLD
    if not (dist.is_available() and isinstance(group, dist.ProcessGroup)):
        raise NetlensTypeError(
            'Expected group to be None, "default" or a torch.distributed.ProcessGroup, but got '
            f"{describe(group)}."
        )
    if dist.get_rank(group) < 0:
        raise NetlensValueError(
            "Expected a process group that this rank belongs to, but this rank is not in it."
        )
    return group


def same_group(first: Any, second: Any) -> bool:
    """Whether two resolved groups are the same group."""
    return first is not None and first is second


def gather(value: Any, group: Any) -> list[Any]:
    """``value`` of every rank of ``group``, in rank order (``value`` itself for no group).

    Tensors in ``value`` should be on the CPU: they are pickled.
    """
    if group is None:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, value, group=group)
    return gathered


def rank_of(group: Any) -> int:
    """This process's rank in ``group`` (0 for no group)."""
    if group is None:
        return 0
    import torch.distributed as dist

    return int(dist.get_rank(group))


def world_size(group: Any) -> int:
    """How many ranks ``group`` has (1 for no group)."""
    if group is None:
        return 1
    import torch.distributed as dist

    return int(dist.get_world_size(group))


def gather_tensors(tensor: torch.Tensor, group: Any) -> list[torch.Tensor]:
    """``tensor`` of every rank of ``group``, in rank order (``[tensor]`` for no group).

    Every rank passes a tensor of the same shape and dtype, on :func:`collective_device` or
    wherever the backend takes it; nothing is pickled.
    """
    if group is None:
        return [tensor]
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor, group=group)
    return parts


def sum_over_ranks(tensor: torch.Tensor, group: Any) -> None:
    """Replace ``tensor`` by its sum over the ranks of ``group``, on every rank (in place).

    A tensor on another device than the backend takes (the CPU for NCCL) travels through a copy
    on :func:`collective_device`. Nothing is pickled.
    """
    if group is None:
        return
    import torch.distributed as dist

    device = collective_device(group)
    if tensor.device == device:
        dist.all_reduce(tensor, group=group)
        return
    moved = tensor.to(device)
    dist.all_reduce(moved, group=group)
    tensor.copy_(moved)


def collective_device(group: Any) -> torch.device:
    """Where a tensor for :func:`gather_tensors` goes when nothing else says: NCCL needs CUDA.

    The current CUDA device for the NCCL backend, the CPU otherwise (and for no group).
    """
    if group is None:
        return torch.device("cpu")
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
