import pytest
import torch

from dae.nets import ConvAutoencoder, DnCNN, DRUNet, FFDNet, UNet


def test_baseline_autoencoder_has_the_baseline_architecture():
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


def test_baseline_autoencoder_maps_28x28_to_28x28_in_unit_range():
    net = ConvAutoencoder()
    x = torch.randn(5, 1, 28, 28)
    y = net(x)
    assert y.shape == x.shape
    assert net.encoder(x).shape == (5, 64, 1, 1)
    assert y.min() >= 0 and y.max() <= 1


def test_baseline_autoencoder_follows_channel_count():
    net = ConvAutoencoder(in_channels=3)
    assert net(torch.rand(2, 3, 28, 28)).shape == (2, 3, 28, 28)


# Parameter counts worked out by hand from the layer list (3x3 convs, 2x2 transposed convs, biases, BN affine):
# UNet(width 32, depth 2): encoder 9,568 + 55,424 + 221,440, up-convs 32,832 + 8,224, decoder 110,720 + 27,712,
# 1x1 head 33 -> 465,953; three channels add 2*9*32 to the first conv and 2*32 + 2 to the head.
# DnCNN(depth 8, width 32): first conv 320, six conv+BN layers 9,280 each, last conv 289 -> 56,289;
# three channels add 2*9*32 to the first conv and 2*9*32 + 2 to the last.
# DRUNet(width 32, depth 2, blocks 2), no biases: residual blocks 18*ch^2 each, 4 at 32 and 64 channels, 2 at 128
# -> 958,464; 2x2 strided and transposed convs 2*4*(32*64 + 64*128) = 81,920; head and tail 9*32*c each.
# FFDNet(depth 15, width 64): first conv 9*4c*64 + 64, 13 conv+BN layers 36,864 + 128 each, last conv 9*64*4c + 4c
# -> 485,572 for one channel.
NETS = {
    "unet": (lambda c: UNet(in_channels=c, width=32, depth=2), {1: 465_953, 3: 466_595}),
    "dncnn": (lambda c: DnCNN(in_channels=c, depth=8, width=32), {1: 56_289, 3: 57_443}),
    "drunet": (lambda c: DRUNet(in_channels=c, width=32, depth=2, blocks=2), {1: 1_040_960, 3: 1_042_112}),
    "ffdnet": (lambda c: FFDNet(in_channels=c, depth=15, width=64), {1: 485_572, 3: 494_796}),
}


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(28, 28), (29, 31), (5, 3), (1, 1)])
def test_fully_convolutional_nets_keep_shape_and_parameter_count(name, channels, size):
    make, counts = NETS[name]
    net = make(channels)
    assert sum(p.numel() for p in net.parameters()) == counts[channels]
    x = torch.rand(2, channels, *size)
    assert net(x).shape == x.shape


@pytest.mark.parametrize("make", [lambda: UNet(width=8, depth=3), lambda: DnCNN(depth=4, width=8),
                                  lambda: FFDNet(depth=4, width=8)])
def test_residual_nets_return_the_input_minus_the_predicted_noise(make):
    net = make()
    last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    x = torch.rand(3, 1, 13, 17)
    assert torch.equal(net(x), x)  # zero noise estimate: the input passes through untouched
    torch.nn.init.constant_(last.bias, 0.25)
    assert torch.allclose(net(x), x - 0.25)


def test_drunet_without_biases_passes_the_input_through_when_its_tail_is_zero():
    net = DRUNet(width=8, depth=2, blocks=1)
    assert not any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and m.bias is not None
                   for m in net.modules())
    torch.nn.init.zeros_(net.tail.weight)
    x = torch.rand(3, 1, 13, 17)
    assert torch.equal(net(x), x)


def pixel_response(net, size: int, row: int, col: int) -> torch.Tensor:
    """|net(x + e) - net(x)| for a random size x size image x and a unit bump e at (row, col)."""
    x = torch.rand(1, 1, size, size)
    y = x.clone()
    y[0, 0, row, col] += 1.0
    return (net(y) - net(x)).abs()[0, 0]


def test_unet_skips_carry_full_resolution_detail():
    """Changing one pixel changes the output at that pixel and far away (large receptive field)."""
    torch.manual_seed(0)
    net = UNet(width=8, depth=2, residual=False).eval()
    diff = pixel_response(net, size=28, row=3, col=3)
    assert diff[3, 3] > 0
    assert diff[10, 10] > 0  # 7 pixels away: beyond any single level's 3x3 pair, reached through pooling
    assert diff[27, 27] == 0  # but not the whole image: the field ends


def test_drunet_and_ffdnet_see_beyond_their_3x3_layers_at_full_resolution():
    torch.manual_seed(0)
    drunet = DRUNet(width=4, depth=2, blocks=1, residual=False).eval()
    assert pixel_response(drunet, size=32, row=8, col=8)[20, 20] > 0  # 12 pixels away, through the strided scales
    ffdnet = FFDNet(depth=3, width=8, residual=False).eval()
    changed = (pixel_response(ffdnet, size=32, row=16, col=16) > 0).nonzero()
    assert 16 - changed[:, 0].min() >= 5  # 3 layers at half resolution: twice the reach of 3 at full resolution


def test_dncnn_receptive_field_is_two_pixels_per_layer_plus_one():
    torch.manual_seed(0)
    net = DnCNN(depth=4, width=8, residual=False).eval()
    changed = (pixel_response(net, size=21, row=10, col=10) > 0).nonzero()
    assert changed[:, 0].min() == 10 - 4 and changed[:, 0].max() == 10 + 4


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: UNet(in_channels=0), "in_channels must be >= 1"),
        (lambda: UNet(width=0), "width must be >= 1"),
        (lambda: UNet(depth=0), "depth must be >= 1"),
        (lambda: DnCNN(depth=1), "depth must be >= 2"),
        (lambda: DnCNN(width=-3), "width must be >= 1"),
        (lambda: DRUNet(blocks=0), "blocks must be >= 1"),
        (lambda: FFDNet(depth=1), "depth must be >= 2"),
    ],
)
def test_bad_network_sizes_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()
