"""``dae sweep``: search dae's own configs with Optuna, on one machine or many, resumably."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Sequence

import optuna
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from optuna.trial import TrialState

from dae.commands.cli import user_error
from dae.commands.sweep.checks import base_values, check_keys, check_metric
from dae.commands.sweep.report import summary
from dae.commands.sweep.spec import SweepSpec, load_spec
from dae.commands.sweep.study import (
    JOURNAL_NAME,
    WorkerLock,
    fail_dead_trials,
    make_storage,
    storage_name,
)
from dae.commands.sweep.trial import run_trial
from dae.training.threads import fix_threads

DEFAULT_ROOT = Path("sweeps")
# A trial that raises one of these failed as a result of its settings (a diverged run, settings that the configs
# or the model refuse): it is recorded FAIL with the error, counts towards n_trials, is not retried, and the
# sweep goes on with the next trial.
TRIAL_FAILURES = (FloatingPointError, ValueError)


class TrialInterrupted(Exception):
    """A trial stopped by SIGTERM or Ctrl-C: Optuna marks it FAIL, and the next run of the sweep retries it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dae sweep",
        description="Hyperparameter search over dae's configs with Optuna: every trial is an ordinary dae fit run "
                    "in the sweep's folder; the study is resumable and can be shared by workers.",
    )
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="an experiment config, as for dae fit (give several to lay overlays over it)")
    parser.add_argument("--sweep", required=True, metavar="FILE",
                        help="the sweep file: search space, metric, direction, n_trials, sampler, pruner")
    parser.add_argument("--n-trials", type=int, metavar="N",
                        help="trials to run in all, over all workers; interrupted ones are retried and not counted "
                             "(default: the sweep file's n_trials)")
    parser.add_argument("--storage", metavar="URL",
                        help="Optuna RDB storage shared by workers on many machines, e.g. postgresql://user@host/db "
                             "with the password in PGPASSWORD or ~/.pgpass, never in the URL, which ps shows "
                             "(default: a journal file in the sweep's folder)")
    parser.add_argument("--workers", type=int, default=1, metavar="K",
                        help="worker processes on this machine, each with cores/K threads (default 1)")
    parser.add_argument("--threads", type=int, metavar="T",
                        help="torch threads per trial (default: this machine's cores / --workers)")
    parser.add_argument("--dir", type=Path, metavar="DIR",
                        help="the sweep's folder: run folders, journal, best.yaml (default sweeps/STUDY_NAME)")
    parser.add_argument("--show", action="store_true",
                        help="print the table of trials and the best one, write best.yaml, and run nothing")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a child of --workers K
    return parser


def open_study(spec: SweepSpec, args: argparse.Namespace, sweep_dir: Path,
               create: bool) -> tuple[optuna.Study, optuna.storages.BaseStorage, bool]:
    """Load (or with ``create``, create) the study; refuse one that was made with another search.

    Returns the study, its storage and whether this call created it.
    """
    where = storage_name(args.storage, sweep_dir)
    missing = FileNotFoundError(f"{where}: no study {spec.study_name} yet; start it with dae sweep --config ...")
    if not create and args.storage is None and not (sweep_dir / JOURNAL_NAME).is_file():
        raise missing
    storage = make_storage(args.storage, sweep_dir)
    study = None
    if create:
        try:
            study = optuna.create_study(study_name=spec.study_name, storage=storage, direction=spec.direction,
                                        sampler=spec.make_sampler(), pruner=spec.make_pruner())
        except optuna.exceptions.DuplicatedStudyError:  # made by an earlier run, or a worker on another machine
            pass
    created = study is not None
    if study is None:
        try:
            study = optuna.load_study(study_name=spec.study_name, storage=storage, sampler=spec.make_sampler(),
                                      pruner=spec.make_pruner())
        except KeyError:
            raise missing from None
    identity = json.loads(json.dumps(spec.as_dict()))
    recorded = study.user_attrs.get("sweep")
    if recorded is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([spec.metric])  # dashboards label the objective val/psnr, not "Objective 0"
        study.set_user_attr("sweep", identity)
        study.set_user_attr("configs", [str(c) for c in args.config])
    elif recorded != identity:
        raise ValueError(
            f"{where}: study {spec.study_name} was made with another search space, metric or fixed settings than "
            f"{spec.path} now has; give a new --dir (or study_name) for the new search"
        )
    return study, storage, created


