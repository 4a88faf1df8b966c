"""Class paths written before dae's modules moved into subpackages, and the modules that hold those classes now.

Configs, run folders' ``config.yaml``, checkpoints and sweeps' ``best.yaml`` name classes by path
(``dae.callbacks.ImageGridCallback``). Importing ``dae`` makes each old module path below import the module
that holds its classes now, so every such file keeps loading; new runs record the new paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

# old module path -> the module under which new configs name the same classes
MOVED_MODULES = {
    "dae.image_folder": "dae.data",
    "dae.callbacks": "dae.training.callbacks",
    "dae.threads": "dae.training.callbacks",  # older configs named dae.threads.CoreShareCallback
    "dae.checkpointing": "dae.training.checkpointing",
    "dae.loggers": "dae.training.loggers",
}


def current_name(name: str) -> str:
    """``name`` (a dotted class path) as new configs write it: an old module path is replaced by its new one."""
    for old, new in MOVED_MODULES.items():
        if name.startswith(old + "."):
            return new + name[len(old):]
    return name


def current_names(config: Any) -> Any:
    """A config (plain data) with every old class path in it written as new configs write it."""
    if isinstance(config, dict):
        return {key: current_names(value) for key, value in config.items()}
    if isinstance(config, list):
        return [current_names(value) for value in config]
    return current_name(config) if isinstance(config, str) else config


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path of ``MOVED_MODULES`` as the module that holds its classes now."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        return importlib.machinery.ModuleSpec(fullname, self) if fullname in MOVED_MODULES else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a placeholder, replaced in exec_module

    def exec_module(self, module: ModuleType) -> None:
        # The import system returns whatever sys.modules holds under the name once the module has run.
        sys.modules[module.__name__] = importlib.import_module(MOVED_MODULES[module.__name__])


def install() -> None:
    """Let the old module paths import (once per process)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
