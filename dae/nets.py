"""The denoising networks: plain ``nn.Module`` s that map a noisy image batch to a clean one.

``ConvAutoencoder`` is the baseline (28x28 only); ``UNet`` and ``DnCNN`` are fully convolutional.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_channels(in_channels: int, **sizes: int) -> None:
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


class ConvAutoencoder(nn.Module):
    """The baseline convolutional autoencoder for 28x28 images (210,369 parameters at ``in_channels=1``).

    The encoder squeezes a 28x28 image through two stride-2 convolutions to 7x7 and a 7x7 convolution to a
    64-number code; the decoder mirrors it and ends in a sigmoid, so outputs lie in [0, 1].
    """

    # Nets that take one fixed size say so here; ``dae.inference`` then feeds larger images as tiles.
    input_size = (28, 28)

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        _check_channels(in_channels)
        self.in_channels = in_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 7),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 7),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(16, in_channels, 3, stride=2, padding=1, output_padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def _conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """Two 3x3 convolutions with ReLU, keeping the spatial size."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A small U-Net: full-resolution detail through skip connections, a large receptive field through pooling.

    Each of the ``depth`` levels halves the resolution (2x2 max-pool) and doubles the channels, starting
    at ``width``; the decoder upsamples with 2x2 transposed convolutions and concatenates the encoder's
    features of the same level. Images of any size work: the input is padded (reflecting) to a multiple
    of ``2**depth`` and the output cropped back. With ``residual`` the network predicts the noise and
    returns ``noisy - noise``; outputs are not clipped, so the MSE gradient never vanishes.
    """

    def __init__(self, in_channels: int = 1, width: int = 32, depth: int = 2, residual: bool = True) -> None:
        super().__init__()
        _check_channels(in_channels, width=width, depth=depth)
        self.in_channels = in_channels
        self.depth = depth
        self.residual = residual
        channels = [width * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList(
            [_conv_block(in_channels, channels[0])]
            + [_conv_block(channels[i], channels[i + 1]) for i in range(depth)]
        )
        self.pool = nn.MaxPool2d(2)
        self.upsample = nn.ModuleList(
            [nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2) for i in reversed(range(depth))]
        )
        self.up = nn.ModuleList([_conv_block(2 * channels[i], channels[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(channels[0], in_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = -height % multiple, -width % multiple
        # Reflection needs the pad to be smaller than the side; replicate covers tiny images.
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        h = F.pad(x, (0, pad_w, 0, pad_h), mode=mode) if pad_h or pad_w else x
        skips = []
        for level, block in enumerate(self.down):
            h = block(h if level == 0 else self.pool(h))
            skips.append(h)
        skips.pop()  # the bottleneck's output is h itself
        for upsample, block in zip(self.upsample, self.up):
            h = block(torch.cat([skips.pop(), upsample(h)], dim=1))
        out = self.head(h)[..., :height, :width]
        return x - out if self.residual else out


class DnCNN(nn.Module):
    """A DnCNN-style denoiser (Zhang et al. 2017): ``depth`` 3x3 convolutions at full resolution.

    Conv+ReLU, then ``depth - 2`` Conv+BatchNorm+ReLU layers of ``width`` channels, then a Conv back to the
    image channels. With ``residual`` (the DnCNN way) it predicts the noise and returns ``noisy - noise``.
    Its receptive field is ``2 * depth + 1`` pixels wide; any image size works.
    """

    def __init__(
        self, in_channels: int = 1, depth: int = 8, width: int = 32, residual: bool = True, batch_norm: bool = True
    ) -> None:
        super().__init__()
        _check_channels(in_channels, width=width)
        if depth < 2:
            raise ValueError(f"depth must be >= 2 (first and last convolution), got {depth}")
        self.in_channels = in_channels
        self.residual = residual
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers.append(nn.Conv2d(width, width, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(width, in_channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(x)
        return x - out if self.residual else out
