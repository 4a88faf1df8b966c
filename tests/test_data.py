import gzip
import shutil
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch

from dae.data import DATASETS, MNISTDataModule, read_idx
from dae.data.memory import split_sizes
from tests.conftest import fake_rank
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


def _epoch(loader, epoch: int) -> list[torch.Tensor]:
    loader.sampler.set_epoch(epoch)  # as Lightning does before every epoch
    return list(loader)


def test_on_device_batches_cover_each_image_once_per_epoch_in_a_new_order(mnist_dir):
    dm = make_dm(mnist_dir, batch_size=32, on_device=True)
    dm.setup("fit")
    train = dm.train_set.images
    loader = dm.train_dataloader()
    epochs = [torch.cat(_on_device_epoch(dm, _epoch(loader, e))) for e in range(2)]
    for images in epochs:
        assert images.dtype == torch.uint8 and images.shape == train.shape
        # every image exactly once: sorting the flattened images gives the same multiset
        assert torch.equal(images.flatten(1).sort(0).values, train.flatten(1).sort(0).values)
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[0], train)
    assert torch.equal(torch.cat(_on_device_epoch(dm, dm.val_dataloader())), dm.val_set.images)  # fixed order


def test_on_device_serves_the_same_batches_as_the_host_loader(mnist_dir):
    batches = {}
    for on_device in (False, True):
        dm = make_dm(mnist_dir, batch_size=32, on_device=on_device)
        dm.setup("fit")
        torch.manual_seed(0)  # seed_everything: the shuffling seed
        loader = dm.train_dataloader()
        batches[on_device] = _epoch(loader, 0) + _epoch(loader, 1)
    assert len(batches[True]) == len(batches[False]) == 16
    assert all(torch.equal(a, b) for a, b in zip(batches[True], batches[False]))


def test_on_device_shards_the_epoch_between_ddp_ranks(mnist_dir):
    served = {"train": [], "val": []}
    for rank in (0, 1):
        dm = fake_rank(make_dm(mnist_dir, batch_size=32, on_device=True), rank)
        dm.setup("fit")
        torch.manual_seed(0)
        served["train"].append(torch.cat(_epoch(dm.train_dataloader(), 0)))
        served["val"].append(torch.cat(list(dm.val_dataloader())))
    for split, (rank0, rank1) in served.items():
        images = getattr(dm, f"{split}_set").images
        assert len(rank0) == len(rank1) == len(images) // 2, split  # each rank its half
        both = torch.cat([rank0, rank1]).flatten(1)
        assert torch.equal(both.sort(0).values, images.flatten(1).sort(0).values), split  # together: every image once


def test_on_device_training_order_resumes_mid_epoch(mnist_dir):
    def loader():
        dm = make_dm(mnist_dir, batch_size=32, on_device=True)
        dm.setup("fit")
        torch.manual_seed(0)
        return dm.train_dataloader()

    run = loader()
    run.sampler.set_epoch(1)
    batches = iter(run)
    [next(batches) for _ in range(3)]
    state = run.state_dict()
    rest = list(batches)
    torch.rand(100)  # a resumed process is elsewhere in its random streams
    resumed = loader()
    resumed.load_state_dict(state)
    again = _epoch(resumed, 1)
    assert len(again) == len(rest) == 5 and all(torch.equal(a, b) for a, b in zip(again, rest))


def test_on_device_predict_names_each_image_by_its_index(mnist_dir, tiny_trainer, tmp_path):
    import lightning as L

    from dae.training.callbacks import PredictionImageWriter
    from dae.module import DenoisingModule

    class Indices(L.Callback):
        def __init__(self):
            self.seen = []

        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            self.seen += trainer.predict_loop.current_batch_indices

    indices, writer = Indices(), PredictionImageWriter(str(tmp_path / "out"))
    trainer = tiny_trainer(limit_predict_batches=2, callbacks=[writer, indices])
    trainer.predict(DenoisingModule(), make_dm(mnist_dir, batch_size=8, on_device=True), return_predictions=False)
    assert indices.seen == list(range(16)) and all(type(i) is int for i in indices.seen)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i:05d}.png" for i in range(16)]


@pytest.mark.slow
def test_on_device_trains_under_ddp_each_rank_on_its_half(mnist_dir, tmp_path):
    import json

    from tests.conftest import fit_args, run_dae

    probe = {"class_path": "tests.probes.RankReport", "init_args": {"folder": str(tmp_path / "report")}}
    code, out = run_dae(tmp_path, fit_args(
        mnist_dir, "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=null", "--data.on_device=true", "--trainer.enable_model_summary=false",
        f"--trainer.callbacks+={json.dumps(probe)}",
    ))
    assert code == 0, out
    reports = [json.loads((tmp_path / "report" / f"rank{r}.json").read_text()) for r in (0, 1)]
    # 256 training images: 128 per rank, 2 batches of 64 each; one model.
    assert [r["train_batches"] for r in reports] == [2, 2]
    assert reports[0]["weights_sum"] == pytest.approx(reports[1]["weights_sum"], rel=1e-6)
    assert [len(r["val"]["0"]["psnr"]) for r in reports] == [32, 32]  # and half of the 64 validation images


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
