"""Training throughput: the baseline's plain PyTorch loop against ``dae fit``, measured in one run.

    python benchmarks/train_throughput.py --data-dir /usr/share/datasets/fashion-mnist   # real IDX files
    python benchmarks/train_throughput.py                                               # synthetic IDX files
    python benchmarks/train_throughput.py --device cuda                                 # on a GPU

Both contestants train the baseline model (ConvAutoencoder, Gaussian noise std 0.5, MSE, Adam 1e-3 / 1e-5) on
the same IDX files at the same batch size:

(a) the baseline's plain loop: torchvision's ``MNIST`` dataset with ``ToTensor``, a ``DataLoader`` (shuffled, no
    workers), noise added on the CPU, the model stepped by hand, the epoch loss summed with ``loss.item()``;
(b) ``dae fit --config configs/mnist.yaml`` as a user runs it: default progress bar (drawn into a
    pseudo-terminal, as in a shell), TensorBoard logging, checkpoints, sanity check.

Every measurement runs in a fresh child process (this script with ``--child``). Each contestant runs twice,
for ``--short`` and ``--long`` steps; the time difference over the step difference is the per-step time, so
start-up (imports, reading files, sanity check, checkpoint and plot at the end) cancels. Validation and test
throughput of ``dae validate`` / ``dae test`` (PSNR, SSIM, loss, seeded noise) are measured the same way
against the baseline's plain evaluation loop. The FLOP peak is the best of a few large fp32 matmuls on the same
device in the same run; FLOPs per image are counted with ``torch.utils.flop_counter`` on the baseline model.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import json
import os
import pty
import resource
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for dae and tests.idx when run as a script from anywhere

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ----------------------------------------------------------------------------------------------- child side
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _plain_model(device: torch.device):
    from dae.nets import ConvAutoencoder

    model = ConvAutoencoder().to(device)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)


def _plain_loader(data_root: Path, train: bool, batch_size: int):
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    dataset = datasets.MNIST(str(data_root), train=train, download=False, transform=transforms.ToTensor())
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=0)


def _endless(loader):
    while True:
        yield from loader


def plain_train(steps: int, data_root: Path, batch_size: int, device: torch.device) -> dict:
    """The baseline's hand-written training loop, stopped after ``steps`` steps; returns the mean loss of the
    last 50."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model, optimizer = _plain_model(device)
    model.train()
    losses = []
    for step, (clean, _) in enumerate(_endless(_plain_loader(data_root, True, batch_size))):
        if step == steps:
            break
        noisy = clean + 0.5 * torch.randn_like(clean)
        clean, noisy = clean.to(device), noisy.to(device)
        loss = F.mse_loss(model(noisy), clean)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {"final_loss": sum(losses[-50:]) / len(losses[-50:])}


@torch.no_grad()
def plain_eval(steps: int, data_root: Path, batch_size: int, device: torch.device) -> dict:
    """The baseline's evaluation loop: seeded noise, forward pass, MSE summed with ``loss.item()``."""
    import torch.nn.functional as F

    model, _ = _plain_model(device)
    model.eval()
    generator = torch.Generator().manual_seed(1234)
    total = 0.0
    for step, (clean, _) in enumerate(_endless(_plain_loader(data_root, False, batch_size))):
        if step == steps:
            break
        noisy = (clean + 0.5 * torch.randn(clean.shape, generator=generator)).to(device)
        total += F.mse_loss(model(noisy), clean.to(device)).item()
    return {"final_loss": total / steps}


def dae_run(argv: list[str]) -> dict:
    """``dae <argv>`` in this process; returns the last logged train loss when there is one."""
    from dae.commands.cli import DaeCLI

    cli = DaeCLI(args=argv)
    loss = cli.trainer.callback_metrics.get("train/loss")
    return {"final_loss": None if loss is None else float(loss)}


