"""Noise-conditioned networks: the noise level reaches the first layer as one more channel, in every shape."""

import pytest
import torch

from dae.nets import DRUNet, FFDNet, UNet
from dae.nets.noise_map import append_noise_map

NETS = {
    "unet": (lambda c: UNet(in_channels=c, width=8, depth=2, noise_map=True), lambda n: n.down[0][0]),
    "drunet": (lambda c: DRUNet(in_channels=c, width=8, depth=2, blocks=1, noise_map=True), lambda n: n.head),
    "ffdnet": (lambda c: FFDNet(in_channels=c, depth=3, width=8, noise_map=True), lambda n: n.layers[0]),
}


def first_layer_input(kind: str, channels: int, x: torch.Tensor, sigma) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's output and what its first convolution received."""
    build, first = NETS[kind]
    torch.manual_seed(0)
    net = build(channels).eval()
    seen = []
    first(net).register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        out = net(x, sigma)
    return out, seen[0]


@pytest.mark.parametrize("kind", list(NETS))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(17, 30), (32, 32)])
def test_the_noise_level_reaches_the_first_layer_as_one_more_channel(kind, channels, size):
    x = torch.rand(2, channels, *size)
    sigma = torch.tensor([0.05, 0.2])
    out, inputs = first_layer_input(kind, channels, x, sigma)
    assert out.shape == x.shape
    if kind == "ffdnet":  # at half resolution, each input channel became 4: the map is the last 4
        assert inputs.shape[1] == 4 * (channels + 1)
        level = inputs[:, -4:]
    else:
        assert inputs.shape[1] == channels + 1
        level = inputs[:, -1:]
    height, width = size
    crop = level[..., : (height + 1) // 2, : (width + 1) // 2] if kind == "ffdnet" else level[..., :height, :width]
    for image, value in enumerate(sigma):  # each image its own level, everywhere in the image
        assert torch.allclose(crop[image], value.expand_as(crop[image]))


@pytest.mark.parametrize("kind", list(NETS))
def test_the_level_changes_the_output_and_is_required(kind):
    x = torch.rand(1, 1, 16, 16)
    low, _ = first_layer_input(kind, 1, x, 0.02)
    high, _ = first_layer_input(kind, 1, x, 0.2)
    assert not torch.allclose(low, high)
    with pytest.raises(ValueError, match="noise-conditioned.*sigma"):
        first_layer_input(kind, 1, x, None)


def test_the_map_takes_a_number_one_level_per_image_or_a_map_per_pixel():
    x = torch.rand(2, 3, 5, 7)
    assert torch.equal(append_noise_map(x, 0.1)[:, 3], torch.full((2, 5, 7), 0.1))
    per_image = append_noise_map(x, torch.tensor([0.1, 0.3]).view(2, 1, 1, 1))[:, 3]
    assert torch.equal(per_image[1], torch.full((5, 7), 0.3))
    per_pixel = torch.rand(2, 1, 5, 7)
    assert torch.equal(append_noise_map(x, per_pixel)[:, 3:], per_pixel)
    assert torch.equal(append_noise_map(x, per_pixel)[:, :3], x)
    with pytest.raises(ValueError, match=r"shape \(3,\) does not fit a batch of shape \(2, 3, 5, 7\)"):
        append_noise_map(x, torch.tensor([0.1, 0.2, 0.3]))
