"""``dae sweep``: search spaces, fast failures, trials as ordinary runs, pruning, resuming, shared studies."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

optuna = pytest.importorskip("optuna", reason="dae sweep needs the sweep extra: pip install -e '.[sweep]'")

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from dae.training.callbacks import read_scalars  # noqa: E402
from dae.training.threads import available_cores  # noqa: E402
from dae.commands import main  # noqa: E402
from dae.commands.sweep import command  # noqa: E402
from dae.commands.sweep.checks import base_values  # noqa: E402
from dae.commands.sweep.report import summary  # noqa: E402
from dae.commands.sweep.spec import SweepFileError, load_spec  # noqa: E402
from dae.commands.sweep.study import (  # noqa: E402
    JOURNAL_NAME,
    fail_dead_trials,
    make_storage,
    retry_trial,
    shown_url,
)
from dae.commands.sweep.trial import run_trial  # noqa: E402
from tests.conftest import ROOT, dae_subprocess  # noqa: E402

CONFIG = ROOT / "configs" / "mnist.yaml"


def fixture_settings(data_dir: Path, **extra) -> dict:
    """Short trials on the fixture data: 2 epochs of 3 steps."""
    return {
        "data.init_args.data_dir": str(data_dir),
        "data.init_args.val_split": 64,
        "data.init_args.download": False,
        "trainer.max_epochs": 2,
        "trainer.limit_train_batches": 3,
        "trainer.log_every_n_steps": 1,
        "trainer.accelerator": "cpu",
        **extra,
    }


def write_sweep(folder: Path, data_dir: Path, n_trials: int = 3, pruner: object = "NopPruner",
                params: dict | None = None, fixed: dict | None = None, **top) -> Path:
    sweep = {
        "metric": "val/psnr",
        "direction": "maximize",
        "n_trials": n_trials,
        "sampler": {"class_path": "optuna.samplers.RandomSampler", "init_args": {"seed": 0}},
        "pruner": pruner,
        "fixed": fixture_settings(data_dir, **(fixed or {})),
        "params": params or {
            "model.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
            "model.weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-4, "log": True},
        },
        **top,
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def load(sweep_dir: Path, name: str = "sweep") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=make_storage(None, sweep_dir))


def finished(study: optuna.Study) -> list:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


# ------------------------------------------------------------------------------------------------ the sweep file


def test_search_space_parses_into_optuna_distributions(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "metric: val/loss\n"
        "params:\n"
        "  model.lr: {type: float, low: 1e-4, high: 1.0e-2, log: true}\n"  # YAML reads 1e-4 as text
        "  model.net.init_args.width: {type: int, low: 8, high: 32, step: 8}\n"
        "  model.lr_schedule: {type: categorical, choices: [constant, cosine]}\n"
        "pruner: SuccessiveHalvingPruner\n"
    )
    spec = load_spec(path)
    assert spec.params["model.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert spec.params["model.net.init_args.width"] == IntDistribution(8, 32, step=8)
    assert spec.params["model.lr_schedule"] == CategoricalDistribution(["constant", "cosine"])
    assert spec.direction == "minimize"  # a loss is minimised unless the file says otherwise
    assert isinstance(spec.make_pruner(), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(spec.make_sampler(), optuna.samplers.TPESampler)
    assert spec.study_name == "s"


@pytest.mark.parametrize("text, message", [
    ("metric: val/psnr\nparams: {model.lr: {type: float, low: 0.1}}\n", "params.model.lr (float)"),
    ("metric: val/psnr\nparams: {model.lr: {type: normal, low: 0.1, high: 1}}\n", "params.model.lr must be"),
    ("metric: val/psnr\nparams: {model.lr: {type: float, low: 1, high: 0.1}}\n", "params.model.lr"),
    ("metric: val/psnr\ndirection: up\nparams: {model.lr: {type: float, low: 0.1, high: 1}}\n", "direction"),
    ("metric: val/psnr\nsampler: os.system\nparams: {model.lr: {type: float, low: 0.1, high: 1}}\n",
     "not an Optuna class"),
    ("metric: val/psnr\npruner: {class_path: MedianPruner, init_args: {warmup: 1}}\n"
     "params: {model.lr: {type: float, low: 0.1, high: 1}}\n", "pruner MedianPruner"),
    ("metrik: val/psnr\nparams: {model.lr: {type: float, low: 0.1, high: 1}}\n", "unknown entries ['metrik']"),
])
def test_bad_sweep_file_is_one_line_naming_file_and_entry(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SweepFileError) as info:
        load_spec(path)
    assert str(path) in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_without_optuna_the_command_says_what_to_install(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    assert main(["sweep", "--sweep", "x.yaml"]) == 2
    assert capsys.readouterr().err.strip() == "dae sweep needs Optuna: pip install -e '.[sweep]'"


@pytest.mark.parametrize("change, message", [
    ({"params": {"model.net.init_args.widht": {"type": "int", "low": 8, "high": 16}}},
     "params.model.net.init_args.widht is not a setting"),
    ({"params": {"model.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}, "fixed": {"trainer.max_epoch": 3}},
     "fixed.trainer.max_epoch is not a setting of"),
    ({"metric": "val/pnsr"}, "metric val/pnsr is not logged in validation; did you mean val/psnr?"),
])
def test_misspelt_key_or_metric_fails_before_the_first_trial(mnist_dir, tmp_path, monkeypatch, capsys, change,
                                                             message):
    monkeypatch.chdir(tmp_path)
    sweep = write_sweep(tmp_path, mnist_dir, **change)
    assert main(["sweep", "--config", str(CONFIG), "--sweep", str(sweep)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("dae sweep: error: ") and message in err, err
    assert not (tmp_path / "sweeps").exists()  # nothing was started


@pytest.mark.slow
@pytest.mark.parametrize("choices", [["constant", "cosin"], ["constant", "cosine", 3]])
def test_every_choice_is_checked_before_the_first_trial(mnist_dir, tmp_path, monkeypatch, capsys, choices):
    monkeypatch.chdir(tmp_path)
    sweep = write_sweep(tmp_path, mnist_dir, params={"model.lr_schedule": {"type": "categorical", "choices": choices}})
    assert main(["sweep", "--config", str(CONFIG), "--sweep", str(sweep)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("dae sweep: error: ") and f"model.lr_schedule: expected 'constant' or 'cosine', got " \
        f"{choices[-1]}" in err, err
    assert not (tmp_path / "sweeps").exists()  # nothing was started


def test_trial_whose_settings_the_configs_refuse_fails_as_a_value_error(mnist_dir, tmp_path):
    """A trial's settings that the option parser refuses are a failed trial (ValueError), not an interruption
    (SystemExit, which the sweep takes for Ctrl-C and retries)."""
    spec = load_spec(write_sweep(tmp_path, mnist_dir, params={
        "model.lr_schedule": {"type": "categorical", "choices": ["constant", "cosin"]}}))
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"model.lr_schedule": "cosin"})
    with pytest.raises(ValueError, match="model.lr_schedule: expected 'constant' or 'cosine', got cosin"):
        run_trial(study.ask(), spec, [CONFIG], tmp_path / "sweep")


@pytest.mark.parametrize("run_dir", ["../precious", "PRECIOUS", "trial_000/../../precious", "trial_005"])
def test_trial_removes_no_folder_outside_the_sweep_whatever_the_study_says(mnist_dir, tmp_path, run_dir):
    """The storage names each trial's run folder, which is removed when it holds no last.ckpt; a name that leads
    out of the sweep's folder (relative, absolute, or a link in it) fails the trial and removes nothing."""
    precious = tmp_path / "precious"
    (precious / "keep").mkdir(parents=True)
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "trial_005").symlink_to(precious)
    spec = load_spec(write_sweep(tmp_path, mnist_dir))
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"model.lr": 3e-3, "model.weight_decay": 1e-5},
                        user_attrs={"run_dir": str(precious) if run_dir == "PRECIOUS" else run_dir})
    with pytest.raises(ValueError, match="run folder"):
        run_trial(study.ask(), spec, [CONFIG], sweep_dir)
    assert (precious / "keep").is_dir()


