"""The tally of one occlusion run: what every forward pass said, stored per position.

Slot 0 of a pass is the unoccluded inputs, slot ``k`` the occluder at position ``k - 1``, so
that the unoccluded pass can share the first forward pass with the first occluded copies. Plain
passes (:meth:`Tally.add`) and incremental ones (:meth:`Tally.record`) report here; the scores
of the unoccluded inputs fix the target class of each input (``target="pred"``) and the tracked
channel (by default, the strongest one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .._core.checks import check_channels_fit
from .._core.errors import NetlensTypeError, NetlensValueError, describe

if TYPE_CHECKING:
    from .job import OcclusionJob
    from .plain import Chunk

__all__ = ["Tally", "check_finite_sums", "checked_scores"]


class Tally:
    """Per input and position: the target's score, the predicted class and the channel sums.

    Args:
        job: The checked occlusion request.
    """

    def __init__(self, job: OcclusionJob) -> None:
        self.count = job.inputs.shape[0]
        self.positions = job.grid.positions
        self.score_function = job.scores
        self.custom_scores = job.custom_scores
        self.requested_target = job.target
        self.requested_channels = job.channels
        self.layer = None if job.layer is None else job.layer.name
        # Allocated at the first forward pass, in the dtype and on the device of the scores and
        # of the activations.
        self.target = torch.zeros(0, dtype=torch.long)
        self.predicted = torch.zeros(0, dtype=torch.long)
        self.base_score = torch.zeros(0)
        self.probability = torch.zeros(0)
        # (N, K): the K channels tracked for each input; K = 1 for the strongest one.
        self.channel_index = torch.zeros(0, 1, dtype=torch.long)
        self.activation = torch.zeros(0)  # (N, K, positions)
        self.classes = -1
        # The scores and sums of the unoccluded inputs, to check a traced graph against.
        self.unoccluded_scores: list[torch.Tensor] = []
        self.unoccluded_sums: list[torch.Tensor] = []

    def add(self, chunk: Chunk, scores: torch.Tensor, sums: torch.Tensor | None) -> None:
        """Store a plain pass over a chunk: its checked :meth:`scores` and the layer's sums."""
        first, stop, n_first, n_stop = chunk
        slots, members = stop - first, n_stop - n_first
        scores = scores.reshape(slots, members, -1)
        if sums is not None:
            sums = sums.reshape(slots, members, -1)
        if first == 0:
            self._unoccluded(scores[0], None if sums is None else sums[0], n_first, n_stop)
            scores = scores[1:]
            sums = None if sums is None else sums[1:]
        if scores.shape[0] == 0:
            return
        self._store(slice(max(first, 1) - 1, stop - 1), n_first, n_stop, scores, sums)

    def record(
        self,
        positions: torch.Tensor,
        n_first: int,
        n_stop: int,
        output: Any,
        sums: torch.Tensor | None,
    ) -> None:
        """Store what incremental inference computed for some positions of some inputs."""
        count, members = positions.shape[0], n_stop - n_first
        scores = self.scores(output, count * members).reshape(count, members, -1)
        if sums is not None and self.layer is not None:
            check_finite_sums(sums, self.layer)
        if sums is not None:
            sums = sums.reshape(count, members, -1)
        self._store(positions.to(scores.device), n_first, n_stop, scores, sums)

    def scores(self, output: Any, rows: int) -> torch.Tensor:
        """The scores of a pass's ``rows`` copies, ``(rows, classes)``, checked."""
        scores = checked_scores(self.score_function, output, rows, self.custom_scores)
        finite = torch.isfinite(scores).all(1) if scores.is_floating_point() else None
        if finite is not None and not bool(finite.all()):
            # One rule for every technique: no NaN or inf returned without a word.
            raise NetlensValueError(
                "Expected finite scores from the model, but its output on "
                f"{int((~finite).sum())} of the {rows} inputs of a forward pass (occluded copies "
                "or the inputs themselves) holds NaN or inf values, which would make the maps "
                "NaN there. Check the model on occluded inputs (a division by something the "
                "occluder can make zero, a log of it) or try another baseline."
            )
        if self.classes < 0:
            self._allocate(scores)
        if scores.shape[1] != self.classes:
            raise NetlensValueError(
                f"Expected the same number of scores on every forward pass ({self.classes}), "
                f"but got {scores.shape[1]}."
            )
        return scores

    def _store(
        self,
        occluded: slice | torch.Tensor,
        n_first: int,
        n_stop: int,
        scores: torch.Tensor,
        sums: torch.Tensor | None,
    ) -> None:
        """``scores`` and ``sums`` are ``(positions, members, ...)``."""
        members = slice(n_first, n_stop)
        picked = self.target[members].expand(scores.shape[0], n_stop - n_first)[..., None]
        self.probability[members, occluded] = scores.gather(2, picked)[..., 0].T
        self.predicted[members, occluded] = scores.argmax(2).T
        if sums is not None:
            picked = self.channel_index[members].expand(sums.shape[0], n_stop - n_first, -1)
            self.activation[members, :, occluded] = sums.gather(2, picked).permute(1, 2, 0)

    def _allocate(self, scores: torch.Tensor) -> None:
        self.classes = scores.shape[1]
        if self.requested_target is not None:
            _check_classes(self.requested_target, self.classes)
        positions = self.positions
        self.target = torch.zeros(self.count, dtype=torch.long, device=scores.device)
        self.predicted = torch.zeros(self.count, positions, dtype=torch.long, device=scores.device)
        self.base_score = scores.new_zeros(self.count)
        self.probability = scores.new_zeros(self.count, positions)

    def _unoccluded(
        self, scores: torch.Tensor, sums: torch.Tensor | None, n_first: int, n_stop: int
    ) -> None:
        members = slice(n_first, n_stop)
        self.unoccluded_scores.append(scores)
        if sums is not None:
            self.unoccluded_sums.append(sums)
        if self.requested_target is None:
            self.target[members] = scores.argmax(1)
        else:
            self.target[members] = self.requested_target[members]
        self.base_score[members] = scores.gather(1, self.target[members, None])[:, 0]
        if sums is None or self.layer is None:
            return
        if self.activation.dim() == 1:  # the first unoccluded pass: allocate
            requested = self.requested_channels
            if requested is None:
                picked = torch.zeros(self.count, 1, dtype=torch.long, device=sums.device)
            else:
                check_channels_fit("channel", requested, sums.shape[1], self.layer)
                picked = torch.tensor(requested, device=sums.device).expand(self.count, -1)
            self.channel_index = picked
            self.activation = sums.new_zeros(self.count, picked.shape[1], self.positions)
        if self.requested_channels is None:
            self.channel_index[members, 0] = sums.argmax(1)


