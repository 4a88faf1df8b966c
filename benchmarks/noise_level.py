"""How far ``dae.inference.estimate_sigma`` lands from the true noise level on a folder of clean images.

    python benchmarks/noise_level.py path/to/set12                    # sigma 15, 25, 50 on the 0..255 scale
    python benchmarks/noise_level.py path/to/train400 --sigma255 5 15 --limit 40

Each image gets white Gaussian noise of each sigma, unclipped, as ``dae evaluate --images`` adds it (image ``i``
the same standard normal draw, keyed by ``--seed`` and ``i``, scaled to each sigma); the table gives, per
sigma, the mean error of the estimate, the worst one (largest in size, with its sign) and the mean absolute
error, in levels of the 0..255 scale.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from dae.data.folders import load_image_folder
from dae.inference.noise_level import estimate_sigma
from dae.pixels import to_unit_float
from dae.seeding import torch_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="clean images (PNG/JPEG/TIFF/BMP, searched recursively)")
    parser.add_argument("--sigma255", type=float, nargs="+", default=[15, 25, 50], help="levels on the 0..255 scale")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1, help="gray (1, default) or colour (3)")
    parser.add_argument("--limit", type=int, help="the first N images only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default: %(default)s)")
    args = parser.parse_args()
    images = [to_unit_float(image).double() for image in load_image_folder(args.folder, args.channels, 4).values()]
    images = images[: args.limit]
    unit_noise = [torch.randn(image.shape, generator=torch_generator(args.seed, i), dtype=torch.float64)
                  for i, image in enumerate(images)]
    print(f"{args.folder}: {len(images)} images; estimate minus true sigma, 0..255 scale\n")
    print("| sigma | mean error | worst error | mean absolute error |")
    print("|---|---|---|---|")
    for sigma in args.sigma255:
        errors = [estimate_sigma(image + sigma / 255 * z) * 255 - sigma for image, z in zip(images, unit_noise)]
        worst = max(errors, key=abs)
        print(f"| {sigma:g} | {statistics.mean(errors):+.2f} | {worst:+.2f} | "
              f"{statistics.mean(abs(e) for e in errors):.2f} |")


if __name__ == "__main__":
    main()
