"""Peak memory and time of ``dae denoise --tile`` against the whole image, on one big gray image.

    python benchmarks/tile_memory.py                       # 4096x4096, U-Net of configs/unet.yaml, --tile 256
    python benchmarks/tile_memory.py --size 2048 --rounds 5

The network is configs/unet.yaml's (``dae.nets.UNet``, width 32, depth 3) with seeded random weights: memory
and time do not depend on the weights. Each case runs in a fresh child process (this script with
``--child``), which reports its peak resident memory (``ru_maxrss``: everything the process held, torch's
allocations included) and its resident memory just before denoising (the libraries and the image), so that
the two cases share nothing. The tiled result is compared with the whole-image one away from the image's
border: the largest difference shows whether tile seams could be seen.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BORDER = 64  # pixels at the image's edges left out of the comparison (padding differs there, not seams)


def rss_mib() -> float:
    """Resident memory of this process now, in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(size: int, tile: int | None, margin: int | None, out: Path) -> None:
    import numpy as np
    import torch

    from dae.inference import denoise_image
    from dae.nets import UNet

    torch.manual_seed(0)
    net = UNet(in_channels=1, width=32, depth=3).eval()
    image = torch.rand(1, size, size, generator=torch.Generator().manual_seed(1))
    before = rss_mib()
    start = time.perf_counter()
    result = denoise_image(net, image, tile=tile, margin=margin)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    np.save(out, result[0].numpy())
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "before_mib": before}))


def run_case(size: int, tile: int | None, margin: int | None, out: Path) -> dict:
    args = [sys.executable, __file__, "--child", "--size", str(size), "--out", str(out), "--tile", str(tile or 0)]
    args += ["--margin", str(margin)] if margin is not None else []
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode:
        raise SystemExit(f"child failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--margin", type=int, help="tile margin (default: dae's choice)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.size, args.tile or None, args.margin, args.out)  # --tile 0: the whole image
        return
    import numpy as np

    results: dict[str, list[dict]] = {"whole": [], "tiled": []}
    with tempfile.TemporaryDirectory() as tmp:
        outs = {"whole": Path(tmp) / "whole.npy", "tiled": Path(tmp) / "tiled.npy"}
        for _ in range(args.rounds):  # alternating, so that a slow spell of the machine hits both
            results["whole"].append(run_case(args.size, None, None, outs["whole"]))
            results["tiled"].append(run_case(args.size, args.tile, args.margin, outs["tiled"]))
        whole, tiled = np.load(outs["whole"]), np.load(outs["tiled"])
    inner = (slice(BORDER, -BORDER),) * 2
    difference = float(np.abs(whole[inner] - tiled[inner]).max())
    median = {case: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for case, runs in results.items()}
    print(f"{args.size}x{args.size} gray image, UNet(width=32, depth=3), {args.rounds} rounds (medians); "
          "peak = ru_maxrss of a fresh process, before = its resident memory just before denoising")
    print(f"{'case':<22}{'peak MiB':>10}{'before MiB':>12}{'seconds':>10}")
    for case, label in (("whole", "whole image"), ("tiled", f"--tile {args.tile}")):
        m = median[case]
        print(f"{label:<22}{m['peak_mib']:>10.0f}{m['before_mib']:>12.0f}{m['seconds']:>10.2f}")
    print(f"tiled/whole: peak memory {median['tiled']['peak_mib'] / median['whole']['peak_mib']:.3f}x, "
          f"time {median['tiled']['seconds'] / median['whole']['seconds']:.3f}x")
    print(f"largest |tiled - whole| more than {BORDER} px inside the image: {difference:.2e} "
          f"(one 8-bit step is {1 / 255:.2e})")
    for case, runs in results.items():
        rounds = ", ".join(f"{r['seconds']:.2f}" for r in runs)
        print(f"  {case} seconds per round: {rounds}")


if __name__ == "__main__":
    main()
