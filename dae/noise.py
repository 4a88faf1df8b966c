"""Noise models: callables ``noise(clean, generator=None) -> noisy`` on the clean batch's device.

Training passes no generator (fresh noise from the global RNG every step); validation and test pass a
seeded ``torch.Generator`` so that the same images get the same noise in every run.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GaussianNoise(nn.Module):
    """Additive Gaussian noise: ``clean + std * randn``, optionally clipped to [0, 1].

    The seed uses ``std=0.5`` without clipping.
    """

    def __init__(self, std: float = 0.5, clip: bool = False) -> None:
        super().__init__()
        if not std >= 0:  # also rejects NaN
            raise ValueError(f"GaussianNoise: std must be a number >= 0, got {std}")
        self.std = float(std)
        self.clip = clip

    def forward(self, clean: Tensor, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
        noisy = clean + self.std * noise
        return noisy.clamp(0.0, 1.0) if self.clip else noisy

    def extra_repr(self) -> str:
        return f"std={self.std}, clip={self.clip}"
