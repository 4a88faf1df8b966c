"""The GPU path end to end: ``configs/gpu.yaml`` training, bf16 numerics, on-device batches, predict, export and
the non-finite loss stop, each on a real GPU.

Without a GPU these tests are skipped. ``DAE_DEVICE=cpu`` runs them on the CPU instead (``configs/gpu.yaml`` with
the accelerator set to the CPU), which checks everything but the device itself: ``benchmarks/gpu_check.sh`` does
that in its rehearsal, so that a broken test shows before a GPU is at hand.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, run_dae

DEVICE = os.environ.get("DAE_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs a GPU (DAE_DEVICE=cpu runs these on the CPU)")
ACCELERATOR = "gpu" if DEVICE == "cuda" else "cpu"
CONFIGS = ROOT / "configs"
BF16_PSNR_TOLERANCE = 0.05  # dB: bf16-mixed evaluation of a trained model against fp32


def gpu_fit_args(data_dir: Path, *extra: str) -> list[str]:
    """``dae fit`` with configs/mnist.yaml + configs/gpu.yaml on the fixture data, on ``DEVICE``."""
    return ["fit", f"--config={CONFIGS / 'mnist.yaml'}", f"--config={CONFIGS / 'gpu.yaml'}",
            *data_args(data_dir), "--trainer.enable_model_summary=false", *extra]


def data_args(data_dir: Path) -> list[str]:
    return [f"--data.data_dir={data_dir}", "--data.val_split=64", "--data.download=false",
            f"--trainer.accelerator={ACCELERATOR}"]


def clean_test_images(data_dir: Path) -> np.ndarray:
    """The fixture's clean test images (N, 28, 28), read from its IDX file (16-byte header)."""
    return np.fromfile(data_dir / "t10k-images-idx3-ubyte", dtype=np.uint8, offset=16).reshape(-1, 28, 28)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-image PSNR (dB) of 8-bit images."""
    mse = (((a.astype(np.float64) - b) / 255) ** 2).reshape(len(a), -1).mean(1)
    return float((-10 * np.log10(mse)).mean())


@contextmanager
def full_fp32() -> Iterator[None]:
    """Convolutions and matmuls in full fp32 (no TF32 on the GPU), so that two fp32 runs compare to 1e-5."""
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


@pytest.fixture(scope="module")
def gpu_run(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of a short ``dae fit`` with the GPU overlay (bf16-mixed, images on the device)."""
    cwd = tmp_path_factory.mktemp("gpu_run")
    code, out = run_dae(cwd, gpu_fit_args(mnist_dir, "--trainer.max_epochs=2", "--data.batch_size=16",
                                          "--model.lr=0.003", "--test_after_fit=false"))
    assert code == 0, out
    return cwd / "lightning_logs" / "version_0"


@pytest.mark.slow
def test_bf16_evaluation_of_a_trained_model_matches_fp32(mnist_dir):
    import lightning as L

    from dae.data import MNISTDataModule
    from dae.module import DenoisingModule

    def trainer(precision: str, **kwargs) -> L.Trainer:
        return L.Trainer(accelerator=ACCELERATOR, devices=1, precision=precision, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)

    torch.manual_seed(0)
    model = DenoisingModule(lr=3e-3)
    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=32, val_split=64, download=False, on_device=True)
    fit = trainer("bf16-mixed", max_epochs=3)
    fit.fit(model, data)
    assert torch.isfinite(fit.callback_metrics["train/loss"])  # bf16 training: no NaN
    with full_fp32():
        scores = {p: trainer(p).test(model, data, verbose=False)[0] for p in ("32-true", "bf16-mixed")}
    fp32, bf16 = scores["32-true"]["test/psnr"], scores["bf16-mixed"]["test/psnr"]
    assert np.isfinite([fp32, bf16]).all()
    assert fp32 > scores["32-true"]["test/psnr_noisy"] + 3  # a model that denoises, not noise in, noise out
    assert abs(bf16 - fp32) < BF16_PSNR_TOLERANCE, scores


@pytest.mark.slow
def test_gpu_overlay_steps_never_wait_for_the_gpu_between_logging_steps(mnist_dir, tmp_path):
    # 16 batches of 16 with no logging, checkpoint or bar redraw among them: the probe makes any wait of the
    # host for the GPU an error from the end of batch 1 to the end of batch 13, batch fetches included.
    probe = {"class_path": "tests.probes.NoHostSync", "init_args": {"first": 1, "last": 13}}
    code, out = run_dae(tmp_path, gpu_fit_args(mnist_dir, "--trainer.max_epochs=1", "--data.batch_size=16",
                                               "--trainer.log_every_n_steps=50", "--test_after_fit=false",
                                               f"--trainer.callbacks+={json.dumps(probe)}"))
    assert code == 0, out


