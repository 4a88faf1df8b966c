"""One trial: an ordinary ``dae fit`` run in its own folder, reporting the metric to Optuna every epoch."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import optuna
from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningArgumentParser
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from dae.commands.cli import DaeCLI
from dae.commands.config_files import error_line
from dae.commands.sweep.spec import SweepSpec
from dae.training.checkpointing import LAST_NAME

# Every trial runs quietly: several workers share one terminal, and Optuna prints a line per finished trial. A
# trial is judged by its validation metric alone: the test split is not scored, so a sweep cannot tune on it.
QUIET = {"trainer.enable_progress_bar": False, "trainer.enable_model_summary": False, "test_after_fit": False}
# The run folders a sweep makes, trial_000, trial_001, ...: the only folders it removes.
RUN_NAME = re.compile(r"trial_\d{3,}")


class SettingsRefused(ValueError):
    """The configs refuse a setting of the sweep (a value of the wrong type, a choice they do not offer)."""


def override_args(settings: dict[str, Any]) -> list[str]:
    """``--key=value`` arguments for dotted config keys: text as it is, other values as JSON (which the option
    parser reads as YAML)."""
    return [f"--{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in settings.items()]


def config_args(configs: Sequence[str | Path]) -> list[str]:
    return [f"--config={config}" for config in configs]


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Ask the trial for a value of ``name`` from ``dist`` (a retried trial gets its earlier value back)."""
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    raise TypeError(f"unsupported distribution {dist!r}")


class MetricReporter(L.Callback):
    """Reports the metric to the trial after every validation epoch; when the pruner says so, stops the run.

    Unlike raising ``TrialPruned`` inside the loop, stopping lets the epoch end as usual, so a pruned trial's
    folder still has its last checkpoint and loss.png. A metric that was not logged is an error, never a skip.
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        super().__init__()
        self.trial = trial
        self.metric = metric
        self.pruned_epoch: int | None = None
        self.value: float | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            raise ValueError(f"metric {self.metric} was not logged; logged: {', '.join(sorted(trainer.callback_metrics))}")
        self.value = float(value)
        self.trial.report(self.value, step=trainer.current_epoch)
        if self.trial.should_prune():
            self.pruned_epoch = trainer.current_epoch
            trainer.should_stop = True


class SweepCLI(DaeCLI):
    """dae's CLI for settings that the sweep made: one that the option parser refuses raises ``SettingsRefused``
    with the parser's one-line reason, where the command line would print usage and exit."""

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        return super().init_parser(**kwargs, exit_on_error=False)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as e:
            raise SettingsRefused(error_line(str(e))) from None


class TrialCLI(SweepCLI):
    """``dae fit`` with extra callbacks for one trial."""

    def __init__(self, args: list[str], callbacks: list[L.Callback]) -> None:
        self.extra_callbacks = callbacks
        super().__init__(args=args)

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.extend(self.extra_callbacks)
        return trainer


def run_folder(sweep_dir: Path, name: Any) -> Path:
    """The run folder ``sweep_dir/name`` of a trial, ``name`` as the study records it. The study's storage may be
    shared with others, and a folder without ``last.ckpt`` is removed: refuse (``ValueError``) any name but the
    sweep's own ``trial_NNN``, and a folder that resolves outside ``sweep_dir`` (a link)."""
    folder = sweep_dir / str(name)
    if not (isinstance(name, str) and RUN_NAME.fullmatch(name)) or folder.resolve().parent != sweep_dir.resolve():
        raise ValueError(f"the study names the run folder {name!r}, which is not one of this sweep's trial_NNN "
                         f"folders in {sweep_dir}; the trial fails and nothing is removed")
    return folder


def run_trial(trial: optuna.Trial, spec: SweepSpec, configs: Sequence[str | Path], sweep_dir: Path) -> float:
    """Train one trial as ``dae fit`` into ``sweep_dir/trial_NNN`` and return its metric after the last epoch.

    A retried trial (one whose earlier run was interrupted) goes on from that run's ``last.ckpt`` in the same
    folder. Raises ``optuna.TrialPruned`` once the pruner stopped it (its folder is complete up to that epoch), and
    ``ValueError`` for settings that the configs or the model refuse and a run folder that is not the sweep's.
    """
    params = {key: suggest(trial, key, dist) for key, dist in spec.params.items()}
    run_name = trial.user_attrs.get("run_dir") or f"trial_{trial.number:03d}"
    run_dir = run_folder(sweep_dir, run_name)
    trial.set_user_attr("run_dir", run_name)
    resume = run_dir / "checkpoints" / LAST_NAME
    if not resume.is_file() and run_dir.exists():
        shutil.rmtree(run_dir)  # an earlier attempt that died before its first checkpoint: start it afresh
    settings = {
        **QUIET,
        **spec.fixed,
        **params,
        "trainer.logger.init_args.save_dir": str(sweep_dir),
        "trainer.logger.init_args.name": "",
        "trainer.logger.init_args.version": run_name,
    }
    args = ["fit", *config_args(configs), *override_args(settings)]
    if resume.is_file():
        args.append("--ckpt_path=last")  # the run named run_name, whose config is this trial's
    reporter = MetricReporter(trial, spec.metric)
    cli = TrialCLI(args, [reporter])
    trainer = cli.trainer
    # The run's own config travels with the study, so that best.yaml can be written wherever it is read.
    trial.set_user_attr("config", (run_dir / "config.yaml").read_text())
    trial.set_user_attr("epochs", trainer.current_epoch)
    trial.set_user_attr("max_epochs", trainer.max_epochs)
    if reporter.pruned_epoch is not None:
        raise optuna.TrialPruned(f"pruned after epoch {reporter.pruned_epoch}: {spec.metric} {reporter.value:.4g}")
    if spec.metric not in trainer.callback_metrics:  # resumed from a run that had finished training
        trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    return float(trainer.callback_metrics[spec.metric])
