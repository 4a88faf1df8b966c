"""The self-ensemble: 8 orientations, each turned back exactly, averaged."""

import pytest
import torch

from dae.inference.ensemble import ORIENTATIONS, orient, self_ensemble, unorient


def test_the_eight_orientations_are_distinct_and_each_is_undone():
    image = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    seen = set()
    for turns, flip in ORIENTATIONS:
        turned = orient(image, turns, flip)
        seen.add(tuple(turned.flatten().tolist()) + tuple(turned.shape))
        assert torch.equal(unorient(turned, turns, flip), image)
    assert len(ORIENTATIONS) == len(seen) == 8


@pytest.mark.parametrize("shape", [(1, 7, 7), (3, 5, 9), (2, 1, 4, 6)])
def test_the_ensemble_of_an_equivariant_network_returns_its_output(shape):
    images = torch.rand(shape)
    assert torch.allclose(self_ensemble(lambda x: x, images), images, rtol=1e-6, atol=0)
    assert torch.allclose(self_ensemble(lambda x: 2 * x + 1, images), 2 * images + 1)


def test_the_ensemble_averages_what_the_network_sees_in_every_orientation():
    image = torch.zeros(1, 4, 4)
    image[0, 0, 0] = 8.0  # one bright corner pixel

    def top_left_only(x):  # keeps the top-left pixel of whatever it is given: not equivariant
        out = torch.zeros_like(x)
        out[..., 0, 0] = x[..., 0, 0]
        return out

    # The corner pixel reaches the top-left in 2 of the 8 orientations (none and the transpose).
    assert self_ensemble(top_left_only, image)[0, 0, 0] == pytest.approx(8.0 * 2 / 8)


def test_denoise_image_with_ensemble_averages_the_orientations_through_tiles():
    from dae.inference.tiling import denoise_image
    from dae.nets import ConvAutoencoder, UNet

    torch.manual_seed(0)
    image = torch.rand(1, 40, 52)
    for net in (UNet(width=4, depth=2).eval(), ConvAutoencoder().eval()):  # whole image; fixed-size tiles
        expected = self_ensemble(lambda x: denoise_image(net, x[0])[None], image[None])[0]
        assert torch.allclose(denoise_image(net, image, ensemble=True), expected, atol=1e-6)
        assert not torch.allclose(denoise_image(net, image, ensemble=True), denoise_image(net, image), atol=1e-4)


@pytest.mark.slow
def test_dae_denoise_and_evaluate_take_ensemble(trained_run, tmp_path, capsys):
    import json

    import numpy as np

    from dae.commands import main
    from dae.data.images import read_image, write_image

    pictures = tmp_path / "pictures"
    for i, size in enumerate([(30, 41), (28, 28)]):
        write_image(pictures / f"{i}.png", np.random.default_rng(i).integers(0, 256, (*size, 1), dtype=np.uint8))
    assert main(["denoise", "--ckpt", str(trained_run), str(pictures), "-o", str(tmp_path / "plain")]) == 0
    assert main(["denoise", "--ckpt", str(trained_run), str(pictures), "-o", str(tmp_path / "ens"), "--ensemble"]) == 0
    assert "self-ensemble of 8 orientations" in capsys.readouterr().err
    plain, ens = (read_image(tmp_path / folder / "0.png") for folder in ("plain", "ens"))
    assert plain.shape == ens.shape == (30, 41, 1) and not np.array_equal(plain, ens)

    assert main(["evaluate", str(trained_run), "--images", str(pictures), "--sigma255", "25", "--baselines",
                 "--ensemble", "-o", str(tmp_path / "r")]) == 0
    methods = [row["method"] for row in json.loads((tmp_path / "r.json").read_text())["results"]]
    assert methods[0] == "noisy input" and len(methods) == 3
    assert methods[2] == methods[1] + ", self-ensemble x8"
    assert main(["evaluate", str(trained_run), "--std", "0.5", "--limit", "16", "--baselines", "--ensemble",
                 "-o", str(tmp_path / "split")]) == 0
    rows = json.loads((tmp_path / "split.json").read_text())["results"]
    assert [r["method"] for r in rows][2] == rows[1]["method"] + ", self-ensemble x8"
    assert rows[2]["psnr"] != rows[1]["psnr"]
