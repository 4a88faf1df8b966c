"""Checkpoints that survive a killed or preempted job: atomic writes and a ``last.ckpt`` every N steps.

Lightning's own atomic save stages the file in the system temp folder and moves it into place, which is a
plain copy (not atomic) whenever the temp folder is on another file system, and a killed job leaves the
half-written temp file behind. ``AtomicCheckpointIO`` stages next to the target and renames instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

LAST_NAME = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a local checkpoint to a temporary file in the target's folder, then renames it over the target.

    A reader (or a resumed run) therefore sees either the previous complete file or the new complete file,
    never a truncated one, even when the process is killed mid-write. Remote paths use Lightning's default.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class LastCheckpoint(Checkpoint):
    """Keeps ``<run>/checkpoints/last.ckpt`` current: every ``every_n_train_steps`` optimizer steps, at the end of
    every training epoch (after validation and the best-checkpoint update), and when SIGTERM stops training.

    ``dae fit --ckpt_path last`` resumes from it, mid-epoch included.

    Args:
        every_n_train_steps: steps between two saves within an epoch (0: only at epoch ends and on SIGTERM).
    """

    def __init__(self, every_n_train_steps: int = 500) -> None:
        super().__init__()
        if every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be >= 0, got {every_n_train_steps}")
        self.every_n_train_steps = every_n_train_steps

    @staticmethod
    def path(trainer: L.Trainer) -> Path:
        """Where ``last.ckpt`` goes: next to the best checkpoints, in the run folder's ``checkpoints/``."""
        return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / LAST_NAME

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        trainer.save_checkpoint(self.path(trainer), weights_only=False)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Only a requested stop saves: after any other error the weights may be broken, and the checkpoints
        # written before it are the good ones.
        if not isinstance(exception, SIGTERMException):
            return
        self._save(trainer)
        rank_zero_info(
            f"SIGTERM: training stopped at step {trainer.global_step}; {self.path(trainer)} holds that state. "
            "Resume with the same command plus --ckpt_path last."
        )
