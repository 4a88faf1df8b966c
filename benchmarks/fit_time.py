"""Wall time of one whole ``dae`` run, start-up stated apart, with the metrics it ended with.

    python benchmarks/fit_time.py -- fit --config configs/mnist.yaml --config configs/gpu.yaml
    python benchmarks/fit_time.py --json test.json -- test --config configs/mnist.yaml --ckpt_path RUN/last.ckpt
    python benchmarks/fit_time.py --profile 100 200 -- fit --config configs/mnist.yaml --trainer.max_steps 300

The arguments after ``--`` run as ``python -m dae ARGS`` in a child process, with a callback (``RunClock``, in
run_clock.py) added to its ``trainer.callbacks`` that notes the wall-clock time at which training (or test, or
validation) starts and ends, each epoch's time and validation's share, and the metrics at the end. Start-up is
everything from launching the process to the first training batch (imports, reading the data and moving it to the
device, the sanity check); training is every epoch with its validation and checkpoints; after training come the
test after fit and the plots.

``--profile FIRST LAST`` adds a second callback (``StepProfiler``) that records the training steps FIRST to
LAST - 1 with ``torch.profiler`` and writes where their time went: the wall time per step, the time inside
torch operations on the host and, on a GPU, the time the GPU computed (the rest it waited for the host),
followed by the operations that took the most host and GPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def report(record: dict, launched: float, ended: float) -> dict:
    """The times of a run from its RunClock record (empty when no stage ended) and the parent's launch and exit
    times; ``None`` for a stage that did not run to its end."""
    stages = record.get("stages", {})

    def seconds(stage: str) -> float | None:
        start, end = stages.get(stage, (None, None))
        return None if start is None or end is None else end - start

    first = min((start for start, _ in stages.values()), default=None)
    train_end = stages.get("train", (None, None))[1]
    return {
        "wall_s": ended - launched,
        "startup_s": None if first is None else first - launched,
        "train_s": seconds("train"),
        "validation_in_training_s": record.get("validation_in_training_s") if train_end else None,
        "epochs_s": record.get("epochs_s", []),
        "after_training_s": None if train_end is None else ended - train_end,
        "validate_s": seconds("validate"),
        "test_s": seconds("test"),
        "steps": record.get("steps"),
        "metrics": record.get("metrics", {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [--json FILE] [--profile FIRST LAST] -- DAE_ARGS...")
    parser.add_argument("--json", type=Path, help="also write the times and metrics to this JSON file")
    parser.add_argument("--profile", type=int, nargs=2, metavar=("FIRST", "LAST"),
                        help="profile training steps FIRST to LAST - 1 with torch.profiler")
    parser.add_argument("--profile-out", type=Path, default=Path("profile.txt"),
                        help="where --profile writes its summary (default: profile.txt)")
    argv = sys.argv[1:]
    if "--" not in argv:
        parser.error("give the dae arguments after --, e.g. -- fit --config configs/mnist.yaml")
    split = argv.index("--")
    args, dae_args = parser.parse_args(argv[:split]), argv[split + 1:]

    record_path = Path(f"run_clock-{os.getpid()}.json").resolve()
    callbacks = [{"class_path": "benchmarks.run_clock.RunClock", "init_args": {"path": str(record_path)}}]
    if args.profile:
        callbacks.append({"class_path": "benchmarks.run_clock.StepProfiler", "init_args": {
            "first": args.profile[0], "last": args.profile[1], "path": str(args.profile_out.resolve())}})
    command = [sys.executable, "-m", "dae", *dae_args, *(f"--trainer.callbacks+={json.dumps(c)}" for c in callbacks)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    launched = time.time()
    code = subprocess.run(command, env=env).returncode
    ended = time.time()
    try:
        record = json.loads(record_path.read_text())
        record_path.unlink()
    except FileNotFoundError:  # the run ended before any stage did
        record = {}
    times = {"command": ["dae", *dae_args], "exit_code": code, **report(record, launched, ended)}

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} s"

    print(f"\ndae {' '.join(dae_args)}\nexit code {code}; wall time {seconds(times['wall_s'])}; start-up (launch until "
          f"training or testing starts) {seconds(times['startup_s'])}")
    if times["train_s"] is not None:
        epochs = ", ".join(f"{s:.1f}" for s in times["epochs_s"])
        print(f"training: {seconds(times['train_s'])} for {len(times['epochs_s'])} epoch(s), {times['steps']} steps, "
              f"validation included ({seconds(times['validation_in_training_s'])}); epochs {epochs} s; after "
              f"training (test after fit, plots, exit): {seconds(times['after_training_s'])}")
    for stage in ("validate", "test"):
        if times[f"{stage}_s"] is not None:
            print(f"{stage}: {seconds(times[f'{stage}_s'])}")
    print("metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(times["metrics"].items())))
    if args.json:
        args.json.write_text(json.dumps(times, indent=1))
    sys.exit(code)


if __name__ == "__main__":
    main()
