"""Real DDP: ``dae fit --trainer.strategy ddp --trainer.devices 2`` as two CPU processes (gloo)."""

from __future__ import annotations

import json

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dae.training.callbacks import read_scalars
from tests.conftest import ROOT, fit_args, run_dae

pytestmark = pytest.mark.slow  # every test here shares one real training run


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def ddp_run(mnist_dir, tmp_path_factory):
    """Two epochs on 2 processes: 256 training images are 128 per rank, 2 batches of 64 per epoch."""
    cwd = tmp_path_factory.mktemp("ddp")
    probe = {"class_path": "tests.probes.RankReport", "init_args": {"folder": str(cwd / "report")}}
    code, out = run_dae(cwd, fit_args(
        mnist_dir, f"--config={ROOT / 'configs' / 'ddp.yaml'}", "--trainer.devices=2", "--trainer.accelerator=cpu",
        "--trainer.enable_model_summary=false", f"--trainer.callbacks+={json.dumps(probe)}",
    ))
    assert code == 0, out
    reports = [json.loads((cwd / "report" / f"rank{r}.json").read_text()) for r in (0, 1)]
    return cwd, reports


def test_both_ranks_trained_the_same_model(ddp_run):
    _, reports = ddp_run
    assert [r["rank"] for r in reports] == [0, 1] and all(r["world_size"] == 2 for r in reports)
    assert [r["train_batches"] for r in reports] == [4, 4] and [r["global_step"] for r in reports] == [4, 4]
    # DDP averaged the gradients: both ranks end with the same weights.
    assert reports[0]["weights_sum"] == pytest.approx(reports[1]["weights_sum"], rel=1e-6)


def test_one_run_folder_one_set_of_checkpoints_grids_and_plot(ddp_run):
    cwd, _ = ddp_run
    runs = list((cwd / "lightning_logs").iterdir())
    assert [p.name for p in runs] == ["version_0"]
    run = runs[0]
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["best-epoch01-step4.ckpt", "last.ckpt"]
    assert (run / "loss.png").exists()
    events = list(run.glob("events.out.tfevents.*"))
    # Only rank 0 logs: every event file (training's, and the test's after it) is from one process,
    # whose id TensorBoard puts in the name (events.out.tfevents.TIME.HOST.PID.N).
    assert len({e.name.split(".")[-2] for e in events}) == 1, [e.name for e in events]
    assert (run / "test_metrics.json").exists()  # the test after fit ran under DDP and rank 0 wrote it
    acc = EventAccumulator(str(run), size_guidance={"images": 0})
    acc.Reload()
    assert len(acc.Images("val/images")) == 2  # one grid per epoch, not one per rank
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["strategy"] == "ddp"


def test_val_metrics_are_the_all_reduced_values(ddp_run):
    cwd, reports = ddp_run
    scalars = read_scalars(cwd / "lightning_logs" / "version_0")
    for epoch, (_, logged_psnr) in enumerate(scalars["val/psnr"]):
        per_rank = [r["val"][str(epoch)] for r in reports]
        assert [len(v["psnr"]) for v in per_rank] == [32, 32]  # each rank validated half of the 64 images
        # The logged PSNR is the mean over all 64 images, not rank 0's own half.
        assert logged_psnr == pytest.approx(mean(per_rank[0]["psnr"] + per_rank[1]["psnr"]), abs=1e-4)
        assert abs(mean(per_rank[0]["psnr"]) - logged_psnr) > 1e-3
        logged_loss = scalars["val/loss"][epoch][1]
        assert logged_loss == pytest.approx(mean([mean(v["mse"]) for v in per_rank]), rel=1e-5)
