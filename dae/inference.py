"""Using a trained model: checkpoint loading for everything outside Lightning's own resume.

A checkpoint may come from someone else, so it is read with ``torch.load(weights_only=True)``: tensors and
plain data only, never pickled code. The module is rebuilt from the checkpoint's ``hyper_parameters``
(``net``/``noise`` as plain ``{class_path, init_args}`` data, as ``dae fit`` writes them) through
jsonargparse, which only accepts classes that fit ``DenoisingModule``'s type hints (``nn.Module``
subclasses), so a crafted ``class_path`` such as ``os.system`` is refused instead of called.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from dae.module import DenoisingModule

REQUIRED_KEYS = ("state_dict", "hyper_parameters")


class CheckpointError(ValueError):
    """A checkpoint file (or run folder) that cannot be used; the message names the file and the fix."""


def _best_from_last(last: Path, candidates: list[Path]) -> Path | None:
    """The best checkpoint that ModelCheckpoint recorded in ``last.ckpt``, if it is one of ``candidates``."""
    try:
        callbacks = load_checkpoint(last).get("callbacks", {})
    except CheckpointError:
        return None
    by_name = {p.name: p for p in candidates}
    for state in callbacks.values():
        best = state.get("best_model_path") if isinstance(state, dict) else None
        if best and Path(best).name in by_name:
            return by_name[Path(best).name]
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A ``.ckpt`` file as given, or a run folder's best checkpoint.

    A run folder (``lightning_logs/version_N``, or its ``checkpoints/`` folder) resolves to
    ``checkpoints/best-*.ckpt``; when a run kept several, the one its ``last.ckpt`` records as best (else
    the newest). Without any ``best-*.ckpt`` it falls back to ``last.ckpt``.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run folder")
    if path.is_file():
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    last = folder / "last.ckpt"
    if len(best) > 1 and last.is_file():
        return _best_from_last(last, best) or best[-1]
    if best:
        return best[-1]
    if last.is_file():
        return last
    raise CheckpointError(
        f"{path}: no checkpoint in this folder (looked for checkpoints/best-*.ckpt and checkpoints/last.ckpt); "
        "give a run folder such as lightning_logs/version_0 or a .ckpt file"
    )


def _load_failure(error: Exception) -> str:
    """What a failed ``torch.load(weights_only=True)`` means for the user, in one sentence."""
    code = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    if code:
        return (f"it holds pickled code or objects ({code.group(1)}), which are never loaded from a file that "
                "may come from someone else (weights_only=True); use a .ckpt file written by dae fit")
    first_line = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    if "Weights only load failed" in first_line:
        reason = "unreadable pickle data"
    else:  # keep torch's first sentence, e.g. "PytorchStreamReader failed reading zip archive: ..."
        reason = first_line.split(". ")[0].rstrip(".") or f"the file ends too early ({type(error).__name__})"
    return f"{reason}. The file is corrupt, truncated or not a PyTorch checkpoint; use a .ckpt file written by dae fit"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a dae checkpoint file as plain data (``weights_only=True``), refusing anything else clearly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file; give a .ckpt file written by dae fit or a run folder")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling fails in many ways; all mean "this file cannot be used"
        raise CheckpointError(f"{path}: cannot load this checkpoint: {_load_failure(e)}") from e
    missing = [k for k in REQUIRED_KEYS if not (isinstance(ckpt, dict) and k in ckpt)]
    if missing:
        raise CheckpointError(f"{path}: not a dae checkpoint (no {' or '.join(missing)}); "
                              "use a .ckpt file written by dae fit")
    return ckpt


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> DenoisingModule:
    """The trained ``DenoisingModule`` (network and noise model) from a ``.ckpt`` file or run folder.

    The module is in eval mode on ``map_location``. Raises ``CheckpointError`` naming the file when it is
    missing, corrupt, not a dae checkpoint, holds pickled code, or its weights do not fit its network.
    """
    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path, map_location)
    hparams = ckpt["hyper_parameters"]
    if not isinstance(hparams, dict):
        raise CheckpointError(f"{path}: not a dae checkpoint (hyper_parameters is not a mapping)")
    from lightning.pytorch.cli import instantiate_module

    # Private keys such as Lightning's "_instantiator" name code to call: never trust them from a file.
    config = {k: v for k, v in hparams.items() if not str(k).startswith("_")}
    try:
        module = instantiate_module(DenoisingModule, config)
    except Exception as e:  # noqa: BLE001 - jsonargparse and constructors raise various types
        raise CheckpointError(f"{path}: its hyper_parameters do not describe a DenoisingModule: {e}") from e
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its weights do not fit the network its hyper_parameters describe: "
                              f"{str(e).splitlines()[0]}") from e
    return module.to(map_location).eval()
