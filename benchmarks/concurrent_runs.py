"""Total training throughput of two ``dae fit`` runs at once against one run alone, on the same cores.

    python benchmarks/concurrent_runs.py                 # 600 steps per run, 3 rounds
    python benchmarks/concurrent_runs.py --steps 1000 --rounds 5

Each run is ``dae fit --config configs/mnist.yaml`` (the baseline) for ``--steps`` steps on synthetic IDX files
(60,000 training images, so no epoch ends), as a user starts it: a fresh process, its start-up included. Three
cases per round: one run alone; two runs started together, sharing the cores as dae does by default; and two
runs started together with ``OMP_NUM_THREADS`` set to all cores, which switches the sharing off (each process
takes every core, as PyTorch does by itself). Throughput is steps per second of all runs of a case together;
the runs use a registry of their own (``DAE_CORE_REGISTRY``), so other dae processes do not count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fit_args(data: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "dae", "fit", f"--config={ROOT / 'configs' / 'mnist.yaml'}",
            f"--data.data_dir={data}", "--data.download=false", f"--trainer.max_steps={steps}",
            "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu"]


def run_together(runs: int, data: Path, steps: int, work: Path, env: dict[str, str]) -> float:
    """Seconds from starting ``runs`` ``dae fit`` processes together until the last one ends."""
    start = time.perf_counter()
    procs = []
    for i in range(runs):
        cwd = work / f"run{i}"
        cwd.mkdir(parents=True, exist_ok=True)
        log = open(cwd / "dae.log", "wb")
        procs.append((subprocess.Popen(fit_args(data, steps), cwd=cwd, env=env, stdout=log,
                                       stderr=subprocess.STDOUT), log, cwd))
    for proc, log, cwd in procs:
        code = proc.wait()
        log.close()
        if code:
            raise SystemExit(f"dae fit failed ({code}): {(cwd / 'dae.log').read_text()[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="training steps of each run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from dae.training.threads import available_cores
    from tests.idx import write_mnist_files

    cores = available_cores()
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")])
    cases = {
        "1 run alone": (1, {}),
        "2 runs, cores shared (default)": (2, {}),
        f"2 runs, OMP_NUM_THREADS={cores} (no sharing)": (2, {"OMP_NUM_THREADS": str(cores)}),
    }
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    with tempfile.TemporaryDirectory(prefix="dae-concurrent-") as tmp:
        work = Path(tmp)
        write_mnist_files(work / "data", n_train=60_000, n_test=1_000)
        for round_ in range(args.rounds):
            for name, (runs, extra) in cases.items():
                env = {**base, **extra, "DAE_CORE_REGISTRY": str(work / f"registry-{round_}-{len(seconds[name])}")}
                seconds[name].append(run_together(runs, work / "data", args.steps, work / name, env))
    print(f"dae fit --config configs/mnist.yaml, {args.steps} steps per run, {cores} cores, "
          f"{args.rounds} rounds (medians; wall time from start to the last run's end, start-up included)")
    alone = statistics.median(seconds["1 run alone"])
    print(f"{'case':<42}{'seconds':>9}{'steps/s':>9}{'vs alone':>10}   per round")
    for name, (runs, _) in cases.items():
        median = statistics.median(seconds[name])
        ratio = (runs * args.steps / median) / (args.steps / alone)
        rounds = ", ".join(f"{s:.1f}" for s in seconds[name])
        print(f"{name:<42}{median:>9.1f}{runs * args.steps / median:>9.1f}{ratio:>9.2f}x   {rounds}")


if __name__ == "__main__":
    main()
