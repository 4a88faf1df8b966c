import gzip
import shutil
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch

from dae.data import DATASETS, MNISTDataModule, read_idx, split_sizes
from tests.idx import IMAGE_FILES, idx_bytes, write_emnist_files, write_mnist_files


def make_dm(data_dir, **kwargs):
    kwargs.setdefault("val_split", 64)
    kwargs.setdefault("download", False)
    return MNISTDataModule(data_dir=str(data_dir), **kwargs)


def test_read_idx_round_trips_plain_and_gzip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    with gzip.open(tmp_path / "b.gz", "wb") as f:
        f.write(idx_bytes(array))
    for name in ("a", "b.gz"):
        t = read_idx(tmp_path / name)
        assert t.dtype == torch.uint8 and t.shape == (2, 3, 4)
        assert torch.equal(t, torch.from_numpy(array))


def test_read_idx_names_the_file_on_bad_magic_and_truncation(tmp_path):
    bad = tmp_path / "bad-magic"
    bad.write_bytes(b"\x89PNG" + bytes(100))
    with pytest.raises(ValueError, match="bad-magic.*not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(idx_bytes(np.zeros((10, 28, 28), np.uint8))[:-5])
    with pytest.raises(ValueError, match="short.*truncated"):
        read_idx(short)


def test_split_sizes_and_no_overlap(mnist_dir):
    dm = make_dm(mnist_dir, val_split=64)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (256, 64, 96)
    train = {bytes(img.numpy()) for img in dm.train_set.images}
    val = {bytes(img.numpy()) for img in dm.val_set.images}
    assert not train & val
    assert len(train | val) == 320  # together they are the whole training file


def test_split_is_seeded_and_accepts_fractions(mnist_dir):
    a, b = make_dm(mnist_dir, val_split=0.25), make_dm(mnist_dir, val_split=0.25)
    c = make_dm(mnist_dir, val_split=0.25, split_seed=1)
    for dm in (a, b, c):
        dm.setup("fit")
    assert len(a.val_set) == 80 and len(a.train_set) == 240
    assert torch.equal(a.val_set.images, b.val_set.images)
    assert not torch.equal(a.val_set.images, c.val_set.images)


@pytest.mark.parametrize("val_split", [0, -5, 320, 1000, 0.0, 1.0, 1.5])
def test_bad_val_split_is_refused(mnist_dir, val_split):
    with pytest.raises(ValueError, match="val_split"):
        dm = make_dm(mnist_dir, val_split=val_split)
        dm.setup("fit")


def test_default_split_is_55000_5000():
    assert split_sizes(60_000, 5000) == (55_000, 5000)
    assert MNISTDataModule().val_split == 5000


def test_batches_are_uint8_tensors_of_batch_size(mnist_dir):
    dm = make_dm(mnist_dir, batch_size=32)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.dtype == torch.uint8 and batch.shape == (32, 1, 28, 28)
    val_batches = list(dm.val_dataloader())
    assert torch.equal(torch.cat(val_batches), dm.val_set.images)  # val order is fixed


def test_offline_gz_files_in_torchvision_layout(tmp_path):
    arrays = write_mnist_files(tmp_path / "MNIST" / "raw", compress=True)
    dm = make_dm(tmp_path)
    dm.prepare_data()  # finds the files: no download attempted
    dm.setup("test")
    assert torch.equal(dm.test_set.images[:, 0], torch.from_numpy(arrays["test"]))


def test_missing_files_with_download_off_names_folder_and_files(tmp_path):
    dm = make_dm(tmp_path / "empty")
    with pytest.raises(FileNotFoundError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert str((tmp_path / "empty").resolve()) in message and "download is off" in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        assert name in message


def test_failed_download_gives_the_same_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def no_network(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: network unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", no_network)
    dm = make_dm(tmp_path, download=True)
    with pytest.raises(FileNotFoundError, match="download failed.*network unreachable.*t10k-images-idx3-ubyte"):
        dm.prepare_data()


def test_data_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        MNISTDataModule(data_dir=str(f))


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*mnist"):
        MNISTDataModule(dataset="cifar")


def test_corrupt_local_file_is_named(tmp_path, mnist_dir):
    for f in mnist_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / IMAGE_FILES["train"]).write_bytes(b"garbage")
    dm = make_dm(tmp_path)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*not an IDX file"):
        dm.setup("fit")


@pytest.mark.parametrize("dataset,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"),
                                            ("kmnist", "KMNIST")])
def test_each_mnist_format_dataset_reads_its_local_files(tmp_path, dataset, folder):
    arrays = write_mnist_files(tmp_path / folder / "raw", compress=True)
    dm = make_dm(tmp_path, dataset=dataset)
    dm.prepare_data()  # finds the files: download is off and nothing is missing
    dm.setup()
    assert torch.equal(dm.test_set.images[:, 0], torch.from_numpy(arrays["test"]))
    both = torch.cat([dm.train_set.images, dm.val_set.images])
    assert sorted(map(bytes, both.numpy())) == sorted(map(bytes, arrays["train"][:, None]))


