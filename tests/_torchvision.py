"""Torchvision's model definitions for the tests, importable next to the CPU build of torch."""

from __future__ import annotations

import sys
import types


def import_torchvision() -> types.ModuleType:
    """Return the ``torchvision`` module, imported without its compiled operators' meta kernels.

    The tests use its model definitions only, with random weights (``weights=None``): nothing is
    ever downloaded.
    """
    # torchvision 0.28.0's wheel on the package index is built for CUDA, and its compiled
    # operators (nms, roi_align, ...) do not register with the CPU build of torch, so
    # ``import torchvision`` fails in ``torchvision/_meta_registrations.py``, which adds meta
    # kernels to those operators. No model definition needs them: an empty module under that
    # name lets the rest of the package import.
    if "torchvision" not in sys.modules:
        name = "torchvision._meta_registrations"
        sys.modules.setdefault(name, types.ModuleType(name))
    import torchvision

    return torchvision
