"""The run's TensorBoard logger: curves first in TensorBoard, and a finished run survives a failing event file."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn


class RunLogger(TensorBoardLogger):
    """Lightning's ``TensorBoardLogger`` without its ``epoch`` series, whose closing of the event file (and
    hparams.yaml) warns instead of raising.

    Lightning adds the epoch number to every logged batch of metrics; as a tag without a ``/`` it becomes a group
    of its own that TensorBoard sorts first and opens on its first page instead of the loss and PSNR curves.
    The epoch is still in every checkpoint's name and in the run's step axis.

    By the time Lightning closes the logger the checkpoints are written; a full disk at that point would otherwise
    turn a finished run into a failed one, with a traceback, and skip what follows the fit.
    """

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)

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
