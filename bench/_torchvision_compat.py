"""Make ``import torchvision`` work next to a CPU-only torch.

The PyPI torchvision 0.28.0 wheel is a CUDA build; beside the CPU torch wheel its ``_C.so`` fails
to load, and torchvision's meta registrations then die on the missing ``torchvision::nms`` op.
Defining the two op schemas first lets the pure-Python parts (models, transforms) import. The C
ops themselves stay unavailable, so the suite never calls ``torchvision.ops`` C kernels.
This module must be imported before anything imports torchvision (``bench/__init__`` does it).
"""

from __future__ import annotations

import importlib.util
import os
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the Library object alive: dropping it would unregister the schemas


def _extension_loads() -> bool:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # torchvision absent: nothing to patch
    folder = spec.submodule_search_locations[0]
    candidates = [f for f in os.listdir(folder) if f.startswith("_C") and f.endswith((".so", ".pyd"))]
    if not candidates:
        return False
    try:
        torch.ops.load_library(os.path.join(folder, candidates[0]))
        return True
    except (OSError, RuntimeError):
        return False


def ensure_torchvision_importable() -> bool:
    """Register the missing op schemas if needed; return True when a patch was applied."""
    global _library
    if "torchvision" in sys.modules or _library is not None:
        return False
    if _extension_loads():
        return False
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        _library.define(schema)
    return True


PATCHED = ensure_torchvision_importable()
