"""A run folder written before dae's modules moved into subpackages (tests/fixtures/run_before_layout: its
config.yaml names dae.callbacks.*, dae.checkpointing.*, dae.loggers.* and its checkpoint dae.nets.UNet) keeps
working with every command."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dae.data.images import read_image, write_image
from dae.moved import MOVED_MODULES, current_name
from tests.conftest import ROOT, run_dae

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_before_layout"
pytestmark = pytest.mark.slow


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A copy of the old run folder, where its config.yaml puts it (lightning_logs/version_0 under the cwd)."""
    run = tmp_path / "lightning_logs" / "version_0"
    shutil.copytree(FIXTURE, run)
    return run


def test_the_fixture_names_classes_by_their_old_paths():
    text = (FIXTURE / "config.yaml").read_text()
    for old in ("dae.callbacks.ImageGridCallback", "dae.checkpointing.AtomicCheckpointIO", "dae.loggers.RunLogger"):
        assert f"class_path: {old}" in text


def test_dae_test_scores_an_old_run_from_its_config(old_run, tmp_path, mnist_dir):
    code, log = run_dae(tmp_path, ["test", "--config", str(old_run / "config.yaml"),
                                   "--ckpt_path", str(old_run / "checkpoints" / "last.ckpt"),
                                   f"--data.init_args.data_dir={mnist_dir}", "--trainer.limit_test_batches=2",
                                   "--trainer.accelerator=cpu"])
    assert code == 0, log
    assert "test/psnr" in log
    assert len(list(old_run.glob("events.out.tfevents.*"))) == 1  # logged into the old run's folder


def test_dae_fit_resumes_an_old_run_with_ckpt_path_last(old_run, tmp_path):
    (tmp_path / "data").symlink_to(ROOT / "data")  # the shipped MNIST, where the run's config looks for it
    code, log = run_dae(tmp_path, ["fit", "--config", str(old_run / "config.yaml"), "--ckpt_path", "last",
                                   "--trainer.max_epochs=4", "--trainer.max_steps=6"])
    assert code == 0, log
    assert sorted(p.name for p in old_run.parent.iterdir()) == ["version_0"]  # resumed, no new run
    ckpt = torch.load(old_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6, log


def test_dae_denoise_and_export_use_an_old_checkpoint(old_run, tmp_path):
    noisy = np.random.default_rng(0).integers(0, 256, (37, 45, 1), dtype=np.uint8)
    write_image(tmp_path / "in.png", noisy)
    code, log = run_dae(tmp_path, ["denoise", "--ckpt", str(old_run), str(tmp_path / "in.png"), "-o", "out"])
    assert code == 0, log
    assert read_image(tmp_path / "out" / "in.png").shape == noisy.shape
    code, log = run_dae(tmp_path, ["export", "--ckpt", str(old_run), "--format", "torchscript", "-o", "m.pt"])
    assert code == 0, log
    assert torch.jit.load(tmp_path / "m.pt")(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_every_old_module_path_imports_the_classes_new_configs_name():
    import importlib

    for old, new in MOVED_MODULES.items():
        assert importlib.import_module(old) is importlib.import_module(new)
    assert current_name("dae.image_folder.ImageFolderDataModule") == "dae.data.ImageFolderDataModule"
    assert current_name("dae.threads.CoreShareCallback") == "dae.training.callbacks.CoreShareCallback"
    assert current_name("dae.nets.UNet") == "dae.nets.UNet"
