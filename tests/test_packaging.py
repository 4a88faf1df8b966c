"""The package that ``pip wheel .`` builds holds every module and the shipped models, and ``dae denoise`` works
from it alone, offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dae.data.images import read_image, write_image
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

# Run in the installed copy, with every socket refused: the shipped model must need no download.
DENOISE_OFFLINE = """
import socket, sys
def refuse(*args, **kwargs):
    raise OSError("network access in an offline test")
socket.socket.connect = refuse
socket.create_connection = refuse
import dae
print(dae.__file__)
from dae.commands import main
sys.exit(main(["denoise", "gray.png", "colour.png", "-o", "out"]))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the source tree (the build leaves files next to the sources)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "dae", source / "dae", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(out)], check=True)
    (built,) = out.glob("dae-*.whl")
    return built


def test_the_wheel_holds_every_module_and_the_shipped_models(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dae").rglob("*.py")}
    assert sources <= names, sorted(sources - names)
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dae" / "inference" / "pretrained").iterdir()
               if p.suffix in (".ckpt", ".yaml", ".md")}
    assert shipped and shipped <= names, sorted(shipped - names)


def test_dae_denoise_without_a_checkpoint_picks_the_model_by_the_image_from_the_installed_wheel_offline(
        wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                    str(wheel)], check=True)
    work = tmp_path / "work"
    rng = np.random.default_rng(0)
    inputs = {"gray.png": rng.integers(0, 256, (33, 47, 1), dtype=np.uint8),
              "colour.png": rng.integers(0, 256, (29, 38, 3), dtype=np.uint8)}
    for name, pixels in inputs.items():
        write_image(work / name, pixels)
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", DENOISE_OFFLINE], cwd=work, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.splitlines()[0]).is_relative_to(site)  # the installed copy, not the source tree
    assert "(builtin:gray, for gray images)" in result.stderr
    assert "(builtin:color, for colour images)" in result.stderr
    assert "one channel at a time" not in result.stderr  # the colour image went to the colour model whole
    for name, pixels in inputs.items():
        assert read_image(work / "out" / name).shape == pixels.shape