def child_main(args: argparse.Namespace, rest: list[str]) -> None:
    # Imported before the clock starts: import time is start-up, which the two run lengths cancel anyway,
    # but it varies with the file cache and would only add noise.
    import matplotlib.pyplot  # noqa: F401  (loss.png at the end of fit)
    import torchvision.datasets  # noqa: F401

    import dae.commands.cli  # noqa: F401

    device = torch.device(args.device)
    data_root = Path(args.data_root)
    if args.child == "dae":
        work = lambda: dae_run([*rest, f"--trainer.{args.limit_key}={args.steps}"])  # noqa: E731
    else:
        fn = plain_train if args.child == "plain_train" else plain_eval
        work = lambda: fn(args.steps, data_root, args.batch_size, device)  # noqa: E731
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    out = work()
    _sync(device)
    out["seconds"] = time.perf_counter() - start
    out["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["device_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    Path(args.result).write_text(json.dumps(out))


# ---------------------------------------------------------------------------------------------- parent side
def prepare_data(source: Path | None, folder: Path) -> tuple[Path, str]:
    """Uncompressed IDX files in ``folder/MNIST/raw`` (torchvision's layout, which dae also reads).

    A second tree ``folder/eval/MNIST/raw`` uses the training images as its test file, so evaluation runs
    have enough batches to time (throughput does not depend on which images are shown).
    """
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True)
    if source is None:
        from tests.idx import write_mnist_files

        write_mnist_files(raw, n_train=60_000, n_test=10_000)
        what = "synthetic IDX files (60,000 train / 10,000 test, written by this script)"
    else:
        from dae.data.mnist import find_idx_file

        for name in IDX_FILES:
            found = find_idx_file([source, source / "MNIST" / "raw"], name)
            if found is None:
                sys.exit(f"--data-dir {source}: {name}[.gz] is missing there")
            with (gzip.open if found.suffix == ".gz" else open)(found, "rb") as f_in, open(raw / name, "wb") as f_out:
                shutil.copyfileobj(f_in, f_out)
        what = f"IDX files from {source}"
    eval_raw = folder / "eval" / "MNIST" / "raw"
    eval_raw.mkdir(parents=True)
    for name in IDX_FILES:
        os.symlink(raw / name.replace("t10k", "train"), eval_raw / name)
    return folder, what


def run_child(kind: str, steps: int, work: Path, common: list[str], rest: list[str] = (), limit_key: str = "") -> dict:
    """One measurement in a fresh process whose stdout is a 120x40 pseudo-terminal, as a shell gives it."""
    result = work / "result.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--steps", str(steps),
           "--result", str(result), "--limit-key", limit_key, *common, "--", *rest]
    env = {**os.environ, "TERM": os.environ.get("TERM", "xterm-256color")}
    env.pop("COLUMNS", None)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=work, env=env)
    os.close(slave)
    tail = b""
    while True:  # drain the terminal like a shell would; keep the end for error messages
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        tail = (tail + chunk)[-8000:]
    os.close(master)
    if proc.wait() != 0 or not result.exists():
        sys.exit(f"{kind} run ({steps} steps) failed:\n{tail.decode(errors='replace')}")
    return json.loads(result.read_text())


def per_step(kind: str, short: int, long: int, work: Path, common: list[str], rest: list[str] = (),
             limit_key: str = "") -> dict:
    """Seconds per step from two run lengths (start-up cancels), plus what the longer run reported."""
    a = run_child(kind, short, work, common, rest, limit_key)
    b = run_child(kind, long, work, common, rest, limit_key)
    return {**b, "step_s": (b["seconds"] - a["seconds"]) / (long - short)}


def median_per_step(rounds: list[dict]) -> dict:
    """The round with the median per-step time (an odd number of rounds gives a real run's numbers)."""
    return sorted(rounds, key=lambda r: r["step_s"])[(len(rounds) - 1) // 2]


def flop_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an ``n x n`` matmul on ``device``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    inner = 10 if device.type == "cuda" else 1
    best = float("inf")
    for _ in range(repeats + 1):  # the first round warms up
        _sync(device)
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - start) / inner)
    return 2 * n**3 / best


