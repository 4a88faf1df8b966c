"""The run's TensorBoard logger."""

from __future__ import annotations

from typing import Mapping

from lightning.pytorch.loggers import TensorBoardLogger


class RunTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoardLogger without its ``epoch`` series.

    Lightning adds the epoch number to every logged batch of metrics; as a tag without a ``/`` it becomes a group
    of its own that TensorBoard sorts first and opens on its first page instead of the loss and PSNR curves.
    The epoch is still in every checkpoint's name and in the run's step axis.
    """

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)
