"""A DnCNN-style denoiser: a plain stack of 3x3 convolutions at full resolution."""

from __future__ import annotations

from torch import Tensor, nn

from dae.nets.checks import check_sizes


def conv_stack(channels: int, depth: int, width: int, batch_norm: bool, out_channels: int | None = None) -> nn.Sequential:
    """DnCNN's layers: a 3x3 Conv+ReLU from ``channels`` to ``width``, ``depth - 2`` Conv(+BatchNorm)+ReLU layers of
    ``width`` channels (no bias before a batch norm), and a 3x3 Conv to ``out_channels`` (default: ``channels``)."""
    if depth < 2:
        raise ValueError(f"depth must be >= 2 (first and last convolution), got {depth}")
    layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
    for _ in range(depth - 2):
        layers.append(nn.Conv2d(width, width, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Conv2d(width, channels if out_channels is None else out_channels, 3, padding=1))
    return nn.Sequential(*layers)


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
        check_sizes(in_channels, width=width)
        self.in_channels = in_channels
        self.residual = residual
        self.layers = conv_stack(in_channels, depth, width, batch_norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(x)
        return x - out if self.residual else out
