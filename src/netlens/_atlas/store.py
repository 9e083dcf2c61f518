"""What an atlas build has finished, kept under ``out/.atlas-state/`` so that a rerun resumes.

Each stage (the pass over the data, then per layer the data-set examples and the feature
visualisations) is written when it is done, atomically (a temporary file renamed into place),
and read back instead of recomputed when the build runs again with the same model, data size
and options: the ``fingerprint`` says which. A build with other options or another model starts
afresh (its fingerprint differs, and the old state is cleared). Reading a stage back gives the
very tensors that were written, so a resumed build equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["Store", "fingerprint"]

_FOLDER = ".atlas-state"
_MANIFEST = "manifest.json"


def fingerprint(model: nn.Module, options: dict[str, Any]) -> str:
    """A digest of the model's class, parameters and buffers, and of the build's options."""
    digest = hashlib.sha256()
    digest.update(type(model).__qualname__.encode())
    digest.update(json.dumps(options, sort_keys=True, default=repr).encode())
    for name, tensor in (*model.state_dict().items(),):
        digest.update(name.encode())
        if isinstance(tensor, torch.Tensor):
            values = tensor.detach().to("cpu").contiguous()
            digest.update(str((values.dtype, tuple(values.shape))).encode())
            digest.update(values.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Store:
    """The finished stages of one build, or nothing (``folder`` None: no ``out``, no resume).

    Args:
        out: The site's folder, or None.
        key: The build's :func:`fingerprint`.
        resume: Whether finished stages may be read back; without it they are only written.
        writer: Whether this process writes (rank 0 of a group; every process reads).
    """

    def __init__(self, out: Path | None, key: str, *, resume: bool, writer: bool) -> None:
        self.folder = None if out is None else out / _FOLDER
        self.key, self.resume, self.writer = key, resume, writer
        if self.folder is None or not writer:
            return
        manifest = self.folder / _MANIFEST
        same = manifest.exists() and _read_key(manifest) == key
        if not (same and resume) and self.folder.exists():
            shutil.rmtree(self.folder)  # another build's state: it can only mislead
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic(manifest, json.dumps({"fingerprint": key}).encode())

    def load(self, stage: str, *, mapped: bool = False) -> Any | None:
        """What ``stage`` stored in an earlier run of this build, or None.

        ``mapped`` maps the file's tensors into memory instead of reading them: they take no
        memory until read, and the system may drop what was read (the file stays unchanged:
        a later save writes a new file in its place).
        """
        if self.folder is None or not (self.resume or mapped):
            return None
        path = self.folder / f"{stage}.pt"
        manifest = self.folder / _MANIFEST
        if not path.exists() or not manifest.exists() or _read_key(manifest) != self.key:
            return None
        # plain tensors, numbers and strings only: nothing in the folder can run code when read
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)

    def save(self, stage: str, value: Any) -> None:
        """Keep ``value`` as ``stage``'s result (only in the writing process)."""
        if self.folder is None or not self.writer:
            return
        path = self.folder / f"{stage}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".partial")
        torch.save(value, temporary)
        os.replace(temporary, path)


def _read_key(manifest: Path) -> str | None:
    try:
        value = json.loads(manifest.read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".partial")
    temporary.write_bytes(data)
    os.replace(temporary, path)
