"""Every config in configs/ runs: ``dae fit --config X --trainer.fast_dev_run true`` on fixture data, offline;
each overlay runs laid over the config it is written for, and says what it configures."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from dae.commands import main
from dae.inference import load_model
from dae.nets import DRUNet
from dae.nets.noise_map import takes_noise_level
from tests.conftest import run_dae

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
EXPERIMENTS = sorted(p for p in CONFIGS.glob("*.yaml") if "model" in yaml.safe_load(p.read_text()))
OVERLAYS = sorted(p for p in CONFIGS.glob("*.yaml") if p not in EXPERIMENTS)  # bf16, ddp, gpu
NOISE_OVERLAYS = sorted((CONFIGS / "noise").glob("*.yaml"))
NOISE_BASE = CONFIGS / "fashion_mnist.yaml"  # the data-set config the noise overlays are laid over
PHOTO_OVERLAYS = sorted((CONFIGS / "photo").glob("*.yaml"))
PHOTO_BASE = CONFIGS / "gray_blind.yaml"  # the photo config the photo overlays are laid over
# The colour model's stack: the DRUNet, told the noise level, on RGB photographs.
COLOR_STACK = [PHOTO_BASE, *(CONFIGS / "photo" / f"{name}.yaml" for name in ("drunet", "noise_map", "color"))]
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false"]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def fixture_data_args(config: dict, mnist_dir: Path, image_dir: Path) -> list[str]:
    """Point a config's data module at the test's fixture files instead of the real data sets."""
    if config["data"]["class_path"] == "dae.data.ImageFolderDataModule":
        # 30 fixture pictures: splits large enough that each gets some (Train400 configs test on 2%).
        return [f"--data.init_args.data_dir={image_dir}", "--data.init_args.val_split=0.2",
                "--data.init_args.test_split=0.2"]
    # MNIST-format sets all share the IDX layout, so the MNIST fixture stands in for each (320 train images).
    return [f"--data.init_args.data_dir={mnist_dir}", "--data.init_args.val_split=64",
            "--data.init_args.download=false"]


def fast_dev_run(configs: list[Path], mnist_dir: Path, image_dir: Path, *extra: str) -> int:
    return main(["fit", *(f"--config={c}" for c in configs), "--trainer.fast_dev_run=true", *CPU,
                 *fixture_data_args(load(configs[0]), mnist_dir, image_dir), *extra])


def composed(*configs: Path) -> dict:
    """The config ``dae fit`` would run with ``configs`` given in this order (``--print_config``)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["fit", *(f"--config={c}" for c in configs), "--print_config"])
    return yaml.safe_load(out.getvalue())


def test_there_is_a_config_per_noise_model_and_dataset_kind():
    noises = {load(p)["model"]["noise"]["class_path"] for p in EXPERIMENTS + NOISE_OVERLAYS}
    data = {load(p)["data"]["class_path"] for p in EXPERIMENTS}
    assert {f"dae.noise.{n}" for n in ("GaussianNoise", "SaltAndPepperNoise", "PoissonNoise", "SpeckleNoise",
                                       "PixelMaskNoise", "ComposeNoise")} <= noises
    assert {"dae.data.MNISTDataModule", "dae.data.ImageFolderDataModule"} <= data


def test_noise_models_are_overlays_that_hold_only_the_noise():
    assert [p.stem for p in NOISE_OVERLAYS] == ["blind", "compose", "mask", "poisson", "salt_pepper", "speckle"]
    for path in NOISE_OVERLAYS:
        assert load(path) == {"model": {"noise": load(path)["model"]["noise"]}}, path.name


def test_no_experiment_config_is_a_copy_of_another_with_other_noise():
    def without_noise(path: Path) -> dict:
        config = load(path)
        config["model"] = {k: v for k, v in config["model"].items() if k != "noise"}
        return config

    for i, a in enumerate(EXPERIMENTS):
        for b in EXPERIMENTS[i + 1:]:
            assert without_noise(a) != without_noise(b), f"{a.name} and {b.name} differ only in model.noise"


