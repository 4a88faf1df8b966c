"""Run folders: ``--ckpt_path last`` resumes this experiment's run only, every new run gets a folder of its own,
and a run is trained by one process at a time."""

from __future__ import annotations

import json
import multiprocessing
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml

from dae.commands import main
from dae.commands.cli import RESUME_IGNORES
from dae.training.runs import RunLock, config_differences
from tests.conftest import dae_subprocess, fit_args, run_dae

SHORT = ("--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.enable_model_summary=false")


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def files(folder: Path) -> dict[str, bytes]:
    """Every file under a run folder with its bytes (the lock file aside): what another run must not touch."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "run.lock"}


def last_step(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]


def saved(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def test_config_differences_ignore_limits_and_observers_but_not_the_experiment():
    a = {"model": {"lr": 0.001, "noise": {"init_args": {"std": 0.5}}}, "trainer": {"max_epochs": 8, "callbacks": None},
         "ckpt_path": None, "image_grid": {"init_args": {"num_images": 8}}, "old_option": 1}
    b = {"model": {"lr": 0.001, "noise": {"init_args": {"std": 0.25}}}, "trainer": {"max_epochs": 16, "callbacks": [1]},
         "ckpt_path": "last", "image_grid": {"init_args": {"num_images": 4}}, "new_option": 2}
    assert config_differences(a, b, RESUME_IGNORES) == ["model.noise.init_args.std: 0.5 there, 0.25 here"]
    assert config_differences(a, a, RESUME_IGNORES) == []
    assert "image_grid.init_args.num_images: 8 there, 4 here" in config_differences(a, b)  # only if told


@pytest.mark.slow
def test_ckpt_path_last_resumes_the_run_with_this_config_not_the_newest(mnist_dir, tmp_path, monkeypatch):
    """Two experiments in one folder: resuming the std-0.5 one must not pick up (and overwrite) the newer std-0.25."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "lightning_logs"
    assert main(fit_args(mnist_dir, *SHORT)) == 0  # version_0: std 0.5 (configs/mnist.yaml)
    assert main(fit_args(mnist_dir, *SHORT, "--model.noise.init_args.std=0.25")) == 0  # version_1, the newest
    other = files(runs / "version_1")

    assert main(fit_args(mnist_dir, *SHORT, "--trainer.max_epochs=2", "--ckpt_path=last")) == 0
    assert last_step(runs / "version_0") == 4  # the std-0.5 run went on: 2 epochs of 2 steps
    assert files(runs / "version_1") == other  # the other experiment's files are untouched, byte for byte
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
    config = saved(runs / "version_0")
    assert config["model"]["noise"]["init_args"]["std"] == 0.5 and config["trainer"]["max_epochs"] == 2
    # config.yaml leaves the version unset: dae fit --config RUN/config.yaml starts a run of its own.
    assert config["trainer"]["logger"]["init_args"]["version"] is None


@pytest.mark.slow
def test_ckpt_path_last_refuses_when_only_other_experiments_have_runs(mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "lightning_logs"
    assert main(fit_args(mnist_dir, *SHORT)) == 0
    before = files(runs / "version_0")

    code, err = run_cli(fit_args(mnist_dir, *SHORT, "--model.noise.init_args.std=0.25", "--ckpt_path=last"), capsys)
    assert code == 2 and "Traceback" not in err
    assert "--ckpt_path last: no run in lightning_logs has this config" in err
    assert "version_0 (model.noise.init_args.std: 0.5 there, 0.25 here)" in err  # the candidates and what differs
    assert "--trainer.logger.init_args.version NAME" in err  # how to run it anyway
    assert files(runs / "version_0") == before and sorted(p.name for p in runs.iterdir()) == ["version_0"]


@pytest.mark.slow
def test_a_named_run_is_resumed_by_name_and_never_overwritten_by_a_new_one(mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "lightning_logs" / "unet_std025"
    name = "--trainer.logger.init_args.version=unet_std025"
    assert main(fit_args(mnist_dir, *SHORT, name, "--ckpt_path=last")) == 0  # none yet: a new run of that name
    assert last_step(run) == 2
    before = files(run)

    code, err = run_cli(fit_args(mnist_dir, *SHORT, name), capsys)  # a new run into the same name
    assert code == 2 and f"{run.relative_to(tmp_path)} already holds a run" in err
    code, err = run_cli(fit_args(mnist_dir, *SHORT, name, "--model.lr=0.01", "--ckpt_path=last"), capsys)
    assert code == 2 and "is another experiment (model.lr: 0.001 there, 0.01 here)" in err
    assert files(run) == before

    assert main(fit_args(mnist_dir, *SHORT, name, "--trainer.max_epochs=2", "--ckpt_path=last")) == 0
    assert last_step(run) == 4


@pytest.mark.slow
def test_processes_started_together_get_a_run_folder_each(mnist_dir, tmp_path):
    """Three fits reach the choice of a run folder at the same moment (the probe logger holds each one there, its
    version settled and its folder not yet made, until all three are there); each must still get its own folder."""
    logger = {"class_path": "tests.probes.MeetingLogger", "init_args": {
        "save_dir": ".", "name": "lightning_logs", "folder": str(tmp_path / "meet"), "count": 3}}
    procs = [dae_subprocess(tmp_path, fit_args(mnist_dir, *SHORT, f"--seed_everything={seed}",
                                               f"--trainer.logger={json.dumps(logger)}")) for seed in range(3)]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0, 0, 0], (tmp_path / "dae.log").read_text()
    runs = sorted((tmp_path / "lightning_logs").iterdir())
    assert [p.name for p in runs] == ["version_0", "version_1", "version_2"]
    assert sorted(saved(run)["seed_everything"] for run in runs) == [0, 1, 2]  # one run's config in each
    assert all(last_step(run) == 2 for run in runs)


@pytest.mark.slow
def test_a_second_process_resuming_a_run_in_use_refuses(mnist_dir, tmp_path):
    args = fit_args(mnist_dir, *SHORT, "--trainer.max_epochs=3", "--ckpt_path=last")
    code, out = run_dae(tmp_path, fit_args(mnist_dir, *SHORT))
    assert code == 0, out
    marker = tmp_path / "paused"
    probe = {"class_path": "tests.probes.PauseAtStep", "init_args": {"step": 3, "marker": str(marker)}}
    first = dae_subprocess(tmp_path, [*args, f"--trainer.callbacks+={json.dumps(probe)}"])
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "dae.log").read_text()
            time.sleep(0.1)
        (tmp_path / "dae.log").unlink()
        code, out = run_dae(tmp_path, args)  # the same command while the first still trains
        assert code == 2, out
        assert "lightning_logs/version_0 is in use by another dae process" in out
        assert "Restoring states" not in out
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    # The lock died with the first process: the same command resumes now.
    code, out = run_dae(tmp_path, args)
    assert code == 0, out
    assert last_step(tmp_path / "lightning_logs" / "version_0") == 6


