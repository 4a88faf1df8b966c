import torch

from dae.nets import ConvAutoencoder


def test_seed_autoencoder_has_the_seed_architecture():
    net = ConvAutoencoder()
    assert sum(p.numel() for p in net.parameters()) == 210_369
    layers = [type(m).__name__ for m in net.modules() if not isinstance(m, (torch.nn.Sequential, ConvAutoencoder))]
    assert layers == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d",
                      "ConvTranspose2d", "ReLU", "ConvTranspose2d", "ReLU", "ConvTranspose2d", "Sigmoid"]
    enc = net.encoder
    assert (enc[0].in_channels, enc[0].out_channels, enc[0].kernel_size, enc[0].stride, enc[0].padding) == (
        1, 16, (3, 3), (2, 2), (1, 1))
    assert (enc[4].in_channels, enc[4].out_channels, enc[4].kernel_size) == (32, 64, (7, 7))
    assert net.decoder[4].output_padding == (1, 1)


def test_seed_autoencoder_maps_28x28_to_28x28_in_unit_range():
    net = ConvAutoencoder()
    x = torch.randn(5, 1, 28, 28)
    y = net(x)
    assert y.shape == x.shape
    assert net.encoder(x).shape == (5, 64, 1, 1)
    assert y.min() >= 0 and y.max() <= 1


def test_seed_autoencoder_follows_channel_count():
    net = ConvAutoencoder(in_channels=3)
    assert net(torch.rand(2, 3, 28, 28)).shape == (2, 3, 28, 28)
