"""The answer of a sweep: the table of its trials, the time pruning saved, and ``best.yaml``."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

BEST_NAME = "best.yaml"


def duration_s(trial: FrozenTrial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def trials_table(study: optuna.Study, metric: str) -> str:
    """A markdown table: number, state, metric, parameters, epochs run, time and run folder of every trial."""
    trials = study.get_trials(deepcopy=False)
    names = sorted({name for t in trials for name in t.params})
    header = ["trial", "state", metric, *names, "epochs", "time", "run"]
    rows = [header, ["---"] * len(header)]
    for t in trials:
        value = t.value
        if value is None and t.intermediate_values:  # a pruned trial: its last reported value
            value = t.intermediate_values[max(t.intermediate_values)]
        epochs = t.user_attrs.get("epochs")
        max_epochs = t.user_attrs.get("max_epochs")
        state = t.state.name
        if t.user_attrs.get("base_config"):
            state += " (given config)"
        if "retry_of" in t.user_attrs:
            state += f" (retry of {t.user_attrs['retry_of']})"
        rows.append([
            str(t.number),
            state,
            format_value(value),
            *(format_value(t.params.get(name)) for name in names),
            f"{epochs}/{max_epochs}" if epochs is not None else "-",
            format_duration(duration_s(t)),
            str(t.user_attrs.get("run_dir", "-")),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows)


def pruning_savings(study: optuna.Study) -> tuple[int, float, float]:
    """(pruned trials, seconds they would still have run, seconds all finished trials took).

    Each pruned trial's remaining epochs are priced at its own measured time per epoch.
    """
    pruned, saved, total = 0, 0.0, 0.0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        seconds = duration_s(t) or 0.0
        total += seconds
        epochs, max_epochs = t.user_attrs.get("epochs"), t.user_attrs.get("max_epochs")
        if t.state == TrialState.PRUNED and epochs and max_epochs:
            pruned += 1
            saved += seconds / epochs * (max_epochs - epochs)
    return pruned, saved, total


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial, or None before one has finished."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial


def given_config_trial(study: optuna.Study) -> FrozenTrial | None:
    """The COMPLETE trial that ran the configs as given (see ``checks.base_values``), or None."""
    return next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if t.user_attrs.get("base_config")), None)


def write_best_config(study: optuna.Study, sweep_dir: Path, metric: str) -> Path | None:
    """Write ``sweep_dir/best.yaml``: the best trial's own config.yaml, logging to ``lightning_logs/`` like any
    ``dae fit``, so that ``dae fit --config best.yaml`` retrains it as it is. Returns its path (None: no best)."""
    best = best_trial(study)
    if best is None:
        return None
    run_dir = sweep_dir / best.user_attrs["run_dir"]
    config = yaml.safe_load(best.user_attrs["config"])
    config.pop("ckpt_path", None)
    trainer = config.get("trainer") or {}
    for key in ("enable_progress_bar", "enable_model_summary"):  # trials run quietly; a retraining need not
        trainer.pop(key, None)
    logger = trainer.get("logger")
    if isinstance(logger, dict) and isinstance(logger.get("init_args"), dict):
        logger["init_args"].update(save_dir=".", name="lightning_logs", version=None)
    params = ", ".join(f"{k}={format_value(v)}" for k, v in best.params.items())
    header = (
        f"# The best trial of sweep {study.study_name}: trial {best.number} ({run_dir}), {metric} = {best.value:.4f}\n"
        f"# {params}\n"
        f"# Retrain it: dae fit --config {sweep_dir / BEST_NAME}\n"
    )
    out = sweep_dir / BEST_NAME
    sweep_dir.mkdir(parents=True, exist_ok=True)  # --show on a machine that ran none of the trials
    out.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return out


def summary(study: optuna.Study, sweep_dir: Path, metric: str) -> str:
    """The table, the time pruning saved and the best trial, as printed at a sweep's end and by ``--show``."""
    lines = [trials_table(study, metric), ""]
    pruned, saved, total = pruning_savings(study)
    if pruned:
        lines.append(f"pruning stopped {pruned} trial{'s' if pruned != 1 else ''} early and saved about "
                     f"{format_duration(saved)} of training ({format_duration(total)} spent on finished trials; "
                     "priced at each pruned trial's own time per epoch)")
    best = best_trial(study)
    if best is None:
        lines.append("no trial has finished yet")
    else:
        best_yaml = write_best_config(study, sweep_dir, metric)
        host = best.user_attrs.get("worker_host")
        where = f" on {host}" if host not in (None, socket.gethostname()) else ""
        name, value = f"trial {best.number}", f"{best.value:.4f}"
        given = given_config_trial(study)
        if given is not None and given.number == best.number:
            name += " (the given config)"
        elif given is not None:  # what the search gained over where it started
            value += f" ({best.value - given.value:+.4f} against the given config, trial {given.number})"
        lines.append(f"best: {name}, {metric} = {value}, run folder "
                     f"{sweep_dir / best.user_attrs['run_dir']}{where}")
        lines.append(f"retrain it: dae fit --config {best_yaml}")
        lines.append(f"compare the trials: tensorboard --logdir {sweep_dir}  (HPARAMS tab)")
    return "\n".join(lines)
