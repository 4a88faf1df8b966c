"""Jobs that die or are stopped lose nothing: real ``dae fit`` processes killed, stopped and resumed."""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dae.training.callbacks import read_scalars
from dae.training.checkpointing import AtomicCheckpointIO
from dae.commands import main
from tests.conftest import ROOT, dae_subprocess, fit_args, run_dae

# 2 epochs of 5 steps (batch 32 of the 256 fixture training images), last.ckpt every 3 steps and at epoch ends.
STEPS = ("--data.batch_size=32", "--trainer.limit_train_batches=5", "--last_checkpoint.every_n_train_steps=3",
         "--trainer.enable_model_summary=false")
TOTAL_STEPS = 10


def run_dir(cwd: Path) -> Path:
    return cwd / "lightning_logs" / "version_0"


def load_last(cwd: Path) -> dict:
    return torch.load(run_dir(cwd) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(mnist_dir, tmp_path_factory) -> Path:
    """The reference: the same fit, never stopped (seed_everything 0 from configs/mnist.yaml)."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    code, out = run_dae(cwd, fit_args(mnist_dir, *STEPS))
    assert code == 0, out
    return cwd


def start_paused_run(cwd: Path, mnist_dir: Path, step: int, steps: tuple[str, ...] = STEPS):
    """Start the same fit with a probe that stops it at ``step`` (before that step's checkpoint callbacks)."""
    marker = cwd / "paused"
    probe = {"class_path": "tests.probes.PauseAtStep", "init_args": {"step": step, "marker": str(marker)}}
    proc = dae_subprocess(cwd, fit_args(mnist_dir, *steps, f"--trainer.callbacks+={json.dumps(probe)}"))
    deadline = time.monotonic() + 180
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run never reached step {step}:\n{(cwd / 'dae.log').read_text()}")
        time.sleep(0.1)
    return proc


def assert_same_run(resumed: Path, reference: Path, total_steps: int = TOTAL_STEPS) -> None:
    """Final weights, optimizer state and every logged value equal, bit for bit (tolerance 0)."""
    a, b = load_last(resumed), load_last(reference)
    assert a["global_step"] == b["global_step"] == total_steps
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in b["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq"))
    got, want = read_scalars(run_dir(resumed)), read_scalars(run_dir(reference))
    for tag in ("train/loss", "train/loss_epoch", "val/loss", "val/psnr", "val/ssim"):
        assert got[tag] == want[tag], tag  # same steps, same values: nothing lost, nothing drawn twice


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_last_equals_uninterrupted_run(mnist_dir, tmp_path, uninterrupted):
    proc = start_paused_run(tmp_path, mnist_dir, step=8)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    killed_at = load_last(tmp_path)
    # Step 6 is one batch into the second epoch: the resume below starts mid-epoch.
    assert killed_at["global_step"] == 6 and killed_at["epoch"] == 1
    assert not list((run_dir(tmp_path) / "checkpoints").glob("*.tmp"))  # no half-written file is visible

    code, out = run_dae(tmp_path, fit_args(mnist_dir, *STEPS, "--ckpt_path=last"))
    assert code == 0, out
    assert "Restored all states" in out
    assert not (tmp_path / "lightning_logs" / "version_1").exists()  # it went on in the same run folder
    assert_same_run(tmp_path, uninterrupted)


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_and_stops_then_resume_equals_uninterrupted(mnist_dir, tmp_path, uninterrupted):
    proc = start_paused_run(tmp_path, mnist_dir, step=7)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    stopped = load_last(tmp_path)
    assert stopped["global_step"] == 7  # not a multiple of 3: saved because of SIGTERM
    assert "SIGTERM: training stopped at step 7" in (tmp_path / "dae.log").read_text()

    code, out = run_dae(tmp_path, fit_args(mnist_dir, *STEPS, "--ckpt_path=last"))
    assert code == 0, out
    assert_same_run(tmp_path, uninterrupted)


@pytest.mark.slow
def test_the_progress_bar_numbers_and_sizes_an_epoch_resumed_in_its_middle(mnist_dir, tmp_path):
    proc = start_paused_run(tmp_path, mnist_dir, step=8)  # last.ckpt holds step 6: one step into epoch 1
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with_bar = [a for a in fit_args(mnist_dir, *STEPS, "--ckpt_path=last") if "enable_progress_bar" not in a]
    code, out = run_dae(tmp_path, with_bar)
    assert code == 0, out
    resumed = out.split("Restored all states")[1].replace("\r", "\n")
    assert "Epoch 1: 100%" in resumed and "5/5" in resumed  # not "Training: 5/?"


# Gradient accumulation over 2 batches: 5 batches are 3 optimizer steps per epoch (the last one alone), 6 in all.
# last.ckpt right after optimizer step 4 (the second of epoch 1) is the mid-epoch point to resume from.
ACCUMULATING = ("--data.batch_size=32", "--trainer.limit_train_batches=5", "--trainer.accumulate_grad_batches=2",
                "--last_checkpoint.every_n_train_steps=4", "--trainer.enable_model_summary=false",
                "--trainer.logger.init_args.version=version_0")


@pytest.mark.slow
def test_resume_mid_epoch_with_gradient_accumulation_equals_uninterrupted_run(mnist_dir, tmp_path):
    reference = tmp_path / "uninterrupted"
    code, out = run_dae(reference, fit_args(mnist_dir, *ACCUMULATING))
    assert code == 0, out
    killed = tmp_path / "killed"
    proc = start_paused_run(killed, mnist_dir, step=5, steps=ACCUMULATING)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    mid = load_last(killed)
    assert (mid["global_step"], mid["epoch"]) == (4, 1)  # two batches into epoch 1

    code, out = run_dae(killed, fit_args(mnist_dir, *ACCUMULATING, "--ckpt_path=last"))
    assert code == 0, out
    assert_same_run(killed, reference, total_steps=6)


@pytest.mark.slow
def test_ckpt_path_last_without_any_run_starts_fresh(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(fit_args(mnist_dir, "--trainer.max_epochs=1", "--ckpt_path=last")) == 0
    assert load_last(tmp_path)["global_step"] == 3


def test_atomic_checkpoint_io_never_leaves_a_partial_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, target)

    def dies_mid_write(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt  # like a kill during the write

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(3))  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # and no temp file left behind


def test_checkpoints_get_the_permissions_of_any_new_file(tmp_path):
    """Teammates sharing a run folder can read its checkpoints when the umask lets them, as for any file."""
    previous = os.umask(0o022)
    try:
        AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, tmp_path / "last.ckpt")
        (tmp_path / "plain").touch()
    finally:
        os.umask(previous)
    assert oct((tmp_path / "last.ckpt").stat().st_mode & 0o777) == "0o644"
    assert (tmp_path / "plain").stat().st_mode & 0o777 == 0o644


