"""The MNIST files that ship with the project in data/MNIST/raw/ are the genuine ones, and the data module
reads them where ``configs/mnist.yaml`` looks, so the baseline trains with no network."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest
import yaml

from dae.data import MNISTDataModule, read_idx

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "data" / "MNIST" / "raw"

# MD5 of each file's decompressed IDX content: the reference values published with MNIST (torchvision lists
# the same for the .gz files it downloads, whose content these are).
CONTENT_MD5 = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}


@pytest.mark.parametrize("name", sorted(CONTENT_MD5))
def test_shipped_file_is_genuine_mnist(name):
    path = RAW / name
    assert path.is_file(), f"{path} is missing: the project ships the four MNIST files there"
    assert hashlib.md5(gzip.decompress(path.read_bytes())).hexdigest() == CONTENT_MD5[name], f"{path} differs"


def test_baseline_config_reads_the_shipped_files_without_network(monkeypatch):
    init = yaml.safe_load((ROOT / "configs" / "mnist.yaml").read_text())["data"]["init_args"]
    monkeypatch.chdir(ROOT)  # make train runs from the repository root, where data_dir (data/) lies
    dm = MNISTDataModule(**{**init, "download": False})
    dm.prepare_data()  # with download off, a missing file would raise here
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55_000, 5_000, 10_000)
    assert tuple(dm.test_set.images.shape) == (10_000, 1, 28, 28)

    for stem, n in (("train", 60_000), ("t10k", 10_000)):
        assert tuple(read_idx(RAW / f"{stem}-images-idx3-ubyte.gz").shape) == (n, 28, 28)
        labels = read_idx(RAW / f"{stem}-labels-idx1-ubyte.gz")
        assert tuple(labels.shape) == (n,) and labels.unique().tolist() == list(range(10))
