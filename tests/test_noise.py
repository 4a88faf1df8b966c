import pytest
import torch

from dae.noise import ComposeNoise, GaussianNoise, PixelMaskNoise, PoissonNoise, SaltAndPepperNoise, SpeckleNoise


def test_gaussian_noise_statistics_match_std():
    torch.manual_seed(0)
    clean = torch.full((64, 1, 64, 64), 0.5)
    noisy = GaussianNoise(std=0.5)(clean)
    diff = noisy - clean
    assert abs(diff.mean().item()) < 0.005
    assert diff.std().item() == pytest.approx(0.5, rel=0.01)
    assert noisy.min() < 0 and noisy.max() > 1  # the baseline does not clip


def test_gaussian_noise_clip_keeps_unit_range():
    noisy = GaussianNoise(std=0.5, clip=True)(torch.rand(8, 1, 28, 28))
    assert noisy.min() >= 0 and noisy.max() <= 1


def test_seeded_generator_repeats_noise_and_global_rng_does_not():
    noise, clean = GaussianNoise(0.3), torch.zeros(4, 1, 28, 28)
    a = noise(clean, generator=torch.Generator().manual_seed(7))
    b = noise(clean, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(noise(clean), noise(clean))


@pytest.mark.parametrize("std", [-0.1, float("nan"), float("inf")])
def test_gaussian_noise_rejects_bad_std(std):
    with pytest.raises(ValueError, match="std must be"):
        GaussianNoise(std=std)


def test_gaussian_range_draws_one_std_per_image_uniformly():
    torch.manual_seed(0)
    clean = torch.full((2000, 1, 32, 32), 0.5)
    noise = GaussianNoise(std=(0.1, 0.4))
    diff = noise(clean) - clean
    per_image = diff.flatten(1).std(dim=1)
    # 1024 values per image estimate its std to about 2%; the stds themselves spread over the whole range.
    assert per_image.min() > 0.1 * 0.9 and per_image.max() < 0.4 * 1.1
    assert per_image.min() < 0.12 and per_image.max() > 0.38
    assert per_image.mean().item() == pytest.approx(0.25, abs=0.01)  # uniform on [0.1, 0.4]
    assert per_image.var().item() == pytest.approx(0.3**2 / 12, rel=0.1)
    assert abs(diff.mean().item()) < 0.002


def test_gaussian_draw_reports_the_std_each_image_got():
    clean = torch.full((300, 1, 32, 32), 0.5)
    noisy, sigma = GaussianNoise(std=(0.0, 0.3)).draw(clean, generator=torch.Generator().manual_seed(0))
    assert sigma.shape == (300, 1, 1, 1)
    per_image = (noisy - clean).flatten(1).std(dim=1)
    # 1024 values estimate an image's std to about 2% (plus a little for the near-zero ones)
    assert torch.allclose(per_image, sigma.flatten(), rtol=0.1, atol=0.003)
    same = GaussianNoise(std=(0.0, 0.3))(clean, generator=torch.Generator().manual_seed(0))
    assert torch.equal(same, noisy)  # forward draws exactly what draw does
    fixed_noisy, fixed = GaussianNoise(std=0.2).draw(clean)
    assert fixed == 0.2 and (fixed_noisy - clean).std().item() == pytest.approx(0.2, rel=0.01)


def test_gaussian_range_is_repeatable_with_a_generator_and_can_clip():
    noise, clean = GaussianNoise(std=[0.0, 0.5], clip=True), torch.rand(16, 3, 20, 20)
    a = noise(clean, generator=torch.Generator().manual_seed(3))
    b = noise(clean, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, noise(clean, generator=torch.Generator().manual_seed(4)))
    assert a.min() >= 0 and a.max() <= 1 and a.dtype == clean.dtype
    assert noise.std == (0.0, 0.5)


def test_gaussian_range_of_equal_ends_is_a_fixed_std():
    torch.manual_seed(1)
    clean = torch.zeros(200, 1, 28, 28)
    per_image = GaussianNoise(std=(0.2, 0.2))(clean).flatten(1).std(dim=1)
    assert per_image.std().item() < 0.01 and per_image.mean().item() == pytest.approx(0.2, rel=0.01)


@pytest.mark.parametrize("std", [(0.5, 0.1), (-0.1, 0.2), (0.1,), (0.1, 0.2, 0.3), (0.0, float("inf"))])
def test_gaussian_noise_rejects_bad_ranges(std):
    with pytest.raises(ValueError, match="GaussianNoise: std"):
        GaussianNoise(std=std)


# The other noise models: statistics on large tensors with a fixed seed.

def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_salt_and_pepper_hits_the_given_fraction_with_the_given_ratio():
    clean = torch.full((32, 3, 64, 64), 0.5)
    noisy = SaltAndPepperNoise(amount=0.2, salt_ratio=0.3)(clean, generator=seeded())
    salt, pepper, kept = (noisy == 1).float().mean(), (noisy == 0).float().mean(), (noisy == 0.5).float().mean()
    assert salt.item() == pytest.approx(0.2 * 0.3, abs=0.002)
    assert pepper.item() == pytest.approx(0.2 * 0.7, abs=0.002)
    assert (salt + pepper + kept).item() == 1.0  # nothing else changes


@pytest.mark.parametrize("kwargs", [{"amount": -0.1}, {"amount": 1.5}, {"salt_ratio": 2.0}, {"amount": float("nan")}])
def test_salt_and_pepper_rejects_bad_fractions(kwargs):
    with pytest.raises(ValueError, match="SaltAndPepperNoise: (amount|salt_ratio) must be a fraction"):
        SaltAndPepperNoise(**kwargs)


def test_poisson_noise_is_unbiased_with_variance_value_over_peak():
    clean = torch.full((64, 1, 64, 64), 0.4)
    noisy = PoissonNoise(peak=20.0, clip=False)(clean, generator=seeded())
    assert noisy.mean().item() == pytest.approx(0.4, abs=0.002)
    assert noisy.var().item() == pytest.approx(0.4 / 20.0, rel=0.03)
    counts = noisy * 20.0
    assert (counts - counts.round()).abs().max() < 1e-4  # whole photon counts
    dark = PoissonNoise(peak=20.0)(torch.zeros(4, 1, 28, 28), generator=seeded())
    assert torch.equal(dark, torch.zeros_like(dark))  # no light, no shot noise


def test_poisson_noise_gets_weaker_with_more_photons_and_clips_at_one():
    clean = torch.full((16, 1, 64, 64), 0.8)
    errors = [(PoissonNoise(peak=p)(clean, generator=seeded()) - clean).abs().mean() for p in (5.0, 50.0, 500.0)]
    assert errors[0] > errors[1] > errors[2]
    clipped = PoissonNoise(peak=5.0)(clean, generator=seeded())
    assert clipped.max() == 1.0 and clipped.min() >= 0


def test_speckle_noise_is_multiplicative():
    clean = torch.cat([torch.full((32, 1, 64, 64), 0.2), torch.full((32, 1, 64, 64), 0.6)])
    noisy = SpeckleNoise(std=0.25, clip=False)(clean, generator=seeded())
    dark, bright = noisy[:32] - 0.2, noisy[32:] - 0.6
    assert abs(dark.mean().item()) < 0.002 and abs(bright.mean().item()) < 0.004
    assert dark.std().item() == pytest.approx(0.2 * 0.25, rel=0.02)
    assert bright.std().item() == pytest.approx(0.6 * 0.25, rel=0.02)
    black = SpeckleNoise(std=0.25)(torch.zeros(2, 1, 8, 8))
    assert torch.equal(black, torch.zeros_like(black))
    clipped = SpeckleNoise(std=1.0)(torch.full((8, 1, 32, 32), 0.9))
    assert clipped.min() == 0 and clipped.max() == 1


def test_pixel_mask_drops_the_given_fraction_of_pixels_in_all_channels():
    clean = torch.rand(32, 3, 64, 64) * 0.9 + 0.1  # no zeros of its own
    noisy = PixelMaskNoise(fraction=0.25)(clean, generator=seeded())
    dropped = noisy == 0
    assert dropped.float().mean().item() == pytest.approx(0.25, abs=0.003)
    assert torch.equal(dropped[:, :1].expand_as(dropped), dropped)  # a pixel is missing in every channel
    assert torch.equal(noisy[~dropped], clean[~dropped])
    filled = PixelMaskNoise(fraction=1.0, fill=0.5)(clean)
    assert torch.equal(filled, torch.full_like(clean, 0.5))


def test_compose_applies_noises_in_order_with_one_generator():
    clean = torch.full((32, 1, 64, 64), 0.5)
    compose = ComposeNoise([PixelMaskNoise(fraction=0.2), GaussianNoise(std=0.1)])
    noisy = compose(clean, generator=seeded())
    assert torch.equal(noisy, compose(clean, generator=seeded()))
    # The Gaussian came second, so the masked pixels are noisy zeros, not exact zeros.
    assert (noisy == 0).sum() == 0
    assert noisy.mean().item() == pytest.approx(0.8 * 0.5, abs=0.003)
    assert noisy.var().item() == pytest.approx(0.2 * 0.8 * 0.5**2 + 0.1**2, rel=0.03)
    with pytest.raises(ValueError, match="at least one"):
        ComposeNoise([])


@pytest.mark.parametrize(
    "noise",
    [GaussianNoise(std=(0.0, 0.3)), SaltAndPepperNoise(), PoissonNoise(), SpeckleNoise(), PixelMaskNoise(),
     ComposeNoise([PoissonNoise(), GaussianNoise(0.05)])],
    ids=lambda n: type(n).__name__,
)
def test_every_noise_model_keeps_shape_dtype_and_repeats_with_a_generator(noise):
    clean = torch.rand(4, 3, 17, 23)
    a, b = noise(clean, generator=seeded(5)), noise(clean, generator=seeded(5))
    assert a.shape == clean.shape and a.dtype == clean.dtype
    assert torch.equal(a, b) and not torch.equal(a, noise(clean, generator=seeded(6)))
    assert not torch.equal(noise(clean), noise(clean))  # training noise is fresh every call
