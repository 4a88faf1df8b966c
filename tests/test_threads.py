"""Concurrent dae processes split the CPU cores between them instead of fighting over them."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import dae.training.threads
from dae.training.callbacks import CoreShareCallback
from dae.training.threads import CoreShare, available_cores
from tests.conftest import ROOT

CHILD = "import sys; from pathlib import Path; from dae.training.threads import CoreShare; " \
        "share = CoreShare(Path(sys.argv[1])); share.join(); print('joined', flush=True); sys.stdin.read()"


def start_member(registry: Path) -> subprocess.Popen:
    """Another process that joins ``registry`` and stays until it is killed."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(registry)], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "joined"
    return child


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_available_cores_counts_the_affinity():
    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.slow
def test_processes_in_one_registry_split_the_cores_and_the_dead_drop_out(tmp_path, monkeypatch, threads_restored):
    for name in dae.training.threads.EXPLICIT_ENVS:
        monkeypatch.delenv(name, raising=False)
    share = CoreShare(tmp_path, cores=4)
    share.default_threads = 4  # PyTorch's default on a 4-core machine
    share.join()
    assert share.processes() == 1 and share.threads() == 4  # alone: PyTorch's default, nothing slower
    other = start_member(tmp_path)
    try:
        assert share.processes() == 2 and share.threads() == 2
        assert share.apply() == 2 and torch.get_num_threads() == 2
    finally:
        other.kill()  # ends without any clean-up: the kernel drops its lock
        other.wait()
    assert share.processes() == 1 and share.apply() == 4 and torch.get_num_threads() == 4
    assert len(list(tmp_path.iterdir())) == 1  # the dead process's entry is gone


def test_threads_set_by_hand_are_kept(tmp_path, monkeypatch, threads_restored):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    share = CoreShare(tmp_path, cores=64)
    share.default_threads = 64
    share.join()
    assert share.apply() == 1 and torch.get_num_threads() == 1


def test_a_share_of_fewer_cores_than_processes_is_one_thread(tmp_path):
    share = CoreShare(tmp_path, cores=2)
    share.processes = lambda: 3
    assert share.threads() == 1


def test_callback_rechecks_the_share_at_most_every_interval(monkeypatch):
    calls = []

    class Recorder:
        def apply(self) -> int:
            calls.append(1)
            return 1

    monkeypatch.setattr(dae.training.threads, "_SHARE", Recorder())
    callback = CoreShareCallback(interval=3600)
    for step in range(5):
        callback.on_train_batch_start(None, None, None, step)
    assert len(calls) == 1
    callback = CoreShareCallback(interval=0)
    for step in range(3):
        callback.on_validation_batch_start(None, None, None, step)
    assert len(calls) == 4


def test_run_configs_that_name_the_callback_in_dae_threads_still_build_it():
    from dae.threads import CoreShareCallback as named_in_older_configs

    assert named_in_older_configs is CoreShareCallback


@pytest.mark.parametrize("text, expected", [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n", False),  # an AVX2 CPU: bf16 is emulated
    ("processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16\n", True),
    ("processor\t: 0\nflags\t\t: avx2 amx_bf16 amx_tile\n", True),
    ("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n", True),  # Arm
    ("no flags here\n", None),
])
def test_cpu_bf16_support_is_read_from_the_cpu_flags(text, expected, tmp_path):
    from dae.training.threads import cpu_has_bf16

    (tmp_path / "cpuinfo").write_text(text)
    assert cpu_has_bf16(tmp_path / "cpuinfo") is expected
    assert cpu_has_bf16(tmp_path / "missing") is None


def test_bf16_training_on_a_cpu_without_bf16_is_warned_about(mnist_dir, tmp_path, monkeypatch):
    import dae.commands.cli
    from dae.commands import main
    from tests.conftest import fit_args

    monkeypatch.chdir(tmp_path)
    for has_bf16, warned in ((False, True), (True, False)):
        monkeypatch.setattr(dae.commands.cli, "cpu_has_bf16", lambda has=has_bf16: has)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            main(fit_args(mnist_dir, "--trainer.precision=bf16-mixed", "--trainer.max_steps=1",
                          "--trainer.limit_val_batches=1", "--test_after_fit=false"))
        messages = [str(w.message) for w in caught if "bfloat16 instructions" in str(w.message)]
        assert bool(messages) is warned, messages
        assert all("use --trainer.precision 32-true" in m for m in messages)
