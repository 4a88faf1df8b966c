"""``dae evaluate --images DIR``: the published protocol of gray-image benchmarks (Set12, BSD68) on fixture PNGs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dae.baselines import BASELINES
from dae.commands import main
from dae.commands.evaluate import BaselineMethod, Row, evaluate_images, markdown_table
from dae.inference import denoise_image, estimate_sigma, load_network


class Recorder:
    """A method that keeps every noisy image it is given and returns ``output(noisy, clean)``."""

    def __init__(self, name, output=lambda noisy: noisy):
        self.name, self.output, self.seen = name, output, []

    def prepare(self, std):
        return ""

    def __call__(self, noisy, std):
        self.seen.append((std, noisy.clone()))
        return self.output(noisy)


def gray_images(sizes=((40, 52), (33, 47), (64, 64))):
    """Smooth gray pictures of several sizes (a ramp and a disc), values in [40, 200]: far from the clipping
    limits, and on the 8-bit grid like the files they stand for."""
    images = []
    for height, width in sizes:
        yy, xx = np.mgrid[:height, :width]
        picture = 40 + 100 * xx / width + 60 * ((yy - height / 2) ** 2 + (xx - width / 3) ** 2 < (height / 4) ** 2)
        images.append(torch.from_numpy(picture.round().astype(np.float32)[None] / 255))
    return images


def test_noise_is_unclipped_standard_normal_scaled_by_each_std_and_the_same_for_every_method():
    images = gray_images()
    first, second = Recorder("a"), Recorder("b")
    evaluate_images([first, second], images, [25 / 255, 50 / 255], seed=0)
    assert [s for s, _ in first.seen] == [25 / 255] * 3 + [50 / 255] * 3
    for (_, a), (_, b) in zip(first.seen, second.seen):
        assert torch.equal(a, b)  # every method denoises the very same noisy image
    noise25 = [x[0] - c for (_, x), c in zip(first.seen[:3], images)]
    noise50 = [x[0] - c for (_, x), c in zip(first.seen[3:], images)]
    z = torch.cat([n.flatten() for n in noise25]) * 255 / 25
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
    for n25, n50 in zip(noise25, noise50):  # one draw per image, scaled by each std, as the published tests do
        torch.testing.assert_close(n50, 2 * n25, rtol=0, atol=1e-5)
    noisy50 = torch.cat([x.flatten() for _, x in first.seen[3:]])
    assert noisy50.min() < 0  # not clipped to [0, 1]
    # Another seed draws other noise.
    other = Recorder("c")
    evaluate_images([other], images, [25 / 255], seed=1)
    assert not torch.equal(other.seen[0][1], first.seen[0][1])


def test_outputs_are_rounded_to_8_bits_before_psnr():
    images = gray_images()
    outputs = iter(images)  # a method is called image by image, in order
    # 0.6 of a level above each clean image rounds to exactly one level off everywhere: PSNR 20 log10(255).
    shifted = Recorder("shift", output=lambda noisy: next(outputs)[None] + 0.6 / 255)
    rows = evaluate_images([shifted], images, [25 / 255], seed=0)
    assert rows[1].psnr == pytest.approx(20 * np.log10(255), abs=1e-3)  # not 20 log10(255 / 0.6) = 52.57
    assert rows[0].method == "noisy input" and 20 < rows[0].psnr < 20.5  # sigma 25: about 20.2 dB


def test_noisy_row_scores_the_unclipped_unrounded_images_the_methods_get():
    # Dark images, where clipping the noise at 0 would lift the PSNR by several dB and rounding would move it.
    images = [torch.full((1, 30, 40), 10 / 255), torch.full((1, 20, 24), 5 / 255)]
    seen = Recorder("a")
    rows = evaluate_images([seen], images, [50 / 255], seed=0)
    per_image = [10 * torch.log10(1 / (x[0] - c).pow(2).mean()) for (_, x), c in zip(seen.seen, images)]
    assert rows[0].method == "noisy input"
    assert rows[0].psnr == pytest.approx(float(sum(per_image) / 2), abs=1e-4)  # about 20 log10(255 / 50) = 14.15


def test_baselines_get_the_true_std_untuned_without_validation_images():
    method = BaselineMethod(BASELINES["BM3D"], None, seed=0, clip=False)
    assert method.prepare(25 / 255) == "sigma_scale=1.0"
    assert all(b.untuned and b.untuned in b.grid for b in BASELINES.values())


def write_pngs(folder: Path) -> None:
    folder.mkdir()
    for i, image in enumerate(gray_images()):
        Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:02d}.png")


def test_command_scores_a_folder_with_sigmas_on_the_255_scale(tmp_path, capsys):
    write_pngs(tmp_path / "set")
    out_prefix = tmp_path / "result"
    assert main(["evaluate", "--images", str(tmp_path / "set"), "--sigma255", "15", "50", "--baselines", "TV",
                 "-o", str(out_prefix)]) == 0
    out = capsys.readouterr().out
    assert "3 full-size gray images" in out and "sigma 15: PSNR / SSIM" in out and "sigma 50: PSNR / SSIM" in out
    result = json.loads(out_prefix.with_suffix(".json").read_text())
    assert result["settings"]["sigma255"] == pytest.approx([15, 50]) and result["settings"]["images"] == 3
    rows = {(r["method"], round(r["std"] * 255)): r for r in result["results"]}
    assert rows["TV", 50]["psnr"] > rows["noisy input", 50]["psnr"] + 3  # TV denoises flat-ish images well
    assert rows["TV", 15]["params"] == "weight_scale=1.0"


def test_networks_denoise_the_full_size_images_as_dae_denoise_does(trained_run, tmp_path, capsys):
    # The baseline ConvAutoencoder takes 28x28 images: on 40x52, 33x47 and 64x64 pictures it must run over
    # tiles (denoise_image), never on the whole image.
    write_pngs(tmp_path / "set")
    assert main(["evaluate", str(trained_run), "--images", str(tmp_path / "set"), "--sigma255", "25", "--baselines",
                 "-o", str(tmp_path / "r")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    assert rows[1]["method"].startswith("ConvAutoencoder")
    net = load_network(str(trained_run))
    # The command's default seed 0: the very same noisy images.
    expected = evaluate_images([Recorder("net", lambda x: denoise_image(net, x[0])[None])], gray_images(),
                               [25 / 255], seed=0)
    assert rows[1]["psnr"] == pytest.approx(expected[1].psnr, abs=1e-4)
    assert rows[1]["ssim"] == pytest.approx(expected[1].ssim, abs=1e-4)


def test_a_noise_conditioned_network_is_scored_with_the_true_and_the_estimated_level(conditioned_run, tmp_path):
    write_pngs(tmp_path / "set")
    assert main(["evaluate", str(conditioned_run), "--images", str(tmp_path / "set"), "--sigma255", "25",
                 "--baselines", "--ensemble", "-o", str(tmp_path / "r")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    names = [row["method"] for row in rows]
    suffixes = ["true sigma", "true sigma, self-ensemble x8", "estimated sigma", "estimated sigma, self-ensemble x8"]
    assert len(names) == 5 and all(name.endswith(", " + end) for name, end in zip(names[1:], suffixes))
    net = load_network(str(conditioned_run))
    for row, level in ((rows[1], lambda x: 25 / 255), (rows[3], estimate_sigma)):
        expected = evaluate_images([Recorder("net", lambda x: denoise_image(net, x[0], sigma=level(x[0]))[None])],
                                   gray_images(), [25 / 255], seed=0)
        assert row["psnr"] == pytest.approx(expected[1].psnr, abs=1e-4), row["method"]
    assert rows[1]["psnr"] != rows[3]["psnr"]


@pytest.mark.parametrize("args, message", [
    (["--images", "missing-folder", "--baselines", "TV"], "missing-folder does not exist"),
    (["--images", "IMAGES", "--baselines", "TV", "--clip"], "--images scores every image of a folder with unclipped"),
    (["--images", "IMAGES", "--baselines", "TV", "--dataset", "mnist"], "--dataset"),
    (["--images", "IMAGES", "--baselines"], "give at least one checkpoint or baseline"),
    (["--images", "IMAGES", "--std", "0.1", "--sigma255", "25"], "not allowed with argument"),
    (["--images", "IMAGES", "--sigma255", "300", "--baselines", "TV"], "--sigma255 values must lie in [0, 255]"),
])
def test_bad_image_evaluations_stop_with_a_clear_message(args, message, tmp_path, capsys):
    write_pngs(tmp_path / "set")
    args = [str(tmp_path / "set") if a == "IMAGES" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", *args, "-o", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_table_labels_sigmas_on_the_255_scale_and_keeps_slow_speeds_readable():
    rows = [Row("noisy input", 25 / 255, 20.3, 0.36, None), Row("BM3D", 25 / 255, 29.98, 0.85, 0.039),
            Row("net", 25 / 255, 30.1, 0.86, 1234.5)]
    table = markdown_table(rows, scale=255)
    assert "| method | sigma 25: PSNR / SSIM | images/s |" in table
    assert "| BM3D | 29.98 / 0.850 | 0.039 |" in table and "| net | 30.10 / 0.860 | 1,234 |" in table


def colour_images():
    """``gray_images`` in colour: the three channels of each picture differ (a ramp, its mirror, a constant)."""
    return [torch.cat([g, g.flip(-1), torch.full_like(g, 0.5)]) for g in gray_images()]


def write_colour_pngs(folder: Path) -> None:
    folder.mkdir()
    for i, image in enumerate(colour_images()):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:02d}.png")


def test_colour_images_get_noise_per_channel_and_psnr_over_all_three():
    images = colour_images()
    keep = Recorder("noisy", lambda noisy: noisy)
    # denoises the first channel perfectly, leaves the other two noisy
    first_clean = Recorder("first channel", lambda noisy: torch.cat([clean_of[noisy.shape[-1]], noisy[:, 1:]], 1))
    clean_of = {image.shape[-1]: image[None, :1] for image in images}
    rows = evaluate_images([keep, first_clean], images, [25 / 255], seed=0)
    noise = [x[0] - c for (_, x), c in zip(keep.seen, images)]
    assert all(n.shape[0] == 3 for n in noise)
    for n in noise:  # independent noise in each channel
        assert not torch.equal(n[0], n[1]) and abs(torch.corrcoef(n.flatten(1))[0, 1]) < 0.1
    expected = []
    for image, (_, noisy) in zip(images, first_clean.seen):
        out = torch.cat([image[:1], noisy[0, 1:].clamp(0, 1).mul(255).round().div(255)])
        expected.append(10 * torch.log10(1 / (out - image).pow(2).mean()))  # over all three channels
    assert rows[2].psnr == pytest.approx(float(torch.stack(expected).mean()), abs=1e-3)


def test_the_command_scores_colour_images_in_colour(tmp_path, capsys):
    write_colour_pngs(tmp_path / "set")
    assert main(["evaluate", "--images", str(tmp_path / "set"), "--channels", "3", "--sigma255", "25",
                 "--baselines", "TV", "-o", str(tmp_path / "r")]) == 0
    assert "3 full-size colour images" in capsys.readouterr().out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["settings"]["channels"] == 3
    gray = evaluate_images([Recorder("noisy")], gray_images(), [25 / 255], seed=0)[0]
    noisy_row = result["results"][0]
    assert noisy_row["method"] == "noisy input" and noisy_row["psnr"] == pytest.approx(gray.psnr, abs=0.3)


def test_shipped_models_of_one_network_are_told_apart_by_their_names(tmp_path, capsys):
    write_colour_pngs(tmp_path / "set")
    assert main(["evaluate", "builtin:color", "builtin:gray", "--images", str(tmp_path / "set"), "--channels", "3",
                 "--sigma255", "25", "-o", str(tmp_path / "r")]) == 0
    methods = [row["method"] for row in json.loads((tmp_path / "r.json").read_text())["results"]]
    for name in ("builtin:color", "builtin:gray"):
        assert sum(f"[{name}], " in method for method in methods) == 2, methods  # told the true and estimated level


def test_bm3d_runs_as_cbm3d_on_colour_images():
    pytest.importorskip("bm3d")
    baseline = BASELINES["BM3D"]
    assert baseline.name_for(3) == "CBM3D" and baseline.name_for(1) == "BM3D"
    image = colour_images()[0][None]
    noisy = image + 25 / 255 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    colour = baseline.denoise(noisy, 25 / 255, baseline.untuned)
    per_channel = torch.cat([baseline.denoise(noisy[:, c : c + 1], 25 / 255, baseline.untuned) for c in range(3)], 1)
    assert colour.shape == noisy.shape
    assert not torch.allclose(colour, per_channel, atol=1e-3)  # one joint denoising, not three gray ones
    assert (colour - image).pow(2).mean() < 0.5 * (noisy - image).pow(2).mean()


def test_channels_is_refused_outside_images(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "--channels", "3", "--dataset", "mnist", "-o", str(tmp_path / "r")])
    assert stop.value.code == 2 and "--channels applies to --images" in capsys.readouterr().err