@pytest.mark.slow
def test_non_finite_loss_stops_before_that_step_and_keeps_last_good_checkpoint(mnist_dir, tmp_path, monkeypatch,
                                                                             capsys):
    monkeypatch.chdir(tmp_path)
    # The network outputs NaN from its 6th training forward pass on: global step 5 (steps count from 0), the
    # first of epoch 1. last.ckpt was written at the end of epoch 0 (step 5) and would be next at step 6.
    code = main(fit_args(mnist_dir, *STEPS, "--model.net=tests.probes.NaNNet", "--model.net.init_args.nan_from=6",
                         "--last_checkpoint.every_n_train_steps=2"))
    err = capsys.readouterr().err
    assert code == 2
    assert ("the training loss became NaN or infinite at global step 5 (epoch 1, batch 0); training stopped "
            "before that step changed the weights") in err
    assert "Traceback" not in err
    last = load_last(tmp_path)
    assert last["global_step"] == 5  # the last good state, untouched
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert not list((run_dir(tmp_path) / "checkpoints").glob("*step6*"))


@pytest.mark.slow
def test_non_finite_loss_on_an_accelerator_stops_within_one_logging_interval(mnist_dir, tmp_path, monkeypatch,
                                                                             capsys):
    from dae.training.callbacks import NonFiniteLossStop

    # As on a GPU: the loss only updates a flag on the device, read every log_every_n_steps (4) steps.
    monkeypatch.setattr(NonFiniteLossStop, "_free_to_read", staticmethod(lambda loss: False))
    checks = []
    check = NonFiniteLossStop._check
    monkeypatch.setattr(NonFiniteLossStop, "_check", lambda self, trainer: (checks.append(trainer.global_step),
                                                                            check(self, trainer)))
    monkeypatch.chdir(tmp_path)
    # NaN from global step 6 (epoch 1, batch 1); last.ckpt only at epoch ends (step 5).
    code = main(fit_args(mnist_dir, *STEPS, "--model.net=tests.probes.NaNNet", "--model.net.init_args.nan_from=7",
                         "--last_checkpoint.every_n_train_steps=0", "--trainer.log_every_n_steps=4"))
    err = capsys.readouterr().err
    assert code == 2
    assert ("the training loss became NaN or infinite at global step 6 (epoch 1, batch 1); training stopped at "
            "step 7, without writing a checkpoint since") in err
    # The flag was read at steps 3 and 7 (every 4th), and before the checkpoints and at the end of epoch 0
    # (step 5): never at the other steps.
    assert set(checks) == {3, 5, 7}
    last = load_last(tmp_path)
    assert last["global_step"] == 5 and all(torch.isfinite(v).all() for v in last["state_dict"].values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_non_finite_check_does_not_wait_for_the_gpu_between_logging_steps():
    from types import SimpleNamespace

    from dae.training.callbacks import NonFiniteLossStop

    stop, trainer = NonFiniteLossStop(), SimpleNamespace(global_step=0, current_epoch=0, log_every_n_steps=50)
    losses = [torch.tensor(v, device="cuda") for v in (1.0, float("nan"), 2.0)]
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation now raises
    try:
        for step, loss in enumerate(losses):
            trainer.global_step = step
            stop.on_train_batch_start(trainer, None, None, step)
            stop.on_before_backward(trainer, None, loss)
            stop.on_before_optimizer_step(trainer, None, None)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [int(v) for v in stop._first_bad] == [1, 0, 1]


def test_dae_fit_writes_checkpoints_through_the_atomic_checkpoint_io(mnist_dir, tmp_path, monkeypatch):
    from dae.commands.cli import DaeCLI

    monkeypatch.chdir(tmp_path)
    cli = DaeCLI(args=fit_args(mnist_dir)[1:], run=False)  # [1:]: no "fit" subcommand when run=False
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def recorded_saves(monkeypatch) -> list[tuple[str, int]]:
    """Every checkpoint dae fit writes from now on, as (file name, global step), in order."""
    saves: list[tuple[str, int]] = []
    write = AtomicCheckpointIO.save_checkpoint

    def recording(self, checkpoint, path, storage_options=None):
        saves.append((Path(path).name, checkpoint["global_step"]))
        return write(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", recording)
    return saves


@pytest.mark.slow
def test_last_ckpt_is_written_once_per_n_optimizer_steps_under_gradient_accumulation(mnist_dir, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    saves = recorded_saves(monkeypatch)
    # 8 batches of 2 accumulated: 4 optimizer steps per epoch, 8 in all; last.ckpt every 3 steps and at epoch ends.
    assert main(fit_args(mnist_dir, "--data.batch_size=16", "--trainer.limit_train_batches=8",
                         "--trainer.accumulate_grad_batches=2", "--last_checkpoint.every_n_train_steps=3")) == 0
    assert [step for name, step in saves if name == "last.ckpt"] == [3, 4, 6, 8]  # never at step 0, never twice
    assert load_last(tmp_path)["global_step"] == 8


def disk_full_from(step: int, monkeypatch) -> None:
    """Make every checkpoint write from global step ``step`` on fail half-way, as on a full disk."""
    save = torch.save

    def fills_the_disk(obj, f, *args, **kwargs):
        if obj["global_step"] < step:
            return save(obj, f, *args, **kwargs)
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", fills_the_disk)


@pytest.mark.slow
def test_disk_full_keeps_last_ckpt_leaves_no_temp_file_and_says_what_to_free(mnist_dir, tmp_path, monkeypatch,
                                                                            capsys):
    monkeypatch.chdir(tmp_path)
    disk_full_from(4, monkeypatch)
    code = main(fit_args(mnist_dir, *STEPS, "--last_checkpoint.every_n_train_steps=2"))
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    message = [line for line in err.splitlines() if "error:" in line]
    assert len(message) == 1, err
    folder = run_dir(tmp_path) / "checkpoints"
    assert (f"dae fit: error: no space left on the disk of {folder.relative_to(tmp_path)} to write last.ckpt ("
            in message[0])
    assert " MB free there; the previous last.ckpt is intact): free space on that disk" in message[0]
    assert "then resume with --ckpt_path last" in message[0]
    assert load_last(tmp_path)["global_step"] == 2  # the write at step 4 failed; step 2's file is whole
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # and no temporary file is left


def tmpfs_supported() -> bool:
    try:
        return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                               "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not tmpfs_supported(), reason="needs unshare and a tmpfs mount in a user namespace")
def test_real_full_disk_on_a_tiny_tmpfs(mnist_dir, tmp_path):
    """The run folder on a 4 MB tmpfs: one checkpoint (2.5 MB) fits, a second one next to it does not."""
    args = " ".join(shlex.quote(a) for a in fit_args(mnist_dir, *STEPS, "--last_checkpoint.every_n_train_steps=1"))
    script = (f"mkdir -p lightning_logs && mount -t tmpfs -o size=4m tmpfs lightning_logs && "
              f"{shlex.quote(sys.executable)} -m dae {args}; echo exit=$?; cp -r lightning_logs after")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=tmp_path,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240).stdout
    assert "exit=1" in out and "Traceback" not in out, out
    assert ("dae fit: error: no space left on the disk of lightning_logs/version_0/checkpoints to write last.ckpt ("
            in out and "; the previous last.ckpt is intact): free space on that disk" in out), out
    folder = tmp_path / "after" / "version_0" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    ckpt = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 1


@pytest.mark.slow
def test_a_failed_loss_png_or_event_file_after_training_keeps_the_run(mnist_dir, tmp_path, monkeypatch):
    from lightning.pytorch.loggers import TensorBoardLogger

    monkeypatch.chdir(tmp_path)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("dae.training.callbacks.write_loss_plot", no_space)
    # Closing the event file (and writing hparams.yaml), which Lightning does after training, fails.
    monkeypatch.setattr(TensorBoardLogger, "finalize", no_space)
    with pytest.warns(UserWarning) as warned:
        code = main(fit_args(mnist_dir, "--trainer.max_epochs=1"))
    assert code == 0
    messages = [str(w.message) for w in warned]
    run = Path("lightning_logs") / "version_0"
    assert any(m.startswith(f"{run / 'loss.png'} not written ([Errno 28] No space left on device); the checkpoints "
                            "are complete") and f"dae plot {run}" in m for m in messages), messages
    assert any(m.startswith(f"the TensorBoard files in {run} could not be completed") for m in messages), messages
    assert load_last(tmp_path)["global_step"] == 3  # the finished run's checkpoints are there


def test_resuming_another_network_through_the_trainer_names_the_checkpoint(mnist_dir, tmp_path, tiny_trainer):
    from dae.data import MNISTDataModule
    from dae.module import DenoisingModule
    from dae.nets import DnCNN

    data = MNISTDataModule(data_dir=str(mnist_dir), download=False, val_split=64, batch_size=32)
    trainer = tiny_trainer(limit_train_batches=1, limit_val_batches=0)
    trainer.fit(DenoisingModule(), data)
    ckpt = tmp_path / "conv.ckpt"
    trainer.save_checkpoint(ckpt)
    expected = re.escape(f"{ckpt} was trained with ") + ".*" + re.escape("which does not fit this run's network")
    with pytest.raises(ValueError, match=expected):
        tiny_trainer(limit_train_batches=1, limit_val_batches=0).fit(DenoisingModule(net=DnCNN()), data,
                                                                     ckpt_path=ckpt)
