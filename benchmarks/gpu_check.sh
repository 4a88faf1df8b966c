#!/usr/bin/env bash
# Every GPU check of dae in one command, for a machine with one GPU (sized for about 8 minutes on an H100/H200):
#
#   OUT=results benchmarks/gpu_check.sh                                  # on the GPU machine
#   DAE_DEVICE=cpu PYTHON=.venv/bin/python benchmarks/gpu_check.sh       # rehearsal on a CPU, shortened runs
#
# It installs what is missing, then runs, each step with a time limit and past any step that fails:
#   1. the GPU tests (tests/test_gpu.py and the tests elsewhere that skip without a GPU);
#   2. benchmarks/train_throughput.py: the plain PyTorch loop against dae fit with configs/gpu.yaml, batch 64;
#   3. a torch.profiler summary of dae fit with configs/gpu.yaml (benchmarks/fit_time.py --profile);
#   4. one full 10-epoch dae fit of configs/mnist.yaml + configs/gpu.yaml on the shipped MNIST, start-up apart,
#      and its best checkpoint tested again in fp32 (32-true) against the fit's own bf16 test;
#   5. the photo network of configs/gray_blind.yaml: bf16-mixed against fp32, torch.compile against eager.
# $OUT (default: a new temporary folder) receives summary.md (check, result, target, met?) and one log per step.
#
# Environment: DAE_DEVICE (cuda, the default, or cpu), PYTHON (default python3), OUT, DAE_BUDGET_S (the whole
# run's time limit in seconds; default 470 on a GPU, 290 on the CPU: later steps get what earlier ones left).
#
# A machine without a network connection installs from wheels in .whl/ at the repository root when that folder
# exists (else from the package index, if anything is missing). The GPU machine's python3 has torch, Lightning,
# torchmetrics, torchvision, tensorboard, matplotlib, onnx, onnxruntime, pytest and pytest-xdist; dae also needs
# these four, fetched on a machine with a network connection, in the repository root, by:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0 pypng==0.20220715.0
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEVICE=${DAE_DEVICE:-cuda}
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d -t dae-gpu-check-XXXXXX)}
if [[ $DEVICE == cuda ]]; then BUDGET=${DAE_BUDGET_S:-470}; else BUDGET=${DAE_BUDGET_S:-290}; fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d -t dae-gpu-work-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"
MNIST=(--config "$ROOT/configs/mnist.yaml" --config "$ROOT/configs/gpu.yaml" --data.data_dir "$ROOT/data")
if [[ $DEVICE == cuda ]]; then
  ACCEL=() SHORT_FIT=() SHORT_TEST=()
else  # gpu.yaml on the CPU: everything but the device, over a few batches
  ACCEL=(--trainer.accelerator cpu)
  SHORT_TEST=(--trainer.limit_val_batches 5 --trainer.limit_test_batches 5)
  SHORT_FIT=(--trainer.max_epochs 2 --trainer.limit_train_batches 20 "${SHORT_TEST[@]}")
fi
export ROOT PY WORK

in_dir() { cd "$1" && shift && "$@"; }
export -f in_dir

# step NAME LOG MAX_SECONDS COMMAND...: run COMMAND (a program or an exported function), its output appended to LOG,
# for at most MAX_SECONDS and at most what the budget has left (10 s are kept for the summary); records
# "NAME EXIT_CODE SECONDS" in $WORK/steps.
step() {
  local name=$1 log=$2 limit=$3 rc=0 start=$SECONDS
  shift 3
  local left=$((BUDGET - SECONDS - 10))
  ((limit > left)) && limit=$left
  if ((limit < 20)); then
    echo "== $name: skipped, the time budget ($BUDGET s) is spent" | tee -a "$log"
    echo "$name skipped 0" >>"$WORK/steps"
    return 0
  fi
  echo "== $name (at most $limit s): $*" | tee -a "$log"
  timeout -k 10 "$limit" bash -c '"$@"' _ "$@" >>"$log" 2>&1 || rc=$?
  ((rc == 124 || rc == 137)) && echo "== $name: stopped after $limit s" >>"$log"
  echo "== $name: exit code $rc after $((SECONDS - start)) s" | tee -a "$log"
  echo "$name $rc $((SECONDS - start))" >>"$WORK/steps"
}