@pytest.mark.parametrize("recorded, requeued", [("precious", False), ("link", False), ("notes", False),
                                                ("dead", True)])
def test_dead_worker_lock_is_removed_only_when_it_is_a_workers_lock_file(tmp_path, recorded, requeued):
    """A RUNNING trial records its worker's lock file, which is removed once its worker is gone (a lock that
    anyone can take); a recorded path that is no worker's lock file (locks/HOST-PID-RANDOM.lock, links resolved)
    is never touched, and its trial is left alone."""
    precious = tmp_path / "precious.lock"
    precious.write_text("keep me")
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "host-1-0123abcd.lock").symlink_to(precious)
    dead = tmp_path / "other_sweep" / "locks" / "host-2-0123abcd.lock"  # another sweep's folder, one storage
    dead.parent.mkdir(parents=True)
    dead.touch()
    paths = {"precious": precious, "link": tmp_path / "locks" / "host-1-0123abcd.lock",
             "notes": tmp_path / "notes.txt", "dead": dead}
    sweep_dir = tmp_path / "sweep"
    storage = make_storage(None, sweep_dir)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    trial.set_user_attr("worker_host", socket.gethostname())
    trial.set_user_attr("worker_lock", str(paths[recorded]))
    assert fail_dead_trials(study, storage, sweep_dir) == ([trial.number] if requeued else [])
    assert precious.read_text() == "keep me" and (tmp_path / "notes.txt").read_text() == "keep me"
    assert dead.exists() != requeued


