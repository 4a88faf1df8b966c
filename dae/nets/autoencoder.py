"""The baseline convolutional autoencoder for 28x28 images."""

from __future__ import annotations

from torch import Tensor, nn

from dae.nets.checks import check_sizes


class ConvAutoencoder(nn.Module):
    """The baseline convolutional autoencoder for 28x28 images (210,369 parameters at ``in_channels=1``).

    The encoder squeezes a 28x28 image through two stride-2 convolutions to 7x7 and a 7x7 convolution to a
    64-number code; the decoder mirrors it and ends in a sigmoid, so outputs lie in [0, 1].
    """

    # Nets that take one fixed size say so here; ``dae.inference`` then feeds larger images as tiles.
    input_size = (28, 28)

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        check_sizes(in_channels)
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
