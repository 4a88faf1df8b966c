"""What a finished run tells its user: the test numbers (also as ``test_metrics.json`` in the run folder and a
card in TensorBoard's TEXT tab) and how to open the run in TensorBoard with its loss and PSNR curves on top."""

from __future__ import annotations

import json
import os
import shlex
import sys
import urllib.parse
from pathlib import Path
from typing import Mapping

TEST_METRICS_NAME = "test_metrics.json"
# Cards pinned above all others on the TIME SERIES tab by the printed TensorBoard link (TensorBoard reads pins from
# the URL): the curves. The test numbers, single points that a line chart draws as no line, are in the HPARAMS and
# TEXT tabs.
PINNED_TAGS = ("train/loss", "val/loss", "val/psnr")


def shown_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working folder when it lies below it, else absolute; quoted for a shell."""
    path = Path(path).absolute()
    try:
        path = path.relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.quote(str(path))


def tensorboard_command(run_dir: str | os.PathLike) -> str:
    """The command that serves ``run_dir`` in TensorBoard: the ``tensorboard`` installed beside this Python, on the
    folder that holds the run, since TensorBoard names each run by its path below ``--logdir`` (``version_0``
    there; the run folder itself would be listed as ``.``)."""
    executable = Path(sys.executable).with_name("tensorboard")
    program = shown_path(executable) if executable.is_file() else "tensorboard"
    return f"{program} --logdir {shown_path(Path(run_dir).absolute().parent)}"


def tensorboard_url(port: int = 6006) -> str:
    """The TensorBoard address that opens on the CUSTOM SCALARS tab (train and val loss on one chart, val PSNR
    beside it) and pins the same curves on top of the TIME SERIES tab."""
    pins = json.dumps([{"plugin": "scalars", "tag": tag} for tag in PINNED_TAGS], separators=(",", ":"))
    return f"http://localhost:{port}/?pinnedCards={urllib.parse.quote(pins)}#custom_scalars"


def format_value(name: str, value: float) -> str:
    """``20.12 dB`` for a PSNR (two decimals), ``0.8731`` for anything else (four)."""
    return f"{value:.2f} dB" if "psnr" in name else f"{value:.4f}"


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``test/psnr 20.12 dB, test/ssim 0.8731, ...``"""
    return ", ".join(f"{name} {format_value(name, value)}" for name, value in metrics.items())


def scored_weights(checkpoint: str | None) -> str:
    """What the test scored: ``checkpoint best-epoch09-step8600.ckpt``, or the final weights when there is none."""
    return f"checkpoint {Path(checkpoint).name}" if checkpoint else "final weights (no best checkpoint)"


def metrics_card(metrics: Mapping[str, float], checkpoint: str | None) -> str:
    """The test numbers as a Markdown table under what was scored: TensorBoard's TEXT card of the run."""
    rows = [f"| {name} | {format_value(name, value)} |" for name, value in metrics.items()]
    return "\n".join([f"**Test split, {scored_weights(checkpoint)}**", "", "| metric | value |", "|---|---|", *rows])


def write_test_metrics(run_dir: str | os.PathLike, metrics: Mapping[str, float], checkpoint: str | None) -> Path:
    """Write ``test_metrics.json`` (the checkpoint scored, relative to the run folder, and its test metrics)."""
    run_dir = Path(run_dir)
    if checkpoint is not None and Path(checkpoint).absolute().is_relative_to(run_dir.absolute()):
        checkpoint = str(Path(checkpoint).absolute().relative_to(run_dir.absolute()))
    out = run_dir / TEST_METRICS_NAME
    out.write_text(json.dumps({"checkpoint": checkpoint, **{k: float(v) for k, v in metrics.items()}}, indent=2) + "\n")
    return out


def run_summary(run_dir: str | os.PathLike, metrics: Mapping[str, float], checkpoint: str | None) -> str:
    """The lines printed when ``dae fit`` ends: the test numbers, the run folder and how to look at it."""
    return "\n".join([
        f"Test split, {scored_weights(checkpoint)}: {format_metrics(metrics)}",
        f"Run folder: {shown_path(run_dir)} (test numbers in {TEST_METRICS_NAME})",
        f"TensorBoard: {tensorboard_command(run_dir)}",
        f"  then open {tensorboard_url()}",
    ])
