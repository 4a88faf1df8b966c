"""End-to-end runs of the ``dae`` command on the fixture data."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dae.training.callbacks import read_scalars
from dae.commands import main
from tests.conftest import fit_args

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fitted_run(mnist_dir, tmp_path, monkeypatch):
    """A two-epoch ``dae fit`` (3 steps each) in a fresh working folder; returns its run folder."""
    monkeypatch.chdir(tmp_path)
    main(fit_args(mnist_dir))
    return tmp_path / "lightning_logs" / "version_0"


@pytest.mark.slow
def test_fit_leaves_a_self_describing_run_folder(fitted_run):
    names = {p.name for p in fitted_run.iterdir()}
    assert {"config.yaml", "hparams.yaml", "loss.png", "checkpoints"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    ckpts = {p.name for p in (fitted_run / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)
    assert (fitted_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = yaml.safe_load((fitted_run / "config.yaml").read_text())
    assert saved["model"]["noise"]["init_args"]["std"] == 0.5


@pytest.mark.slow
def test_event_file_holds_scalars_and_image_grid(fitted_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = read_scalars(fitted_run)
    assert len(scalars["train/loss"]) >= 1
    for tag in ("val/loss", "val/psnr", "val/ssim", "val/psnr_noisy", "train/loss_epoch"):
        assert len(scalars[tag]) == 2, tag  # one value per epoch
    acc = EventAccumulator(str(fitted_run))
    acc.Reload()
    assert "val/images" in acc.Tags()["images"]
    image = acc.Images("val/images")[-1]
    # 3 rows (clean, noisy, denoised) of 28x28 tiles with 2-pixel padding.
    assert image.height == 3 * 30 + 2


@pytest.mark.slow
def test_checkpoint_holds_plain_data_hparams(fitted_run):
    ckpt = torch.load(fitted_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["net"]["class_path"] == "dae.nets.ConvAutoencoder"
    assert hp["noise"]["init_args"]["std"] == 0.5
    assert ckpt["global_step"] == 6


@pytest.mark.slow
def test_resume_from_last_checkpoint_continues_step_count(fitted_run, mnist_dir):
    last = fitted_run / "checkpoints" / "last.ckpt"
    main(fit_args(mnist_dir, "--trainer.max_epochs=3", f"--ckpt_path={last}"))
    resumed = fitted_run.parent / "version_1"
    ckpt = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 9 and ckpt["epoch"] == 2
    steps = [s for s, _ in read_scalars(resumed)["train/loss"]]
    assert min(steps) >= 6  # the step count went on from 6, it did not restart at 0


@pytest.mark.slow
def test_test_command_reports_test_metrics(fitted_run, mnist_dir, capsys):
    from dae.commands.cli import DaeCLI

    args = fit_args(mnist_dir)
    args[0] = "test"
    args = [a for a in args if not a.startswith("--trainer.max_epochs") and "limit_train" not in a]
    cli = DaeCLI(args=[*args, f"--ckpt_path={fitted_run / 'checkpoints' / 'last.ckpt'}"])
    metrics = cli.trainer.callback_metrics
    assert {"test/loss", "test/psnr", "test/ssim", "test/psnr_noisy"} <= set(metrics)
    assert metrics["test/psnr"] > metrics["test/psnr_noisy"]
    assert "test/psnr" in capsys.readouterr().out


@pytest.mark.slow
def test_plot_command_redraws_loss_png(fitted_run, capsys):
    (fitted_run / "loss.png").unlink()
    assert main(["plot", str(fitted_run)]) == 0
    assert (fitted_run / "loss.png").exists()
    with pytest.raises(SystemExit) as err:
        main(["plot", str(fitted_run / "nope")])
    assert err.value.code == 2 and "no such run folder" in capsys.readouterr().err


def test_mnist_config_holds_exactly_the_baseline():
    cfg = yaml.safe_load((ROOT / "configs" / "mnist.yaml").read_text())
    assert cfg["trainer"]["max_epochs"] == 10
    model = cfg["model"]
    assert model["net"] == {"class_path": "dae.nets.ConvAutoencoder", "init_args": {"in_channels": 1}}
    assert model["noise"] == {"class_path": "dae.noise.GaussianNoise", "init_args": {"std": 0.5, "clip": False}}
    assert model["lr"] == 0.001 and model["weight_decay"] == 1e-5
    data = cfg["data"]["init_args"]
    assert data["dataset"] == "mnist" and data["batch_size"] == 64 and data["val_split"] == 5000


def test_print_config_shows_the_baseline_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["fit", f"--config={ROOT / 'configs' / 'mnist.yaml'}", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["lr"] == 0.001 and printed["trainer"]["max_epochs"] == 10


def test_blind_gaussian_range_is_given_in_yaml_or_on_the_command_line(tmp_path, monkeypatch):
    from dae.commands.cli import DaeCLI
    from dae.noise import GaussianNoise

    monkeypatch.chdir(tmp_path)
    args = [f"--config={ROOT / 'configs' / 'mnist.yaml'}", f"--data.data_dir={tmp_path}"]
    cli = DaeCLI(args=[*args, "--model.noise.init_args.std=[0.1, 0.4]"], run=False)
    assert isinstance(cli.model.noise, GaussianNoise) and cli.model.noise.std == (0.1, 0.4)
    assert DaeCLI(args=args, run=False).model.noise.std == 0.5  # the baseline's single std still works


@pytest.mark.parametrize(
    "config,net_class,std,loss",
    [("unet.yaml", "UNet", 0.5, "mse"), ("unet_blind.yaml", "UNet", (0.0, 0.5), "psnr"),
     ("dncnn.yaml", "DnCNN", 0.5, "mse")],
)
def test_network_configs_build_their_network_and_noise(config, net_class, std, loss, tmp_path, monkeypatch):
    from dae.commands.cli import DaeCLI

    monkeypatch.chdir(tmp_path)
    cli = DaeCLI(args=[f"--config={ROOT / 'configs' / config}", f"--data.init_args.data_dir={tmp_path}"], run=False)
    assert type(cli.model.net).__name__ == net_class
    # Unclipped noise, the baseline's and dae evaluate's default, and the cosine schedule the results were made with.
    assert cli.model.noise.std == std and not cli.model.noise.clip
    assert cli.model.lr_schedule == "cosine" and cli.model.loss == loss
    assert cli.datamodule.dataset == "fashion_mnist"


@pytest.mark.slow
def test_predict_writes_denoised_pngs_of_the_test_split_into_the_run_folder(trained_run, mnist_dir, tmp_path):
    import shutil

    from dae.data.images import read_image

    run = tmp_path / "run"
    shutil.copytree(trained_run / "checkpoints", run / "checkpoints")
    args = fit_args(mnist_dir, f"--trainer.logger.init_args.save_dir={tmp_path}")
    args[0] = "predict"
    args = [a for a in args if not a.startswith("--trainer.max_epochs") and "limit_train" not in a]
    main([*args, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    written = sorted((run / "predictions").iterdir())
    assert [p.name for p in written] == [f"{i:05d}.png" for i in range(96)]  # the 96 fixture test images
    image = read_image(written[0])
    assert image.shape == (28, 28, 1) and image.dtype == np.uint8 and image.std() > 0


def test_default_progress_bar_is_tqdm_redrawn_every_20_steps_and_configurable(mnist_dir, tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import RichProgressBar

    from dae.commands.cli import DaeCLI
    from dae.training.callbacks import ProgressBar

    monkeypatch.chdir(tmp_path)
    args = fit_args(mnist_dir)[1:]  # without the subcommand: run=False only builds
    args, bar_off = [a for a in args if "enable_progress_bar" not in a], args
    bar = DaeCLI(args=args, run=False).trainer.progress_bar_callback
    assert type(bar) is ProgressBar and bar.refresh_rate == 20
    bar = DaeCLI(args=[*args, "--progress_bar.refresh_rate=5"], run=False).trainer.progress_bar_callback
    assert bar.refresh_rate == 5
    bar = DaeCLI(args=[*args, "--progress_bar=RichProgressBar"], run=False).trainer.progress_bar_callback
    assert isinstance(bar, RichProgressBar)
    assert DaeCLI(args=bar_off, run=False).trainer.progress_bar_callback is None


@pytest.mark.slow
def test_on_device_fit_runs(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(fit_args(mnist_dir, "--data.on_device=true", "--trainer.max_epochs=1"))
    ckpt = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3


@pytest.mark.slow
def test_same_seed_gives_identical_losses_and_another_seed_does_not(mnist_dir, tmp_path, monkeypatch):
    def train_losses(folder: str, *extra: str) -> list[tuple[int, float]]:
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        assert main(fit_args(mnist_dir, *extra)) == 0  # seed_everything: 0 comes from configs/mnist.yaml
        scalars = read_scalars(tmp_path / folder / "lightning_logs" / "version_0")
        return scalars["train/loss"] + scalars["val/loss"]

    first = train_losses("a")
    assert len(first) == 6 + 2
    assert train_losses("b") == first  # bit for bit
    assert train_losses("c", "--seed_everything=1") != first


DEFAULT_CALLBACK_CLASSES = {
    "best_checkpoint": "lightning.pytorch.callbacks.ModelCheckpoint",
    "last_checkpoint": "lightning.pytorch.callbacks.ModelCheckpoint",
    "epoch_end_checkpoint": "lightning.pytorch.callbacks.ModelCheckpoint",
    "sigterm_checkpoint": "dae.training.checkpointing.SigtermCheckpoint",
    "lr_monitor": "lightning.pytorch.callbacks.LearningRateMonitor",
    "image_grid": "dae.training.callbacks.ImageGridCallback",
    "loss_plot": "dae.training.callbacks.LossPlotCallback",
    "tensorboard_run": "dae.training.callbacks.TensorBoardRunCallback",
    "non_finite_loss_stop": "dae.training.callbacks.NonFiniteLossStop",
    "prediction_writer": "dae.training.callbacks.PredictionImageWriter",
    "progress_bar": "dae.training.callbacks.ProgressBar",
}


def test_print_config_and_config_yaml_hold_every_default_callback(fitted_run, capsys):
    with pytest.raises(SystemExit):
        main(["fit", f"--config={ROOT / 'configs' / 'mnist.yaml'}", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    for config in (printed, yaml.safe_load((fitted_run / "config.yaml").read_text())):
        assert {key: config[key]["class_path"] for key in DEFAULT_CALLBACK_CLASSES} == DEFAULT_CALLBACK_CLASSES
        best, last = config["best_checkpoint"]["init_args"], config["last_checkpoint"]["init_args"]
        assert best["monitor"] == "val/loss" and best["filename"] == "best-epoch{epoch:02d}-step{step}"
        assert last["filename"] == "last" and last["every_n_train_steps"] == 500
        assert config["epoch_end_checkpoint"]["init_args"]["filename"] == "last"


def test_a_default_callback_is_changed_or_removed_in_its_section_and_more_are_appended(mnist_dir, tmp_path,
                                                                                     monkeypatch):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from dae.training.callbacks import ImageGridCallback, LossPlotCallback
    from dae.commands.cli import DaeCLI
    from tests.probes import PauseAtStep

    monkeypatch.chdir(tmp_path)
    probe = '{"class_path": "tests.probes.PauseAtStep", "init_args": {"step": 99, "marker": "m"}}'
    cli = DaeCLI(args=[*fit_args(mnist_dir)[1:], "--image_grid=null", "--last_checkpoint.every_n_train_steps=7",
                       "--loss_plot=null", f"--trainer.callbacks+={probe}"], run=False)
    callbacks = cli.trainer.callbacks
    assert not any(isinstance(c, (ImageGridCallback, LossPlotCallback)) for c in callbacks)
    checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    assert len(checkpoints) == 3 and "'every_n_train_steps': 7" in checkpoints[1].state_key
    assert sum(isinstance(c, PauseAtStep) for c in callbacks) == 1  # appended, the defaults kept
    assert len(DaeCLI(args=fit_args(mnist_dir)[1:], run=False).trainer.callbacks) == len(callbacks) + 1


def test_train_lr_follows_the_cosine_schedule_in_tensorboard(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(fit_args(mnist_dir, "--model.lr_schedule=cosine")) == 0
    logged = read_scalars(tmp_path / "lightning_logs" / "version_0")["train/lr"]
    steps, lrs = zip(*logged)
    assert steps == tuple(range(6)) and lrs[0] == pytest.approx(1e-3)  # each step's rate, from lr down
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[3] == pytest.approx(0.5e-3)


@pytest.mark.parametrize("given", [["--model.net", "UNett"], ["--model.net=UNett"]])
def test_an_unknown_network_name_lists_the_networks(given, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        main(["fit", f"--config={ROOT / 'configs' / 'mnist.yaml'}", *given])
    err = capsys.readouterr().err
    assert exit.value.code == 2
    assert "--model.net UNett: no such class. --model.net takes one of: ConvAutoencoder, UNet, DnCNN, DRUNet, FFDNet" in err


def test_max_steps_that_max_epochs_cuts_short_are_warned_about_before_training(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # fit_args: 2 epochs of 3 steps
    with pytest.warns(UserWarning, match="trainer.max_steps 50 will not be reached: trainer.max_epochs 2 ends the "
                      "run after 6 optimizer steps"):
        assert main(fit_args(mnist_dir, "--trainer.max_steps=50", "--test_after_fit=false")) == 0
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(fit_args(mnist_dir, "--trainer.max_steps=4", "--test_after_fit=false")) == 0
    assert not [w for w in caught if "will not be reached" in str(w.message)]
