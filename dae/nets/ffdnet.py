"""An FFDNet-style network (Zhang et al. 2018, "FFDNet: Toward a Fast and Flexible Solution for CNN based Image
Denoising"): a plain stack of 3x3 convolutions at half resolution."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from dae.nets.checks import check_sizes
from dae.nets.dncnn import conv_stack
from dae.nets.noise_map import append_noise_map
from dae.nets.padding import pad_to_multiple


class FFDNet(nn.Module):
    """Pixel-unshuffle to half resolution (each 2x2 block becomes 4 channels), ``depth`` 3x3 convolutions of
    ``width`` channels there (Conv+ReLU, ``depth - 2`` Conv+BatchNorm+ReLU, Conv), pixel-shuffle back.

    Working on a quarter of the pixels makes each layer 4 times cheaper than at full resolution and doubles the
    receptive field (about ``4 * depth`` pixels wide). Images of any size work (odd sides padded, the output
    cropped back). With ``residual`` the network predicts the noise and returns ``noisy - noise``.

    With ``noise_map`` the network is noise-conditioned, as FFDNet is: it is called as ``net(noisy, sigma)`` and
    takes the noise level (``append_noise_map``) as one more input channel, so that one model can be told how
    strongly to denoise.
    """

    def __init__(self, in_channels: int = 1, depth: int = 15, width: int = 64, residual: bool = True,
                 batch_norm: bool = True, noise_map: bool = False) -> None:
        super().__init__()
        check_sizes(in_channels, width=width)
        self.in_channels = in_channels
        self.residual = residual
        self.noise_map = noise_map
        self.layers = conv_stack(4 * (in_channels + noise_map), depth, width, batch_norm, out_channels=4 * in_channels)

    def forward(self, x: Tensor, sigma: Tensor | float | None = None) -> Tensor:
        height, width = x.shape[-2:]
        inputs = append_noise_map(x, sigma) if self.noise_map else x
        half = F.pixel_unshuffle(pad_to_multiple(inputs, 2), 2)
        out = F.pixel_shuffle(self.layers(half), 2)[..., :height, :width]
        return x - out if self.residual else out
