"""The ``dae`` command line: each subcommand that needs no Trainer runs without importing Lightning.

``dae denoise``, ``evaluate``, ``export``, ``plot`` and ``sweep`` are looked up here and imported on their own;
everything else (fit, validate, test, predict) goes to the LightningCLI in ``dae.commands.cli``. Leaving Lightning out
of ``dae denoise`` keeps a few hundred MiB out of its memory.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from dae.training.threads import share_cores

# subcommand -> (module, function taking the remaining arguments and returning the exit code)
COMMANDS: dict[str, tuple[str, str]] = {
    "plot": ("dae.commands.plot", "plot_command"),
    "evaluate": ("dae.commands.evaluate", "evaluate_command"),
    "denoise": ("dae.commands.denoise", "denoise_command"),
    "export": ("dae.commands.export", "export_command"),
    "sweep": ("dae.commands.sweep", "sweep_command"),  # needs the sweep extra
}


def run_command(args: Sequence[str]) -> int:
    """Run ``args[0]``, one of ``COMMANDS``, with the arguments after it."""
    module, function = COMMANDS[args[0]]
    return getattr(importlib.import_module(module), function)(list(args[1:]))


def main(argv: Sequence[str] | None = None) -> int:
    """The ``dae`` console command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        share_cores()  # before any parallel work: this process's share of the cores while other dae processes run
        return run_command(args)
    from dae.commands.cli import (
        main as lightning_main,  # which takes the share of the cores itself
    )

    return lightning_main(argv)
