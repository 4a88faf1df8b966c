"""Checkpoints that survive a killed, preempted or disk-starved job: atomic writes, and last.ckpt on SIGTERM.

``last.ckpt`` itself is written by Lightning's ``ModelCheckpoint`` (every N optimizer steps, and at each epoch end;
see ``dae.commands.cli.DEFAULT_CALLBACKS``); this module adds what it leaves out:

* Lightning's own atomic save stages the file in the system temp folder and moves it into place, which is a
  plain copy (not atomic) whenever the temp folder is on another file system, and a killed job leaves the
  half-written temp file behind. ``AtomicCheckpointIO`` stages next to the target and renames instead, and turns
  a full disk into one message that says where space is needed.
* ``OnExceptionCheckpoint`` writes on every exception, needs its folder before the run has one, and deletes its
  file when training ends normally; ``SigtermCheckpoint`` writes ``last.ckpt`` only when SIGTERM stops training.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dae.files import replaced_whole

LAST_NAME = "last.ckpt"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A checkpoint did not fit on its disk; the files written before are intact and no partial file remains."""


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def is_disk_full(error: BaseException | None) -> bool:
    """Whether an error, or one it arose from, is a full disk (or quota). ``torch.save`` reports one as a
    RuntimeError of its zip writer raised while handling the OSError."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_message(folder: Path, what: str, runs: Path, kept: str = "the files written before are intact") -> str:
    """One line: what did not fit in which folder, the room left there, and what to free where."""
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free there"
    except OSError:
        free = "free space unknown"
    return (
        f"no space left on the disk of {folder} to write {what} ({free}; {kept}): free space on that disk, e.g. delete "
        f"runs or best-*.ckpt files you no longer need under {runs}, then resume with --ckpt_path last"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a local checkpoint to a temporary file in the target's folder, then renames it over the target
    (``dae.files.replaced_whole``), with the permissions a plain ``open`` would give.

    A reader (or a resumed run) therefore sees either the previous complete file or the new complete file,
    never a truncated one, even when the process is killed mid-write. A write that fails removes its temporary
    file; one that fails for want of space raises ``DiskFullError``. Remote paths use Lightning's default.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        try:
            with replaced_whole(path) as temporary, open(temporary, "wb") as f:
                torch.save(checkpoint, f)
        except BaseException as e:
            if is_disk_full(e):
                kept = f"the previous {path.name} is intact" if path.exists() else "the files written before are intact"
                message = disk_full_message(path.parent, path.name, path.parent.parent.parent, kept)
                raise DiskFullError(errno.ENOSPC, message) from e
            raise


class SigtermCheckpoint(Checkpoint):
    """Writes ``<run>/checkpoints/last.ckpt`` when SIGTERM (a scheduler, ``docker stop``) stops training.

    Only a requested stop saves: after any other error the weights may be broken (or the disk full), and the
    checkpoints written before it are the good ones. ``dae fit --ckpt_path last`` resumes from it, mid-epoch included.
    """

    @staticmethod
    def path(trainer: L.Trainer) -> Path:
        """Where ``last.ckpt`` goes: the run folder's ``checkpoints/``, where ``ModelCheckpoint`` writes too."""
        return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / LAST_NAME

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking or trainer.fast_dev_run:
            return
        trainer.save_checkpoint(self.path(trainer), weights_only=False)
        rank_zero_info(
            f"SIGTERM: training stopped at step {trainer.global_step}; {self.path(trainer)} holds that state. "
            "Resume with the same command plus --ckpt_path last."
        )