def flops_per_training_image() -> float:
    """Forward + backward FLOPs of the baseline model per image (counted, not estimated)."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from dae.nets import ConvAutoencoder

    model, x = ConvAutoencoder(), torch.rand(64, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(model(x), x).backward()
    return counter.get_total_flops() / 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="folder with the four MNIST-format IDX files (.gz or not); "
                        "default: write synthetic ones")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--config", type=Path, action="append", help="dae config, repeatable (default: "
                        "configs/mnist.yaml, followed by configs/gpu.yaml on a GPU)")
    parser.add_argument("--dae-args", default="", help="extra arguments for every dae command, e.g. "
                        "'--model.compile true' or '--trainer.precision 32-true'")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--short", type=int, default=150, help="steps of the short runs")
    parser.add_argument("--long", type=int, default=850, help="steps of the long runs (< one epoch of dae fit)")
    parser.add_argument("--rounds", type=int, default=3, help="training measurements per contestant, "
                        "alternating; the median is reported")
    parser.add_argument("--eval-short", type=int, default=40, help="batches of the short evaluation runs")
    parser.add_argument("--eval-long", type=int, default=400, help="batches of the long evaluation runs")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in every child (default: torch's)")
    parser.add_argument("--no-eval", action="store_true", help="time training only, not validation and test")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    # internal: one measurement in a child process
    parser.add_argument("--child", choices=["plain_train", "plain_eval", "dae"], help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--limit-key", help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(rest) - 1] if "--" in argv else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child_main(args, rest)
        return
    if not args.short < args.long or not args.eval_short < args.eval_long:
        parser.error("--short must be below --long, and --eval-short below --eval-long")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible to torch")
    configs = args.config or [ROOT / "configs" / "mnist.yaml"] + ([ROOT / "configs" / "gpu.yaml"] if device.type == "cuda" else [])
    config_args = [a for c in configs for a in ("--config", str(c.resolve()))]  # the children run elsewhere
    batch = args.batch_size

    with tempfile.TemporaryDirectory(prefix="dae-bench-") as tmp:
        work = Path(tmp)
        data, what = prepare_data(args.data_dir, work / "data")
        common = ["--device", args.device, "--batch-size", str(batch), "--data-root", str(data)]
        if args.threads:
            common += ["--threads", str(args.threads)]
        accel = ["--trainer.accelerator", "gpu" if device.type == "cuda" else "cpu", "--trainer.devices", "1"]
        fit = ["fit", *config_args, "--data.data_dir", str(data), "--data.download", "false",
               "--data.batch_size", str(batch), *accel, *shlex.split(args.dae_args)]
        # Evaluation: 30,000 validation images, and the 60,000-image training file as test file (see prepare_data).
        evaluate = [*config_args, "--data.data_dir", str(data / "eval"), "--data.download", "false",
                    "--data.batch_size", str(batch), "--data.val_split", "30000", *accel, *shlex.split(args.dae_args)]
        eval_common = [*common[:-1], str(data / "eval")]

        run_child("dae", 1, work, common, fit, "max_steps")  # warm-up: file caches, first-run effects
        # Rounds alternate the contestants, so that a slow spell of the machine hits both alike.
        training = {"plain loop": [], "dae fit": []}
        for _ in range(args.rounds):
            training["plain loop"].append(per_step("plain_train", args.short, args.long, work, common))
            training["dae fit"].append(per_step("dae", args.short, args.long, work, common, fit, "max_steps"))
        results = {label: median_per_step(rounds) for label, rounds in training.items()}
        if not args.no_eval:
            results["plain eval loop"] = per_step("plain_eval", args.eval_short, args.eval_long, work, eval_common)
            results["dae validate"] = per_step("dae", args.eval_short, args.eval_long, work, common,
                                               ["validate", *evaluate], "limit_val_batches")
            results["dae test"] = per_step("dae", args.eval_short, args.eval_long, work, common,
                                           ["test", *evaluate], "limit_test_batches")
        peak = flop_peak(device, torch.float32)
        peak_bf16 = flop_peak(device, torch.bfloat16) if device.type == "cuda" else None
        flops = flops_per_training_image()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; data: {what}; batch {batch}")
    evaluation = "not timed" if args.no_eval else f"batches {args.eval_short} and {args.eval_long}"
    print(f"training: steps {args.short} and {args.long} (difference timed), {args.rounds} rounds; evaluation: "
          f"{evaluation}; dae {' '.join(config_args)} {args.dae_args}")
    print(f"FLOP peak (fp32 matmul 2048^2): {peak / 1e9:.1f} GFLOP/s"
          + (f"; bf16: {peak_bf16 / 1e9:.1f} GFLOP/s" if peak_bf16 else "")
          + f"; baseline model: {flops / 1e6:.2f} MFLOP per training image (forward + backward)")
    print(f"{'':16} {'images/s':>10} {'ms/step':>8} {'of fp32 peak':>12} {'max RSS MiB':>11} {'GPU peak MiB':>12}"
          f" {'loss':>8}")
    for label, r in results.items():
        images_s = batch / r["step_s"]
        frac = f"{images_s * flops / peak:.1%}" if label in training else "-"
        gpu = f"{r['device_peak_mib']:.0f}" if r["device_peak_mib"] is not None else "-"
        loss = f"{r['final_loss']:.4f}" if r.get("final_loss") is not None else "-"
        print(f"{label:16} {images_s:10.0f} {r['step_s'] * 1e3:8.2f} {frac:>12} {r['max_rss_mib']:11.0f} {gpu:>12}"
              f" {loss:>8}")
    ratios = [p["step_s"] / d["step_s"] for p, d in zip(training["plain loop"], training["dae fit"])]
    print("per round, images/s plain / dae fit / ratio: " + "; ".join(
        f"{batch / p['step_s']:.0f} / {batch / d['step_s']:.0f} / {r:.2f}"
        for p, d, r in zip(training["plain loop"], training["dae fit"], ratios)))
    ratio = results["plain loop"]["step_s"] / results["dae fit"]["step_s"]
    print(f"ratio dae fit / plain loop (training images/s, medians over {args.rounds} rounds): {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps({
            "device": name, "torch": torch.__version__, "batch_size": batch, "ratio": ratio, "round_ratios": ratios,
            "images_s": {label: batch / r["step_s"] for label, r in results.items()}, "results": results,
        }, indent=1))


if __name__ == "__main__":
    main()