@pytest.mark.slow
@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_config_runs_a_fast_dev_run(path, mnist_dir, image_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fast_dev_run([path], mnist_dir, image_dir) == 0


@pytest.mark.slow
@pytest.mark.parametrize("path", NOISE_OVERLAYS, ids=[p.stem for p in NOISE_OVERLAYS])
def test_noise_overlay_runs_a_fast_dev_run_over_its_data_set_config(path, mnist_dir, image_dir, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert composed(NOISE_BASE, path)["model"]["noise"] == load(path)["model"]["noise"]
    assert fast_dev_run([NOISE_BASE, path], mnist_dir, image_dir) == 0


def test_bf16_overlay_sets_bf16_mixed_precision():
    config = composed(CONFIGS / "mnist.yaml", CONFIGS / "bf16.yaml")
    assert config["trainer"]["precision"] == "bf16-mixed"
    assert config["model"] == composed(CONFIGS / "mnist.yaml")["model"]  # it only adjusts the experiment


def test_gpu_overlay_configures_one_gpu_bf16_and_images_on_the_device():
    config = composed(CONFIGS / "mnist.yaml", CONFIGS / "gpu.yaml")
    trainer, data = config["trainer"], config["data"]["init_args"]
    assert (trainer["accelerator"], trainer["devices"], trainer["precision"]) == ("gpu", 1, "bf16-mixed")
    assert data["on_device"] is True and data["num_workers"] == 0
    assert config["progress_bar"]["init_args"]["refresh_rate"] == 100
    assert config["model"] == composed(CONFIGS / "mnist.yaml")["model"]  # it only adjusts the experiment


@pytest.mark.slow
@pytest.mark.parametrize("overlay", ["bf16.yaml", "gpu.yaml"])
def test_overlay_runs_a_fast_dev_run_over_the_baseline(overlay, mnist_dir, image_dir, tmp_path, monkeypatch):
    # Without a GPU here gpu.yaml runs on the CPU: everything but the device, the images kept on it included.
    monkeypatch.chdir(tmp_path)
    assert fast_dev_run([CONFIGS / "mnist.yaml", CONFIGS / overlay], mnist_dir, image_dir) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_overlay_runs_on_the_gpu(mnist_dir, image_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", f"--config={CONFIGS / 'mnist.yaml'}", f"--config={CONFIGS / 'gpu.yaml'}",
                 "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false",
                 *fixture_data_args(load(CONFIGS / "mnist.yaml"), mnist_dir, image_dir)]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("overlay", PHOTO_OVERLAYS, ids=[p.stem for p in PHOTO_OVERLAYS])
def test_photo_overlay_runs_a_fast_dev_run_over_the_gray_photo_config(overlay, mnist_dir, image_dir, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fast_dev_run([PHOTO_BASE, overlay], mnist_dir, image_dir, "--trainer.precision=32-true") == 0


def test_colour_stack_trains_a_noise_conditioned_drunet_on_rgb_photos(color_run):
    config = composed(*COLOR_STACK)
    assert config["data"]["init_args"]["channels"] == 3 and config["model"]["net"]["class_path"] == "dae.nets.DRUNet"
    module = load_model(color_run)  # conftest's color_run: the stack, shrunk, for two steps on fixture photos
    assert isinstance(module.net, DRUNet) and module.net.in_channels == 3 and takes_noise_level(module.net)
    rgb = torch.rand(1, 3, 40, 48)
    assert module.net(rgb, torch.tensor([0.1])).shape == rgb.shape


@pytest.mark.slow
def test_ddp_overlay_trains_on_two_processes(mnist_dir, tmp_path):
    config = composed(CONFIGS / "mnist.yaml", CONFIGS / "ddp.yaml")
    assert config["trainer"]["strategy"] == "ddp" and config["trainer"]["use_distributed_sampler"] is True
    probe = {"class_path": "tests.probes.RankReport", "init_args": {"folder": str(tmp_path / "report")}}
    code, out = run_dae(tmp_path, [
        "fit", f"--config={CONFIGS / 'mnist.yaml'}", f"--config={CONFIGS / 'ddp.yaml'}", "--trainer.fast_dev_run=2",
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.callbacks+={json.dumps(probe)}",
        f"--data.init_args.data_dir={mnist_dir}", "--data.init_args.val_split=64", "--data.init_args.download=false",
    ])
    assert code == 0, out
    reports = [json.loads((tmp_path / "report" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["train_batches"]) for r in reports] == [(0, 2, 2), (1, 2, 2)]
    assert reports[0]["weights_sum"] == pytest.approx(reports[1]["weights_sum"], rel=1e-6)  # one model
