"""Callbacks that only observe: the image grid, the training-loss plot, and the prediction PNG writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torchvision.utils import make_grid

LOSS_PLOT_NAME = "loss.png"


class ImageGridCallback(L.Callback):
    """Logs clean / noisy / denoised rows for the first ``num_images`` validation images each epoch."""

    def __init__(self, num_images: int = 8, tag: str = "val/images") -> None:
        super().__init__()
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.num_images = num_images
        self.tag = tag

    @rank_zero_only
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking or not isinstance(outputs, dict):
            return
        n = min(self.num_images, len(outputs["clean"]))
        rows = [outputs[key][:n].detach().float().clamp(0, 1).cpu() for key in ("clean", "noisy", "denoised")]
        grid = make_grid(torch.cat(rows), nrow=n, padding=2, pad_value=1.0)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(self.tag, grid, global_step=trainer.global_step)


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series in a TensorBoard run folder, as ``{tag: [(step, value), ...]}`` sorted by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    if not any(run_dir.glob("events.out.tfevents.*")):
        raise FileNotFoundError(f"{run_dir}: no TensorBoard event files (events.out.tfevents.*) in this folder")
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 1, "tensors": 1})
    acc.Reload()
    return {
        tag: sorted((e.step, e.value) for e in acc.Scalars(tag)) for tag in acc.Tags().get("scalars", [])
    }


def write_loss_plot(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw train loss per step and val loss per epoch from a run's event files; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and no window pops up on a desktop
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    scalars = read_scalars(run_dir)
    if "train/loss" not in scalars:
        raise ValueError(f"{run_dir}: the event files hold no train/loss values to plot")
    out = Path(out) if out is not None else run_dir / LOSS_PLOT_NAME
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    steps, values = zip(*scalars["train/loss"])
    ax.plot(steps, values, lw=0.8, alpha=0.8, label="train loss (per step)")
    if scalars.get("val/loss"):
        steps, values = zip(*scalars["val/loss"])
        ax.plot(steps, values, "o-", label="val loss (per epoch)")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE loss")
    ax.set_yscale("log")
    ax.set_title(f"Loss: {run_dir.name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


class LossPlotCallback(L.Callback):
    """Writes ``loss.png`` into the run folder at the end of ``fit`` (rank 0 only)."""

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = trainer.logger
        if not isinstance(logger, TensorBoardLogger) or logger.log_dir is None:
            return
        logger.experiment.flush()
        try:
            write_loss_plot(logger.log_dir)
        except ValueError as e:  # e.g. a resumed run that had no steps left to train
            rank_zero_warn(f"loss plot skipped: {e}")


class PredictionImageWriter(BasePredictionWriter):
    """Writes every image ``predict`` returns as an 8-bit PNG named by its index in the data set.

    Args:
        output_dir: where to write; default ``predictions/`` in the run folder of the checkpoint being
            predicted with (``RUN/checkpoints/x.ckpt`` -> ``RUN/predictions/``), else in the trainer's log dir.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir

    def folder(self, trainer: L.Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        ckpt = Path(trainer.ckpt_path) if trainer.ckpt_path else None
        if ckpt is not None and ckpt.parent.name == "checkpoints":
            return ckpt.parent.parent / "predictions"
        return Path(trainer.log_dir or trainer.default_root_dir) / "predictions"

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        from dae.images import from_unit_tensor, write_image

        folder = self.folder(trainer)
        indices = batch_indices or range(batch_idx * len(prediction), (batch_idx + 1) * len(prediction))
        for index, image in zip(indices, prediction):
            write_image(folder / f"{index:05d}.png", from_unit_tensor(image, np.dtype(np.uint8)))
