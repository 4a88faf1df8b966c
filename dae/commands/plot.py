"""``dae plot RUN_DIR``: redraw a run's loss plot from its TensorBoard event files."""

from __future__ import annotations

import argparse
from typing import Sequence

from dae.training.callbacks import write_loss_plot


def plot_command(argv: Sequence[str]) -> int:
    """``dae plot RUN_DIR [-o OUT]``: redraw a run's loss.png from its TensorBoard event files."""
    parser = argparse.ArgumentParser(prog="dae plot", description=plot_command.__doc__)
    parser.add_argument("run_dir", help="a run folder, e.g. lightning_logs/version_0")
    parser.add_argument("-o", "--output", help="PNG to write (default: RUN_DIR/loss.png)")
    args = parser.parse_args(argv)
    try:
        out = write_loss_plot(args.run_dir, args.output)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"dae plot: error: {e}\n")
    print(f"wrote {out}")
    return 0
