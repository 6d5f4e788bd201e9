"""Import torchvision beside our CPU build of torch, also when torchvision's C extension cannot load.

Why: PyPI's ``torchvision==0.28.0`` (which pins our ``torch==2.13.0``) is a CUDA build. Its
``_C.so`` links ``libtorch_cuda.so``, which the CPU torch does not ship, so the extension fails to
load and ``import torchvision`` then dies in ``torchvision/_meta_registrations.py``: it registers
fake kernels for ``torchvision::nms`` and ``torchvision::qnms``, operators the extension would
have defined ("operator torchvision::nms does not exist"). Classification architectures need none
of torchvision's C operators (those serve detection and image I/O), so when the extension does not
load we define the two operator *schemas* ourselves, with no kernel: the meta registrations then
succeed, and calling one of those operators would fail loudly instead of computing anything.
``transformers`` imports torchvision when it is installed, so the ``hf`` format goes through here too.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

#: The torch.library.Library holding the two schemas; it must stay alive (its destructor removes them).
_SCHEMAS: torch.library.Library | None = None
#: Whether torchvision's own extension loaded (None: not tried yet).
EXTENSION_LOADED: bool | None = None


def prepare_torchvision() -> bool:
    """Make ``import torchvision`` work; False when torchvision is not installed. Idempotent."""
    global _SCHEMAS, EXTENSION_LOADED
    if "torchvision" in sys.modules or EXTENSION_LOADED is not None:
        return True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    root = Path(next(iter(spec.submodule_search_locations)))
    libraries = sorted(root.glob("_C*.so")) + sorted(root.glob("_C*.pyd"))
    try:
        if not libraries:
            raise OSError("no _C library")
        torch.ops.load_library(str(libraries[0]))   # what torchvision's extension.py does itself
        EXTENSION_LOADED = True
    except OSError:
        EXTENSION_LOADED = False
        if not _has_operator("nms"):
            _SCHEMAS = torch.library.Library("torchvision", "DEF")
            _SCHEMAS.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _SCHEMAS.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return True


def _has_operator(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def import_torchvision():  # noqa: ANN201 -- the torchvision module
    """``import torchvision`` through :func:`prepare_torchvision`; a clear error when it is missing."""
    from .base import FormatError

    if not prepare_torchvision():
        raise FormatError("the torchvision format needs torchvision: pip install 'fiun-peer[torchvision]'")
    import torchvision

    return torchvision
