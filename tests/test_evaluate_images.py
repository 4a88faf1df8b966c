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
from dae.inference import denoise_image, load_network


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
    assert "3 full-size images" in out and "sigma 15: PSNR / SSIM" in out and "sigma 50: PSNR / SSIM" in out
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
