"""Callbacks: the image grid, the training-loss plot, the prediction PNG writer, TensorBoard's layout,
hyperparameters and test card, the stop on a non-finite loss, and the periodic re-check of the process's share of
the CPU cores."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor
from torchvision.utils import make_grid

from dae.training.report import metrics_card
from dae.training.threads import reshare_cores

LOSS_PLOT_NAME = "loss.png"
# TensorBoard's CUSTOM SCALARS tab, which the link printed after dae fit opens: {category: {chart title:
# ["Multiline", tag regexes]}}. The regexes are anchored, so that train/loss does not also draw train/loss_epoch.
CURVES_LAYOUT = {"loss and PSNR": {
    "loss: train per logged step, val per epoch": ["Multiline", ["^train/loss$", "^val/loss$"]],
    "val/psnr (dB)": ["Multiline", ["^val/psnr$"]],
}}


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
        keys = [key for key in ("clean", "noisy", "denoised") if key in outputs]  # noisy photos have no clean row
        n = min(self.num_images, len(outputs["noisy"]))
        rows = [outputs[key][:n].detach().float().clamp(0, 1).cpu() for key in keys]
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
        try:
            logger.experiment.flush()
            write_loss_plot(logger.log_dir)
        except ValueError as e:  # e.g. a resumed run that had no steps left to train
            rank_zero_warn(f"loss plot skipped: {e}")
        except OSError as e:  # e.g. a full disk: the trained run and its checkpoints are complete all the same
            run = Path(logger.log_dir)
            rank_zero_warn(f"{run / LOSS_PLOT_NAME} not written ({e}); the checkpoints are complete. Free space "
                           f"there and redraw it with: dae plot {run}")


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
        from dae.data.images import from_unit_tensor, write_image

        folder = self.folder(trainer)
        indices = batch_indices or range(batch_idx * len(prediction), (batch_idx + 1) * len(prediction))
        for index, image in zip(indices, prediction):
            write_image(folder / f"{index:05d}.png", from_unit_tensor(image, np.dtype(np.uint8)))


def flatten_hparams(params: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested hyperparameters as one level of ``a/b`` keys with values TensorBoard can show."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in params.items():
        if str(key).startswith("_"):  # LightningCLI's bookkeeping (_instantiator, _class_path), not settings
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_hparams(value, f"{name}/"))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


class TensorBoardRunCallback(L.Callback):
    """Makes a run read well in TensorBoard.

    * Lays out the CUSTOM SCALARS tab (``CURVES_LAYOUT``): train and val loss on one chart, val PSNR beside it.
    * Fills the HPARAMS tab with the model's, data's and main trainer settings beside ``metrics``; TensorBoard
      shows each metric's latest value in the run, so the tab holds the final ``val/psnr`` and, once the run is
      tested, its ``test/psnr``. (Lightning's own ``log_hyperparams(params, metrics)`` would also log the metrics
      as scalars at step 0, a false first point on every curve, so this writes only the hparams summaries.)
    * Writes the numbers of every test as a table in the TEXT tab (``test/text_summary``), where single numbers
      read better than as one-point charts.
    * When training resumes from a checkpoint, marks a restart at its step, so that TensorBoard drops what the
      interrupted run logged after that checkpoint instead of drawing those steps twice.
    """

    def __init__(self, metrics: tuple[str, ...] = ("val/psnr", "val/ssim", "val/loss",
                                                   "test/psnr", "test/ssim", "test/loss")) -> None:
        super().__init__()
        self.metrics = tuple(metrics)

    @staticmethod
    def _experiments(trainer: L.Trainer) -> list:
        return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from torch.utils.tensorboard.summary import hparams

        params = {
            "model": dict(pl_module.hparams),
            "data": dict(trainer.datamodule.hparams) if trainer.datamodule is not None else {},
            "trainer": {"max_epochs": trainer.max_epochs, "max_steps": trainer.max_steps,
                        "world_size": trainer.world_size},
            "seed": torch.initial_seed(),
        }
        summaries = hparams(flatten_hparams(params), {name: 0.0 for name in self.metrics})
        for experiment in self._experiments(trainer):
            experiment.add_custom_scalars(CURVES_LAYOUT)
            for summary in summaries:
                experiment.file_writer.add_summary(summary)

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        for experiment in self._experiments(trainer):  # the same event SummaryWriter(purge_step=...) writes
            experiment.file_writer.add_event(Event(step=trainer.global_step,
                                                   session_log=SessionLog(status=SessionLog.START)))

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {name: float(value) for name, value in sorted(trainer.callback_metrics.items())
                   if name.startswith("test/")}
        if not metrics:
            return
        card = metrics_card(metrics, trainer.ckpt_path)
        for experiment in self._experiments(trainer):
            experiment.add_text("test", card, global_step=trainer.global_step)


class NonFiniteLossStop(L.Callback):
    """Stops training when the training loss becomes NaN or infinite, with a message that names the global step,
    epoch and batch of the first such loss, and keeps the weights it touched out of every checkpoint.

    A loss on the CPU costs nothing to read, so there every loss is checked before its optimizer step: training
    stops before the first bad loss changes the weights. On an accelerator, reading the loss every step would make
    the host wait for the device every step; there each loss only updates a flag on the device, which is read
    every ``trainer.log_every_n_steps`` optimizer steps (when Lightning reads the logged metrics anyway), before
    every checkpoint is written and at every epoch end. Training then stops at most one logging interval after
    the first bad loss, and no checkpoint is written after it. Under DDP all ranks stop together.
    """

    def __init__(self) -> None:
        super().__init__()
        self._batch_idx = 0
        # (global step, epoch, batch) of the first non-finite loss, step -1 while there is none: Python ints for
        # losses on the CPU, 0-d tensors on the loss's device otherwise.
        self._first_bad: tuple[int | Tensor, ...] = (-1, -1, -1)

    @staticmethod
    def _free_to_read(loss: Tensor) -> bool:
        """Whether reading ``loss`` costs nothing (no wait for an accelerator)."""
        return loss.device.type == "cpu"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_bad = (-1, -1, -1)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        where = (trainer.global_step, trainer.current_epoch, self._batch_idx)
        loss = loss.detach()
        if self._free_to_read(loss):
            if int(self._first_bad[0]) < 0 and not torch.isfinite(loss).all():
                self._first_bad = where
            return
        if not isinstance(self._first_bad[0], Tensor):
            self._first_bad = tuple(torch.full((), v, dtype=torch.long, device=loss.device) for v in self._first_bad)
        first = ~torch.isfinite(loss).all() & (self._first_bad[0] < 0)
        self._first_bad = tuple(torch.where(first, value, old) for value, old in zip(where, self._first_bad))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        on_device = isinstance(self._first_bad[0], Tensor)
        if not on_device or (trainer.global_step + 1) % max(trainer.log_every_n_steps, 1) == 0:
            self._check(trainer)

    def _check(self, trainer: L.Trainer) -> None:
        """Raise ``FloatingPointError`` on every rank if any rank has seen a non-finite loss."""
        if isinstance(self._first_bad[0], Tensor):
            first = torch.stack(self._first_bad)
        else:
            first = torch.tensor(self._first_bad, device=trainer.strategy.root_device)
        # bool() reads the device flag: the one wait for the device this check costs.
        if trainer.strategy.reduce_boolean_decision(bool(first[0] < 0), all=True):
            return
        seen = trainer.strategy.all_gather(first).reshape(-1, 3)  # every rank's, so that all name the same one
        step, epoch, batch = min(row for row in seen.tolist() if row[0] >= 0)
        if step == trainer.global_step:
            stopped = "before that step changed the weights"
        else:
            stopped = f"at step {trainer.global_step}, without writing a checkpoint since"
        raise FloatingPointError(
            f"the training loss became NaN or infinite at global step {step} (epoch {epoch}, batch {batch}); "
            f"training stopped {stopped}, so last.ckpt holds the last good state. Lower --model.lr or check the "
            "data and noise settings, then resume from it (--ckpt_path last) or start again."
        )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)


class CoreShareCallback(L.Callback):
    """Re-checks this process's share of the CPU cores (``dae.training.threads``) every ``interval`` seconds of training,
    so that a run started first gives cores to runs started after it, and takes them back when they end."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self._next = 0.0

    def _check(self) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            reshare_cores()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._check()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._check()


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar, which also numbers and sizes an epoch that a run resumes in its middle.

    Lightning does not call ``on_train_epoch_start`` for the epoch a mid-epoch checkpoint resumes, and that hook
    is where the bar learns the epoch's number and length; without it the rest of the epoch shows as
    ``Training: N/?`` with a rate counted from the epoch's start.
    """

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        bar = self.train_progress_bar
        if bar.total is None and batch_idx > 0 and math.isfinite(self.total_train_batches):
            bar.reset(total=int(self.total_train_batches))
            bar.initial = bar.n = batch_idx  # the rate counts the steps of this process only
            bar.set_description(f"Epoch {trainer.current_epoch}")
