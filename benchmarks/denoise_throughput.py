"""Inference speed of ``dae denoise`` on the CPU: 28x28 images/s, and megapixels/s on a large tiled image.

    python benchmarks/denoise_throughput.py [--ckpt RUN_OR_CKPT] [--repeats 3] [--size 2048]

Without --ckpt the baseline ConvAutoencoder with fresh weights is timed (speed does not depend on the weights).
Each number is the median of --repeats timed runs after one warm-up. The last line is the ratio of the
tiled image's pixel rate to the network's raw 28x28 pixel rate: overlapping tiles (stride = half a tile)
send every pixel through the network about four times, so ~0.25 means blending itself costs little.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dae.inference import denoise_image, input_size, load_model
from dae.nets import ConvAutoencoder


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first calls pay for allocation and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="run folder or .ckpt (default: the baseline net with fresh weights)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=2048, help="side of the large square image")
    parser.add_argument("--images", type=int, default=8192, help="28x28 images per timed run")
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()

    net = (load_model(args.ckpt).net if args.ckpt else ConvAutoencoder()).eval()
    tile = input_size(net) or (28, 28)
    generator = torch.Generator().manual_seed(0)
    small = torch.rand(args.images, net.in_channels, *tile, generator=generator)
    large = torch.rand(net.in_channels, args.size, args.size, generator=generator)

    def run_small() -> None:
        for i in range(0, len(small), args.batch_size):
            net(small[i : i + args.batch_size])

    small_s = median_seconds(run_small, args.repeats)
    large_s = median_seconds(lambda: denoise_image(net, large, args.batch_size), args.repeats)
    images_per_s = args.images / small_s
    raw_mpx_per_s = images_per_s * tile[0] * tile[1] / 1e6
    tiled_mpx_per_s = args.size**2 / 1e6 / large_s
    tiles = f"{tile[0]}x{tile[1]} tiles" if input_size(net) else "whole image"
    print(f"net: {type(net).__name__}, torch threads: {torch.get_num_threads()}, batch size {args.batch_size}")
    print(f"{tile[0]}x{tile[1]} images: {images_per_s:,.0f} images/s ({raw_mpx_per_s:.2f} megapixels/s)")
    print(f"{args.size}x{args.size} image ({tiles}): {large_s:.2f} s, {tiled_mpx_per_s:.2f} megapixels/s")
    print(f"ratio tiled / raw pixel rate: {tiled_mpx_per_s / raw_mpx_per_s:.3f}")


if __name__ == "__main__":
    main()
