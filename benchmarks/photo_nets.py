"""The candidate networks for photographs side by side: size, compute and training speed measured in one run,
and the validation PSNR that each reached in a pilot training.

    python benchmarks/photo_nets.py                                    # size, MACs, patches/s in fp32 and bf16
    python benchmarks/photo_nets.py --runs unet=RUN1 drunet=RUN2 ...   # adds each pilot run's best val/psnr

The candidates are the networks that configs/gray_blind.yaml and its overlays in configs/photo/ train, each
noise-conditioned (configs/photo/noise_map.yaml), as the pilot trains them. MACs per pixel are counted by
``torch.utils.flop_counter`` on a 64x64 gray patch (a multiply-add is two FLOPs).
Training speed is the network's own training step (forward, PSNR loss, backward, Adam) on random 64x64
patches in batches of 16, as the config trains, in fp32 and under bf16 autocast; the rounds alternate the
candidates and precisions and the median is reported.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dae.nets.noise_map import takes_noise_level
from dae.training.callbacks import read_scalars

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
CONDITIONED = CONFIGS / "photo" / "noise_map.yaml"
# name -> the configs (base, overlays) whose model.net it trains
CANDIDATES = {
    "unet": [CONFIGS / "gray_blind.yaml", CONDITIONED],
    "drunet": [CONFIGS / "gray_blind.yaml", CONFIGS / "photo" / "drunet.yaml", CONDITIONED],
    "ffdnet": [CONFIGS / "gray_blind.yaml", CONFIGS / "photo" / "ffdnet.yaml", CONDITIONED],
}
PATCH, BATCH = 64, 16


def build(configs: list[Path]) -> nn.Module:
    """The network that a config and its overlays name, built from the last class path and the init args of
    every config that names that class (as the dae command merges them)."""
    class_path, init_args = None, {"in_channels": 1}
    for config in configs:
        net = yaml.safe_load(config.read_text())["model"]["net"]
        if net.get("class_path", class_path) != class_path:
            class_path, init_args = net["class_path"], {"in_channels": 1}
        init_args.update(net.get("init_args", {}))
    module_name, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)(**init_args)


def levels(net: nn.Module, batch: int) -> dict[str, torch.Tensor]:
    """The noise level a noise-conditioned network takes (stds up to 55/255), none for a blind one."""
    return {"sigma": torch.rand(batch) * 55 / 255} if takes_noise_level(net) else {}


def macs_per_pixel(net: nn.Module) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.rand(1, 1, PATCH, PATCH), **levels(net, 1))
    return counter.get_total_flops() / 2 / PATCH**2


def patches_per_second(net: nn.Module, bf16: bool, steps: int) -> float:
    """Training patches per second of ``steps`` optimizer steps after two warm-up steps."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    clean = torch.rand(BATCH, 1, PATCH, PATCH).contiguous(memory_format=torch.channels_last)
    noisy = clean + 0.1 * torch.randn_like(clean)
    sigma = levels(net, BATCH)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(noisy, **sigma)
        mse = (out.float() - clean).pow(2).flatten(1).mean(1)
        loss = 10 * torch.log10(mse.clamp(min=1e-6)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - start)


def best_val_psnr(run: Path) -> tuple[float, int]:
    """The best val/psnr of a run folder and the step it was logged at."""
    series = read_scalars(run).get("val/psnr")
    if not series:
        raise SystemExit(f"{run}: no val/psnr in its event files; give the run folder of a dae fit")
    step, value = max(series, key=lambda point: point[1])
    return value, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per candidate and precision")
    parser.add_argument("--runs", nargs="*", default=[], metavar="NAME=RUN_DIR",
                        help="pilot run folders, by candidate name, whose best val/psnr goes into the table")
    args = parser.parse_args()
    runs = dict(item.split("=", 1) for item in args.runs)
    unknown = set(runs) - set(CANDIDATES)
    if unknown:
        parser.error(f"--runs: unknown candidate(s) {', '.join(sorted(unknown))}; one of {', '.join(CANDIDATES)}")
    torch.manual_seed(0)
    # channels-last weights and batches, as DenoisingModule trains them (oneDNN's fast bf16 convolutions need it)
    nets = {name: build(configs).to(memory_format=torch.channels_last) for name, configs in CANDIDATES.items()}
    speeds: dict[tuple[str, bool], list[float]] = {(name, bf16): [] for name in nets for bf16 in (False, True)}
    for _ in range(args.rounds):
        for name, net in nets.items():
            for bf16 in (False, True):
                speeds[name, bf16].append(patches_per_second(net.train(), bf16, args.steps))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {PATCH}x{PATCH} gray patches, batch {BATCH}, "
          f"median of {args.rounds} rounds of {args.steps} steps\n")
    print("| network | parameters | MACs per pixel | patches/s fp32 | patches/s bf16 | bf16 / fp32 | best val PSNR (step) |")
    print("|---|---|---|---|---|---|---|")
    for name, net in nets.items():
        fp32, bf16 = (statistics.median(speeds[name, b]) for b in (False, True))
        params = sum(p.numel() for p in net.parameters())
        pilot = "" if name not in runs else "%.2f dB (%d)" % best_val_psnr(Path(runs[name]))
        print(f"| {name} ({type(net).__name__}) | {params:,} | {macs_per_pixel(net.eval()):,.0f} | {fp32:.0f} | "
              f"{bf16:.0f} | {bf16 / fp32:.2f} | {pilot} |")


if __name__ == "__main__":
    main()
