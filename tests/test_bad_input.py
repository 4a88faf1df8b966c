"""Bad input through the ``dae`` command: one clear message, exit status 2, and no training started."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dae.commands import main
from tests.conftest import fit_args, run_dae
from tests.idx import IMAGE_FILES


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(args)
    except SystemExit as e:  # jsonargparse's own errors (bad types, unknown classes) exit at parse time
        code = e.code
    return code, capsys.readouterr().err


def corrupt_copy(src: Path, dst: Path, data: bytes | None = None, keep: int | None = None) -> Path:
    """A copy of the fixture data whose training images file is replaced by ``data`` or cut to ``keep`` bytes."""
    shutil.copytree(src, dst)
    images = dst / IMAGE_FILES["train"]
    images.write_bytes(data if data is not None else images.read_bytes()[:keep])
    return dst


CASES = {
    "negative noise std": (["--model.noise.init_args.std=-0.5"], "GaussianNoise: std must be a number >= 0, got -0.5"),
    "zero lr": (["--model.lr=0"], "lr must be > 0, got 0.0"),
    "negative lr": (["--model.lr=-0.001"], "lr must be > 0, got -0.001"),
    "batch size 0": (["--data.batch_size=0"], "batch_size must be >= 1, got 0"),
    "val split as big as the data": (["--data.val_split=320"], "the training file has 320 images"),
    "val split bigger than the data": (["--data.val_split=1000"], "val_split=1000 leaves no images"),
    "val split 0": (["--data.val_split=0"], "val_split as a count must be >= 1, got 0"),
    "negative val split": (["--data.val_split=-5"], "val_split as a count must be >= 1, got -5"),
    "val split fraction above 1": (["--data.val_split=1.5"], "must lie strictly between 0 and 1, got 1.5"),
    "unknown dataset": (["--data.dataset=cifar"], "unknown dataset 'cifar'; choose one of mnist, fashion_mnist, kmnist"),
    "unknown noise name": (["--model.noise=nope"], "--model.noise takes one of: GaussianNoise"),
    "unknown noise class path": (["--model.noise=dae.noise.Nope"], "has no attribute 'Nope'"),
    "batch size not a number": (["--data.batch_size=abc"], "Expected a <class 'int'>. Got value: abc"),
    "missing checkpoint": (["--ckpt_path=nope.ckpt"], "--ckpt_path nope.ckpt: no such checkpoint file"),
}


@pytest.mark.parametrize("extra,message", CASES.values(), ids=CASES.keys())
def test_bad_option_gives_one_clear_message(extra, message, mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(fit_args(mnist_dir, *extra), capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing was trained


def test_data_dir_that_is_a_file(tmp_path, mnist_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    code, err = run_cli(fit_args(mnist_dir, "--data.data_dir=notes.txt"), capsys)
    assert code == 2 and "data_dir 'notes.txt' is a file; give the folder that holds the IDX files" in err


@pytest.mark.parametrize("kind,corruption,message", [
    ("wrong magic", {"data": b"\x89PNG" + bytes(100)}, "not an IDX file of unsigned bytes (magic number 89504e47"),
    ("truncated", {"keep": 100_000}, "IDX file has 100000 bytes, but its header (320, 28, 28) needs 250896"),
])
def test_unreadable_idx_file_is_named_before_training(kind, corruption, message, mnist_dir, tmp_path, monkeypatch,
                                                      capsys):
    monkeypatch.chdir(tmp_path)
    data = corrupt_copy(mnist_dir, tmp_path / "data", **corruption)
    code, err = run_cli(fit_args(data), capsys)
    assert code == 2
    assert f"{data / IMAGE_FILES['train']}: {message}" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow
def test_resuming_a_different_architecture_is_refused_before_training(mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(fit_args(mnist_dir, "--trainer.max_epochs=1", "--trainer.limit_train_batches=1")) == 0
    ckpt = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    # `--ckpt_path last` keeps this run's model settings; the run it would resume was trained with another network.
    code, err = run_cli(fit_args(mnist_dir, "--model.net=dae.nets.DnCNN", "--ckpt_path=last"), capsys)
    assert code == 2 and "Traceback" not in err
    assert "--ckpt_path last: no run in lightning_logs has this config" in err
    assert "version_0 (model.net.class_path: 'dae.nets.ConvAutoencoder' there, 'dae.nets.DnCNN' here)" in err
    assert ckpt.read_bytes() == before  # nothing trained, nothing overwritten


@pytest.mark.slow
def test_the_console_shows_a_short_message_not_a_traceback(mnist_dir, tmp_path):
    code, out = run_dae(tmp_path, fit_args(mnist_dir, "--model.lr=-1"))
    assert code == 2
    assert "dae fit: error: lr must be > 0, got -1.0" in out
    assert "Traceback" not in out and len(out.strip().splitlines()) <= 3, out
