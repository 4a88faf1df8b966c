"""Denoising an image of any size and channel count with a network: whole, or in overlapping tiles."""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dae.inference.ensemble import self_ensemble
from dae.nets.noise_map import takes_noise_level


def input_size(net: nn.Module) -> tuple[int, int] | None:
    """The (height, width) a network takes, from its ``input_size`` attribute; None: fully convolutional.

    The rule is explicit on purpose: a net that only takes one size (the baseline ``ConvAutoencoder``: 28x28)
    declares ``input_size`` and gets overlapping tiles; every other net gets the whole image.
    """
    size = getattr(net, "input_size", None)
    return None if size is None else (int(size[0]), int(size[1]))


# Tile origins lie on multiples of this (where the step allows: ``tile_stride``), so that a network that pools (the
# U-Net halves the resolution up to 5 times) sees the same pooling grid in every tile as on the whole image.
TILE_ALIGN = 32
# Without a batch size, a forward pass takes as many tiles as hold about this many pixels (one tile of 256x256, 83
# of 28x28): the activations of a tile batch are most of what denoising a big image holds beyond the image itself.
PIXELS_PER_PASS = 1 << 16


def receptive_radius(net: Callable[[Tensor], Tensor], like: Tensor) -> int:
    """How far (in pixels) an output pixel of ``net`` looks, as far as a batch shaped like ``like`` (1, C, H, W)
    shows: the farthest input pixel on which the centre output pixel's gradient is not zero."""
    probe = torch.rand(like.shape, dtype=like.dtype, device=like.device, requires_grad=True)
    centre = (like.shape[-2] // 2, like.shape[-1] // 2)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(net(probe)[0, :, centre[0], centre[1]].sum(), probe)
    reached = grad.abs().sum((0, 1)).nonzero()
    return int((reached - torch.tensor(centre, device=reached.device)).abs().max()) if len(reached) else 0


def tile_weights(starts: list[int], tile: int, ramp: int) -> list[Tensor]:
    """Blending weights of each tile's pixels along one side, for tiles of ``tile`` pixels at ``starts``.

    Where two tiles overlap, the first hands over to the second at the middle of the overlap: at once when
    ``ramp`` is 0, so that each pixel comes from the tile that sees the most context around it (at least half
    the overlap on each side), else linearly over ``ramp`` pixels, so that tiles fade into each other.
    """
    def later_share(x: Tensor, middle: float) -> Tensor:
        return ((x - middle) / ramp + 0.5).clamp(0, 1) if ramp > 0 else (x >= middle).float()

    weights = []
    for i, start in enumerate(starts):
        x = start + torch.arange(tile) + 0.5  # pixel centres
        weight = torch.ones(tile)
        if i > 0:
            weight *= later_share(x, (starts[i - 1] + tile + start) / 2)
        if i + 1 < len(starts):
            weight *= 1 - later_share(x, (start + tile + starts[i + 1]) / 2)
        weights.append(weight)
    return weights


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Where tiles of ``tile`` pixels start along a side of ``size``: every ``stride`` pixels, the last one
    ending at most ``TILE_ALIGN - 1`` pixels past the image (padded) so that it keeps the alignment."""
    if size <= tile:
        return [0]
    align = math.gcd(stride, TILE_ALIGN)
    starts = list(range(0, size - tile, stride))
    return [*starts, -(-(size - tile) // align) * align]


def tile_stride(tile: int, margin: int, aligned: bool) -> int:
    """The step between tiles of ``tile`` pixels that overlap by at least ``2 * margin``: ``tile - 2 * margin``,
    when ``aligned`` rounded down to a multiple of the largest power of two that is at most ``TILE_ALIGN`` and
    at most an eighth of it (8 from a step of 64, 16 from 128, 32 from 256), so that every tile starts on the
    whole image's pooling grid of a U-Net that pools that often; the step loses less than an eighth."""
    stride = tile - 2 * margin
    if not aligned:
        return stride
    align = min(TILE_ALIGN, 1 << max(0, (stride // 8).bit_length() - 1))
    return stride - stride % align


def _tile(images: Tensor, top: int, left: int, th: int, tw: int) -> Tensor:
    """The tile at (top, left), padded (reflected) at the bottom and right where it reaches past the image."""
    tile = images[..., top : top + th, left : left + tw]
    pad_h, pad_w = th - tile.shape[-2], tw - tile.shape[-1]
    if not pad_h and not pad_w:
        return tile
    mode = "reflect" if pad_h < tile.shape[-2] and pad_w < tile.shape[-1] else "replicate"  # reflect: pad < side
    return F.pad(tile, (0, pad_w, 0, pad_h), mode=mode)


def denoise_tiled(net: Callable[[Tensor], Tensor], images: Tensor, tile: tuple[int, int], margin: int,
                  batch_size: int | None = None, fixed_size: bool = True) -> Tensor:
    """Run ``net`` over overlapping tiles of ``images`` (N, C, H, W) and put the results together (any H, W).

    Tiles step by ``tile - 2 * margin``, so neighbours overlap by ``2 * margin`` pixels. ``fixed_size``: the
    network takes only ``tile`` (an image smaller than a tile is padded), and overlapping tiles fade into each
    other over the whole overlap. Otherwise (fully convolutional networks) a tile shrinks to an image side
    smaller than it, the step is rounded down onto the pooling grid (``tile_stride``: a wider overlap), and each
    pixel comes from the tile in which it lies at least ``margin`` pixels from the edge: the same result as the
    whole image when ``margin`` covers the network's receptive field.

    Tiles go through the network ``batch_size`` at a time (default: about ``PIXELS_PER_PASS`` pixels) and go
    straight into the result (blended tiles: into running sums of outputs and weights), so memory holds the
    image, its result (and the weights) and one batch of tiles, never all tiles at once.
    """
    n_images, channels, height, width = images.shape
    th, tw = tile if fixed_size else (min(tile[0], height), min(tile[1], width))
    margin_h, margin_w = (min(margin, (side - 1) // 2) for side in (th, tw))
    rows = tile_starts(height, th, tile_stride(th, margin_h, aligned=not fixed_size))
    cols = tile_starts(width, tw, tile_stride(tw, margin_w, aligned=not fixed_size))
    row_weights = tile_weights(rows, th, 2 * margin_h if fixed_size else 0)
    col_weights = tile_weights(cols, tw, 2 * margin_w if fixed_size else 0)
    if batch_size is None:
        batch_size = max(1, PIXELS_PER_PASS // (th * tw))
    out = torch.zeros_like(images)
    # Blended tiles add up weighted; otherwise the weights are 0 or 1 and each pixel is copied from its one tile.
    weights = torch.zeros(height, width, dtype=images.dtype, device=images.device) if fixed_size else None
    places = [(n, i, j) for n in range(n_images) for i in range(len(rows)) for j in range(len(cols))]
    for first in range(0, len(places), batch_size):
        chunk = places[first : first + batch_size]
        batch = torch.stack([_tile(images[n], rows[i], cols[j], th, tw) for n, i, j in chunk])
        result = net(batch)
        if result.shape != batch.shape:
            raise ValueError(f"the network turned a {tuple(batch.shape)} batch of tiles into {tuple(result.shape)}")
        for (n, i, j), piece in zip(chunk, result):
            top, left = rows[i], cols[j]
            h, w = min(th, height - top), min(tw, width - left)
            if weights is None:
                r, c = _owned(row_weights[i][:h]), _owned(col_weights[j][:w])
                out[n, :, top + r.start : top + r.stop, left + c.start : left + c.stop] = piece[:, r, c]
                continue
            window = torch.outer(row_weights[i][:h], col_weights[j][:w]).to(images)
            out[n, :, top : top + h, left : left + w] += piece[:, :h, :w] * window
            if n == 0:  # every image has the same tiles
                weights[top : top + h, left : left + w] += window
    return out if weights is None else out.div_(weights)


def _owned(weight: Tensor) -> slice:
    """The pixels a tile hands on, where its 0-or-1 weight along one side is 1 (one run of them, maybe empty)."""
    ones = weight.nonzero()
    return slice(int(ones[0]), int(ones[-1]) + 1) if len(ones) else slice(0, 0)


@torch.no_grad()
def denoise_image(net: nn.Module, image: Tensor, batch_size: int | None = None, tile: int | None = None,
                  margin: int | None = None, ensemble: bool = False, sigma: float | None = None) -> Tensor:
    """Denoise one (C, H, W) image in [0, 1] of any size; returns a (C, H, W) float tensor on its device.

    Colour images through a 1-channel network go one channel at a time; a gray image through a colour
    network is repeated over its channels and the outputs averaged. Values are not clipped.

    A network with an ``input_size`` runs over half-overlapping tiles of that size, blended into each other.
    ``tile`` runs a fully convolutional network over ``tile x tile`` tiles instead of the whole image, so that
    memory is bounded by the tile: tiles overlap by at least ``2 * margin`` pixels and each pixel comes from the
    tile in which it lies at least ``margin`` pixels from the edge. Tiles step by ``tile - 2 * margin`` rounded
    down onto the pooling grid (``tile_stride``), which costs about ``(tile / step)**2`` times the whole image's
    compute (plus the last tiles' padding). A margin that covers the network's receptive radius gives the whole
    image's result (but near the bottom and right edges, padded differently). The default margin is that
    radius, at most ``tile // 32`` (at tile 256 or 512: step 240 or 480, 1.14 times the compute): a network
    that sees farther than that gives slightly different pixels near the tiles' seams.
    ``batch_size`` tiles go through the network at a time (default: about ``PIXELS_PER_PASS`` pixels).
    ``ensemble``: the mean over the image's 8 flips and rotations (``self_ensemble``), at 8 times the compute.
    ``sigma``: the noise level (std on the image's [0, 1] scale) that a noise-conditioned network (``noise_map``)
    is told; such a network needs it (``dae.inference.noise_level.estimate_sigma`` estimates it), a blind one
    ignores it.
    """
    net_channels = getattr(net, "in_channels", image.shape[0])
    channels = image.shape[0]
    if channels == net_channels:
        batch = image[None]
    elif net_channels == 1:
        batch = image[:, None]  # each channel as its own gray image
    elif channels == 1:
        batch = image.expand(net_channels, -1, -1)[None]
    else:
        raise ValueError(f"the network takes {net_channels} channels; an image with {channels} cannot be mapped")
    size = input_size(net)
    if takes_noise_level(net):
        net = functools.partial(net, sigma=sigma)
    if tile is not None and size is not None:
        raise ValueError(f"the network takes {size[0]}x{size[1]} inputs and is tiled at that size; "
                         "a tile size is for fully convolutional networks")
    if tile is not None and tile < 1:
        raise ValueError(f"tile must be >= 1 pixel, got {tile}")
    if margin is not None and margin < 0:
        raise ValueError(f"margin must be >= 0 pixels, got {margin}")
    if tile is not None and margin is None:
        # A reach of more than the cap needs no measuring: a probe twice the cap (kept on the pooling grid,
        # so that the centre pixel sees what a tile's would) takes a small part of a tile's memory and time
        # for its forward and backward pass.
        cap = tile // 32
        side = min(tile, -(-(2 * cap + 2) // (2 * TILE_ALIGN)) * 2 * TILE_ALIGN)
        probe = (1, batch.shape[1], min(side, batch.shape[2]), min(side, batch.shape[3]))
        margin = min(cap, receptive_radius(net, batch.new_empty(probe)))

    def run(images: Tensor) -> Tensor:
        if size is not None:
            out = denoise_tiled(net, images, size, min(size) // 4 if margin is None else margin, batch_size)
        elif tile is not None:
            out = denoise_tiled(net, images, (tile, tile), margin, batch_size, fixed_size=False)
        else:
            out = net(images)
        if out.shape != images.shape:
            raise ValueError(
                f"the network turned a {tuple(images.shape)} batch into {tuple(out.shape)}; a net that only takes "
                "one size must declare it as an input_size attribute so that images are tiled"
            )
        return out

    out = self_ensemble(run, batch) if ensemble else run(batch)
    if channels == net_channels:
        return out[0]
    return out[:, 0] if net_channels == 1 else out[0].mean(0, keepdim=True)
