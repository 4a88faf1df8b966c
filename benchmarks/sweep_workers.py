"""Trials per hour of ``dae sweep`` with 1 and 2 worker processes on this machine, measured in one run.

    python benchmarks/sweep_workers.py --contestants ab             # 1 against 2 workers, 3 rounds
    python benchmarks/sweep_workers.py --contestants ac --rounds 1  # 1 worker against 2 that oversubscribe

Every sweep is the same search: the baseline ConvAutoencoder of configs/fashion_mnist.yaml (Debian's
Fashion-MNIST), learning rate and weight decay drawn at random, ``--trials`` trials of one epoch of ``--steps``
batches with validation on 10 batches, no pruning (so that every trial does the same work). Each round runs it
once per contestant, in fresh folders, one after the other:

(a) ``--workers 1``: one process, all the cores;
(b) ``--workers 2``: two processes, each with cores/2 threads (what ``dae sweep`` does by default);
(c) ``--workers 2 --threads CORES``: two processes that both use every core, the oversubscription (b) avoids.

Trials per hour are counted two ways: over the whole command's wall time (start-up, checks and the closing table
included), and over the trials' own span (first trial's start to last trial's end, from the study). The script
prints each round and the medians, and the ratios against (a) from the same rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dae.commands.sweep.study import make_storage  # noqa: E402

CONTESTANTS = {
    "a": ("1 worker x all cores", lambda cores: ["--workers", "1"]),
    "b": ("2 workers x cores/2 threads", lambda cores: ["--workers", "2"]),
    "c": ("2 workers x all cores each", lambda cores: ["--workers", "2", "--threads", str(cores)]),
}


def write_sweep(folder: Path, trials: int, steps: int) -> Path:
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump({
        "metric": "val/psnr",
        "direction": "maximize",
        "n_trials": trials,
        "baseline_trial": False,
        "sampler": {"class_path": "optuna.samplers.RandomSampler", "init_args": {"seed": 0}},
        "pruner": "NopPruner",
        "fixed": {
            "trainer.max_epochs": 1,
            "trainer.limit_train_batches": steps,
            "trainer.limit_val_batches": 10,
            "trainer.accelerator": "cpu",
        },
        "params": {
            "model.lr": {"type": "float", "low": 3.0e-4, "high": 3.0e-3, "log": True},
            "model.weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-4, "log": True},
        },
    }))
    return path


def run_sweep(work: Path, sweep: Path, config: Path, extra: list[str], name: str) -> tuple[float, float, int]:
    """Run one sweep to its end; returns (wall seconds, seconds from first trial start to last end, trials)."""
    out = work / name
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("OMP_NUM_THREADS", None)  # dae sweep sets the threads of each worker itself
    start = time.perf_counter()
    with open(work / f"{name}.log", "wb") as log:
        code = subprocess.call([sys.executable, "-m", "dae", "sweep", "--config", str(config), "--sweep", str(sweep),
                                "--dir", str(out), *extra], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if code != 0:
        sys.exit(f"the sweep failed (exit {code}); see {work / f'{name}.log'}")
    study = optuna.load_study(study_name="bench", storage=make_storage(None, out))
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return wall, span, len(trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="trials per sweep")
    parser.add_argument("--steps", type=int, default=300, help="training batches per trial (one epoch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "fashion_mnist.yaml")
    parser.add_argument("--contestants", default="abc", help="which of a, b, c to run (a always runs: the ratios' base)")
    args = parser.parse_args()
    chosen = {key: CONTESTANTS[key] for key in CONTESTANTS if key in args.contestants or key == "a"}
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; {args.trials} trials of {args.steps} steps per sweep; config {args.config.name}; "
          f"torch threads per worker as dae sweep sets them")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in chosen.values()}
    work = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    try:
        sweep = write_sweep(work, args.trials, args.steps)
        for r in range(args.rounds):
            for key, (name, extra) in chosen.items():
                wall, span, n = run_sweep(work, sweep, args.config, extra(cores), f"round{r}{key}")
                per_hour = (n / wall * 3600, n / span * 3600)
                results[name].append(per_hour)
                print(f"round {r + 1}  {name:30s} {n} trials in {wall:6.1f} s (trials {span:6.1f} s): "
                      f"{per_hour[0]:6.0f} trials/h whole command, {per_hour[1]:6.0f} trials/h over the trials")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results[CONTESTANTS["a"][0]]
    print("\nmedians over rounds (ratios against 1 worker, per round, then the median):")
    for name, values in results.items():
        whole = statistics.median(v[0] for v in values)
        span = statistics.median(v[1] for v in values)
        r_whole = statistics.median(v[0] / b[0] for v, b in zip(values, base))
        r_span = statistics.median(v[1] / b[1] for v, b in zip(values, base))
        print(f"  {name:30s} {whole:6.0f} trials/h ({r_whole:.2f}x)  over the trials {span:6.0f} trials/h "
              f"({r_span:.2f}x)")


if __name__ == "__main__":
    main()
