"""Run folders: which run ``dae fit --ckpt_path last`` resumes, a folder of its own for every new run, and a lock
that keeps two processes out of one run.

The rule for ``--ckpt_path last`` (no fixed ``trainer.logger.init_args.version``):

* a run folder that holds ``checkpoints/last.ckpt`` and whose ``config.yaml`` matches this command's config
  (see ``IGNORED``) is resumed; of several, the one whose ``last.ckpt`` is newest;
* with no run folder holding a ``last.ckpt`` at all, a new run starts (so a preemptible job can always be
  started with the same command);
* when runs with a ``last.ckpt`` exist but none matches, dae refuses and lists them with what differs, rather
  than resuming (and overwriting) another experiment or silently starting over.

With a fixed version the run of that name is resumed if its config matches, refused if not, and started if it
does not exist. Without ``--ckpt_path last`` a fit never writes into a run folder that already holds a run.
"""

from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

from dae.moved import current_names
from dae.training.checkpointing import LAST_NAME

CONFIG_NAME = "config.yaml"
LOCK_NAME = "run.lock"

# Settings a resumed run may change: how long it trains, how it shows progress, what observes it, where it goes.
IGNORED = (
    "ckpt_path",
    "config",
    "trainer.logger.class_path",
    "trainer.logger.init_args.version",
    "trainer.max_epochs",
    "trainer.min_epochs",
    "trainer.max_steps",
    "trainer.min_steps",
    "trainer.max_time",
    "trainer.limit_train_batches",
    "trainer.limit_val_batches",
    "trainer.limit_test_batches",
    "trainer.limit_predict_batches",
    "trainer.num_sanity_val_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.callbacks",
)


class RunFolderError(ValueError):
    """A run folder that this command may not use: another experiment's, or one in use by another process."""


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys; lists and other values are leaves."""
    if not isinstance(config, dict):
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return {k.rstrip("."): v for k, v in flat.items()}


def config_differences(saved: dict, current: dict, ignored: tuple[str, ...] = IGNORED) -> list[str]:
    """``key: saved -> current`` for each setting that both configs have and that differs, ``ignored`` keys (and
    the keys under them) aside. Settings only one side has (options added to or removed from dae) are not compared,
    and a class named by its path from before dae's modules moved is the same class."""
    a, b = flatten(current_names(saved)), flatten(current_names(current))

    def compared(key: str) -> bool:
        return not any(key == k or key.startswith(f"{k}.") for k in ignored)

    return [f"{k}: {a[k]!r} there, {b[k]!r} here" for k in sorted(a.keys() & b.keys()) if compared(k) and a[k] != b[k]]


def read_config(run: Path) -> dict:
    """A run folder's saved config; a missing or unreadable one reads as empty (and then matches nothing)."""
    try:
        config = yaml.safe_load((run / CONFIG_NAME).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


@dataclass
class Candidate:
    """A run folder that could be resumed, and how its config differs from this command's."""

    path: Path
    differences: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if not (self.path / CONFIG_NAME).is_file():
            return f"{self.path.name} (no {CONFIG_NAME})"
        more = len(self.differences) - 3
        shown = "; ".join(self.differences[:3]) + (f"; and {more} more" if more > 0 else "")
        return f"{self.path.name} ({shown})"


def candidate(run: Path, config: dict, ignored: tuple[str, ...] = IGNORED) -> Candidate:
    saved = read_config(run)
    differences = config_differences(saved, config, ignored) if saved else [f"no readable {CONFIG_NAME}"]
    return Candidate(run, differences)


def resumable_runs(root: Path, config: dict, ignored: tuple[str, ...] = IGNORED) -> list[Candidate]:
    """The run folders under ``root`` that hold a ``last.ckpt``, newest ``last.ckpt`` first."""
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if (p / "checkpoints" / LAST_NAME).is_file()]
    runs.sort(key=lambda p: (p / "checkpoints" / LAST_NAME).stat().st_mtime, reverse=True)
    return [candidate(run, config, ignored) for run in runs]


def matching_run(root: Path, config: dict, ignored: tuple[str, ...] = IGNORED) -> str | None:
    """The folder name of the run ``--ckpt_path last`` resumes: the newest with a ``last.ckpt`` and this config."""
    matching = [c for c in resumable_runs(root, config, ignored) if not c.differences]
    return matching[0].path.name if matching else None


def version_folder(version: int | str) -> str:
    """The folder name TensorBoardLogger uses for a version: ``version_N`` for a number, else the name itself."""
    return version if isinstance(version, str) else f"version_{version}"