# ---------------------------------------------------------------------------------------------- 1. install
# dae runs from this checkout (PYTHONPATH), as `pip install -e .` would run it; only its dependencies are installed.
install() {
  set -e
  local modules=(lightning jsonargparse docstring_parser typeshed_client png torchmetrics torchvision tensorboard
                 matplotlib filelock pytest onnx onnxscript onnxruntime)  # what dae and its GPU tests import
  local check='import importlib.util, sys
missing = [name for name in sys.argv[1:] if importlib.util.find_spec(name) is None]
print(f"missing: {missing}" if missing else "every package is there")
sys.exit(bool(missing))'
  if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
    echo "installing the wheels in .whl/ into $WORK/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
      "$ROOT"/.whl/*.whl
  elif ! "$PY" -c "$check" "${modules[@]}"; then
    "$PY" -m pip install -q -e "$ROOT[export]" pytest
  fi
  "$PY" -c "$check" "${modules[@]}"
  "$PY" - <<'EOF'
import importlib.metadata as md, platform, torch
print(f"python {platform.python_version()}; torch {torch.__version__}; CUDA available: {torch.cuda.is_available()}"
      + (f"; {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
print("; ".join(f"{p} {md.version(p)}" for p in ("lightning", "torchmetrics", "torchvision", "jsonargparse", "onnx",
                                                 "onnxruntime", "pytest")))
EOF
  if command -v nvidia-smi >/dev/null; then nvidia-smi; fi
  echo "CPU cores: $(nproc --all)"
}
export -f install
export PYTHONPATH="$ROOT:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
step install "$OUT/env.log" 120 install

# ------------------------------------------------------------------------------------------------ 2. tests
# Tests that skip without a GPU; DAE_DEVICE=cpu runs those of tests/test_gpu.py on the CPU (the others skip).
GPU_TESTS=(tests/test_gpu.py tests/test_data.py::test_on_device_gpu_batches_need_no_host_sync
           tests/test_fault_tolerance.py::test_non_finite_check_does_not_wait_for_the_gpu_between_logging_steps
           tests/test_configs.py::test_gpu_overlay_runs_on_the_gpu)
PARALLEL=()
if [[ $DEVICE == cuda ]] && "$PY" -c "import xdist" 2>/dev/null; then PARALLEL=(-n 4); fi
step tests "$OUT/tests.log" 180 env DAE_DEVICE="$DEVICE" "$PY" -m pytest -p no:cacheprovider -q -rA \
  "${PARALLEL[@]}" "${GPU_TESTS[@]}"

# ------------------------------------------------------------------------------- 3. throughput and profile
if [[ $DEVICE == cuda ]]; then STEPS=(); else STEPS=(--rounds 1 --short 1 --long 3); fi
step throughput "$OUT/throughput.log" 210 "$PY" benchmarks/train_throughput.py --device "$DEVICE" --data-dir data \
  --config configs/mnist.yaml --config configs/gpu.yaml --batch-size 64 --no-eval "${STEPS[@]}" \
  --dae-args "--test_after_fit false" --json "$WORK/throughput.json"

# Steps FIRST to LAST - 1 of a run of MAX steps (less than an epoch: no validation among them), with Lightning's
# hook timings (--trainer.profiler simple) beside torch.profiler's.
if [[ $DEVICE == cuda ]]; then FIRST=100 LAST=200 MAX=300; else FIRST=3 LAST=8 MAX=10; fi
mkdir -p "$WORK/profile" "$WORK/epochs"
step profile "$OUT/profile.log" 60 in_dir "$WORK/profile" "$PY" "$ROOT/benchmarks/fit_time.py" \
  --profile "$FIRST" "$LAST" --profile-out "$WORK/profile.txt" -- fit "${MNIST[@]}" "${ACCEL[@]}" \
  --trainer.max_steps "$MAX" --test_after_fit false --trainer.profiler simple
if [[ -f $WORK/profile.txt ]]; then cat "$WORK/profile.txt" >>"$OUT/profile.log"; fi

# --------------------------------------------------------------------------------------- 4. ten epochs, bf16
step epochs "$OUT/epochs.log" 120 in_dir "$WORK/epochs" "$PY" "$ROOT/benchmarks/fit_time.py" \
  --json "$WORK/epochs.json" -- fit "${MNIST[@]}" "${ACCEL[@]}" "${SHORT_FIT[@]}"
BEST=$(ls "$WORK"/epochs/lightning_logs/version_0/checkpoints/best-*.ckpt 2>/dev/null | head -1 || true)
if [[ -n $BEST ]]; then
  step fp32_test "$OUT/epochs.log" 60 in_dir "$WORK/epochs" "$PY" "$ROOT/benchmarks/fit_time.py" \
    --json "$WORK/fp32.json" -- test "${MNIST[@]}" "${ACCEL[@]}" "${SHORT_TEST[@]}" --trainer.precision 32-true \
    --ckpt_path "$BEST"
else
  echo "fp32_test no-best-checkpoint 0" >>"$WORK/steps"
fi

# ------------------------------------------------------------------------------------------ 5. photo network
# The config's batch of 16 patches of 64x64. torch.compile on the CPU builds C++ for a minute and more: the
# rehearsal leaves that contestant out, and trains on 2 patches of 32x32.
if [[ $DEVICE == cuda ]]; then PHOTO=(--compile --rounds 1 --short 50 --long 850 --batch-size 16) PATCH=()
else PHOTO=(--rounds 1 --short 1 --long 2 --batch-size 2) PATCH=(--data.init_args.patch_size 32); fi
step photo "$OUT/photo.log" 240 "$PY" benchmarks/precision_throughput.py --device "$DEVICE" \
  --config configs/gray_blind.yaml "${PHOTO[@]}" --dae-args "--test_after_fit false ${PATCH[*]}" \
  --json "$WORK/photo.json"

# ------------------------------------------------------------------------------------------------- summary
"$PY" - "$WORK" "$OUT" "$DEVICE" "$BUDGET" "$SECONDS" <<'EOF'
"""summary.md: one row per check (result, target, met?) from the steps' exit codes, JSON files and logs."""
import json
import math
import re
import sys
from pathlib import Path

work, out, device, budget, seconds = Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:]
steps = {name: (rc, s) for name, rc, s in (line.split() for line in (work / "steps").read_text().splitlines())}
on_gpu = device == "cuda"
rows = []


def text(log: str) -> str:
    return (out / log).read_text(errors="replace") if (out / log).is_file() else ""


def load(name: str) -> dict | None:
    path = work / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def failure(step: str, log: str) -> str | None:
    """Why the step did not end well (None when it did)."""
    rc = steps.get(step, ("not-run", 0))[0]
    return None if rc == "0" else f"FAIL ({f'exit code {rc}' if rc.isdigit() else rc}, see {log})"


def row(check: str, result: str | None, target: str, ok: bool | None, step: str, log: str) -> None:
    """A row; ``ok`` None for a check without a target. On the CPU a target only says whether the step ran."""
    why = failure(step, log)
    result = "; ".join(filter(None, (result, why))) or "no result"
    if why or result == "no result":
        met = "NO" if target != "-" else "FAIL"
    elif ok is None:
        met = "-"
    else:
        met = ("yes" if ok else "NO") if on_gpu else "n/a (CPU)"
    rows.append((check, result, target, met))


summary = re.findall(r"^[= ]*((?:\d+ (?:passed|failed|skipped|errors?|warnings?|deselected)(?:, )?)+) in ",
                     text("tests.log"), re.M)
counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (\w+)", summary[-1])} if summary else {}
row("GPU tests: tests/test_gpu.py and 3 more", summary[-1] if summary else None, "all pass, none skipped",
    not counts.get("skipped") and not counts.get("failed"), "tests", "tests.log")

t = load("throughput")
row("dae fit + gpu.yaml vs plain loop, batch 64",
    t and f"{t['images_s']['dae fit']:,.0f} vs {t['images_s']['plain loop']:,.0f} images/s: {t['ratio']:.2f}x "
          f"(rounds: {', '.join(f'{r:.2f}' for r in t['round_ratios'])})",
    ">= 5x", t is not None and t["ratio"] >= 5, "throughput", "throughput.log")

profile = text("profile.log")
found = {"wall time (profiled)": r"wall time: ([\d.]+) ms/step",
         "host in torch operations": r"host time inside torch operations: ([\d.]+) ms/step \((\d+)%",
         "GPU busy": r"GPU busy \(kernels and copies\): ([\d.]+) ms/step \((\d+)%"}
parts = [f"{what} {m[1]} ms/step" + (f" ({m[2]}% of the wall time)" if m.lastindex > 1 else "")
         for what, pattern in found.items() if (m := re.search(pattern, profile))]
row("torch.profiler of dae fit + gpu.yaml", parts and "; ".join(parts) + "; tables in profile.log", "-", None,
    "profile", "profile.log")

e = load("epochs")
trained = e is not None and e["train_s"] is not None
row("10 epochs of mnist.yaml + gpu.yaml, training" + ("" if on_gpu else " (CPU: 2 short epochs)"),
    trained and f"{e['train_s']:.1f} s for {len(e['epochs_s'])} epochs, {e['steps']} steps, validation "
                f"({e['validation_in_training_s']:.1f} s) included; start-up {e['startup_s']:.1f} s apart, after "
                f"training {e['after_training_s']:.1f} s, wall {e['wall_s']:.1f} s",
    "< 15 s", trained and e["train_s"] < 15, "epochs", "epochs.log")

f = load("fp32")
psnr = [r["metrics"].get("test/psnr") for r in (e, f) if r is not None]
if len(psnr) == 2 and None not in psnr:
    finite = all(math.isfinite(v) for v in (*e["metrics"].values(), *f["metrics"].values()))
    result = (f"test PSNR {psnr[0]:.3f} dB (bf16-mixed) vs {psnr[1]:.3f} dB (32-true): {abs(psnr[0] - psnr[1]):.3f} dB "
              f"apart; {'every metric finite' if finite else 'NaN or inf among the metrics'}")
    row("bf16 vs fp32: test of the 10-epoch model", result, "no NaN, within 0.05 dB",
        finite and abs(psnr[0] - psnr[1]) < 0.05, "fp32_test", "epochs.log")
else:
    row("bf16 vs fp32: test of the 10-epoch model", None, "no NaN, within 0.05 dB", False, "fp32_test", "epochs.log")

p = load("photo")
for pair, (fast, slow) in {"bf16-mixed / 32-true": ("bf16-mixed", "32-true"),
                           "compiled / eager": ("bf16-mixed, compiled", "bf16-mixed")}.items():
    check = f"photo net (gray_blind.yaml), {pair}"
    if not on_gpu and pair == "compiled / eager":
        rows.append((check, "not run on the CPU (compiling takes minutes there)", "-", "-"))
        continue
    r = p and p["results"]
    losses = r and pair in p["speed_ups"] and " vs ".join(
        "-" if r[k].get("final_loss") is None else f"{r[k]['final_loss']:.4f}" for k in (fast, slow))
    row(check, losses and f"{p['batch_size'] / r[fast]['step_s']:,.0f} vs {p['batch_size'] / r[slow]['step_s']:,.0f} "
                          f"images/s: {p['speed_ups'][pair]:.2f}x; last train loss {losses}",
        "-", None, "photo", "photo.log")

versions = [line for line in text("env.log").splitlines() if line.startswith(("python ", "lightning "))]
times = ", ".join(f"{name} {s} s" for name, (rc, s) in steps.items())
rehearsal = [] if on_gpu else ["Shortened runs on the CPU: they show that every step works, and measure nothing.", ""]
lines = [f"# dae GPU check ({'on the GPU' if on_gpu else 'CPU rehearsal'}, DAE_DEVICE={device})", "", *versions, "",
         *rehearsal,
         "| check | result | target | met? |", "|---|---|---|---|", *(f"| {' | '.join(r)} |" for r in rows), "",
         f"Step times: {times}; {seconds} s in all (budget {budget} s). Logs: env.log, tests.log, throughput.log, "
         "profile.log, epochs.log, photo.log."]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
