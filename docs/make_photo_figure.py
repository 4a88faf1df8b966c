"""Draw docs/images/set12_crops.png: one Set12 picture at noise sigma 25, a crop of the clean image, the noisy
one, BM3D's result and the built-in model's (told the true sigma, as BM3D is, when it is noise-conditioned), each
titled with the whole image's PSNR.

The noise is the one ``dae evaluate --images`` adds (same seed, same image index), and every output is rounded
to 8 bits as there, so the titles match that command's per-image scores.

    python docs/make_photo_figure.py path/to/set12 [--image 05.png] [--box TOP LEFT SIZE] [-o docs/images]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from dae.baselines import BASELINES  # noqa: E402
from dae.commands.evaluate import to_8_bits  # noqa: E402
from dae.data.folders import load_image_folder  # noqa: E402
from dae.inference import denoise_image, load_model  # noqa: E402
from dae.pixels import to_unit_float  # noqa: E402
from dae.inference.pretrained import default_model  # noqa: E402
from dae.nets.noise_map import takes_noise_level  # noqa: E402
from dae.seeding import torch_generator  # noqa: E402


def psnr(image: torch.Tensor, clean: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (to_8_bits(image) - clean).pow(2).mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("set12", type=Path, help="the folder of the 12 Set12 PNGs")
    parser.add_argument("--image", default="05.png", help="which picture (default: %(default)s)")
    parser.add_argument("--box", type=int, nargs=3, default=(60, 90, 128), metavar=("TOP", "LEFT", "SIZE"),
                        help="the crop shown (default: %(default)s)")
    parser.add_argument("--sigma255", type=float, default=25.0)
    parser.add_argument("--seed", type=int, default=0, help="dae evaluate's --seed (default: %(default)s)")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/images"))
    args = parser.parse_args()

    images = load_image_folder(args.set12, channels=1, min_size=1)
    index = list(images).index(args.image)  # dae evaluate keys each image's noise by its place in sorted order
    clean = to_unit_float(images[args.image])
    std = args.sigma255 / 255
    noisy = clean + std * torch.randn(clean.shape, generator=torch_generator(args.seed, index))
    model = default_model(1)
    with torch.no_grad():
        net = load_model(model).net
        ours = denoise_image(net, noisy, sigma=std if takes_noise_level(net) else None)  # the true sigma, as BM3D
    bm3d = BASELINES["BM3D"].denoise(noisy[None], std, BASELINES["BM3D"].untuned)[0]
    top, left, size = args.box
    panels = [("clean", clean, None), (f"noisy, sigma {args.sigma255:g}", noisy, psnr(noisy, clean)),
              ("BM3D", bm3d, psnr(bm3d, clean)), (model, ours, psnr(ours, clean))]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.3))
    for ax, (title, image, score) in zip(axes, panels):
        crop = to_8_bits(image)[0, top:top + size, left:left + size]
        ax.imshow(crop.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title if score is None else f"{title}\n{score:.2f} dB", fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    args.output.mkdir(parents=True, exist_ok=True)
    out = args.output / "set12_crops.png"
    fig.savefig(out, dpi=100, bbox_inches="tight")
    print(f"wrote {out}: {args.image}, " + ", ".join(f"{t} {s:.2f} dB" for t, _, s in panels[1:]))


if __name__ == "__main__":
    main()
