"""A run ends with its answer, and later commands on a run log into that run (one run, one folder)."""

from __future__ import annotations

import json
import re
import urllib.parse

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dae.training.callbacks import read_scalars
from dae.commands import main
from dae.training.report import PINNED_TAGS, TEST_METRICS_NAME
from tests.conftest import fit_args

pytestmark = pytest.mark.slow


def test_fit_ends_by_scoring_the_test_split_with_the_best_checkpoint(mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(fit_args(mnist_dir)) == 0
    out = capsys.readouterr().out
    run = tmp_path / "lightning_logs" / "version_0"
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]

    saved = json.loads((run / TEST_METRICS_NAME).read_text())
    assert re.fullmatch(r"checkpoints/best-epoch01-step6\.ckpt", saved["checkpoint"]), saved
    scalars = read_scalars(run)
    for tag in ("test/loss", "test/psnr", "test/ssim", "test/psnr_noisy"):
        assert scalars[tag][-1][1] == pytest.approx(saved[tag], rel=1e-6), tag  # the same numbers in TensorBoard
    # Every tag is in a section (train/, val/, test/): no lone card such as Lightning's "epoch" or the learning
    # rate's "lr-Adam" heads TensorBoard's first page.
    assert [tag for tag in scalars if "/" not in tag] == []
    assert "train/lr" in scalars

    assert f"test/psnr {saved['test/psnr']:.2f} dB" in out
    assert "Run folder: lightning_logs/version_0" in out
    # The folder above the run, so that TensorBoard lists the run as version_0 (not ".") beside its siblings.
    assert re.search(r"TensorBoard: \S*tensorboard --logdir lightning_logs\n", out), out
    url = urllib.parse.urlsplit(re.search(r"open (http://localhost:6006/\S+)", out).group(1))
    assert url.fragment == "custom_scalars"  # the tab with train and val loss on one chart, val/psnr beside it
    pins = json.loads(urllib.parse.unquote(urllib.parse.parse_qs(url.query)["pinnedCards"][0]))
    # TIME SERIES pins the curves; test/psnr, a single point, is no curve to pin.
    assert [p["tag"] for p in pins] == ["train/loss", "val/loss", "val/psnr"] and set(PINNED_TAGS) <= set(scalars)


def test_test_after_fit_false_skips_the_test(mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(fit_args(mnist_dir, "--test_after_fit=false")) == 0
    run = tmp_path / "lightning_logs" / "version_0"
    assert not (run / TEST_METRICS_NAME).exists()
    assert not any(tag.startswith("test/") for tag in read_scalars(run))
    assert "Test split" not in capsys.readouterr().out


@pytest.mark.parametrize("command", ["test", "validate"])
def test_test_and_validate_on_a_run_log_into_that_run(command, mnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(fit_args(mnist_dir, "--test_after_fit=false")) == 0
    run = tmp_path / "lightning_logs" / "version_0"
    config = (run / "config.yaml").read_text()
    before = read_scalars(run)

    assert main([command, f"--config={run / 'config.yaml'}", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"]) == 0
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # no new version_1
    assert (run / "config.yaml").read_text() == config  # the training config stays the run's config
    after = read_scalars(run)
    stage = "test" if command == "test" else "val"
    assert len(after[f"{stage}/psnr"]) == len(before.get(f"{stage}/psnr", [])) + 1
    assert after["train/loss"] == before["train/loss"]  # the training curves are untouched
    acc = EventAccumulator(str(run))
    acc.Reload()
    # dae test adds its numbers as a table to the run's TEXT tab; dae validate adds none.
    assert ("test/text_summary" in acc.Tags()["tensors"]) == (command == "test")
    assert yaml.safe_load(config)["test_after_fit"] is False  # saved configs carry the option; test accepts it