@pytest.mark.slow
def test_predict_with_the_gpu_overlay_writes_denoised_pngs(gpu_run, mnist_dir, tmp_path):
    from PIL import Image

    ckpt = gpu_run / "checkpoints" / "last.ckpt"
    code, out = run_dae(tmp_path, ["predict", f"--config={CONFIGS / 'mnist.yaml'}", f"--config={CONFIGS / 'gpu.yaml'}",
                                   *data_args(mnist_dir), f"--ckpt_path={ckpt}",
                                   f"--prediction_writer.output_dir={tmp_path / 'out'}"])
    assert code == 0, out
    written = sorted((tmp_path / "out").iterdir())
    clean = clean_test_images(mnist_dir)
    assert [p.name for p in written] == [f"{i:05d}.png" for i in range(len(clean))]
    denoised = np.stack([np.asarray(Image.open(p)) for p in written])
    assert denoised.shape == clean.shape and denoised.std() > 0
    assert psnr(denoised, clean) > 10  # the noisy inputs (std 0.5) are at about 6 dB


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_of_a_gpu_trained_model_matches_it_on_the_gpu(gpu_run, tmp_path, fmt):
    from dae.nets import ConvAutoencoder

    out = tmp_path / f"dae.{fmt}"
    code, log = run_dae(tmp_path, ["export", "--ckpt", str(gpu_run), "--format", fmt, "-o", str(out)])
    assert code == 0 and "parity with PyTorch" in log, log
    state = torch.load(gpu_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    net = ConvAutoencoder()
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    net.to(DEVICE).eval()
    batch = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), full_fp32():
        expected = net(batch.to(DEVICE)).cpu()
        if fmt == "torchscript":  # the file runs on the GPU too
            got = torch.jit.load(str(out), map_location=DEVICE)(batch.to(DEVICE)).cpu()
        else:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"noisy": batch.numpy()})[0])
    assert (got - expected).abs().max() < 1e-4


@pytest.mark.slow
def test_non_finite_loss_on_the_gpu_stops_the_run_and_keeps_checkpoints_finite(mnist_dir, tmp_path):
    # 2 epochs of 5 steps; NaN from global step 6 (epoch 1, batch 1); last.ckpt only at epoch ends (step 5).
    code, out = run_dae(tmp_path, gpu_fit_args(
        mnist_dir, "--model.net=tests.probes.NaNNet", "--model.net.init_args.nan_from=7", "--data.batch_size=32",
        "--trainer.max_epochs=2", "--trainer.limit_train_batches=5", "--trainer.log_every_n_steps=4",
        "--last_checkpoint.every_n_train_steps=0", "--trainer.enable_progress_bar=false"))
    assert code == 2, out
    # On a GPU the loss is read every log_every_n_steps (4) steps, so the stop comes at step 7; on the CPU at once.
    stopped = ("at step 7, without writing a checkpoint since" if DEVICE == "cuda"
               else "before that step changed the weights")
    assert f"became NaN or infinite at global step 6 (epoch 1, batch 1); training stopped {stopped}" in out
    last = torch.load(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    assert last["global_step"] == 5 and all(torch.isfinite(v).all() for v in last["state_dict"].values())


@pytest.mark.slow
def test_dae_denoise_on_the_gpu_matches_the_cpu(tmp_path):
    from PIL import Image

    from tests.idx import synthetic_images

    Image.fromarray(synthetic_images(1, size=96, seed=5)[0]).save(tmp_path / "photo.png")
    outputs = {}
    for device in dict.fromkeys((DEVICE, "cpu")):  # the builtin photo model, the same seeded noise (drawn on the CPU)
        code, log = run_dae(tmp_path, ["denoise", "photo.png", "--add-noise", "0.1", "--device", device,
                                       "-o", f"out-{device}"])
        assert code == 0, log
        outputs[device] = np.asarray(Image.open(tmp_path / f"out-{device}" / "photo.png")).astype(int)
    diff = np.abs(outputs[DEVICE] - outputs["cpu"])
    assert diff.max() <= 2 and diff.mean() < 0.5  # 8-bit levels; TF32 convolutions on the GPU