# ---------------------------------------------------------------------------------------- the given config first


def test_given_config_values_outside_a_range_move_to_its_nearest_end(mnist_dir, tmp_path):
    spec = load_spec(write_sweep(tmp_path, mnist_dir, params={
        "model.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
        "model.weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-4, "log": True},
        "model.net.init_args.width": {"type": "int", "low": 8, "high": 32, "step": 8},
    }))
    base = {"model": {"lr": 2e-3, "weight_decay": 0.0, "net": {"class_path": "x.Net", "init_args": {"width": 64}}}}
    values, moved, outside = base_values(spec, base)
    assert values == {"model.lr": 2e-3, "model.weight_decay": 1e-6, "model.net.init_args.width": 32}
    assert sorted(moved) == ["model.net.init_args.width 64 -> 32", "model.weight_decay 0.0 -> 1e-06"]
    assert outside == []


def test_given_config_value_that_is_none_of_the_choices_runs_no_first_trial(mnist_dir, tmp_path):
    spec = load_spec(write_sweep(tmp_path, mnist_dir, params={
        "model.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
        "model.lr_schedule": {"type": "categorical", "choices": ["cosine"]},
    }))
    values, moved, outside = base_values(spec, {"model": {"lr": 1e-3, "lr_schedule": "constant"}})
    assert outside == ["model.lr_schedule=constant"] and moved == []


def finished_trial(number: int, value: float, **user_attrs) -> optuna.trial.FrozenTrial:
    return optuna.create_trial(params={"model.lr": 1e-3 * (number + 1)},
                               distributions={"model.lr": FloatDistribution(1e-4, 1e-2, log=True)}, value=value,
                               user_attrs={"run_dir": f"trial_{number:03d}", "config": "model: {}\n", **user_attrs})


@pytest.mark.parametrize("direction, values, line", [
    ("maximize", (17.77, 17.1, 18.02), "best: trial 2, val/psnr = 18.0200 (+0.2500 against the given config, trial 0)"),
    ("maximize", (17.77, 17.1, 17.5), "best: trial 0 (the given config), val/psnr = 17.7700"),
    ("minimize", (0.5, 0.4, 0.6), "best: trial 1, val/psnr = 0.4000 (-0.1000 against the given config, trial 0)"),
])
def test_summary_shows_the_gain_over_the_given_config(tmp_path, direction, values, line):
    study = optuna.create_study(direction=direction)
    for number, value in enumerate(values):
        study.add_trial(finished_trial(number, value, **({"base_config": True} if number == 0 else {})))
    text = summary(study, tmp_path, "val/psnr")
    assert line in text, text
    assert "| 0     | COMPLETE (given config) |" in text


def test_retry_of_the_given_config_is_marked_as_it(tmp_path):
    study = optuna.create_study()
    study.add_trial(optuna.create_trial(
        state=TrialState.FAIL, params={"model.lr": 1e-3},
        distributions={"model.lr": FloatDistribution(1e-4, 1e-2, log=True)},
        user_attrs={"run_dir": "trial_000", "base_config": True, "interrupted": True}))
    retry_trial(study, study.trials[0])
    assert study.trials[1].user_attrs["base_config"] and study.trials[1].user_attrs["retry_of"] == 0