def trials_left(study: optuna.Study, n_trials: int) -> bool:
    """Whether fewer than ``n_trials`` trials have run or are running. Trials that were interrupted (and come
    back as retries) do not count; trials that ended (complete, pruned, or failed because training diverged) do."""
    counted = sum(1 for t in study.get_trials(deepcopy=False)
                  if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
                  or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted")))
    return counted < n_trials


def work(spec: SweepSpec, args: argparse.Namespace, sweep_dir: Path, n_trials: int, threads: int) -> None:
    """Run trials until ``n_trials`` have run or are running (see ``trials_left``), this worker's share."""
    if args.threads is not None:
        fix_threads(threads)  # given by hand: trials keep it, whatever share of the cores they would take
    else:
        torch.set_num_threads(threads)
    lock = WorkerLock(sweep_dir)
    try:
        study, storage, _ = open_study(spec, args, sweep_dir, create=False)
        # Workers and later runs draw their own random numbers, so that they do not repeat each other's trials.
        # A lone worker on a journal file stays reproducible; workers that run at once are not anyway.
        alone = args.storage is None and not args.worker
        study.sampler = spec.make_sampler(
            seed_offset=len(study.get_trials(deepcopy=False)) if alone else random.SystemRandom().randrange(1, 2**31))

        def objective(trial: optuna.Trial) -> float:
            lock.claim(trial)
            trial.set_user_attr("threads", threads)
            try:
                return run_trial(trial, spec, args.config, sweep_dir)
            except (SystemExit, KeyboardInterrupt) as e:  # SIGTERM (after last.ckpt), or Ctrl-C (Lightning exits)
                trial.set_user_attr("interrupted", True)
                code = 128 + signal.SIGTERM if isinstance(e, SIGTERMException) else 128 + signal.SIGINT
                raise TrialInterrupted(code, f"trial {trial.number} interrupted; run the same command again to go on "
                                             "(it resumes from its last.ckpt)") from e
            except TRIAL_FAILURES as e:
                trial.set_user_attr("error", str(e))
                raise

        while True:
            fail_dead_trials(study, storage, sweep_dir)
            if not trials_left(study, n_trials):
                return
            study.optimize(objective, n_trials=1, catch=TRIAL_FAILURES, gc_after_trial=True)
    finally:
        lock.release()


class Workers:
    """Child processes of this sweep, each with ``threads`` torch threads. They start at once, so that their imports
    overlap the checks made here, and open the study only once ``go`` says so (``cancel``: they exit)."""

    def __init__(self, argv: Sequence[str], workers: int, threads: int) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        command = [sys.executable, "-m", "dae", "sweep", *argv, "--threads", str(threads), "--worker"]
        self.children = [subprocess.Popen(command, env=env, stdin=subprocess.PIPE) for _ in range(workers)]

    def go(self) -> None:
        for child in self.children:
            child.stdin.write(b"go\n")
            child.stdin.close()

    def cancel(self) -> None:
        for child in self.children:
            child.stdin.close()  # end of input: the child exits without running a trial
        for child in self.children:
            child.wait()

    def wait(self) -> int:
        """Wait for every child, passing SIGTERM on to them; returns the worst exit status."""

        def forward(signum: int, frame: object) -> None:
            for child in self.children:
                child.send_signal(signum)

        previous = signal.signal(signal.SIGTERM, forward)
        try:
            codes = []
            for child in self.children:
                while True:
                    try:
                        codes.append(child.wait())
                        break
                    except KeyboardInterrupt:  # Ctrl-C reached the children too; wait for them to stop
                        continue
        finally:
            signal.signal(signal.SIGTERM, previous)
        return max(codes, key=abs)


def worker_argv(args: argparse.Namespace, sweep_dir: Path) -> list[str]:
    argv = [arg for config in args.config for arg in ("--config", str(config))]
    argv += ["--sweep", str(args.sweep), "--dir", str(sweep_dir)]
    if args.n_trials is not None:
        argv += ["--n-trials", str(args.n_trials)]
    if args.storage is not None:
        argv += ["--storage", args.storage]
    return argv


def sweep(args: argparse.Namespace) -> int:
    # Trials build the dae fit command's CLI in this process, from their own arguments rather than sys.argv.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    for name in ("lightning.pytorch", "lightning.fabric"):  # one line per trial from Optuna instead
        logging.getLogger(name).setLevel(logging.WARNING)
    spec = load_spec(args.sweep)
    sweep_dir = args.dir if args.dir is not None else DEFAULT_ROOT / spec.study_name
    n_trials = args.n_trials if args.n_trials is not None else spec.n_trials
    if args.show:
        study, _, _ = open_study(spec, args, sweep_dir, create=False)
        print(summary(study, sweep_dir, spec.metric))
        return 0
    if args.workers < 1 or n_trials < 1 or (args.threads is not None and args.threads < 1):
        raise ValueError("--workers, --n-trials and --threads must be >= 1")
    threads = args.threads or max(1, cores() // args.workers)
    if args.worker:
        if sys.stdin.readline().strip() == "go":  # the parent's checks passed
            work(spec, args, sweep_dir, n_trials, threads)
        return 0
    if not args.config:
        raise ValueError("give the experiment with --config FILE (as for dae fit)")
    for config in args.config:
        if not Path(config).is_file():
            raise FileNotFoundError(f"{config}: no such config file")
    workers = Workers(worker_argv(args, sweep_dir), args.workers, threads) if args.workers > 1 else None
    try:
        study = prepare(spec, args, sweep_dir)
    except BaseException:
        if workers is not None:
            workers.cancel()
        raise
    print(f"dae sweep: study {spec.study_name} in {storage_name(args.storage, sweep_dir)}, run folders in "
          f"{sweep_dir}/, {n_trials} trials, {args.workers} worker(s) x {threads} thread(s)", file=sys.stderr)
    code = 0
    if workers is None:
        work(spec, args, sweep_dir, n_trials, threads)
    else:
        workers.go()
        code = workers.wait()
    print(summary(study, sweep_dir, spec.metric))
    return code


def prepare(spec: SweepSpec, args: argparse.Namespace, sweep_dir: Path) -> optuna.Study:
    """Check the sweep against the configs, then open (or create) the study; a new one runs the given config
    first (see ``base_values``), so that the best trial is never worse than it and the summary shows the gain."""
    base = check_keys(spec, args.config)
    check_metric(spec, args.config)
    study, _, created = open_study(spec, args, sweep_dir, create=True)
    if spec.baseline_trial and created:
        values, moved, outside = base_values(spec, base)
        if outside:
            print(f"dae sweep: no trial of the given config: {', '.join(outside)} lies outside the search space",
                  file=sys.stderr)
        else:
            if moved:
                print(f"dae sweep: trial 0 runs the given config with {', '.join(moved)} (the nearest end of the "
                      "search range)", file=sys.stderr)
            study.enqueue_trial(values, user_attrs={"base_config": True})
    return study


def sweep_command(argv: Sequence[str]) -> int:
    """``dae sweep --config CONFIG --sweep SWEEP [--n-trials N] [--storage URL] [--workers K] [--show]``."""
    args = build_parser().parse_args(argv)
    try:
        return sweep(args)
    except TrialInterrupted as e:
        print(f"dae sweep: {e}", file=sys.stderr)
        return e.code
    except (ValueError, FileNotFoundError) as e:  # what the user gave: one line, no traceback
        print(f"dae sweep: error: {user_error(e) or e}", file=sys.stderr)
        return 2
