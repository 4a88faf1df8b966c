"""The noise-level estimator: the std of white Gaussian noise, from the noisy image alone."""

import math

import pytest
import torch

from dae.inference.noise_level import estimate_sigma


def smooth_image(height: int = 256, width: int = 256, channels: int = 1) -> torch.Tensor:
    """A picture without fine detail: gradients and slow waves, in [0.1, 0.9]."""
    y = torch.linspace(0, 1, height).view(-1, 1)
    x = torch.linspace(0, 1, width).view(1, -1)
    image = 0.5 + 0.2 * torch.sin(2 * math.pi * (x + y)) + 0.2 * (x - y) * torch.cos(3 * math.pi * y)
    return image.expand(channels, height, width).clone()


@pytest.mark.parametrize("sigma255", [5, 15, 25, 50])
@pytest.mark.parametrize("channels", [1, 3])
def test_estimates_the_std_of_known_noise_within_three_percent(sigma255, channels):
    generator = torch.Generator().manual_seed(sigma255)
    clean = smooth_image(channels=channels)
    noisy = clean + sigma255 / 255 * torch.randn(clean.shape, generator=generator)
    assert estimate_sigma(noisy) * 255 == pytest.approx(sigma255, rel=0.03)


def test_a_clean_smooth_image_has_almost_no_noise():
    assert estimate_sigma(smooth_image()) * 255 < 0.5


def test_the_estimate_follows_the_images_scale():
    noisy = smooth_image() + 0.1 * torch.randn(1, 256, 256, generator=torch.Generator().manual_seed(0))
    assert estimate_sigma(255 * noisy) == pytest.approx(255 * estimate_sigma(noisy), rel=1e-6)


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (64, 64), (1, 3, 64)])
def test_images_of_the_wrong_shape_are_refused(shape):
    with pytest.raises(ValueError, match=r"\(C, H, W\) image of at least 4x4"):
        estimate_sigma(torch.rand(shape))