@pytest.mark.slow
def test_sweep_starts_with_the_given_config_moved_into_the_search_space(mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep = write_sweep(tmp_path, mnist_dir, n_trials=1, params={
        "model.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
        "model.weight_decay": {"type": "float", "low": 1.0e-4, "high": 1.0e-3, "log": True},  # the config's: 1e-5
    })
    assert main(["sweep", "--config", str(CONFIG), "--sweep", str(sweep)]) == 0
    trial = load(tmp_path / "sweeps" / "sweep").trials[0]
    assert trial.user_attrs["base_config"] and trial.state == TrialState.COMPLETE
    assert trial.params == {"model.lr": 1e-3, "model.weight_decay": 1e-4}
    out, err = capsys.readouterr()
    assert "model.weight_decay 1e-05 -> 0.0001" in err
    assert "best: trial 0 (the given config)" in out


# ------------------------------------------------------------------------------------------- the storage's password

SECRET_URL = "postgresql://dae:s3cret@dbhost:5432/dae_sweeps"


@pytest.mark.parametrize("url", [SECRET_URL, "postgres ql://dae:s3cret@dbhost:5432/dae_sweeps",
                                 "dae:s3cret@dbhost:5432/dae_sweeps"])
def test_storage_url_shown_in_messages_has_no_password(url):
    """Also a URL that SQLAlchemy cannot read (whose error message names it)."""
    shown = shown_url(url)
    assert "s3cret" not in shown and shown.endswith("@dbhost:5432/dae_sweeps"), shown


@pytest.fixture
def storage_of_any_url(monkeypatch) -> optuna.storages.BaseStorage:
    """One in-memory storage that ``dae sweep`` uses whatever --storage URL it is given."""
    storage = optuna.storages.InMemoryStorage()
    monkeypatch.setattr(command, "make_storage", lambda url, sweep_dir: storage)
    return storage


@pytest.mark.parametrize("recorded", [None, {"metric": "val/loss"}])
def test_messages_never_show_the_database_password(mnist_dir, tmp_path, monkeypatch, capsys, storage_of_any_url,
                                                   recorded):
    """--show of a study that is not there, and of one made with another search."""
    monkeypatch.chdir(tmp_path)
    if recorded is not None:
        optuna.create_study(study_name="sweep", storage=storage_of_any_url).set_user_attr("sweep", recorded)
    sweep = write_sweep(tmp_path, mnist_dir)
    assert main(["sweep", "--sweep", str(sweep), "--storage", SECRET_URL, "--show"]) == 2
    err = capsys.readouterr().err
    assert "postgresql://dae:***@dbhost:5432/dae_sweeps" in err and "s3cret" not in err, err


@pytest.mark.slow
def test_start_banner_never_shows_the_database_password(mnist_dir, tmp_path, monkeypatch, capsys,
                                                        storage_of_any_url):
    monkeypatch.chdir(tmp_path)
    study = optuna.create_study(study_name="sweep", storage=storage_of_any_url, direction="maximize")
    study.add_trial(optuna.create_trial(state=TrialState.PRUNED))  # the one trial asked for has run
    sweep = write_sweep(tmp_path, mnist_dir, n_trials=1)
    assert main(["sweep", "--config", str(CONFIG), "--sweep", str(sweep), "--storage", SECRET_URL]) == 0
    err = capsys.readouterr().err
    assert "study sweep in postgresql://dae:***@dbhost:5432/dae_sweeps" in err and "s3cret" not in err, err


def test_show_without_a_study_says_so(mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep = write_sweep(tmp_path, mnist_dir)
    assert main(["sweep", "--sweep", str(sweep), "--show"]) == 2
    assert "no study sweep yet" in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()


# ------------------------------------------------------------------------------------------------------ pruning


@pytest.mark.slow
@pytest.mark.parametrize("others, pruned", [(30.0, True), (1.0, False)])
def test_pruning_stops_the_trial_whose_metric_is_worst(mnist_dir, tmp_path, others, pruned):
    """Two earlier trials reported ``others`` dB after every epoch; the new trial (about 7 dB on the fixture
    data after one epoch) is stopped after its first epoch only when it is the worst, and its folder is still
    a whole run: last.ckpt and loss.png."""
    spec = load_spec(write_sweep(tmp_path, mnist_dir, pruner={
        "class_path": "MedianPruner", "init_args": {"n_startup_trials": 2, "n_warmup_steps": 0}}))
    study = optuna.create_study(direction="maximize", pruner=spec.make_pruner())
    for value in (others, others + 0.1):
        study.add_trial(optuna.create_trial(
            params={"model.lr": 3e-3, "model.weight_decay": 1e-5}, distributions=spec.params, value=value,
            intermediate_values={0: value, 1: value}))
    study.enqueue_trial({"model.lr": 3e-3, "model.weight_decay": 1e-5})
    study.optimize(lambda trial: run_trial(trial, spec, [CONFIG], tmp_path / "sweep"), n_trials=1)

    trial = study.trials[-1]
    assert trial.state == (TrialState.PRUNED if pruned else TrialState.COMPLETE)
    assert trial.user_attrs["epochs"] == (1 if pruned else 2) and trial.user_attrs["max_epochs"] == 2
    assert sorted(trial.intermediate_values) == ([0] if pruned else [0, 1])
    run = tmp_path / "sweep" / "trial_002"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "loss.png").is_file()
    assert len(read_scalars(run)["val/psnr"]) == trial.user_attrs["epochs"]


# ------------------------------------------------------------------------------------------- whole sweeps (slow)


def hparams_of(run: Path) -> dict:
    """The HPARAMS-tab settings that a run's event file holds."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {key: value.number_value or value.string_value for key, value in info.hparams.items()}


@pytest.mark.slow
def test_three_trial_sweep_leaves_runs_a_table_and_a_best_yaml_that_retrains(mnist_dir, tmp_path, monkeypatch,
                                                                              capsys):
    monkeypatch.chdir(tmp_path)
    sweep = write_sweep(tmp_path, mnist_dir)
    assert main(["sweep", "--config", str(CONFIG), "--sweep", str(sweep)]) == 0
    sweep_dir = tmp_path / "sweeps" / "sweep"
    study = load(sweep_dir)
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert trials[0].user_attrs.get("base_config")  # the untuned config first: lr 1e-3, weight decay 1e-5
    assert trials[0].params == {"model.lr": 1e-3, "model.weight_decay": 1e-5}
    for trial in trials:
        run = sweep_dir / f"trial_{trial.number:03d}"
        assert trial.user_attrs["run_dir"] == run.name
        assert {"config.yaml", "loss.png", "checkpoints"} <= {p.name for p in run.iterdir()}
        assert (run / "checkpoints" / "last.ckpt").is_file()
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["model"]["lr"] == trial.params["model.lr"]
        assert read_scalars(run)["val/psnr"][-1][1] == pytest.approx(trial.value)
        hparams = hparams_of(run)  # TensorBoard's HPARAMS tab compares the trials by these
        assert hparams["model/lr"] == pytest.approx(trial.params["model.lr"])

    # dae test works on a trial's folder as on any run's
    best_run = sweep_dir / study.best_trial.user_attrs["run_dir"]
    assert main(["test", "--config", str(best_run / "config.yaml"),
                 "--ckpt_path", str(best_run / "checkpoints" / "last.ckpt")]) == 0
    out = capsys.readouterr().out
    assert out.count("| COMPLETE") == 3 and f"best: trial {study.best_trial.number}" in out
    # --show prints the same table again without running anything
    assert main(["sweep", "--sweep", str(sweep), "--show"]) == 0
    assert capsys.readouterr().out.count("| COMPLETE") == 3
    assert len(load(sweep_dir).trials) == 3

    # best.yaml retrains the best trial as it is: same seed, same settings, the same val/psnr (CPU)
    retrain = tmp_path / "retrain"
    retrain.mkdir()
    monkeypatch.chdir(retrain)
    assert main(["fit", "--config", str(sweep_dir / "best.yaml"), "--trainer.enable_progress_bar=false"]) == 0
    again = read_scalars(retrain / "lightning_logs" / "version_0")["val/psnr"][-1][1]
    assert again == pytest.approx(study.best_value, abs=1e-4)


@pytest.mark.slow
def test_a_trial_that_raises_a_value_error_fails_and_the_sweep_goes_on(mnist_dir, tmp_path, monkeypatch):
    """The module refuses a negative weight decay when the trial builds it: that trial fails, the next one runs."""
    monkeypatch.chdir(tmp_path)
    sweep = write_sweep(tmp_path, mnist_dir, n_trials=2, baseline_trial=False,
                        params={"model.weight_decay": {"type": "categorical", "choices": [1.0e-5, -1.0]}},
                        sampler={"class_path": "GridSampler",
                                 "init_args": {"search_space": {"model.weight_decay": [1.0e-5, -1.0]}, "seed": 0}})
    assert main(["sweep", "--config", str(CONFIG), "--sweep", str(sweep)]) == 0
    trials = sorted(load(tmp_path / "sweeps" / "sweep").trials, key=lambda t: t.params["model.weight_decay"])
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "weight_decay must be >= 0" in trials[0].user_attrs["error"]
    assert not trials[0].user_attrs.get("interrupted")


class ThreadsProbe(L.Callback):
    """Appends the torch thread count to ``path`` after every training batch."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = Path(path)

    def on_train_batch_end(self, *args) -> None:
        with open(self.path, "a") as f:
            f.write(f"{torch.get_num_threads()}\n")


@pytest.mark.slow
def test_threads_given_by_hand_hold_for_the_whole_trial(mnist_dir, tmp_path, monkeypatch):
    """dae sweep --threads 1 by a lone dae process on a machine of several cores, whose share would be them all."""
    if available_cores() < 2:
        pytest.skip("needs a machine with 2 cores or more")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # set by hand, they would hide the share
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAE_CORE_REGISTRY", str(tmp_path / "cores"))  # no other dae process counts
    probe = tmp_path / "threads.txt"
    overlay = tmp_path / "probe.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": [{
        "class_path": "tests.test_sweep.ThreadsProbe", "init_args": {"path": str(probe)}}]}}))
    sweep = write_sweep(tmp_path, mnist_dir, n_trials=1)
    proc = dae_subprocess(tmp_path, ["sweep", "--config", str(CONFIG), "--config", str(overlay), "--sweep", str(sweep),
                                     "--dir", "out", "--threads", "1"])
    assert proc.wait(timeout=240) == 0, (tmp_path / "dae.log").read_text()
    assert set(probe.read_text().split()) == {"1"}
    assert load(tmp_path / "out").trials[0].user_attrs["threads"] == 1


