"""Where the study lives and how interrupted trials come back.

The default storage is an Optuna journal file in the sweep's folder, shared by worker processes on one machine
through file locks. ``postgresql://...`` (or any SQLAlchemy URL) selects Optuna's RDB storage, which workers on
many machines share; there Optuna's heartbeat finds trials whose worker died.

A trial whose worker died stays RUNNING in the storage. On one machine each worker holds an exclusive lock on
a file of its own for as long as it lives, and every trial records that file: a lock that anyone can take
means its worker is gone, so the trial is marked FAIL and queued again with the same parameters. The retry
runs in the same folder and resumes from its ``last.ckpt``.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import socket
import time
import uuid
import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

JOURNAL_NAME = "study.journal"
LOCKS_DIR = "locks"  # in the sweep's folder: one lock file per live worker, and the guard of the retries
WORKER_LOCK = re.compile(r"[\w.-]+-\d+-[0-9a-f]{8}\.lock")  # HOST-PID-RANDOM.lock, a worker's lock file
MAX_RETRIES = 3
HEARTBEAT_S = 30
GRACE_S = 120
STORAGE_ATTEMPTS = 5
# A RUNNING trial that has not yet recorded its worker (the moment between ask and the first attribute).
UNCLAIMED_GRACE = timedelta(seconds=120)


def make_storage(storage: str | None, sweep_dir: Path) -> BaseStorage:
    """The study's storage: the journal file ``sweep_dir/study.journal`` by default, else Optuna's RDB storage."""
    if storage is None:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(sweep_dir / JOURNAL_NAME)))
    attempt = 0
    while True:
        attempt += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    storage,
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=retry_trial,
                    engine_kwargs={"pool_pre_ping": True},
                )
        except ImportError as e:
            raise ValueError(f"--storage {shown_url(storage)}: no database driver for it ({e}); "
                             "pip install -e '.[sweep]' brings psycopg for postgresql://") from None
        except SQLAlchemyError as e:
            # Workers that start at once (a job array) race to create Optuna's tables; the losers try again.
            if isinstance(e, IntegrityError) and attempt < STORAGE_ATTEMPTS:
                time.sleep(random.uniform(0.5, 2.0))
                continue
            reason = str(e.orig if getattr(e, "orig", None) is not None else e).strip().splitlines()[0]
            raise ValueError(f"--storage {shown_url(storage)}: cannot use the database: {reason}") from None


def shown_url(url: str) -> str:
    """A database URL fit for messages: the password masked (all before the last ``@`` of one that does not parse)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return f"***{url[url.rindex('@'):]}" if "@" in url else url


def storage_name(storage: str | None, sweep_dir: Path) -> str:
    """Where the study lives, as every message names it: the ``--storage`` URL (password masked) or the journal."""
    return shown_url(storage) if storage is not None else str(sweep_dir / JOURNAL_NAME)


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue an interrupted trial again: same parameters, same run folder (so it resumes from ``last.ckpt``)."""
    if any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False)):
        return  # queued already
    original = trial.user_attrs.get("retry_of_first", trial.number)
    attempts = trial.user_attrs.get("attempt", 1)
    if attempts > MAX_RETRIES:
        return
    given = {"base_config": True} if trial.user_attrs.get("base_config") else {}
    study.add_trial(optuna.create_trial(
        state=TrialState.WAITING,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs={"run_dir": trial.user_attrs.get("run_dir", f"trial_{trial.number:03d}"),
                    "retry_of": trial.number, "retry_of_first": original, "attempt": attempts + 1, **given},
    ))


class WorkerLock:
    """An exclusive lock on ``locks/HOST-PID-RANDOM.lock`` that this worker holds while it lives; its trials
    record ``worker``, ``worker_host`` and ``worker_lock`` (the file's absolute path)."""

    def __init__(self, sweep_dir: Path) -> None:
        folder = sweep_dir / LOCKS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.host = socket.gethostname()
        self.name = f"{self.host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = (folder / f"{self.name}.lock").resolve()
        self.file: IO[bytes] | None = open(self.path, "wb")
        fcntl.flock(self.file, fcntl.LOCK_EX)

    def claim(self, trial: optuna.Trial) -> None:
        """Record in ``trial`` that this worker runs it."""
        trial.set_user_attr("worker", self.name)
        trial.set_user_attr("worker_host", self.host)
        trial.set_user_attr("worker_lock", str(self.path))

    def release(self) -> None:
        if self.file is not None:
            self.path.unlink(missing_ok=True)
            self.file.close()
            self.file = None


def lock_file(recorded: object) -> Path | None:
    """The lock file that a trial records as its worker's (``worker_lock``), links resolved; None unless it is a
    file that a worker makes, ``/.../locks/HOST-PID-RANDOM.lock`` (of this sweep's folder or, with --storage, of
    another on this machine). A dead worker's lock is removed, and the study's storage may be written by others."""
    if not isinstance(recorded, str) or not Path(recorded).is_absolute():
        return None
    path = Path(recorded).resolve()
    return path if path.parent.name == LOCKS_DIR and WORKER_LOCK.fullmatch(path.name) else None


def worker_alive(lock_path: Path) -> bool:
    """Whether the worker that holds ``lock_path`` still runs (a dead process's lock is free)."""
    try:
        with open(lock_path, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False
    except FileNotFoundError:
        return False


def fail_dead_trials(study: optuna.Study, storage: BaseStorage, sweep_dir: Path) -> list[int]:
    """Mark FAIL and queue again the RUNNING trials of this machine whose worker died, and the trials that
    stopped on an interruption (SIGTERM, Ctrl-C) without a retry yet. Returns the numbers of the trials queued."""
    (sweep_dir / LOCKS_DIR).mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / LOCKS_DIR / "retries.lock", "wb") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one worker at a time, so that a trial is queued once
        return _requeue(study, storage, sweep_dir)


def _requeue(study: optuna.Study, storage: BaseStorage, sweep_dir: Path) -> list[int]:
    host = socket.gethostname()
    now = datetime.now()
    queued = []
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.RUNNING:
            host_of, recorded = trial.user_attrs.get("worker_host"), trial.user_attrs.get("worker_lock")
            lock = lock_file(recorded) if host_of == host else None
            if recorded is None:
                if trial.datetime_start is None or now - trial.datetime_start < UNCLAIMED_GRACE:
                    continue
            elif lock is None or worker_alive(lock):
                continue  # alive, on another machine (where Optuna's heartbeat covers RDB storage), or no lock file
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            try:
                storage.set_trial_user_attr(trial_id, "interrupted", True)
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker got there first
            if lock is not None:
                lock.unlink(missing_ok=True)
            trial = storage.get_trial(trial_id)
        if trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted"):
            before = len(study.get_trials(deepcopy=False))
            retry_trial(study, trial)
            if len(study.get_trials(deepcopy=False)) > before:
                queued.append(trial.number)
    return queued