def _check_classes(target: torch.Tensor, classes: int) -> None:
    if bool((target >= classes).any()):
        raise NetlensValueError(
            f"Expected target classes in [0, {classes}), but got "
            f"{target[target >= classes].tolist()}."
        )


def checked_scores(
    scores: Callable[[Any], torch.Tensor], output: object, rows: int, custom: bool
) -> torch.Tensor:
    """``scores(output)`` for a pass of ``rows`` copies, which must be ``(rows, classes)``.

    The model's own output must be a tensor unless the scores function is the user's
    (``custom``), which picks them from whatever the model returns.
    """
    if not custom and not isinstance(output, torch.Tensor):
        raise NetlensTypeError(
            "Expected the model to return a tensor of scores (batch, classes), but it returned "
            f"{describe(output)}; pass scores= a callable that picks the scores from it."
        )
    result = scores(output)
    if not isinstance(result, torch.Tensor) or result.dim() != 2 or result.shape[0] != rows:
        raise NetlensValueError(
            f"Expected scores of shape (batch, classes) for a batch of {rows} copies, but got "
            f"{describe(result)}; pass scores= a callable that maps the model's output to them."
        )
    return result


def check_finite_sums(sums: torch.Tensor, layer: str) -> None:
    """The summed activations of a layer must be finite (the NaN rule of every technique)."""
    if sums.is_floating_point() and not bool(torch.isfinite(sums).all()):
        bad = int((~torch.isfinite(sums)).any(1).sum()) if sums.dim() > 1 else 1
        raise NetlensValueError(
            f"Expected finite activations of layer {layer!r}, but its output on {bad} of the "
            f"{sums.shape[0]} inputs of a forward pass holds NaN or inf values, which would make "
            "feature_activation NaN there."
        )
