"""A DRUNet-style U-Net (Zhang et al. 2021, "Plug-and-Play Image Restoration with Deep Denoiser Prior")."""

from __future__ import annotations

from torch import Tensor, nn

from dae.nets.checks import check_sizes
from dae.nets.noise_map import append_noise_map
from dae.nets.padding import pad_to_multiple


class ResBlock(nn.Module):
    """``x + conv(relu(conv(x)))``: two 3x3 convolutions without biases, added back to their input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class DRUNet(nn.Module):
    """A U-Net of residual blocks: ``blocks`` of them at every scale, 2x2 strided convolutions down, 2x2
    transposed convolutions up, skips added rather than concatenated, and no biases anywhere.

    The channels double at each of the ``depth`` scales below full resolution, starting at ``width``. Images of
    any size work (padded to a multiple of ``2**depth``, the output cropped back). With ``residual`` the network
    predicts the noise and returns ``noisy - noise``; outputs are not clipped.

    With ``noise_map`` the network is noise-conditioned, as DRUNet is: it is called as ``net(noisy, sigma)`` and
    takes the noise level (``append_noise_map``) as one more input channel.
    """

    def __init__(self, in_channels: int = 1, width: int = 32, depth: int = 3, blocks: int = 2,
                 residual: bool = True, noise_map: bool = False) -> None:
        super().__init__()
        check_sizes(in_channels, width=width, depth=depth, blocks=blocks)
        self.in_channels = in_channels
        self.depth = depth
        self.residual = residual
        self.noise_map = noise_map
        channels = [width * 2**level for level in range(depth + 1)]
        self.head = nn.Conv2d(in_channels + noise_map, width, 3, padding=1, bias=False)
        self.down = nn.ModuleList(
            nn.Sequential(*(ResBlock(channels[i]) for _ in range(blocks)),
                          nn.Conv2d(channels[i], channels[i + 1], 2, stride=2, bias=False))
            for i in range(depth)
        )
        self.body = nn.Sequential(*(ResBlock(channels[depth]) for _ in range(blocks)))
        self.up = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2, bias=False),
                          *(ResBlock(channels[i]) for _ in range(blocks)))
            for i in reversed(range(depth))
        )
        self.tail = nn.Conv2d(width, in_channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor, sigma: Tensor | float | None = None) -> Tensor:
        height, width = x.shape[-2:]
        inputs = append_noise_map(x, sigma) if self.noise_map else x
        h = self.head(pad_to_multiple(inputs, 2**self.depth))
        skips = [h]
        for down in self.down:
            h = down(h)
            skips.append(h)
        h = self.body(h)
        for up in self.up:  # each scale's encoder output is added to what comes up to it
            h = up(h + skips.pop())
        out = self.tail(h + skips.pop())[..., :height, :width]
        return x - out if self.residual else out
