"""The models that ship with dae (``builtin:gray`` and ``builtin:color``, the defaults for gray and colour images,
and ``builtin:gray-blind``): load safely, denoise gray and colour pictures of any size with no checkpoint given,
offline, and fit the package size limit."""

import json
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from dae.commands import main
from dae.inference import CheckpointError, load_model, resolve_checkpoint
from dae.inference.loading import slim_checkpoint
from dae.inference.pretrained import BUILTIN_MODELS, DEFAULT_MODELS, builtin_checkpoint
from dae.nets.noise_map import takes_noise_level

MAX_BYTES = 10 * 1024**2


def test_every_builtin_model_is_a_small_plain_checkpoint_with_its_config_and_note():
    for name, file in BUILTIN_MODELS.items():
        path = builtin_checkpoint(f"builtin:{name}")
        assert path.is_file() and path.stat().st_size <= MAX_BYTES, path
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
        assert set(ckpt) <= {"state_dict", "hyper_parameters", "datamodule_hyper_parameters",
                             "pytorch-lightning_version"}
        assert path.with_suffix(".yaml").is_file()
        assert file in (path.parent / "README.md").read_text()


def test_gray_blind_is_a_one_channel_blind_gaussian_denoiser():
    module = load_model("builtin:gray-blind")
    assert module.net.in_channels == 1 and not module.training
    assert module.noise.std == pytest.approx((0.0, 55 / 255))


@pytest.mark.parametrize("name, channels", [("builtin:gray", 1), ("builtin:color", 3)])
def test_the_defaults_are_noise_conditioned_gaussian_denoisers_for_their_images(name, channels):
    assert DEFAULT_MODELS[channels] == name
    module = load_model(name)
    assert module.net.in_channels == channels and takes_noise_level(module.net) and not module.training
    assert module.noise.std == pytest.approx((0.0, 55 / 255))
    image = torch.rand(1, channels, 40, 40)
    with torch.no_grad():  # the level it is told matters: more smoothing at a higher one
        weak, strong = (module.net(image, torch.tensor([s / 255])) for s in (5, 50))
    assert (strong - image).abs().mean() > 2 * (weak - image).abs().mean()


def test_an_unknown_builtin_name_lists_the_shipped_models():
    with pytest.raises(CheckpointError, match="builtin:sepia: no such built-in model; dae ships builtin:gray, "
                       "builtin:color, builtin:gray-blind"):
        load_model("builtin:sepia")


def picture(height: int, width: int, channels: int) -> np.ndarray:
    """A smooth picture (ramps and a disc per channel) with Gaussian noise of std 25/255, 8-bit."""
    yy, xx = np.mgrid[:height, :width]
    clean = np.stack([60 + 120 * ((xx + 7 * c) % width) / width
                      + 50 * (((yy - height / 2) ** 2 + (xx - width / 2) ** 2) < (height / 3 + c) ** 2)
                      for c in range(channels)], axis=-1)
    noisy = clean + np.random.default_rng(0).normal(0, 25, clean.shape)
    return clean, np.clip(noisy.round(), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


@pytest.mark.slow
def test_denoise_without_ckpt_uses_the_builtin_model_on_gray_and_colour_pictures_of_odd_size_offline(
        tmp_path, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    cases = {"gray.png": (37, 53, 1), "colour.png": (41, 29, 3)}
    clean = {}
    for name, (height, width, channels) in cases.items():
        clean[name], noisy = picture(height, width, channels)
        Image.fromarray(noisy[..., 0] if channels == 1 else noisy).save(tmp_path / name)
    assert main(["denoise", str(tmp_path / "gray.png"), str(tmp_path / "colour.png"), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "(builtin:gray, for gray images)" in err and "(builtin:color, for colour images)" in err
    for name, (height, width, channels) in cases.items():
        out = np.asarray(Image.open(tmp_path / "out" / name))
        assert out.shape == ((height, width) if channels == 1 else (height, width, 3)) and out.dtype == np.uint8
        noisy = np.asarray(Image.open(tmp_path / name))
        reference = clean[name][..., 0] if channels == 1 else clean[name]
        assert psnr(out, reference) > psnr(noisy, reference) + 4, name


def test_slim_checkpoint_keeps_what_using_a_model_needs(trained_run, tmp_path):
    slim = slim_checkpoint(trained_run, tmp_path / "model.ckpt")
    full, small = load_model(trained_run), load_model(slim)
    batch = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(small(batch), full(batch), rtol=0, atol=0)
    assert slim.stat().st_size < 0.6 * resolve_checkpoint(trained_run).stat().st_size  # no optimizer state


@pytest.mark.slow
def test_evaluate_and_export_take_the_builtin_model_by_its_short_name(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, (height, width) in {"a.png": (48, 64), "b.png": (33, 41)}.items():
        Image.fromarray(picture(height, width, 1)[0][..., 0].round().astype(np.uint8)).save(folder / name)
    assert main(["evaluate", "builtin:gray-blind", "--images", str(folder), "--sigma255", "25", "--baselines",
                 "-o", str(tmp_path / "eval")]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "eval.json").read_text())["results"]}
    ours = next(r for name, r in rows.items() if name.startswith("UNet"))
    assert ours["params"].endswith("gray_blind.ckpt") and ours["psnr"] > rows["noisy input"]["psnr"] + 4
    assert main(["export", "--ckpt", "builtin:gray-blind", "--format", "torchscript", "--size", "40", "56",
                 "-o", str(tmp_path / "gray_blind.pt")]) == 0
    assert (tmp_path / "gray_blind.pt").is_file()
