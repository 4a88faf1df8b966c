import importlib.util

import pytest
import torch

from dae.baselines import BASELINES, available_baselines
from dae.commands.evaluate import BaselineMethod, noisy_copy, scores
from tests.idx import synthetic_images

needs_baselines = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("bm3d", "skimage", "pywt")),
    reason="the classical baselines are the optional extra dae[baselines]",
)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(synthetic_images(n, seed=seed)).float().div(255).unsqueeze(1)


@needs_baselines
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "BM3D" else n for n in BASELINES])
def test_each_tuned_baseline_removes_noise(name):
    clean_val, clean_test = _images(6, seed=3), _images(4, seed=4)
    method = BaselineMethod(BASELINES[name], clean_val, seed=1, clip=True)
    params = method.prepare(0.25)
    assert set(params.split()) == {f"{k}={v}" for k, v in method.params[0.25].items()}
    noisy = noisy_copy(clean_test, 0.25, seed=0, clip=True)
    denoised = method(noisy, 0.25)
    assert denoised.shape == noisy.shape and denoised.dtype == torch.float32
    # Wavelet shrinkage gains least on 28x28 images (few levels): about 1.5 dB here, TV and BM3D about 3.
    assert scores(denoised, clean_test)[0] > scores(noisy, clean_test)[0] + 1.0


@needs_baselines
def test_tuning_picks_the_grid_point_with_the_best_validation_psnr():
    clean_val = _images(6, seed=3)
    baseline = BASELINES["TV"]
    method = BaselineMethod(baseline, clean_val, seed=1, clip=True)
    method.prepare(0.5)
    noisy = noisy_copy(clean_val, 0.5, seed=1, clip=True)
    psnr = {tuple(p.items()): scores(baseline.denoise(noisy, 0.5, p), clean_val)[0] for p in baseline.grid}
    assert psnr[tuple(method.params[0.5].items())] == max(psnr.values())
    assert len(set(psnr.values())) > 1  # the grid matters, so the choice is a real one


def test_missing_packages_give_a_notice_not_an_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bm3d" else real(name, *a))
    found, notices = available_baselines(["BM3D", "TV"])
    assert [b.name for b in found] == ["TV"]
    assert len(notices) == 1 and "BM3D" in notices[0] and "pip install 'dae[baselines]'" in notices[0]


def test_unknown_baseline_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown baseline.*BM3D, NL-means, TV, wavelet"):
        available_baselines(["BM4D"])