def hold_run_lock(run: Path, held, done) -> None:
    """Hold ``run``'s lock, as a fit does from choosing its folder on, until ``done`` is set."""
    lock = RunLock(run)
    lock.acquire()
    held.set()
    done.wait(timeout=300)
    lock.release()


@pytest.mark.slow
def test_a_refused_start_leaves_the_lock_of_the_process_that_holds_it(mnist_dir, tmp_path, monkeypatch, capsys):
    """Another process holds a named run that has nothing in it yet (it is still starting): every further start of
    that run is refused, and a refused one leaves the holder's folder and run.lock as they are."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "lightning_logs" / "shared"
    run.mkdir(parents=True)
    spawn = multiprocessing.get_context("spawn")
    held, done = spawn.Event(), spawn.Event()
    holder = spawn.Process(target=hold_run_lock, args=(run, held, done))
    holder.start()
    try:
        assert held.wait(timeout=120)
        for _ in range(2):
            code, err = run_cli(fit_args(mnist_dir, *SHORT, "--trainer.logger.init_args.version=shared"), capsys)
            assert code == 2 and "lightning_logs/shared is in use by another dae process" in err, err
            assert [p.name for p in run.iterdir()] == ["run.lock"]
    finally:
        done.set()
        holder.join(timeout=60)


FAILED_STARTS = {
    "missing data folder": (("--data.data_dir=nowhere",), "MNIST files not found in "),
    "validation split too large": (("--data.val_split=5000",), "val_split=5000 leaves no images"),
}


@pytest.mark.parametrize("args,message", FAILED_STARTS.values(), ids=FAILED_STARTS.keys())
def test_a_fit_that_fails_before_training_leaves_no_run_folder(args, message, mnist_dir, tmp_path, monkeypatch,
                                                               capsys):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(fit_args(mnist_dir, *SHORT, *args), capsys)
    assert code == 2 and f"dae fit: error: {message}" in err, err
    assert not (tmp_path / "lightning_logs").exists(), sorted(map(str, tmp_path.rglob("*")))


@pytest.mark.slow
def test_a_failed_start_removes_only_its_own_folder_never_a_resumed_run(mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    for f in mnist_dir.iterdir():
        (data / f.name).write_bytes(f.read_bytes())
    assert main(fit_args(data, *SHORT)) == 0
    run = tmp_path / "lightning_logs" / "version_0"
    before = files(run)
    assert before and run.is_dir()

    code, err = run_cli(fit_args(data, *SHORT, "--data.val_split=5000"), capsys)  # a new run that fails
    assert code == 2 and "leaves no images" in err
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"] and files(run) == before

    for f in data.iterdir():  # the data went away: resuming version_0 fails before its first step
        f.unlink()
    code, err = run_cli(fit_args(data, *SHORT, "--trainer.max_epochs=2", "--ckpt_path=last"), capsys)
    assert code == 2 and "MNIST files not found" in err
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"] and files(run) == before