class PauseInRun(L.Callback):
    """In the run folder named ``run``, at global step ``step``, writes ``marker`` and waits to be killed
    (once: a retry that finds the marker goes on)."""

    def __init__(self, run: str, step: int, marker: str) -> None:
        super().__init__()
        self.run, self.step, self.marker = run, step, Path(marker)

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if Path(trainer.log_dir).name != self.run or trainer.global_step != self.step or self.marker.exists():
            return
        self.marker.write_text(str(self.step))
        deadline = time.monotonic() + 300
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("signum, state, code", [(signal.SIGKILL, TrialState.RUNNING, -signal.SIGKILL),
                                                 (signal.SIGTERM, TrialState.FAIL, 128 + signal.SIGTERM)])
def test_killed_sweep_resumes_without_repeating_finished_trials(mnist_dir, tmp_path, monkeypatch, signum, state,
                                                                 code):
    """SIGKILL (or SIGTERM) in the middle of trial 1's second epoch; the same command again keeps trial 0, marks
    trial 1 failed and retries it from its last.ckpt (epoch 0 is not trained again), then runs the last trial."""
    marker = tmp_path / "paused"
    overlay = tmp_path / "pause.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": [{
        "class_path": "tests.test_sweep.PauseInRun",
        "init_args": {"run": "trial_001", "step": 4, "marker": str(marker)}}]}}))
    sweep = write_sweep(tmp_path, mnist_dir)
    args = ["sweep", "--config", str(CONFIG), "--config", str(overlay), "--sweep", str(sweep), "--dir", "out"]
    proc = dae_subprocess(tmp_path, args)
    deadline = time.monotonic() + 180
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"trial 1 never reached step 4:\n{(tmp_path / 'dae.log').read_text()}")
        time.sleep(0.1)
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == code
    out = tmp_path / "out"
    assert [t.state for t in load(out).trials] == [TrialState.COMPLETE, state]  # SIGKILL leaves it RUNNING
    first_run = {p: p.stat().st_mtime_ns for p in (out / "trial_000").rglob("*")}

    monkeypatch.chdir(tmp_path)
    assert main(args) == 0
    trials = load(out).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                         TrialState.COMPLETE]
    retry = trials[2]
    assert retry.user_attrs["retry_of"] == 1 and retry.params == trials[1].params
    assert retry.user_attrs["run_dir"] == "trial_001"
    assert sorted(retry.intermediate_values) == [1]  # resumed after epoch 0 from last.ckpt
    assert {p: p.stat().st_mtime_ns for p in (out / "trial_000").rglob("*")} == first_run  # not run again
    assert sorted(p.name for p in out.glob("trial_*")) == ["trial_000", "trial_001", "trial_003"]
    assert len(finished(load(out))) == 3


