"""Callbacks that tests add to a real ``dae fit`` subprocess (``--trainer.callbacks+=tests.probes.X``)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from dae.nets import ConvAutoencoder


class PauseAtStep(L.Callback):
    """At global step ``step`` writes ``marker`` and waits (at most 5 minutes) to be killed or sent SIGTERM:
    a job stopped from outside at a known point. It runs before the checkpoint callbacks of that step."""

    def __init__(self, step: int, marker: str) -> None:
        super().__init__()
        self.step = step
        self.marker = marker

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step != self.step:
            return
        Path(self.marker).write_text(str(trainer.global_step))
        deadline = time.monotonic() + 300
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)


class MeetingLogger(TensorBoardLogger):
    """TensorBoardLogger that, before it creates its run folder, settles its version and then waits (at most 3
    minutes) until ``count`` processes have done the same: jobs that reach the choice of a run folder at the same
    moment, as jobs started together can."""

    def __init__(self, *args, folder: str = "meet", count: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.folder = Path(folder)
        self.count = count
        self.met = False

    @property
    def experiment(self):
        if not self.met:
            self.met = True
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / str(os.getpid())).write_text(str(self.version))
            deadline = time.monotonic() + 180
            while len(list(self.folder.iterdir())) < self.count and time.monotonic() < deadline:
                time.sleep(0.05)
        return super().experiment


class NaNNet(ConvAutoencoder):
    """The baseline network, except that from its ``nan_from``-th training forward pass on it outputs NaN."""

    def __init__(self, in_channels: int = 1, nan_from: int = 1) -> None:
        super().__init__(in_channels)
        self.nan_from = nan_from
        self.train_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.training:
            self.train_calls += 1
            if self.train_calls >= self.nan_from:
                return out * float("nan")
        return out


class RankReport(L.Callback):
    """Each rank writes what it did to ``<folder>/rank<R>.json``: its training steps, its validation images'
    per-image PSNR and squared errors, and a checksum of its final weights."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.train_batches = 0
        self.val: dict[int, dict[str, list[float]]] = {}

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self.train_batches += 1

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking:
            return
        err = (outputs["denoised"] - outputs["clean"]).pow(2).flatten(1).mean(1)
        epoch = self.val.setdefault(trainer.current_epoch, {"psnr": [], "mse": []})
        epoch["psnr"] += (-10 * torch.log10(err)).tolist()
        epoch["mse"].append(float(outputs["loss"]))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        report = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "train_batches": self.train_batches,
            "global_step": trainer.global_step,
            "weights_sum": float(sum(p.detach().double().sum() for p in pl_module.parameters())),
            "val": self.val,
        }
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


class NoHostSync(L.Callback):
    """On a GPU, makes every wait of the host for the GPU an error from the end of training batch ``first`` to
    the end of batch ``last`` of each epoch, the fetches of the batches in between included: a step that
    synchronises fails the run, naming the operation. On the CPU, where nothing waits, it does nothing."""

    def __init__(self, first: int = 1, last: int = 8) -> None:
        super().__init__()
        self.first = first
        self.last = last

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.strategy.root_device.type != "cuda":
            return
        if batch_idx == self.first:
            torch.cuda.set_sync_debug_mode("error")
        elif batch_idx == self.last:
            torch.cuda.set_sync_debug_mode("default")
