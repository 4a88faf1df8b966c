"""``dae denoise`` and the tiling under it: any size, gray and colour, names and bit depth kept."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dae.commands import main
from dae.commands.denoise import COMPARE_SUFFIX
from dae.data.images import from_unit_tensor, read_image, to_unit_tensor, write_image
from dae.inference import denoise_image, estimate_sigma, input_size, load_network
from dae.nets import ConvAutoencoder, DnCNN, UNet
from tests.conftest import fit_args
from tests.idx import synthetic_images

ROOT = Path(__file__).resolve().parents[1]


class Affine(torch.nn.Module):
    """A stand-in for a fixed-size net whose answer is known: ``0.5 * x + 0.1``, 28x28 inputs only."""

    input_size = (28, 28)
    in_channels = 1

    def __init__(self, scale: float = 0.5, shift: float = 0.1) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift
        self.batches: list[tuple[int, ...]] = []

    def forward(self, x):
        assert x.shape[-2:] == (28, 28), "tiles must have the net's input size"
        self.batches.append(tuple(x.shape))
        return self.scale * x + self.shift


def clean_gray(height: int = 45, width: int = 61) -> np.ndarray:
    """Shapes like the training images (rectangles and discs), on an odd-sized canvas, uint8 (H, W)."""
    return synthetic_images(1, size=max(height, width), seed=5)[0][:height, :width]


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


@pytest.mark.parametrize("shape", [(1, 45, 61), (3, 5, 9), (1, 28, 28), (2, 29, 100)])
def test_tiles_cover_every_pixel_and_blend_without_seams(shape):
    image = torch.rand(shape)
    identity = Affine(scale=1.0, shift=0.0)
    assert torch.allclose(denoise_image(identity, image), image, atol=1e-6)
    constant = torch.full(shape, 0.6)
    out = denoise_image(Affine(), constant)
    assert out.shape == shape and torch.allclose(out, torch.full(shape, 0.4), atol=1e-6)


def blur(x: torch.Tensor) -> torch.Tensor:
    """A 5x5 box blur with zero padding."""
    return torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=True)


class Blur(torch.nn.Module):
    """A fixed-size net with spatial context: ``blur`` on 28x28 inputs only."""

    input_size = (28, 28)
    in_channels = 1

    def forward(self, x):
        assert x.shape[-2:] == (28, 28), "tiles must have the net's input size"
        return blur(x)


def test_fixed_size_tiles_blend_into_the_whole_image_result():
    # Each 28x28 tile's border pixels see zero padding instead of the image around them; blending must weight
    # those down and fade into the neighbouring tiles, leaving the whole-image blur everywhere inside.
    image = torch.rand(1, 90, 110, generator=torch.Generator().manual_seed(0))
    smooth = torch.nn.functional.avg_pool2d(image[None], 9, stride=1, padding=4)[0]  # like natural images
    whole = blur(smooth[None])[0]
    tiled = denoise_image(Blur(), smooth)
    inner = (slice(None), slice(8, -8), slice(8, -8))
    assert (tiled - whole)[inner].abs().max() < 0.03
    assert (tiled - whole)[inner].abs().mean() < 0.005  # plain averaging: 0.034, no overlap: 0.035


def receptive_net(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "dncnn":  # receptive radius 5 (5 layers of 3x3 convolutions)
        return DnCNN(depth=5, width=8, batch_norm=False).eval()
    return UNet(width=4, depth=2).eval()  # receptive radius 22; pools twice, so tile grids must stay aligned


@pytest.mark.parametrize("kind,tile,margin", [("dncnn", 160, None), ("dncnn", 40, 5), ("unet", 128, 24),
                                              ("unet", 128, 23)])
def test_tiles_of_a_fully_convolutional_net_match_the_whole_image(kind, tile, margin):
    # With a margin that covers the receptive field, every pixel away from the bottom/right edges (where the
    # last tiles are padded) is exactly the whole image's; wrong blending or misplaced tiles show up at once.
    # Any margin: tiles must start on the pooling grid of the U-Net even where tile - 2 * margin is odd.
    net, image = receptive_net(kind), torch.rand(1, 200, 230, generator=torch.Generator().manual_seed(1))
    whole = denoise_image(net, image)
    tiled = denoise_image(net, image, tile=tile, **({} if margin is None else {"margin": margin}))
    inner = (slice(None), slice(0, -32), slice(0, -32))
    torch.testing.assert_close(tiled[inner], whole[inner], atol=1e-5, rtol=0)


def test_tiles_stream_through_the_net_in_batches_of_bounded_pixels():
    net, image = Pointwise(), torch.rand(1, 1000, 1000)
    denoise_image(net, image, tile=64)  # 16x16 tiles of 64x64 pixels
    assert len(net.shapes) > 1 and max(b[0] for b in net.shapes[1:]) * 64 * 64 <= 1 << 19


def test_tiles_are_batched():
    net = Affine()
    denoise_image(net, torch.rand(1, 200, 200), batch_size=64)
    assert max(b[0] for b in net.batches) == 64 and len(net.batches) > 1


def test_fixed_size_nets_are_tiled_and_fully_convolutional_nets_get_the_whole_image():
    assert input_size(ConvAutoencoder()) == (28, 28)
    assert input_size(UNet()) is None and input_size(DnCNN()) is None
    shapes = []
    net = DnCNN(depth=3).eval()
    net.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    assert denoise_image(net, torch.rand(1, 45, 61)).shape == (1, 45, 61)
    assert shapes == [(1, 1, 45, 61)]


class Pointwise(torch.nn.Conv2d):
    """A fully convolutional net without spatial context (1x1 convolution): tiles cannot change its answer."""

    in_channels = 1

    def __init__(self):
        super().__init__(1, 1, 1)
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return super().forward(x)


def test_tile_option_runs_a_fully_convolutional_net_over_tiles_of_that_size():
    net, image = Pointwise(), torch.rand(1, 45, 61)
    whole = denoise_image(net, image)
    assert net.shapes == [(1, 1, 45, 61)]
    tiled = denoise_image(net, image, batch_size=8, tile=16)
    assert all(shape[-2:] == (16, 16) and shape[0] <= 8 for shape in net.shapes[1:]) and len(net.shapes) > 2
    assert torch.allclose(tiled, whole, atol=1e-6)
    with pytest.raises(ValueError, match="takes 28x28 inputs and is tiled at that size"):
        denoise_image(Affine(), image, tile=16)


def test_denoise_command_tile_option(mnist_dir, trained_run, tmp_path, capsys, monkeypatch):
    write_image(tmp_path / "in" / "big.png", clean_gray(70, 90)[..., None])
    with pytest.raises(SystemExit) as exit_info:  # the baseline net has its own tile size
        main(["denoise", "--ckpt", str(trained_run), str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--tile", "32"])
    assert exit_info.value.code == 2 and "--tile is for fully convolutional networks" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["denoise", "--ckpt", str(trained_run), str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--tile", "4"])
    assert exit_info.value.code == 2 and "--tile must be >= 8 pixels, got 4" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    main(fit_args(mnist_dir, "--model.net=dae.nets.UNet", "--model.net.init_args.width=4",
                  "--model.net.init_args.depth=1", "--trainer.max_epochs=1"))
    run = tmp_path / "lightning_logs" / "version_0"
    assert main(["denoise", "--ckpt", str(run), str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--tile", "32"]) == 0
    assert f"UNet ({run}) on cpu, 32x32 tiles (--tile)" in capsys.readouterr().err
    assert read_image(tmp_path / "out" / "big.png").shape == (70, 90, 1)


def test_colour_through_a_gray_net_goes_channel_by_channel():
    image = torch.rand(3, 30, 31)
    expected = torch.stack([denoise_image(Affine(), image[c : c + 1])[0] for c in range(3)])
    assert torch.allclose(denoise_image(Affine(), image), expected, atol=1e-6)


def test_gray_png_and_rgb_jpeg_round_trip_denoised(trained_run, tmp_path, capsys):
    clean = clean_gray()
    inputs = tmp_path / "in"
    write_image(inputs / "gray.png", clean[..., None])
    (inputs / "photos").mkdir()
    rgb = np.stack([clean, clean[::-1], clean[:, ::-1]], axis=-1)
    Image.fromarray(rgb).save(inputs / "photos" / "rgb.jpg", quality=95)
    out = tmp_path / "out"
    # Noise as in training (std 0.5, unclipped), added by dae itself; --compare keeps the noisy version.
    args = ["denoise", "--ckpt", str(trained_run), str(inputs), "-o", str(out), "--add-noise", "0.5", "--compare"]
    assert main(args) == 0
    for name in ("gray.png", "photos/rgb.jpg"):
        original, denoised = read_image(inputs / name), read_image(out / name)
        assert denoised.shape == original.shape and denoised.dtype == original.dtype == np.uint8, name
        compare = read_image(out / name.replace(Path(name).suffix, COMPARE_SUFFIX))
        noisy = compare[:, : original.shape[1]]  # clipped to 0..1, which already makes it less noisy
        assert mse(denoised, original) < 0.75 * mse(noisy, original), name
    assert "one channel at a time" in capsys.readouterr().err


def test_16_bit_png_stays_16_bit_and_alpha_is_kept(trained_run, tmp_path):
    rng = np.random.default_rng(0)
    gray16 = (clean_gray(31, 40).astype(np.uint16) * 257)[..., None]
    rgba = np.concatenate([rng.integers(0, 256, (20, 33, 3)), rng.integers(0, 256, (20, 33, 1))], -1)
    write_image(tmp_path / "in" / "deep.png", gray16)
    write_image(tmp_path / "in" / "rgba.png", rgba.astype(np.uint8))
    assert main(["denoise", "--ckpt", str(trained_run), str(tmp_path / "in"), "-o", str(tmp_path / "out")]) == 0
    deep = read_image(tmp_path / "out" / "deep.png")
    assert deep.dtype == np.uint16 and deep.shape == gray16.shape
    assert len(np.unique(deep % 257)) > 1  # real 16-bit values, not 8-bit ones scaled up
    out_rgba = read_image(tmp_path / "out" / "rgba.png")
    assert out_rgba.shape == rgba.shape and np.array_equal(out_rgba[..., 3], rgba[..., 3])


def test_add_noise_is_seeded_and_compare_shows_both(trained_run, tmp_path):
    write_image(tmp_path / "clean.png", clean_gray()[..., None])
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        args = ["denoise", "--ckpt", str(trained_run), str(tmp_path / "clean.png"), "-o", str(out),
                "--add-noise", "0.5", "--seed", "3", "--compare"]
        assert main(args) == 0
        runs.append(((out / "clean.png").read_bytes(), read_image(out / f"clean{COMPARE_SUFFIX}")))
    assert runs[0][0] == runs[1][0]
    compare = runs[0][1]
    assert compare.shape == (45, 2 * 61 + 2, 1)
    noisy_half, denoised_half = compare[:, :61], compare[:, -61:]
    assert np.array_equal(denoised_half, read_image(tmp_path / "a" / "clean.png"))
    assert mse(noisy_half, clean_gray()[..., None]) > 0.1 * 255**2  # the left half really is the noisy one


def test_missing_and_non_image_inputs_are_reported_and_the_rest_processed(trained_run, tmp_path, capsys):
    folder = tmp_path / "in"
    write_image(folder / "good.png", clean_gray()[..., None])
    (folder / "broken.png").write_text("this is not a PNG")
    (folder / "notes.txt").write_text("ignored: not an image ending")
    (tmp_path / "data.csv").write_text("1,2,3")
    out = tmp_path / "out"
    args = ["denoise", "--ckpt", str(trained_run), str(folder), str(tmp_path / "missing.png"),
            str(tmp_path / "data.csv"), "-o", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "missing.png: no such file or folder" in err
    assert "broken.png: not a readable image" in err and "data.csv: not a readable image" in err
    assert "notes.txt" not in err
    assert sorted(p.name for p in out.rglob("*")) == ["good.png"]


COLLIDING = {
    "NAME and NAME_compare": ("x.png", "x_compare.png"),
    "one name, two formats": ("a.png", "a.tif"),
}


@pytest.mark.parametrize("names", COLLIDING.values(), ids=COLLIDING.keys())
def test_inputs_whose_outputs_collide_stop_the_run_before_it_writes(names, trained_run, tmp_path, capsys):
    for name in names:
        write_image(tmp_path / "in" / name, clean_gray()[..., None])
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["denoise", "--ckpt", str(trained_run), str(tmp_path / "in"), "-o", str(out), "--compare"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert f"{tmp_path / 'in' / names[0]} and {tmp_path / 'in' / names[1]} would both be written to" in err[0]
    assert not out.exists()


def test_outputs_over_the_inputs_stop_the_run_before_it_writes(trained_run, tmp_path, capsys):
    write_image(tmp_path / "in" / "x.png", clean_gray()[..., None])
    before = (tmp_path / "in" / "x.png").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["denoise", "--ckpt", str(trained_run), str(tmp_path / "in"), "-o", str(tmp_path / "in")])
    assert exit_info.value.code == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "in").iterdir()] == ["x.png"]
    assert (tmp_path / "in" / "x.png").read_bytes() == before


def test_an_image_named_twice_is_denoised_once(trained_run, tmp_path):
    write_image(tmp_path / "in" / "x.png", clean_gray()[..., None])
    out = tmp_path / "out"
    assert main(["denoise", "--ckpt", str(trained_run), str(tmp_path / "in"), str(tmp_path / "in" / "x.png"),
                 "-o", str(out)]) == 0
    assert [p.name for p in out.iterdir()] == ["x.png"]


def test_bad_checkpoint_stops_denoise_with_its_name(tmp_path, capsys):
    (tmp_path / "model.ckpt").write_bytes(b"junk")
    with pytest.raises(SystemExit) as exit_info:
        main(["denoise", "--ckpt", str(tmp_path / "model.ckpt"), str(tmp_path), "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "model.ckpt: cannot load this checkpoint" in capsys.readouterr().err


def test_denoising_a_tensor_does_not_import_lightning():
    # Lightning holds about a quarter of a GiB once imported; denoise_image on a network needs none of it.
    code = "import sys, dae.inference, dae.nets; sys.exit('lightning' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1]).returncode == 0


@pytest.mark.slow
def test_dae_denoise_runs_without_importing_lightning(tmp_path):
    # Lightning and what it pulls in take a few hundred MiB that denoising a big image with --tile cannot spare.
    Image.fromarray(np.full((40, 36), 128, dtype=np.uint8)).save(tmp_path / "in.png")
    script = ("import sys; from dae.commands import main; "
              f"code = main(['denoise', {str(tmp_path / 'in.png')!r}, '-o', {str(tmp_path / 'out')!r}]); "
              "print(code, sorted(m for m in sys.modules if m.split('.')[0] == 'lightning'))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip().splitlines()[-1] == "0 []", done.stderr
    assert (tmp_path / "out" / "in.png").is_file()


def noisy_gray_file(folder: Path, sigma255: float = 25) -> Path:
    """A gray PNG of ``clean_gray`` (in mid-grays, so that little noise is clipped) with Gaussian noise of
    ``sigma255``, clipped and rounded as saved photos are."""
    rng = np.random.default_rng(0)
    clean = 64 + 0.5 * clean_gray(40, 52).astype(np.float64)
    noisy = np.clip(clean + sigma255 * rng.standard_normal(clean.shape), 0, 255).round().astype(np.uint8)
    return write_image(folder / "noisy.png", noisy[..., None])


def denoised_8_bit(net, path: Path, sigma: float | None) -> np.ndarray:
    """What dae denoise writes for ``path``: ``denoise_image`` told ``sigma``, clipped and rounded to 8 bits."""
    image = to_unit_tensor(read_image(path))
    return from_unit_tensor(denoise_image(net, image, sigma=sigma).clamp(0, 1), np.dtype(np.uint8))


def test_sigma_sets_the_level_of_a_noise_conditioned_model(conditioned_run, tmp_path, capsys):
    source = noisy_gray_file(tmp_path / "in")
    net = load_network(str(conditioned_run))
    outputs = {}
    for sigma in ("25", "5"):
        out = tmp_path / f"out{sigma}"
        assert main(["denoise", str(source), "--ckpt", str(conditioned_run), "--sigma", sigma, "-o", str(out)]) == 0
        outputs[sigma] = read_image(out / "noisy.png")
        assert np.array_equal(outputs[sigma], denoised_8_bit(net, source, float(sigma) / 255))
    assert not np.array_equal(outputs["25"], outputs["5"])
    err = capsys.readouterr().err
    assert "told noise level 25" in err and "estimated" not in err


def test_without_sigma_the_level_is_estimated_from_each_image_and_printed(conditioned_run, tmp_path, capsys):
    source = noisy_gray_file(tmp_path / "in", sigma255=20)
    out = tmp_path / "out"
    assert main(["denoise", str(source), "--ckpt", str(conditioned_run), "-o", str(out)]) == 0
    level = estimate_sigma(to_unit_tensor(read_image(source)))
    assert 15 < level * 255 < 25
    assert f"{source}: noise level estimated at sigma {level * 255:.1f}" in capsys.readouterr().err
    assert np.array_equal(read_image(out / "noisy.png"), denoised_8_bit(load_network(str(conditioned_run)), source,
                                                                        level))


def test_a_blind_model_says_that_it_ignores_sigma(trained_run, tmp_path, capsys):
    source = noisy_gray_file(tmp_path / "in")
    for name, extra in (("given", ["--sigma", "25"]), ("plain", [])):
        assert main(["denoise", str(source), "--ckpt", str(trained_run), "-o", str(tmp_path / name), *extra]) == 0
    assert "is a blind model: it ignores --sigma" in capsys.readouterr().err
    assert np.array_equal(read_image(tmp_path / "given" / "noisy.png"), read_image(tmp_path / "plain" / "noisy.png"))


@pytest.mark.parametrize("sigma", ["-1", "256", "nan"])
def test_sigma_outside_the_8_bit_scale_is_refused(sigma, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["denoise", str(tmp_path), "--sigma", sigma, "-o", str(tmp_path / "out")])
    assert stop.value.code == 2 and "give a number in [0, 255]" in capsys.readouterr().err


def colour_and_gray_files(folder: Path) -> tuple[Path, Path]:
    """A noisy RGB PNG (the gray picture in three tints) and the noisy gray PNG of ``noisy_gray_file``."""
    gray = noisy_gray_file(folder)
    pixels = read_image(gray).astype(np.int16)
    rgb = np.clip(np.concatenate([pixels, pixels - 20, pixels + 20], axis=-1), 0, 255).astype(np.uint8)
    return write_image(folder / "colour.png", rgb), gray


def test_without_ckpt_each_image_gets_the_shipped_model_for_its_channels(conditioned_run, color_run, tmp_path,
                                                                         monkeypatch, capsys):
    monkeypatch.setattr("dae.inference.pretrained.DEFAULT_MODELS", {1: str(conditioned_run), 3: str(color_run)})
    colour, gray = colour_and_gray_files(tmp_path / "in")
    assert main(["denoise", str(tmp_path / "in"), "--sigma", "25", "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert f"({conditioned_run}, for gray images)" in err and f"({color_run}, for colour images)" in err
    for source, run in ((gray, conditioned_run), (colour, color_run)):
        expected = denoised_8_bit(load_network(str(run)), source, 25 / 255)
        assert np.array_equal(read_image(tmp_path / "out" / source.name), expected), source.name


def test_a_colour_model_takes_the_estimated_level_and_the_self_ensemble_as_a_gray_one_does(color_run, tmp_path,
                                                                                        capsys):
    colour, _ = colour_and_gray_files(tmp_path / "in")
    assert main(["denoise", str(colour), "--ckpt", str(color_run), "--ensemble", "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    image = to_unit_tensor(read_image(colour))
    level = estimate_sigma(image)  # over the three channels, said as for a gray image
    assert f"noise level estimated at sigma {level * 255:.1f}" in err and "self-ensemble of 8 orientations" in err
    net = load_network(str(color_run))
    with torch.no_grad():
        expected = denoise_image(net, image, ensemble=True, sigma=level).clamp(0, 1)
    out = read_image(tmp_path / "out" / colour.name)
    assert out.shape == read_image(colour).shape
    assert np.array_equal(out, from_unit_tensor(expected, np.dtype(np.uint8)))
    assert not np.array_equal(out, denoised_8_bit(net, colour, level))  # the ensemble is not the plain output


def test_a_gray_image_through_a_colour_model_comes_back_gray_with_a_note(color_run, tmp_path, capsys):
    gray = noisy_gray_file(tmp_path / "in")
    assert main(["denoise", str(gray), "--ckpt", str(color_run), "--sigma", "25", "-o", str(tmp_path / "out")]) == 0
    assert "gray images were denoised as colour images of equal channels" in capsys.readouterr().err
    net = load_network(str(color_run))
    with torch.no_grad():
        as_colour = net(to_unit_tensor(read_image(gray)).expand(3, -1, -1)[None], torch.tensor([25 / 255]))
    expected = from_unit_tensor(as_colour[0].mean(0, keepdim=True).clamp(0, 1), np.dtype(np.uint8))
    out = read_image(tmp_path / "out" / gray.name)
    assert out.shape == read_image(gray).shape and np.array_equal(out, expected)
