"""The trained models that ship with dae, named ``builtin:NAME`` wherever a checkpoint is asked for.

Each is a plain dae checkpoint (weights and hyper-parameters only, loaded with ``weights_only=True``) next to the
config it was trained with; README.md in this folder says what data each was trained on.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


PREFIX = "builtin:"
# name -> checkpoint file in this package
BUILTIN_MODELS = {"gray": "gray.ckpt", "color": "color.ckpt", "gray-blind": "gray_blind.ckpt"}
# What `dae denoise` uses without --ckpt, by the image's colour channels (alpha aside): 1 gray, 3 RGB.
DEFAULT_MODELS = {1: PREFIX + "gray", 3: PREFIX + "color"}


def is_builtin(name: str) -> bool:
    """Whether ``name`` asks for a shipped model (``builtin:NAME``) rather than a file."""
    return str(name).startswith(PREFIX)


def builtin_checkpoint(name: str) -> Path:
    """The checkpoint file of ``builtin:NAME``; ``ValueError`` listing the shipped models for an unknown name."""
    short = str(name).removeprefix(PREFIX)
    if short not in BUILTIN_MODELS:
        known = ", ".join(PREFIX + n for n in BUILTIN_MODELS)
        raise ValueError(f"{name}: no such built-in model; dae ships {known}")
    return Path(str(resources.files(__name__) / BUILTIN_MODELS[short]))


def default_model(channels: int) -> str:
    """The shipped model for images of ``channels`` colour channels (1 gray, 3 RGB; alpha aside)."""
    if channels not in DEFAULT_MODELS:
        raise ValueError(f"no shipped model for images of {channels} colour channels; dae ships models for "
                         + " and ".join(map(str, DEFAULT_MODELS)))
    return DEFAULT_MODELS[channels]
