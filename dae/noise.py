"""Noise models: callables ``noise(clean, generator=None) -> noisy`` on the clean batch's device.

Clean batches are floats in [0, 1] of shape (B, C, H, W). The LightningModule always passes a seeded
``torch.Generator``: in training one per batch (fresh noise every batch, redrawn exactly by a resumed run), in
validation, test and prediction one per batch from a seed of their own, so that the same images get the same
noise in every run. Without a generator the global RNG is used.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _rand(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) numbers of ``shape`` on ``like``'s device and dtype."""
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)


def _randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal numbers of ``shape`` on ``like``'s device and dtype."""
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def _per_image(clean: Tensor) -> tuple[int, ...]:
    """Shape (B, 1, 1, ...) that broadcasts one value per image over the rest of the batch."""
    return (clean.shape[0],) + (1,) * (clean.ndim - 1)


def _check_std(cls: str, std: float) -> float:
    """``std`` as a finite float >= 0, or a ValueError naming the class."""
    if not (0 <= std and math.isfinite(std)):  # also rejects NaN
        raise ValueError(f"{cls}: std must be a number >= 0, got {std}")
    return float(std)


def _std_range(cls: str, std: float | tuple[float, float] | list[float]) -> tuple[float, float]:
    """``std`` as a (lo, hi) range; a single number is the range (std, std). Bad values raise ValueError."""
    if not isinstance(std, (tuple, list)):
        return _check_std(cls, std), _check_std(cls, std)
    if len(std) != 2 or std[0] > std[1]:
        raise ValueError(f"{cls}: std as a range must be two numbers [lo, hi] with lo <= hi, got {list(std)}")
    return _check_std(cls, std[0]), _check_std(cls, std[1])


