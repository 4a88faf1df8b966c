"""``dae sweep``: hyperparameter search over dae's configs with Optuna (the optional ``sweep`` extra).

spec.py reads the sweep file, trial.py runs one trial as an ordinary ``dae fit``, study.py keeps the study
(journal file or RDB) and brings interrupted trials back, report.py prints the answer and writes best.yaml,
command.py is the command and its workers.
"""

from __future__ import annotations

import sys
from typing import Sequence


def sweep_command(argv: Sequence[str]) -> int:
    """``dae sweep ...``; without Optuna installed, a one-line notice (exit status 2)."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        print("dae sweep needs Optuna: pip install -e '.[sweep]'", file=sys.stderr)
        return 2
    from dae.commands.sweep.command import sweep_command as run

    return run(argv)
