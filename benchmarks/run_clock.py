"""Callbacks that ``benchmarks/fit_time.py`` adds to a ``dae`` run: ``RunClock`` notes when each stage starts and
ends and the metrics at the end; ``StepProfiler`` records a window of training steps with ``torch.profiler``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch


class RunClock(L.Callback):
    """Writes to ``path`` (JSON, rewritten as the run goes) the wall-clock start and end of each stage that ran
    (train, validate, test), the training epochs' durations, the validation time within training, the number of
    training steps and the final metrics."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = Path(path)
        self.record: dict[str, Any] = {"stages": {}, "epochs_s": [], "validation_in_training_s": 0.0,
                                       "metrics": {}}
        self._epoch_start = self._validation_start = 0.0

    def _save(self, trainer: L.Trainer) -> None:
        self.record["metrics"].update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
        self.record["steps"] = trainer.global_step
        self.path.write_text(json.dumps(self.record, indent=1))

    def _start(self, stage: str) -> None:
        self.record["stages"][stage] = [time.time(), None]

    def _end(self, trainer: L.Trainer, stage: str) -> None:
        self.record["stages"][stage][1] = time.time()
        self._save(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("train")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(trainer, "train")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.time()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["epochs_s"].append(time.time() - self._epoch_start)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._start("validate")
        self._validation_start = time.time()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._end(trainer, "validate")
        elif not trainer.sanity_checking:  # the sanity check is start-up
            self.record["validation_in_training_s"] += time.time() - self._validation_start

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("test")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(trainer, "test")


class StepProfiler(L.Callback):
    """Records training steps ``first`` to ``last - 1`` (global steps) with ``torch.profiler`` and writes a
    summary of them to ``path``: wall time, host time in torch operations and GPU time per step, then the
    ``rows`` operations with the most host time and, on a GPU, the most GPU time."""

    def __init__(self, first: int, last: int, path: str, rows: int = 25) -> None:
        super().__init__()
        if not 0 <= first < last:
            raise ValueError(f"StepProfiler: need 0 <= first < last, got {first}, {last}")
        self.first, self.last, self.path, self.rows = first, last, Path(path), rows
        self.profiler: torch.profiler.profile | None = None
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step != self.first or self.profiler is not None:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if pl_module.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize(pl_module.device)  # the window starts with nothing queued on the GPU
        self.profiler = torch.profiler.profile(activities=activities)
        self.profiler.start()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.profiler is None or trainer.global_step != self.last:
            return
        on_gpu = pl_module.device.type == "cuda"
        if on_gpu:
            torch.cuda.synchronize(pl_module.device)  # every step of the window has finished on the GPU
        wall = time.perf_counter() - self._start
        self.profiler.stop()
        self.path.write_text(self.summary(self.profiler.key_averages(), wall, on_gpu))
        self.profiler = None

    def summary(self, averages: Any, wall: float, on_gpu: bool) -> str:
        """The text written to ``path``."""
        steps = self.last - self.first
        # ms; ranges such as Optimizer.step are left out: their self time is the Python code that runs in them.
        ops = [e for e in averages if not getattr(e, "is_user_annotation", False)]
        host = sum(e.self_cpu_time_total for e in ops) / 1e3
        gpu = sum(e.self_device_time_total for e in ops if e.device_type != torch.autograd.DeviceType.CPU) / 1e3
        lines = [f"torch.profiler over training steps {self.first} to {self.last - 1} ({steps} steps) on "
                 f"{'the GPU' if on_gpu else 'the CPU'}, torch {torch.__version__}",
                 f"wall time: {wall * 1e3 / steps:.3f} ms/step (the profiler adds its own overhead)",
                 f"host time inside torch operations: {host / steps:.3f} ms/step ({host / (wall * 1e3):.0%} of the "
                 "wall time; the rest is Python: Lightning's loop, hooks and logging, dae's step)"]
        if on_gpu:
            lines.append(f"GPU busy (kernels and copies): {gpu / steps:.3f} ms/step ({gpu / (wall * 1e3):.0%} of the "
                         "wall time; the rest of the time the GPU waited for the host)")
        lines += ["", "By host time:", averages.table(sort_by="self_cpu_time_total", row_limit=self.rows)]
        if on_gpu:
            lines += ["By GPU time:", averages.table(sort_by="self_device_time_total", row_limit=self.rows)]
        return "\n".join(lines)