def holds_a_run(run: Path) -> bool:
    """Whether a folder holds anything but a lock file (an empty or lock-only folder is free)."""
    return run.is_dir() and any(p.name != LOCK_NAME for p in run.iterdir())


def new_version(root: Path) -> int:
    """Create ``root/version_N`` for the lowest free N above every existing one and return N.

    ``mkdir`` either creates the folder or fails because it exists, so processes started at the same moment
    each get a folder of their own (listing the folder and creating it later, as loggers do, lets them collide).
    """
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[8:]) for p in root.glob("version_*") if p.name[8:].isdigit()]
    n = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"version_{n}").mkdir()
            return n
        except FileExistsError:
            n += 1


class RunLock:
    """An exclusive lock on a run folder (``run.lock``, ``flock``) for as long as this process trains in it.

    The operating system releases it when the process ends, however it ends, so a killed job leaves no stale lock.
    ``run.lock`` itself stays: whether a process holds it counts, not whether it exists.
    """

    def __init__(self, run: Path) -> None:
        self.run = run
        self.lock = FileLock(run / LOCK_NAME, timeout=0)

    def acquire(self) -> None:
        try:
            self.lock.acquire()
        except Timeout:
            raise RunFolderError(
                f"{self.run} is in use by another dae process (it holds {self.run / LOCK_NAME}); wait until that "
                "process ends, or start a separate run without --ckpt_path last"
            ) from None

    def release(self) -> None:
        """Unlock, if this process holds the lock (a process refused by ``acquire`` leaves the holder's alone).

        A folder that got nothing but the lock (the run failed before writing) is removed first, while the lock is
        still held: no other process holds ``run.lock`` then, and one that opened it a moment before and locks it
        after this release finds it unlinked, which filelock reports as a lock not acquired.
        """
        if not self.lock.is_locked:
            return
        try:
            if not holds_a_run(self.run):
                (self.run / LOCK_NAME).unlink(missing_ok=True)
                remove_if_empty(self.run)
        finally:
            self.lock.release()


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` unless something is in it (another process may have just put something there)."""
    try:
        folder.rmdir()
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise


def clear_unstarted_run(run: Path) -> None:
    """Delete what a new run wrote into its folder before failing ahead of its first training step (the event
    file, config.yaml), so that ``RunLock.release`` removes the folder with its lock. A run that saved a
    checkpoint keeps everything."""
    if not run.is_dir() or any(p.is_file() for p in (run / "checkpoints").rglob("*")):
        return
    for path in run.iterdir():
        if path.name != LOCK_NAME:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def choose_run(
    root: Path, version: int | str | None, resume: bool, config: dict, ignored: tuple[str, ...] = IGNORED
) -> tuple[int | str, bool]:
    """The version this fit logs into and whether it resumes there; creates the folder of a new run.

    Args:
        root: the logger's ``save_dir/name``, e.g. ``lightning_logs``.
        version: the fixed version given, or ``None`` to choose one.
        resume: whether the command asks for ``--ckpt_path last``.
        config: this command's config, as ``config.yaml`` would hold it.
        ignored: the settings a resumed run may change (keys, and the keys under them).

    Raises:
        RunFolderError: when the run named or found belongs to another experiment.
    """
    if version is not None:
        run = root / version_folder(version)
        if not holds_a_run(run):
            run.mkdir(parents=True, exist_ok=True)
            return version, False
        if not resume:
            raise RunFolderError(
                f"{run} already holds a run: resume it with --ckpt_path last, or name this run differently "
                "(--trainer.logger.init_args.version NAME)"
            )
        found = candidate(run, config, ignored)
        if found.differences:
            raise RunFolderError(
                f"--ckpt_path last: {run} is another experiment ({'; '.join(found.differences)}); resume it with "
                f"its own settings (--config {run / CONFIG_NAME} --ckpt_path last), or name this run differently"
            )
        return version, (run / "checkpoints" / LAST_NAME).is_file()
    if resume:
        runs = resumable_runs(root, config, ignored)
        matching = [c for c in runs if not c.differences]
        if matching:
            return matching[0].path.name, True
        if runs:
            raise RunFolderError(
                f"--ckpt_path last: no run in {root} has this config, and resuming another would overwrite it. "
                f"Runs there: {', '.join(c.describe() for c in runs)}. Resume one with its own settings "
                f"(--config {root}/RUN/{CONFIG_NAME} --ckpt_path last), give this experiment a run name of its own "
                "(--trainer.logger.init_args.version NAME), or drop --ckpt_path last to start a new run"
            )
    return new_version(root), False
