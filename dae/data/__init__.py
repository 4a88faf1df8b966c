"""From files to batches: file formats (IDX, images), the data modules, and the samplers that order batches.

``idx`` and ``images`` read and write files, ``memory`` is the base every data module shares, ``mnist`` and
``folders`` are the data modules that configs name (``dae.data.MNISTDataModule``,
``dae.data.ImageFolderDataModule``), ``sampling`` orders and slices their batches. The data modules are
imported when first asked for, so that reading an image file needs no Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    "InMemoryDataModule": "dae.data.memory",
    "MNISTDataModule": "dae.data.mnist",
    "DATASETS": "dae.data.mnist",
    "ImageFolderDataModule": "dae.data.folders",
    "read_idx": "dae.data.idx",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
