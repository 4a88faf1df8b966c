"""TensorBoard really serves a run: the ``tensorboard`` command that ``dae fit`` prints, on 127.0.0.1, answers
with its data API; the event file holds the layout that leads with the curves and the test numbers as one card."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from dae.training.callbacks import read_scalars
from dae.commands import main
from dae.training.report import TEST_METRICS_NAME
from tests.conftest import fit_args

pytestmark = pytest.mark.slow  # every test here shares one real training run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for(fetch, ready, timeout: float = 90):
    """Poll ``fetch()`` until ``ready(result)``; TensorBoard loads event files in the background."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = fetch()
            if ready(last):
                return last
        except OSError:
            pass  # not listening yet
        time.sleep(0.5)
    pytest.fail(f"TensorBoard did not serve the run within {timeout}s; last answer: {last}")


@pytest.fixture(scope="module")
def served(mnist_dir, tmp_path_factory):
    """A two-epoch ``dae fit`` and the TensorBoard command it printed, serving it."""
    cwd = tmp_path_factory.mktemp("tb")
    old, out = os.getcwd(), io.StringIO()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out):
            assert main(fit_args(mnist_dir)) == 0
    finally:
        os.chdir(old)
    command = shlex.split(re.search(r"^TensorBoard: (.+)$", out.getvalue(), re.MULTILINE).group(1))
    port = free_port()
    proc = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port)], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}", cwd / "lightning_logs" / "version_0"
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_the_printed_command_lists_the_run_by_its_folder_name(served):
    url, _ = served
    runs = wait_for(lambda: get(f"{url}/data/runs"), lambda r: bool(r))
    assert runs == ["version_0"]


def test_scalar_and_image_tags_are_served(served):
    url, _ = served
    tags = wait_for(lambda: get(f"{url}/data/plugin/scalars/tags"), lambda t: "val/psnr" in t.get("version_0", {}))
    assert {"train/loss", "train/loss_epoch", "val/loss", "val/psnr", "val/ssim"} <= set(tags["version_0"])
    images = get(f"{url}/data/plugin/images/tags")
    assert "val/images" in images["version_0"]
    psnr = get(f"{url}/data/plugin/scalars/scalars?run=version_0&tag=val/psnr")
    assert [step for _, step, _ in psnr] == [2, 5]  # one point per epoch, no stray point at step 0


def test_hparams_tab_shows_the_settings_with_the_final_val_psnr(served):
    url, run = served
    experiment = wait_for(lambda: get(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""}),
                          lambda e: e.get("hparamInfos"))
    names = {h["name"] for h in experiment["hparamInfos"]}
    assert {"model/lr", "model/weight_decay", "model/noise/init_args/std", "model/net/class_path",
            "data/batch_size", "data/dataset", "trainer/max_epochs", "seed"} <= names
    assert not any("_instantiator" in n or "_class_path" in n for n in names)
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == [
        "val/psnr", "val/ssim", "val/loss", "test/psnr", "test/ssim", "test/loss"]

    groups = get(f"{url}/data/plugin/hparams/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 10,
        "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN", "STATUS_FAILURE", "STATUS_RUNNING"],
    })["sessionGroups"]
    assert len(groups) == 1
    hparams, metrics = groups[0]["hparams"], {m["name"]["tag"]: m for m in groups[0]["metricValues"]}
    assert hparams["model/lr"] == 0.001 and hparams["model/noise/init_args/std"] == 0.5
    assert hparams["data/batch_size"] == 64 and hparams["trainer/max_epochs"] == 2 and hparams["seed"] == 0
    final_step, final_psnr = read_scalars(run)["val/psnr"][-1]
    assert metrics["val/psnr"]["trainingStep"] == final_step
    assert metrics["val/psnr"]["value"] == pytest.approx(final_psnr)


def event_file(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run), size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def test_custom_scalars_tab_leads_with_train_and_val_loss_on_one_chart_and_val_psnr_beside_it(served):
    url, run = served
    acc = event_file(run)
    written = acc.Tensors("custom_scalars__config__")
    assert len(written) == 1  # once per run
    layout = layout_pb2.Layout.FromString(written[0].tensor_proto.string_val[0])
    tags = set(read_scalars(run))
    charts = [{tag for tag in tags if any(re.match(regex, tag) for regex in chart.multiline.tag)}
              for chart in layout.category[0].chart]
    assert charts == [{"train/loss", "val/loss"}, {"val/psnr"}]
    plugins = wait_for(lambda: get(f"{url}/data/plugins_listing"), lambda p: p.get("custom_scalars", {}).get("enabled"))
    assert plugins["custom_scalars"]["enabled"]


def test_test_numbers_are_a_text_card_and_hparams_metrics(served):
    url, run = served
    saved = json.loads((run / TEST_METRICS_NAME).read_text())
    numbers = {tag: value for tag, value in saved.items() if tag.startswith("test/")}
    acc = event_file(run)
    [card] = acc.Tensors("test/text_summary")
    text = card.tensor_proto.string_val[0].decode()
    assert "best-epoch01-step6.ckpt" in text
    for tag, value in numbers.items():
        shown = f"{value:.2f} dB" if "psnr" in tag else f"{value:.4f}"  # as the summary printed after fit
        assert f"| {tag} | {shown} |" in text, text

    groups = wait_for(lambda: get(f"{url}/data/plugin/hparams/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 10,
        "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN", "STATUS_FAILURE", "STATUS_RUNNING"],
    })["sessionGroups"], lambda g: g and len(g[0]["metricValues"]) == 6)
    metrics = {m["name"]["tag"]: m["value"] for m in groups[0]["metricValues"]}
    for tag in ("test/psnr", "test/ssim", "test/loss"):
        assert metrics[tag] == pytest.approx(numbers[tag], rel=1e-6)
