"""Shared fixtures: tiny MNIST-format data on disk and a tiny, fast CPU Trainer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from tests.idx import write_image_folder, write_mnist_files

# Tests run on the CPU and must not fight over the two cores of a small machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the four MNIST IDX files (uncompressed): 320 train and 96 test synthetic images."""
    folder = tmp_path_factory.mktemp("mnist")
    write_mnist_files(folder)
    return folder


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder (with a subfolder) of 30 RGB PNGs of 70x76 pixels."""
    folder = tmp_path_factory.mktemp("images")
    write_image_folder(folder)
    return folder


@pytest.fixture
def tiny_trainer(tmp_path: Path):
    """Make a CPU Trainer with a few batches per epoch, logging under ``tmp_path``."""

    def make(**overrides) -> L.Trainer:
        kwargs = dict(
            accelerator="cpu",
            devices=1,
            max_epochs=1,
            limit_train_batches=4,
            limit_val_batches=2,
            limit_test_batches=2,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        kwargs.update(overrides)
        return L.Trainer(**kwargs)

    return make


def fit_args(data_dir: Path, *extra: str) -> list[str]:
    """Arguments for a short ``dae fit`` of the baseline config on fixture data (run from a tmp cwd)."""
    config = Path(__file__).resolve().parents[1] / "configs" / "mnist.yaml"
    return [
        "fit",
        f"--config={config}",
        f"--data.data_dir={data_dir}",
        "--data.val_split=64",
        "--data.download=false",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=3",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.log_every_n_steps=1",
        *extra,
    ]


@pytest.fixture(scope="session")
def trained_run(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of one short ``dae fit`` (5 epochs of 4 steps) shared by the tests that use a model."""
    from dae.commands import main

    root = tmp_path_factory.mktemp("trained")
    torch.manual_seed(0)
    main(fit_args(mnist_dir, "--trainer.max_epochs=5", "--trainer.limit_train_batches=4", "--model.lr=0.003",
                  f"--trainer.logger.init_args.save_dir={root}", f"--trainer.default_root_dir={root}"))
    return root / "lightning_logs" / "version_0"


def small_photo_run(image_dir: Path, root: Path, overlays: list[str]) -> Path:
    """The run folder (under ``root``) of two steps of configs/gray_blind.yaml with the ``overlays`` of
    configs/photo/, its network shrunk to width 8 and one scale, on the fixture photos."""
    from dae.commands import main

    configs = Path(__file__).resolve().parents[1] / "configs"
    torch.manual_seed(0)
    main(["fit", f"--config={configs / 'gray_blind.yaml'}",
          *(f"--config={configs / 'photo' / name}.yaml" for name in overlays),
          f"--data.init_args.data_dir={image_dir}", "--data.init_args.patch_size=32",
          "--data.init_args.val_split=0.2", "--data.init_args.test_split=0.1", "--model.net.init_args.width=8",
          "--model.net.init_args.depth=1", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
          "--trainer.limit_val_batches=1", "--trainer.precision=32-true", "--trainer.accelerator=cpu",
          "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={root}",
          "--test_after_fit=false"])
    return root / "lightning_logs" / "version_0"


@pytest.fixture(scope="session")
def conditioned_run(image_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small noise-conditioned gray U-Net (the configs/photo/noise_map.yaml overlay), two steps."""
    return small_photo_run(image_dir, tmp_path_factory.mktemp("conditioned"), ["noise_map"])


@pytest.fixture(scope="session")
def color_run(image_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small noise-conditioned RGB DRUNet (the colour model's stack: the photo/drunet, photo/noise_map and
    photo/color overlays), two steps."""
    return small_photo_run(image_dir, tmp_path_factory.mktemp("color"), ["drunet", "noise_map", "color"])


def fake_rank(dm, rank: int, world_size: int = 2):
    """Give a data module what its loaders read from a DDP trainer of ``world_size`` processes on the CPU."""
    strategy = SimpleNamespace(broadcast=lambda x: x, root_device=torch.device("cpu"))
    dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank, strategy=strategy)
    return dm


ROOT = Path(__file__).resolve().parents[1]


def dae_subprocess(cwd: Path, args: list[str]) -> subprocess.Popen:
    """Start ``python -m dae ARGS`` in ``cwd`` (output in cwd/dae.log), with tests.probes importable."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for name in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"):
        env.pop(name, None)  # set by Trainers built earlier in this process; a fresh job picks its own
    with open(cwd / "dae.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "dae", *args], cwd=cwd, env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def run_dae(cwd: Path, args: list[str], timeout: float = 240) -> tuple[int, str]:
    """Run ``python -m dae ARGS`` in ``cwd`` to its end (killed after ``timeout`` s); returns (exit code, output)."""
    proc = dae_subprocess(cwd, args)
    try:
        code = proc.wait(timeout=timeout)
    finally:
        proc.kill()
        proc.wait()
    return code, (cwd / "dae.log").read_text(errors="replace")
