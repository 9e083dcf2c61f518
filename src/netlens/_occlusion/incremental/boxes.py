"""The boxes of the occluder's change: for each position, the part of each map it can reach.

A box is ``[lo, hi)`` per spatial dim of a map. The input's box is the window; a window
operation's box holds the outputs whose window meets its input's box; an elementwise
operation's box is the hull of its operands' boxes (all of the map where a changed operand is
broadcast over it). Boxes are exact per position; grouping (see ``plan``) may grow them.
"""

from __future__ import annotations

import torch
from torch.fx import Node

from .classify import Kind, Step

__all__ = ["Boxes"]


class Boxes:
    """The box each occluder position changes in every patched map, propagated node by node.

    Args:
        origins: ``(positions, len(window))`` (int64, on the CPU): where each window starts in
            the last ``len(window)`` dims of a sample.
        window: The window's size.
    """

    def __init__(self, origins: torch.Tensor, window: tuple[int, ...]) -> None:
        self.origins = origins
        self.window = window
        # Per patched map, (positions, spatial dims): the first corner and the end of each box.
        self.lo: dict[Node, torch.Tensor] = {}
        self.hi: dict[Node, torch.Tensor] = {}

    def propagate(self, step: Step, spatial: tuple[int, ...]) -> None:
        """The box each position changes in a patched map of ``spatial`` size (exact)."""
        node = step.node
        positions = self.origins.shape[0]
        if step.kind == Kind.INPUT:
            lo = torch.zeros(positions, len(spatial), dtype=torch.long)
            hi = torch.tensor(spatial, dtype=torch.long).expand(positions, -1).clone()
            first = len(spatial) + 1 - len(self.window)  # the sample dim of the window's first
            for index, size in enumerate(self.window):
                dim = first + index - 1  # sample dim -> spatial dim (-1: the channels)
                if dim >= 0:
                    lo[:, dim] = self.origins[:, index]
                    hi[:, dim] = self.origins[:, index] + size
        elif step.kind == Kind.LOCAL:
            assert step.local is not None and step.source is not None
            source_lo, source_hi = self.lo[step.source], self.hi[step.source]
            out = torch.tensor(spatial)
            lo, hi = step.local.window.outputs_reading(source_lo, source_hi)
            # A box no window meets (a stride skipping it) still gets one output: recomputed.
            lo = torch.minimum(lo.clamp(min=0), out - 1)
            hi = torch.maximum(torch.minimum(hi, out), lo + 1)
        elif any(how == "row" for how in step.operands.values()):
            # A changed operand broadcast over the map (a channel gate) changes all of it.
            lo = torch.zeros(positions, len(spatial), dtype=torch.long)
            hi = torch.tensor(spatial, dtype=torch.long).expand(positions, -1).clone()
        else:
            boxes = [n for n, how in step.operands.items() if how == "box"]
            lo = torch.stack([self.lo[n] for n in boxes]).amin(0)
            hi = torch.stack([self.hi[n] for n in boxes]).amax(0)
        self.lo[node], self.hi[node] = lo, hi

    def rank(self, node: Node) -> int:
        """The number of spatial dims of a patched map."""
        return int(self.lo[node].shape[1])

    def sizes_matrix(self) -> tuple[list[Node], torch.Tensor]:
        """The patched maps, and ``(positions, columns)``: each position's box sizes in them."""
        patched = list(self.lo)
        if not patched:
            return patched, torch.zeros(self.origins.shape[0], 0, dtype=torch.long)
        return patched, torch.cat([self.hi[n] - self.lo[n] for n in patched], dim=1)

    def split_sizes(self, patched: list[Node], flat: torch.Tensor) -> dict[Node, tuple[int, ...]]:
        """A row of :meth:`sizes_matrix` as the box size in each patched map."""
        sizes: dict[Node, tuple[int, ...]] = {}
        offset = 0
        values = [int(v) for v in flat.tolist()]
        for node in patched:
            rank = self.rank(node)
            sizes[node] = tuple(values[offset : offset + rank])
            offset += rank
        return sizes

    def same(self, node: Node, operand: Node, positions: torch.Tensor | None) -> bool:
        """Whether two maps' boxes coincide at these positions (all of them for None)."""
        lo, hi = self.lo[node], self.hi[node]
        lo_op, hi_op = self.lo[operand], self.hi[operand]
        if positions is not None:
            lo, hi, lo_op, hi_op = lo[positions], hi[positions], lo_op[positions], hi_op[positions]
        return bool(torch.equal(lo, lo_op) and torch.equal(hi, hi_op))