class GaussianNoise(nn.Module):
    """Additive Gaussian noise: ``clean + std * randn``, optionally clipped to [0, 1].

    ``std`` is one number (every image gets that std; the baseline uses 0.5 without clipping) or a range
    ``[lo, hi]``: each image then gets its own std drawn uniformly from it, for blind denoisers that must
    work at any noise level.
    """

    def __init__(self, std: float | tuple[float, float] = 0.5, clip: bool = False) -> None:
        super().__init__()
        self.lo, self.hi = _std_range("GaussianNoise", std)
        self.std: float | tuple[float, float] = (self.lo, self.hi) if isinstance(std, (tuple, list)) else self.lo
        self.clip = clip

    def sigma(self, clean: Tensor, generator: torch.Generator | None = None) -> Tensor | float:
        """The std for each image: a float for a fixed std, else a (B, 1, 1, 1) tensor drawn from the range."""
        if isinstance(self.std, float):
            return self.std
        return self.lo + (self.hi - self.lo) * _rand(_per_image(clean), clean, generator)

    def draw(self, clean: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | float]:
        """The noisy batch and the std each image got (what a noise-conditioned network is told)."""
        sigma = self.sigma(clean, generator)
        noisy = clean + sigma * _randn(clean.shape, clean, generator)
        return (noisy.clamp(0.0, 1.0) if self.clip else noisy), sigma

    def forward(self, clean: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.draw(clean, generator)[0]

    def extra_repr(self) -> str:
        return f"std={self.std}, clip={self.clip}"


def _check_fraction(cls: str, name: str, value: float) -> float:
    """``value`` as a float in [0, 1], or a ValueError naming the class and argument."""
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{cls}: {name} must be a fraction in [0, 1], got {value}")
    return float(value)


class SaltAndPepperNoise(nn.Module):
    """Impulse noise: a fraction ``amount`` of the values is set to 1 (salt) or 0 (pepper).

    Each value (each channel of each pixel) is hit independently with probability ``amount``; a hit value
    becomes salt with probability ``salt_ratio``, else pepper.
    """

    def __init__(self, amount: float = 0.1, salt_ratio: float = 0.5) -> None:
        super().__init__()
        self.amount = _check_fraction("SaltAndPepperNoise", "amount", amount)
        self.salt_ratio = _check_fraction("SaltAndPepperNoise", "salt_ratio", salt_ratio)

    def forward(self, clean: Tensor, generator: torch.Generator | None = None) -> Tensor:
        # One uniform draw decides both: [0, amount*ratio) is salt, [amount*ratio, amount) is pepper.
        u = _rand(clean.shape, clean, generator)
        salt = self.amount * self.salt_ratio
        noisy = torch.where(u < salt, torch.ones_like(clean), clean)
        return torch.where((u >= salt) & (u < self.amount), torch.zeros_like(clean), noisy)

    def extra_repr(self) -> str:
        return f"amount={self.amount}, salt_ratio={self.salt_ratio}"


class PoissonNoise(nn.Module):
    """Shot noise of a photon-counting sensor: ``poisson(clean * peak) / peak``.

    ``peak`` is the photon count of a white pixel: the smaller it is, the noisier the image (a value ``x``
    gets variance ``x / peak``). Results lie in [0, inf); ``clip`` (default on) caps them at 1 like a
    saturating sensor.
    """

    def __init__(self, peak: float = 30.0, clip: bool = True) -> None:
        super().__init__()
        if not (peak > 0 and math.isfinite(peak)):
            raise ValueError(f"PoissonNoise: peak must be a finite number > 0, got {peak}")
        self.peak = float(peak)
        self.clip = clip

    def forward(self, clean: Tensor, generator: torch.Generator | None = None) -> Tensor:
        rate = (clean.clamp(min=0.0) * self.peak).float()  # torch.poisson needs float32/64 rates >= 0
        noisy = (torch.poisson(rate, generator=generator) / self.peak).to(clean.dtype)
        return noisy.clamp(max=1.0) if self.clip else noisy

    def extra_repr(self) -> str:
        return f"peak={self.peak}, clip={self.clip}"


class SpeckleNoise(nn.Module):
    """Multiplicative noise (radar, ultrasound): ``clean * (1 + std * randn)``.

    Dark regions stay clean and bright ones get noisier; ``clip`` (default on) keeps results in [0, 1].
    """

    def __init__(self, std: float = 0.3, clip: bool = True) -> None:
        super().__init__()
        self.std = _check_std("SpeckleNoise", std)
        self.clip = clip

    def forward(self, clean: Tensor, generator: torch.Generator | None = None) -> Tensor:
        noisy = clean * (1.0 + self.std * _randn(clean.shape, clean, generator))
        return noisy.clamp(0.0, 1.0) if self.clip else noisy

    def extra_repr(self) -> str:
        return f"std={self.std}, clip={self.clip}"


class PixelMaskNoise(nn.Module):
    """Missing pixels, for inpainting: a random ``fraction`` of the pixels is set to ``fill`` in every channel."""

    def __init__(self, fraction: float = 0.3, fill: float = 0.0) -> None:
        super().__init__()
        self.fraction = _check_fraction("PixelMaskNoise", "fraction", fraction)
        self.fill = _check_fraction("PixelMaskNoise", "fill", fill)

    def forward(self, clean: Tensor, generator: torch.Generator | None = None) -> Tensor:
        # One draw per pixel location (B, 1, H, W), shared by its channels: a missing pixel has no colour.
        mask = _rand((clean.shape[0], 1, *clean.shape[2:]), clean, generator) < self.fraction
        return clean.masked_fill(mask, self.fill)

    def extra_repr(self) -> str:
        return f"fraction={self.fraction}, fill={self.fill}"


class ComposeNoise(nn.Module):
    """Several noise models applied one after the other, in the order given (e.g. Poisson then Gaussian).

    The same generator is passed to each, so seeded evaluation noise stays repeatable.
    """

    def __init__(self, noises: list[nn.Module]) -> None:
        super().__init__()
        if not noises:
            raise ValueError("ComposeNoise: noises must name at least one noise model")
        self.noises = nn.ModuleList(noises)

    def forward(self, clean: Tensor, generator: torch.Generator | None = None) -> Tensor:
        noisy = clean
        for noise in self.noises:
            noisy = noise(noisy, generator=generator)
        return noisy