def test_emnist_split_is_read_upright_from_its_own_files(tmp_path):
    arrays = write_emnist_files(tmp_path / "EMNIST" / "raw", "letters")
    write_emnist_files(tmp_path / "EMNIST" / "raw", "digits", n_test=8)  # another split beside it
    dm = make_dm(tmp_path, dataset="emnist_letters", val_split=16)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (64, 16, 24)
    # NIST stores the images transposed; the module turns them back, so they equal the upright originals.
    assert torch.equal(dm.test_set.images[:, 0], torch.from_numpy(arrays["test"]))
    assert dm.channels == 1


def test_emnist_reads_nists_zip_without_unpacking(tmp_path):
    raw = tmp_path / "unpacked"
    arrays = write_emnist_files(raw, "balanced")
    with zipfile.ZipFile(tmp_path / "gzip.zip", "w") as zf:
        for f in raw.iterdir():
            zf.write(f, f"gzip/{f.name}")
    dm = make_dm(tmp_path, dataset="emnist_balanced", val_split=8)
    dm.prepare_data()
    dm.setup("test")
    assert torch.equal(dm.test_set.images[:, 0], torch.from_numpy(arrays["test"]))
    missing = make_dm(tmp_path, dataset="emnist_digits")
    with pytest.raises(ValueError, match=r"gzip\.zip:gzip/emnist-digits-train-images-idx3-ubyte\.gz"):
        missing.setup("fit")


def test_emnist_missing_files_error_names_the_split_files_and_the_zip(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        make_dm(tmp_path, dataset="emnist_byclass").prepare_data()
    message = str(err.value)
    assert "emnist-byclass-train-images-idx3-ubyte" in message and "emnist-byclass-test-labels-idx1-ubyte" in message
    assert "gzip.zip" in message and "EMNIST/raw" in message


def test_emnist_split_must_be_named_and_its_size_is_known():
    with pytest.raises(ValueError, match="unknown dataset 'emnist'.*emnist_balanced.*emnist_letters"):
        MNISTDataModule(dataset="emnist")
    MNISTDataModule(dataset="emnist_byclass", val_split=100_000)  # a count that fits EMNIST's 697,932
    with pytest.raises(ValueError, match="val_split"):
        MNISTDataModule(dataset="mnist", val_split=100_000)


def test_fashion_mnist_without_data_dir_finds_the_system_copy(tmp_path, monkeypatch):
    # The real search path is where Debian's dataset-fashion-mnist package puts the files ...
    assert DATASETS["fashion_mnist"].default_dirs == ("/usr/share/datasets/fashion-mnist",)
    # ... and a copy there is used when data_dir is not given (here a stand-in folder, so the test needs no package).
    system_copy = tmp_path / "usr-share-datasets-fashion-mnist"
    arrays = write_mnist_files(system_copy, compress=True)
    monkeypatch.setitem(DATASETS, "fashion_mnist", replace(DATASETS["fashion_mnist"], default_dirs=(str(system_copy),)))
    monkeypatch.chdir(tmp_path)  # no ./data here
    dm = MNISTDataModule(dataset="fashion_mnist", data_dir=None, val_split=64, download=False)
    dm.prepare_data()
    dm.setup("test")
    assert torch.equal(dm.test_set.images[:, 0], torch.from_numpy(arrays["test"]))


def _on_device_epoch(dm, loader):
    batches = list(loader)
    assert [len(b) for b in batches] == [32] * (len(batches) - 1) + [len(batches[-1])]
    return batches


def test_on_device_batches_cover_each_image_once_per_epoch_in_a_new_order(mnist_dir):
    dm = make_dm(mnist_dir, batch_size=32, on_device=True)
    dm.setup("fit")
    train = dm.train_set.images
    epochs = [torch.cat(_on_device_epoch(dm, dm.train_dataloader())) for _ in range(2)]
    for images in epochs:
        assert images.dtype == torch.uint8 and images.shape == train.shape
        # every image exactly once: sorting the flattened images gives the same multiset
        assert torch.equal(images.flatten(1).sort(0).values, train.flatten(1).sort(0).values)
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[0], train)
    assert torch.equal(torch.cat(_on_device_epoch(dm, dm.val_dataloader())), dm.val_set.images)  # fixed order


def test_on_device_with_workers_is_refused(mnist_dir):
    with pytest.raises(ValueError, match="num_workers to 0"):
        make_dm(mnist_dir, on_device=True, num_workers=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_device_gpu_batches_need_no_host_sync(mnist_dir):
    import lightning as L

    dm = make_dm(mnist_dir, batch_size=32, on_device=True)
    dm.trainer = L.Trainer(accelerator="gpu", devices=1, logger=False)
    dm.setup("fit")
    loader = dm.train_dataloader()
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation now raises
    try:
        batches = list(loader)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(b.is_cuda and b.dtype == torch.uint8 for b in batches)
