"""Draw docs/images/real_noise.png: crops of photographs with real noise (no clean version exists), each beside
what `dae denoise` makes of it with no --ckpt: the shipped model for the image's channels, told the noise level
that `dae.inference.estimate_sigma` reads from the image (printed in each title, as `dae denoise` prints it).

    python docs/make_real_noise_figure.py path/to/rni15 [--images Dog.png Flowers.png] [--size 160] [-o docs/images]

No PSNR is possible on these pictures: without a clean version there is nothing to score against.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from dae.data.images import has_alpha, read_image, to_unit_tensor  # noqa: E402
from dae.inference import denoise_image, estimate_sigma, load_model  # noqa: E402
from dae.inference.pretrained import default_model  # noqa: E402
from dae.nets.noise_map import takes_noise_level  # noqa: E402


def centre_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` pixels of a (C, H, W) image (all of it along a shorter side)."""
    top, left = max(image.shape[1] - size, 0) // 2, max(image.shape[2] - size, 0) // 2
    return image[:, top:top + size, left:left + size]


def shown(image: torch.Tensor) -> torch.Tensor:
    """A (C, H, W) image in [0, 1] as matplotlib shows it: (H, W, C), or (H, W) for gray."""
    image = image.clamp(0, 1).permute(1, 2, 0)
    return image[..., 0] if image.shape[-1] == 1 else image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a folder of noisy photographs (RNI15: 15 colour pictures)")
    parser.add_argument("--images", nargs="+", default=["Dog.png", "Flowers.png", "Frog.png", "Movie.png"],
                        help="which pictures (default: %(default)s)")
    parser.add_argument("--size", type=int, default=160, help="side of the centre crop shown (default: %(default)s)")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/images"))
    args = parser.parse_args()

    figure, axes = plt.subplots(2, len(args.images), figsize=(2.8 * len(args.images), 6), squeeze=False)
    nets = {}  # each shipped model loaded once
    for column, name in enumerate(args.images):
        pixels = to_unit_tensor(read_image(args.folder / name))
        noisy = pixels[:-1] if has_alpha(pixels.shape[0]) else pixels  # alpha aside, as dae denoise does
        model = default_model(noisy.shape[0])
        if model not in nets:
            nets[model] = load_model(model).net
        net = nets[model]
        level = estimate_sigma(noisy)
        with torch.no_grad():
            denoised = denoise_image(net, noisy, sigma=level if takes_noise_level(net) else None)
        print(f"{name}: noise level estimated at sigma {level * 255:.1f} (0..255), denoised by {model}")
        for row, (image, title) in enumerate([(noisy, f"{name}\nestimated sigma {level * 255:.1f}"),
                                              (denoised, f"{model}")]):
            ax = axes[row, column]
            ax.imshow(shown(centre_crop(image, args.size)).numpy(), cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    figure.tight_layout()
    args.output.mkdir(parents=True, exist_ok=True)
    out = args.output / "real_noise.png"
    figure.savefig(out, dpi=100, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