@pytest.mark.slow
def test_two_workers_share_a_journal_file_and_the_cores(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = write_sweep(tmp_path, mnist_dir, n_trials=4, fixed={"trainer.max_epochs": 3})
    assert main(["sweep", "--config", str(CONFIG), "--sweep", str(sweep), "--workers", "2"]) == 0
    sweep_dir = tmp_path / "sweeps" / "sweep"
    assert (sweep_dir / JOURNAL_NAME).is_file()
    trials = load(sweep_dir).trials
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert 4 <= len(done) <= 5 and len(done) == len(trials)  # 5: both workers may start the last trial at once
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials
    assert all(t.user_attrs["threads"] == max(1, len(os.sched_getaffinity(0)) // 2) for t in trials)
    runs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(runs)) == len(runs) and sorted(p.name for p in sweep_dir.glob("trial_*")) == sorted(runs)
    assert len({tuple(t.params.values()) for t in trials}) == len(trials)  # no settings drawn twice


# ------------------------------------------------------------------------------------------------- PostgreSQL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin(name: str) -> str | None:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else shutil.which(name)


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server on a free local port (initdb into a temporary folder, trust auth), run as
    the ``postgres`` user when the tests run as root. Skipped when no server can be started."""
    pytest.importorskip("psycopg", reason="--storage postgresql:// needs psycopg (the sweep extra)")
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="dae-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder)
            pytest.skip("running as root and there is no postgres user to run the server as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = folder / "data"
    start = [*as_user, pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60", "-o",
             f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start"]
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run(start, check=True, capture_output=True, timeout=90)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"could not start a PostgreSQL server: {e} {getattr(e, 'stderr', b'')!r} {log[-300:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_machines_share_one_postgresql_study(mnist_dir, tmp_path, postgres_url):
    """Two ``dae sweep`` commands with their own folders (as on two machines) and one --storage: the trials
    split between them and each runs exactly once."""
    sweep = write_sweep(tmp_path, mnist_dir, n_trials=4)
    args = ["sweep", "--config", str(CONFIG), "--sweep", str(sweep), "--storage", postgres_url, "--dir", "out"]
    procs = [dae_subprocess(tmp_path / f"machine{i}", args) for i in range(2)]
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=300) == 0, (tmp_path / f"machine{i}" / "dae.log").read_text()
    study = optuna.load_study(study_name="sweep", storage=postgres_url)
    trials = study.trials
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert 4 <= len(trials) <= 5  # 5: both may start the last trial at once
    ran = {i: sorted(p.name for p in (tmp_path / f"machine{i}" / "out").glob("trial_*")) for i in range(2)}
    assert ran[0] and ran[1], ran  # both machines ran trials
    assert not set(ran[0]) & set(ran[1])  # none ran twice
    assert sorted(ran[0] + ran[1]) == sorted(t.user_attrs["run_dir"] for t in trials)
    assert sum(t.user_attrs.get("base_config", False) for t in trials) == 1  # queued once, by the study's maker
    for i in range(2):  # each machine's command ends with the whole study's table
        assert (tmp_path / f"machine{i}" / "dae.log").read_text().count("| COMPLETE") >= len(trials) - 1
