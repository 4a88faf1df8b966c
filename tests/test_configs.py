"""Every config in configs/ runs: ``dae fit --config X --trainer.fast_dev_run true`` on fixture data, offline."""

from pathlib import Path

import pytest
import yaml

from dae.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


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
        noises.add(config["model"]["noise"]["class_path"])
        data.add(config["data"]["class_path"])
    assert {f"dae.noise.{n}" for n in ("GaussianNoise", "SaltAndPepperNoise", "PoissonNoise", "SpeckleNoise",
                                       "PixelMaskNoise", "ComposeNoise")} <= noises
    assert {"dae.data.MNISTDataModule", "dae.image_folder.ImageFolderDataModule"} <= data


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_runs_a_fast_dev_run(path, mnist_dir, image_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load(path.read_text())
    main(["fit", f"--config={path}", "--trainer.fast_dev_run=true", "--trainer.accelerator=cpu",
          "--trainer.devices=1", "--trainer.enable_progress_bar=false",
          *fixture_data_args(config, mnist_dir, image_dir)])
    saved = yaml.safe_load(next(tmp_path.rglob("config.yaml")).read_text())
    assert saved["model"]["noise"] == config["model"]["noise"]  # the noise used is recorded with the run
