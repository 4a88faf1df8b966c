import pytest
import torch

from dae.noise import GaussianNoise


def test_gaussian_noise_statistics_match_std():
    torch.manual_seed(0)
    clean = torch.full((64, 1, 64, 64), 0.5)
    noisy = GaussianNoise(std=0.5)(clean)
    diff = noisy - clean
    assert abs(diff.mean().item()) < 0.005
    assert diff.std().item() == pytest.approx(0.5, rel=0.01)
    assert noisy.min() < 0 and noisy.max() > 1  # the seed does not clip


def test_gaussian_noise_clip_keeps_unit_range():
    noisy = GaussianNoise(std=0.5, clip=True)(torch.rand(8, 1, 28, 28))
    assert noisy.min() >= 0 and noisy.max() <= 1


def test_seeded_generator_repeats_noise_and_global_rng_does_not():
    noise, clean = GaussianNoise(0.3), torch.zeros(4, 1, 28, 28)
    a = noise(clean, generator=torch.Generator().manual_seed(7))
    b = noise(clean, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(noise(clean), noise(clean))


@pytest.mark.parametrize("std", [-0.1, float("nan")])
def test_gaussian_noise_rejects_bad_std(std):
    with pytest.raises(ValueError, match="std must be"):
        GaussianNoise(std=std)
