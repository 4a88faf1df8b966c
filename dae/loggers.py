"""The run's TensorBoard logger: a failure to write the event file after training does not fail the run."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn


class RunLogger(TensorBoardLogger):
    """``TensorBoardLogger`` whose closing of the event file (and hparams.yaml) warns instead of raising.

    By the time Lightning closes the logger the checkpoints are written; a full disk at that point would otherwise
    turn a finished run into a failed one, with a traceback, and skip what follows the fit.
    """

    @rank_zero_only
    def finalize(self, status: str) -> None:
        try:
            super().finalize(status)
        except OSError as e:
            run = Path(self.log_dir)
            rank_zero_warn(
                f"the TensorBoard files in {run} could not be completed ({e}); the checkpoints are complete, but "
                f"the event file may lack the last values: free space there, then redraw loss.png with dae plot {run}"
            )
