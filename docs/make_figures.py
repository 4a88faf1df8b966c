"""Draw the README's pictures from a run folder: the last validation grid (clean / noisy / denoised digits) and
the loss curve, both read from the run's TensorBoard event files.

    python docs/make_figures.py lightning_logs/version_0 [-o docs/images]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from dae.training.callbacks import write_loss_plot  # noqa: E402


def last_image_grid(run_dir: Path, tag: str = "val/images") -> tuple[Image.Image, int]:
    """The last image logged under ``tag`` in ``run_dir`` and its step."""
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 1, "tensors": 1})
    acc.Reload()
    if tag not in acc.Tags().get("images", []):
        raise SystemExit(f"{run_dir}: no {tag} images in the event files")
    event = acc.Images(tag)[-1]
    return Image.open(io.BytesIO(event.encoded_image_string)).convert("L"), event.step


def draw_denoising(run_dir: Path, out: Path) -> Path:
    """The grid's three rows (clean, noisy, denoised) with their names beside them."""
    grid, step = last_image_grid(run_dir)
    fig, ax = plt.subplots(figsize=(8, 3.4), dpi=100)
    ax.imshow(grid, cmap="gray", interpolation="nearest", vmin=0, vmax=255)
    rows = grid.height / 3
    ax.set_yticks([rows * (i + 0.5) for i in range(3)], ["clean", "noisy", "denoised"], fontsize=12)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(f"Validation digits at step {step}", fontsize=11)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder, e.g. lightning_logs/version_0")
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).parent / "images")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    print("wrote", draw_denoising(args.run_dir, args.output / "denoising.png"))
    print("wrote", write_loss_plot(args.run_dir, args.output / "loss.png"))


if __name__ == "__main__":
    main()
