"""Draw validation PSNR against hours of training for one or more runs (docs/images/gray_training.png).

The hours are the runs' own: each event file of a run (its start, then every resume) counts from the wall time
of its first logged training step, so the time a stopped run waited for its resume is left out; the steps of a
file before its first logged one are counted at that file's own rate. It also prints each run's steps and hours.

    python docs/make_training_curve.py DRUNet=~/dae-runs/photo/gray UNet=~/dae-runs/pilot/unet -o docs/images/gray_training.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def event_files(run: Path) -> list[EventAccumulator]:
    """Every event file of ``run``, read once, in the order they were started (the start, then each resume)."""
    files = sorted(run.glob("events.out.tfevents.*"), key=lambda p: int(p.name.split(".")[3]))
    accumulators = [EventAccumulator(str(path), size_guidance={"scalars": 0}) for path in files]
    for events in accumulators:
        events.Reload()
    return accumulators


def _scalars(events: EventAccumulator, tag: str) -> list[tuple[int, float, float]]:
    """(step, wall time, value) of ``tag`` in one event file."""
    if tag not in events.Tags()["scalars"]:
        return []
    return [(e.step, e.wall_time, e.value) for e in events.Scalars(tag)]


def training_hours(files: list[EventAccumulator]) -> tuple[np.ndarray, np.ndarray]:
    """Steps and the hours of training up to each, from the ``train/loss`` events of a run's event files."""
    steps, hours, elapsed, last_step = [], [], 0.0, 0
    for events in files:
        points = _scalars(events, "train/loss")
        if len(points) < 2:
            continue
        (first_step, first_wall, _), (end_step, end_wall, _) = points[0], points[-1]
        rate = (end_wall - first_wall) / max(end_step - first_step, 1)  # seconds per step in this file
        start = elapsed + (first_step - last_step) * rate
        for step, wall, _ in points:
            steps.append(step)
            hours.append((start + wall - first_wall) / 3600)
        elapsed, last_step = start + end_wall - first_wall, end_step
    return np.array(steps), np.array(hours)


def validation_curve(files: list[EventAccumulator], steps: np.ndarray,
                     hours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hours of training and ``val/psnr`` at each validation in a run's event files, given ``training_hours``."""
    points = sorted({step: value for events in files for step, _, value in _scalars(events, "val/psnr")}.items())
    val_steps = np.array([step for step, _ in points])
    return np.interp(val_steps, steps, hours), np.array([value for _, value in points])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR", help="run folders, each with its legend name")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/images/gray_training.png"))
    args = parser.parse_args()
    figure, axes = plt.subplots(figsize=(6, 3.6))
    for item in args.runs:
        name, _, folder = item.partition("=")
        files = event_files(Path(folder).expanduser())
        steps, hours = training_hours(files)
        val_hours, psnr = validation_curve(files, steps, hours)
        axes.plot(val_hours, psnr, marker=".", label=name)
        print(f"{name}: {steps[-1]} steps in {hours[-1]:.2f} hours of training; best val/psnr {psnr.max():.2f} dB "
              f"(at {val_hours[psnr.argmax()]:.2f} h)")
    axes.set_xlabel("hours of training (this machine)")
    axes.set_ylabel("val/psnr (dB)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
