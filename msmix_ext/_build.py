"""Loads the compiled extension, if it was built."""

from __future__ import annotations

import torch  # noqa: F401  (loads libc10/libtorch_cpu, which _C links against without an rpath)

try:
    from . import _C  # noqa: F401  (registers torch.ops.msmix.*)

    HAS_EXTENSION = True
    CUDA_COMPILED = bool(_C.cuda_compiled)
    _IMPORT_ERROR: ImportError | None = None
except ImportError as error:  # the pure-PyTorch reference still works
    HAS_EXTENSION = False
    CUDA_COMPILED = False
    _IMPORT_ERROR = error


def require_extension() -> None:
    if not HAS_EXTENSION:
        raise RuntimeError(
            "msmix_ext's compiled operators are not available "
            f"({_IMPORT_ERROR}); build them with `pip install --no-build-isolation -e .`, "
            "or use msmix_ext.reference, the plain-PyTorch implementation"
        )
