"""A small U-Net, fully convolutional."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dae.nets.checks import check_sizes
from dae.nets.noise_map import append_noise_map
from dae.nets.padding import pad_to_multiple


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

    With ``noise_map`` the network is noise-conditioned: it is called as ``net(noisy, sigma)`` and takes the
    noise level (``append_noise_map``) as one more input channel.
    """

    def __init__(self, in_channels: int = 1, width: int = 32, depth: int = 2, residual: bool = True,
                 noise_map: bool = False) -> None:
        super().__init__()
        check_sizes(in_channels, width=width, depth=depth)
        self.in_channels = in_channels
        self.depth = depth
        self.residual = residual
        self.noise_map = noise_map
        channels = [width * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList(
            [_conv_block(in_channels + noise_map, channels[0])]
            + [_conv_block(channels[i], channels[i + 1]) for i in range(depth)]
        )
        self.pool = nn.MaxPool2d(2)
        self.upsample = nn.ModuleList(
            [nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2) for i in reversed(range(depth))]
        )
        self.up = nn.ModuleList([_conv_block(2 * channels[i], channels[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(channels[0], in_channels, 1)

    def forward(self, x: Tensor, sigma: Tensor | float | None = None) -> Tensor:
        height, width = x.shape[-2:]
        h = pad_to_multiple(append_noise_map(x, sigma) if self.noise_map else x, 2**self.depth)
        skips = []
        for level, block in enumerate(self.down):
            h = block(h if level == 0 else self.pool(h))
            skips.append(h)
        skips.pop()  # the bottleneck's output is h itself
        for upsample, block in zip(self.upsample, self.up):
            h = block(torch.cat([skips.pop(), upsample(h)], dim=1))
        out = self.head(h)[..., :height, :width]
        return x - out if self.residual else out
