"""Every config in configs/ runs: ``dae fit --config X --trainer.fast_dev_run true`` on fixture data, offline."""

from pathlib import Path

import pytest
import yaml

from dae.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def is_overlay(config: dict) -> bool:
    """An overlay (e.g. gpu.yaml) only adjusts an experiment's config, given after it; it has no model of its own."""
    return "model" not in config


def fixture_data_args(config: dict, mnist_dir: Path, image_dir: Path) -> list[str]:
    """Point a config's data module at the test's fixture files instead of the real data sets."""
    if config["data"]["class_path"] == "dae.image_folder.ImageFolderDataModule":
        return [f"--data.init_args.data_dir={image_dir}"]
    # MNIST-format sets all share the IDX layout, so the MNIST fixture stands in for each (320 train images).
    return [f"--data.init_args.data_dir={mnist_dir}", "--data.init_args.val_split=64",
            "--data.init_args.download=false"]


def test_there_is_a_config_per_noise_model_and_dataset_kind():
    noises, data = set(), set()
    for path in CONFIGS:
        config = yaml.safe_load(path.read_text())
        if is_overlay(config):
            continue
        noises.add(config["model"]["noise"]["class_path"])
        data.add(config["data"]["class_path"])
    assert {f"dae.noise.{n}" for n in ("GaussianNoise", "SaltAndPepperNoise", "PoissonNoise", "SpeckleNoise",
                                       "PixelMaskNoise", "ComposeNoise")} <= noises
    assert {"dae.data.MNISTDataModule", "dae.image_folder.ImageFolderDataModule"} <= data


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_runs_a_fast_dev_run(path, mnist_dir, image_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    configs = [path]
    if is_overlay(yaml.safe_load(path.read_text())):
        configs.insert(0, ROOT / "configs" / "mnist.yaml")  # as its own comment says: after an experiment's config
    config = yaml.safe_load(configs[0].read_text())
    # On a CPU-only machine: the GPU overlay's device settings are overridden, everything else is kept.
    assert main(["fit", *(f"--config={c}" for c in configs), "--trainer.fast_dev_run=true",
                 "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
                 *fixture_data_args(config, mnist_dir, image_dir)]) == 0
