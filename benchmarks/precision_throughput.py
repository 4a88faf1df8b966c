"""Training throughput of ``dae fit`` in full fp32 against bf16 mixed precision, measured in one run.

    python benchmarks/precision_throughput.py --data-dir /usr/share/datasets/fashion-mnist   # real IDX files
    python benchmarks/precision_throughput.py --config configs/mnist.yaml                   # the baseline instead
    python benchmarks/precision_throughput.py --device cuda                                 # on a GPU
    python benchmarks/precision_throughput.py --config configs/gray_blind.yaml --batch-size 16 --compile   # photos

Both contestants run ``dae fit --config configs/unet.yaml`` (default) on the same IDX files, one with
``--trainer.precision 32-true`` and one with ``--trainer.precision bf16-mixed`` (weights and optimizer in fp32,
convolutions in bfloat16 under ``torch.autocast``). Timing works as in ``train_throughput.py``: every
measurement is a fresh child process, each contestant runs for ``--short`` and ``--long`` steps and the time
difference over the step difference is the per-step time (start-up cancels); rounds alternate the contestants
and the median is reported. The ``loss`` column is the last logged training loss (MSE) of the long runs: same
seed, same data and noise, so it shows whether bf16 learns as fast per step.

A config whose data is an image folder (``configs/gray_blind.yaml``, the photo network) trains on ``--image-dir``,
by default on 400 synthetic 180x180 photos that this script writes. ``--compile`` adds a third contestant,
bf16-mixed with ``--model.compile true`` (``torch.compile`` of the network; the warm-up run compiles it, so that
the short and the long run load it from the compiler's cache alike and that cancels like the rest of the start-up).
"""

from __future__ import annotations

import argparse
import json
import shlex
import tempfile
from pathlib import Path

import torch
import yaml
from train_throughput import ROOT, median_per_step, per_step, prepare_data, run_child

# Contestant: the dae arguments that make it.
CONTESTANTS = {"32-true": ["--trainer.precision", "32-true"], "bf16-mixed": ["--trainer.precision", "bf16-mixed"]}
COMPILED = "bf16-mixed, compiled"
SYNTHETIC_PHOTOS = 400  # as many as Train400 has, of its size
PHOTO_SIZE = (180, 180)


def trains_on_image_folder(config: Path) -> bool:
    """Whether ``config``'s data is an image folder (else MNIST-format IDX files)."""
    data = yaml.safe_load(config.read_text(encoding="utf-8")).get("data") or {}
    return str(data.get("class_path", "")).endswith("ImageFolderDataModule")


def speed_ups(results: dict[str, dict]) -> dict[str, float]:
    """bf16-mixed over 32-true, and compiled over eager, from per-step times (those measured so far)."""
    pairs = {"bf16-mixed / 32-true": ("32-true", "bf16-mixed"), "compiled / eager": ("bf16-mixed", COMPILED)}
    return {name: results[slow]["step_s"] / results[fast]["step_s"]
            for name, (slow, fast) in pairs.items() if slow in results and fast in results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="folder with the four MNIST-format IDX files (.gz or not); "
                        "default: write synthetic ones")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "unet.yaml", help="dae config "
                        "(default: configs/unet.yaml)")
    parser.add_argument("--dae-args", default="", help="extra arguments for every dae command")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--short", type=int, default=50, help="steps of the short runs")
    parser.add_argument("--long", type=int, default=250, help="steps of the long runs")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per contestant, alternating; "
                        "the median is reported")
    parser.add_argument("--image-dir", type=Path, help="images for a config whose data is an image folder "
                        f"(default: {SYNTHETIC_PHOTOS} synthetic photos written by this script)")
    parser.add_argument("--compile", action="store_true", help="also time bf16-mixed with --model.compile true")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file (after every "
                        "measurement, so that an interrupted run leaves what it measured)")
    args = parser.parse_args()
    if not args.short < args.long:
        parser.error("--short must be below --long")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible to torch")
    batch = args.batch_size

    contestants = {**CONTESTANTS, **({COMPILED: [*CONTESTANTS["bf16-mixed"], "--model.compile", "true"]}
                                     if args.compile else {})}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"

    with tempfile.TemporaryDirectory(prefix="dae-bench-") as tmp:
        work = Path(tmp)
        if trains_on_image_folder(args.config):
            if args.image_dir is None:
                from tests.idx import write_image_folder

                write_image_folder(work / "photos", SYNTHETIC_PHOTOS, PHOTO_SIZE)
                what = f"{SYNTHETIC_PHOTOS} synthetic {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} photos"
            else:
                what = f"images in {args.image_dir}"
            data, data_args = work, ["--data.init_args.data_dir", str(args.image_dir or work / "photos")]
        else:
            data, what = prepare_data(args.data_dir, work / "data")
            data_args = ["--data.init_args.data_dir", str(data), "--data.init_args.dataset", "mnist",
                         "--data.init_args.download", "false"]
        print(f"device: {name}; torch {torch.__version__}; data: {what}; batch {batch}", flush=True)
        common = ["--device", args.device, "--batch-size", str(batch), "--data-root", str(data)]
        fit = ["fit", "--config", str(args.config.resolve()), *data_args, "--data.init_args.batch_size", str(batch),
               "--trainer.limit_val_batches", "0", "--trainer.accelerator", "gpu" if device.type == "cuda" else "cpu",
               "--trainer.devices", "1", *shlex.split(args.dae_args)]
        # max_steps also sets the length of a cosine schedule: both contestants get the same one per length.
        # The warm-up (file caches, first-run effects) compiles the network when one contestant does, so that
        # every timed compiled run finds it in torch.compile's cache alike.
        warm_up = contestants[COMPILED] if args.compile else CONTESTANTS["32-true"]
        run_child("dae", 1, work, common, [*fit, *warm_up], "max_steps")
        rounds: dict[str, list[dict]] = {label: [] for label in contestants}
        for round_ in range(args.rounds):
            for label, extra in contestants.items():
                rounds[label].append(per_step("dae", args.short, args.long, work, common, [*fit, *extra], "max_steps"))
                step_s = rounds[label][-1]["step_s"]
                print(f"round {round_ + 1}, {label}: {batch / step_s:.0f} images/s ({step_s * 1e3:.2f} ms/step)",
                      flush=True)
                if args.json:
                    results = {k: median_per_step(r) for k, r in rounds.items() if r}
                    args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "batch_size": batch,
                                                     "data": what, "speed_ups": speed_ups(results),
                                                     "results": results}, indent=1))
    results = {label: median_per_step(r) for label, r in rounds.items()}

    print(f"dae fit --config {args.config} {args.dae_args}; steps {args.short} and {args.long} (difference timed), "
          f"{args.rounds} rounds")
    print(f"{'contestant':22} {'images/s':>10} {'ms/step':>8} {'max RSS MiB':>11} {'loss':>8}")
    for label, r in results.items():
        loss = f"{r['final_loss']:.4f}" if r.get("final_loss") is not None else "-"
        print(f"{label:22} {batch / r['step_s']:10.0f} {r['step_s'] * 1e3:8.2f} {r['max_rss_mib']:11.0f} {loss:>8}")
    ratios = [a["step_s"] / b["step_s"] for a, b in zip(rounds["32-true"], rounds["bf16-mixed"])]
    print("per round, speed-up bf16-mixed / 32-true: " + ", ".join(f"{r:.2f}" for r in ratios))
    for pair, ratio in speed_ups(results).items():
        print(f"speed-up {pair} (training images/s, medians over {args.rounds} rounds): {ratio:.2f}")


if __name__ == "__main__":
    main()
