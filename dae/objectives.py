"""Training objectives: what is minimised, from clean images (supervised) or from noisy observations alone.

An objective is called as ``objective(net, views, generator) -> (loss, output)``: ``views`` are the batch's noisy
observations (B, C, H, W) (two for ``Noise2Noise``), followed by the clean batch for ``Supervised`` only, the one
objective that may see clean images; ``output`` is the network output the loss compares (for the ``psnr`` loss
of supervised training). ``generator`` seeds whatever the objective draws (masks, sub-sampling, recorruption),
so that training replays exactly when resumed and validation sees the same draws every epoch.

``denoise(net, noisy, generator)`` is how validation and test denoise (``net(noisy)`` but for ``R2R``'s averaged
passes); ``dae denoise``, ``dae evaluate`` and export use the network alone.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dae.noise import GaussianNoise

# Neighbor2Neighbor's ordered pairs of side- or top-adjacent pixels in a 2x2 cell, whose pixels are numbered
# 0 1 / 2 3 (row by row), as in Huang et al.'s code.
NEIGHBOUR_PAIRS = ((0, 1), (0, 2), (1, 3), (2, 3), (1, 0), (2, 0), (3, 1), (3, 2))


class Objective(nn.Module):
    """A training objective. Subclasses set ``observations`` (noisy observations of each image the loss needs)
    and ``supervised`` (whether it needs the clean images)."""

    observations: int = 1
    supervised: bool = False

    def forward(self, net: nn.Module, views: Sequence[Tensor], generator: torch.Generator) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def denoise(self, net: nn.Module, noisy: Tensor, generator: torch.Generator) -> Tensor:
        """The denoised batch that validation and test score."""
        return net(noisy)

    def check(self, net: nn.Module, image_size: int | None = None, noise: nn.Module | None = None) -> None:
        """Raise ``ValueError`` when this objective cannot train ``net`` on square images of side ``image_size``
        whose noise ``noise`` made (None: unknown, the data's own)."""


def _randn_like(x: Tensor, generator: torch.Generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class Supervised(Objective):
    """Clean targets: ``loss = mean (f(y) - x)^2`` for a noisy ``y`` of the clean image ``x``."""

    supervised = True

    def forward(self, net: nn.Module, views: Sequence[Tensor], generator: torch.Generator) -> tuple[Tensor, Tensor]:
        noisy, clean = views
        denoised = net(noisy)
        return F.mse_loss(denoised, clean), denoised


class Noise2Noise(Objective):
    """Noise2Noise (Lehtinen et al. 2018): two independent noisy observations ``y1``, ``y2`` of the same image,
    ``loss = mean (f(y1) - y2)^2``; for zero-mean noise its minimiser is the supervised one."""

    observations = 2

    def forward(self, net: nn.Module, views: Sequence[Tensor], generator: torch.Generator) -> tuple[Tensor, Tensor]:
        first, second = views
        output = net(first)
        return F.mse_loss(output, second), output


class Noise2Self(Objective):
    """Noise2Self (Batson & Royer 2019), blind-spot masking: ``loss = sum_J (f(y_J')_J - y_J)^2 / |J|``, where
    ``J`` is a grid of one pixel in every ``grid x grid`` block (a random phase per image) and ``y_J'`` is ``y``
    with each pixel of ``J`` replaced by the mean of its 8 neighbours, so the network never sees the pixels it is
    scored on. For noise independent between pixels the minimiser is the clean image's J-invariant estimate.
    The network must not be residual: its identity path would pass each pixel's noise through at inference,
    where no pixel is hidden.
    """

    def __init__(self, grid: int = 4) -> None:
        super().__init__()
        if grid < 2:
            raise ValueError(f"Noise2Self: grid must be >= 2 (a blind spot needs unmasked neighbours), got {grid}")
        self.grid = grid

    def check(self, net: nn.Module, image_size: int | None = None, noise: nn.Module | None = None) -> None:
        if getattr(net, "residual", False):
            raise ValueError(
                f"Noise2Self hides each scored pixel from the network, but a residual {type(net).__name__} adds its "
                "input back, so at inference every pixel's noise passes through: set "
                "model.net.init_args.residual to false"
            )

    def mask(self, y: Tensor, generator: torch.Generator) -> Tensor:
        """A bool mask (B, 1, H, W): the pixels at (phase_row + grid*i, phase_col + grid*j), phases per image."""
        batch, _, height, width = y.shape
        phase = torch.randint(self.grid, (2, batch, 1, 1, 1), generator=generator, device=y.device)
        rows = torch.arange(height, device=y.device).view(1, 1, height, 1) % self.grid
        cols = torch.arange(width, device=y.device).view(1, 1, 1, width) % self.grid
        return (rows == phase[0]) & (cols == phase[1])

    @staticmethod
    def neighbour_mean(y: Tensor) -> Tensor:
        """Each pixel replaced by the mean of its 8 neighbours (reflected at the borders, never itself)."""
        channels = y.shape[1]
        kernel = torch.ones(3, 3, device=y.device, dtype=y.dtype)
        kernel[1, 1] = 0
        kernel = (kernel / 8).expand(channels, 1, 3, 3)
        return F.conv2d(F.pad(y, (1, 1, 1, 1), mode="reflect"), kernel, groups=channels)

    def forward(self, net: nn.Module, views: Sequence[Tensor], generator: torch.Generator) -> tuple[Tensor, Tensor]:
        (y,) = views
        if min(y.shape[-2:]) < 2:
            raise ValueError(f"Noise2Self needs images of at least 2x2 pixels, got {tuple(y.shape[-2:])}")
        mask = self.mask(y, generator)
        output = net(torch.where(mask, self.neighbour_mean(y), y))
        weight = mask.to(output.dtype)
        loss = ((output.float() - y).pow(2) * weight).sum() / (weight.sum() * y.shape[1])
        return loss, output

    def extra_repr(self) -> str:
        return f"grid={self.grid}"


def neighbour_subsample(y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Neighbor2Neighbor's sub-sampler: from every 2x2 cell of ``y`` (B, C, H, W) two adjacent pixels, a random
    pair per cell and image (shared by the channels). Returns the two (B, C, H/2, W/2) sub-images and the pair
    indices (B, 1, H/2, W/2, 2) into the cell's pixels 0 1 / 2 3, which ``subsample_like`` applies to another
    batch."""
    batch, _, height, width = y.shape
    if height % 2 or width % 2:
        raise ValueError(
            f"Neighbor2Neighbor sub-samples 2x2 cells, so image sides must be even, got {height}x{width}: "
            "use an even data.patch_size"
        )
    pairs = torch.tensor(NEIGHBOUR_PAIRS, device=y.device)
    choice = torch.randint(len(NEIGHBOUR_PAIRS), (batch, 1, height // 2, width // 2), generator=generator,
                           device=y.device)
    index = pairs[choice]  # (B, 1, H/2, W/2, 2)
    first, second = subsample_like(y, index)
    return first, second, index


def subsample_like(y: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """The two sub-images of ``y`` that ``index`` (from ``neighbour_subsample``) picks."""
    batch, channels, height, width = y.shape
    cells = y.reshape(batch, channels, height // 2, 2, width // 2, 2).permute(0, 1, 2, 4, 3, 5)
    cells = cells.reshape(batch, channels, height // 2, width // 2, 4)
    picked = torch.gather(cells, 4, index.expand(batch, channels, -1, -1, 2))
    return picked[..., 0], picked[..., 1]


class Neighbor2Neighbor(Objective):
    """Neighbor2Neighbor (Huang et al. 2021): sub-images ``g1(y)``, ``g2(y)`` of adjacent pixels of every 2x2 cell,
    ``loss = mean (f(g1(y)) - g2(y))^2 + gamma * mean (f(g1(y)) - g2(y) - (g1(f(y)) - g2(f(y))))^2``, with
    ``f(y)`` taken without gradient. The network sees half-size images, so it must be fully convolutional.
    """

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        if not gamma >= 0:
            raise ValueError(f"Neighbor2Neighbor: gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def check(self, net: nn.Module, image_size: int | None = None, noise: nn.Module | None = None) -> None:
        size = getattr(net, "input_size", None)
        if size is not None:
            raise ValueError(
                f"Neighbor2Neighbor feeds the network half-size sub-images, but {type(net).__name__} takes only "
                f"{size[0]}x{size[1]} images: use a fully convolutional network (dae.nets.UNet or dae.nets.DnCNN)"
            )
        if image_size is not None and image_size % 2:
            raise ValueError(
                f"Neighbor2Neighbor sub-samples 2x2 cells, so image sides must be even, got patch_size "
                f"{image_size}: set data.patch_size to {image_size + 1}"
            )

    def forward(self, net: nn.Module, views: Sequence[Tensor], generator: torch.Generator) -> tuple[Tensor, Tensor]:
        (y,) = views
        first, second, index = neighbour_subsample(y, generator)
        output = net(first)
        with torch.no_grad():
            full_first, full_second = subsample_like(net(y), index)
        residual = output - second
        loss = F.mse_loss(output, second) + self.gamma * F.mse_loss(residual, full_first - full_second)
        return loss, output

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


class R2R(Objective):
    """Recorrupted-to-Recorrupted (Pang et al. 2021) for Gaussian noise of a known std ``sigma``: with
    ``z ~ N(0, I)``, ``y1 = y + alpha*sigma*z`` and ``y2 = y - sigma/alpha*z`` have independent noises, and
    ``loss = mean (f(y1) - y2)^2``.

    Validation and test average the network over ``eval_passes`` recorrupted copies ``y + alpha*sigma*z``, as the
    paper does; 0 feeds ``y`` itself, as ``dae denoise`` does.
    """

    def __init__(self, sigma: float, alpha: float = 0.5, eval_passes: int = 8) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"R2R: sigma (the noise std) must be > 0, got {sigma}")
        if not alpha > 0:
            raise ValueError(f"R2R: alpha must be > 0, got {alpha}")
        if eval_passes < 0:
            raise ValueError(f"R2R: eval_passes must be >= 0, got {eval_passes}")
        self.sigma = float(sigma)
        self.alpha = float(alpha)
        self.eval_passes = eval_passes

    def check(self, net: nn.Module, image_size: int | None = None, noise: nn.Module | None = None) -> None:
        if isinstance(noise, GaussianNoise) and isinstance(noise.std, float) and noise.std != self.sigma:
            raise ValueError(f"R2R: sigma {self.sigma} is not the std {noise.std} of model.noise, which makes the "
                             f"noisy images: set model.objective.init_args.sigma to {noise.std}")

    def recorrupt(self, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The pair ``(y + alpha*sigma*z, y - sigma/alpha*z)`` for one draw of ``z``."""
        z = _randn_like(y, generator)
        return y + self.alpha * self.sigma * z, y - self.sigma / self.alpha * z

    def forward(self, net: nn.Module, views: Sequence[Tensor], generator: torch.Generator) -> tuple[Tensor, Tensor]:
        (y,) = views
        first, second = self.recorrupt(y, generator)
        output = net(first)
        return F.mse_loss(output, second), output

    def denoise(self, net: nn.Module, noisy: Tensor, generator: torch.Generator) -> Tensor:
        if self.eval_passes == 0:
            return net(noisy)
        passes = [net(noisy + self.alpha * self.sigma * _randn_like(noisy, generator)) for _ in range(self.eval_passes)]
        return torch.stack(passes).mean(0)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, alpha={self.alpha}, eval_passes={self.eval_passes}"
