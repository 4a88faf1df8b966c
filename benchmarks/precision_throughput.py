"""Training throughput of ``dae fit`` in full fp32 against bf16 mixed precision, measured in one run.

    python benchmarks/precision_throughput.py --data-dir /usr/share/datasets/fashion-mnist   # real IDX files
    python benchmarks/precision_throughput.py --config configs/mnist.yaml                   # the baseline instead
    python benchmarks/precision_throughput.py --device cuda                                 # on a GPU

Both contestants run ``dae fit --config configs/unet.yaml`` (default) on the same IDX files, one with
``--trainer.precision 32-true`` and one with ``--trainer.precision bf16-mixed`` (weights and optimizer in fp32,
convolutions in bfloat16 under ``torch.autocast``). Timing works as in ``train_throughput.py``: every
measurement is a fresh child process, each contestant runs for ``--short`` and ``--long`` steps and the time
difference over the step difference is the per-step time (start-up cancels); rounds alternate the contestants
and the median is reported. The ``loss`` column is the last logged training loss (MSE) of the long runs: same
seed, same data and noise, so it shows whether bf16 learns as fast per step.
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
from pathlib import Path

import torch
from train_throughput import ROOT, median_per_step, per_step, prepare_data, run_child

PRECISIONS = ("32-true", "bf16-mixed")


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
    args = parser.parse_args()
    if not args.short < args.long:
        parser.error("--short must be below --long")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible to torch")
    batch = args.batch_size

    with tempfile.TemporaryDirectory(prefix="dae-bench-") as tmp:
        work = Path(tmp)
        data, what = prepare_data(args.data_dir, work / "data")
        common = ["--device", args.device, "--batch-size", str(batch), "--data-root", str(data)]
        fit = ["fit", "--config", str(args.config), "--data.init_args.data_dir", str(data),
               "--data.init_args.dataset", "mnist", "--data.init_args.download", "false",
               "--data.init_args.batch_size", str(batch), "--trainer.limit_val_batches", "0",
               "--trainer.accelerator", "gpu" if device.type == "cuda" else "cpu", "--trainer.devices", "1",
               *shlex.split(args.dae_args)]
        # max_steps also sets the length of a cosine schedule: both contestants get the same one per length.
        run_child("dae", 1, work, common, [*fit, "--trainer.precision", "32-true"], "max_steps")  # warm-up
        rounds: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
        for _ in range(args.rounds):
            for precision in PRECISIONS:
                rounds[precision].append(per_step("dae", args.short, args.long, work, common,
                                                  [*fit, "--trainer.precision", precision], "max_steps"))
    results = {p: median_per_step(r) for p, r in rounds.items()}

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; data: {what}; batch {batch}")
    print(f"dae fit --config {args.config} {args.dae_args}; steps {args.short} and {args.long} (difference timed), "
          f"{args.rounds} rounds")
    print(f"{'precision':12} {'images/s':>10} {'ms/step':>8} {'max RSS MiB':>11} {'loss':>8}")
    for precision, r in results.items():
        loss = f"{r['final_loss']:.4f}" if r.get("final_loss") is not None else "-"
        print(f"{precision:12} {batch / r['step_s']:10.0f} {r['step_s'] * 1e3:8.2f} {r['max_rss_mib']:11.0f} {loss:>8}")
    ratios = [a["step_s"] / b["step_s"] for a, b in zip(rounds["32-true"], rounds["bf16-mixed"])]
    print("per round, speed-up bf16-mixed / 32-true: " + ", ".join(f"{r:.2f}" for r in ratios))
    ratio = results["32-true"]["step_s"] / results["bf16-mixed"]["step_s"]
    print(f"speed-up bf16-mixed / 32-true (training images/s, medians over {args.rounds} rounds): {ratio:.2f}")


if __name__ == "__main__":
    main()
