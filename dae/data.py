"""Data: IDX (MNIST-format) files decoded once into uint8 tensors, and the LightningDataModule.

Batches are uint8 tensors of shape (B, C, H, W); the LightningModule turns them into floats in [0, 1] on
its own device. Nothing here touches the network except ``prepare_data`` (and only when files are missing).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from dae.sampling import EpochShuffleSampler, ResumableDataLoader

# IDX magic numbers: two zero bytes, a type code (0x08 = unsigned byte) and the number of dimensions.
_IDX_UBYTE = 0x08
_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | os.PathLike) -> Tensor:
    """Read an IDX file of unsigned bytes (optionally gzip-compressed) into a uint8 tensor.

    Raises ``ValueError`` naming the file when it is not an IDX file of unsigned bytes or is truncated.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip raises these for corrupt or truncated archives
        raise ValueError(f"{path}: cannot read IDX file ({e}); delete it and download it again") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE or not 1 <= data[3] <= 4:
        raise ValueError(
            f"{path}: not an IDX file of unsigned bytes (magic number {data[:4].hex() or 'missing'}, "
            f"expected 000008 followed by the number of dimensions)"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes)")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(torch.tensor(shape).prod())
    if len(data) != expected:
        raise ValueError(
            f"{path}: IDX file has {len(data)} bytes, but its header {tuple(shape)} needs {expected}; "
            "the file is truncated or corrupt: delete it and download it again"
        )
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).reshape(shape)


@dataclass(frozen=True)
class IDXDataset:
    """How to find and fetch one MNIST-format data set."""

    torchvision_class: str  # class name in torchvision.datasets, which also names its raw folder
    default_dirs: tuple[str, ...] = ()  # offline copies searched when data_dir is not given


DATASETS: dict[str, IDXDataset] = {
    "mnist": IDXDataset("MNIST"),
    "fashion_mnist": IDXDataset("FashionMNIST", default_dirs=("/usr/share/datasets/fashion-mnist",)),
    "kmnist": IDXDataset("KMNIST"),
}


def find_idx_file(folders: Sequence[Path], name: str) -> Path | None:
    """The first of ``name`` or ``name.gz`` present in ``folders``, or None."""
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


class ImageTensorDataset(Dataset):
    """Images held in one uint8 tensor (N, C, H, W); a list of indices is served with a single slice."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]

    def __getitems__(self, indices: list[int] | Tensor) -> Tensor:
        # DataLoader calls this with a whole batch of indices: one gather instead of B items and a stack.
        return self.images[torch.as_tensor(indices, device=self.images.device)]


class DeviceBatchSampler(Sampler[Tensor]):
    """Batches of indices as tensors on ``device``, shuffled there: with the images on a GPU, a batch is
    gathered without any host work, copy or synchronisation.

    A new permutation is drawn every epoch from the global RNG of ``device`` (seeded by ``seed_everything``).
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool, device: torch.device | str) -> None:
        self.size, self.batch_size, self.shuffle, self.device = size, batch_size, shuffle, torch.device(device)

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        make = torch.randperm if self.shuffle else torch.arange
        return iter(make(self.size, device=self.device).split(self.batch_size))


def _batch_collate(batch: Tensor) -> Tensor:
    """``__getitems__`` already returns a batch tensor; there is nothing left to collate."""
    return batch


def split_sizes(total: int, val_split: int | float) -> tuple[int, int]:
    """(train, val) sizes for ``val_split`` given as a count (int >= 1) or a fraction in (0, 1)."""
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float)):
        raise ValueError(f"val_split must be a count or a fraction, got {val_split!r}")
    if isinstance(val_split, float):
        if not 0.0 < val_split < 1.0:
            raise ValueError(f"val_split as a fraction must lie strictly between 0 and 1, got {val_split}")
        n_val = max(1, round(total * val_split))
    else:
        n_val = val_split
    if n_val < 1:
        raise ValueError(f"val_split must be a count >= 1 or a fraction between 0 and 1, got {val_split!r}")
    if n_val >= total:
        raise ValueError(
            f"val_split={val_split!r} leaves no images for training or validation: the training file has "
            f"{total} images, so give a count between 1 and {total - 1} or a fraction such as 0.1"
        )
    return total - n_val, n_val


class MNISTDataModule(L.LightningDataModule):
    """MNIST-format data sets (MNIST, Fashion-MNIST, KMNIST) from IDX files.

    The official training file is split into train/val by a seeded permutation; the official test file is
    the test split and is never mixed into training. Local IDX files (``.gz`` or uncompressed, directly in
    ``data_dir`` or in torchvision's ``<Class>/raw`` layout) are used without touching the network.

    Args:
        dataset: ``mnist``, ``fashion_mnist`` or ``kmnist``.
        data_dir: folder with (or for) the IDX files; default ``data``, and for Fashion-MNIST the Debian
            package's copy (/usr/share/datasets/fashion-mnist) when it is installed.
        batch_size: images per training batch (validation and test use the same).
        val_split: validation images taken from the training file: a count, or a fraction in (0, 1).
        split_seed: seed of the train/val permutation.
        num_workers: DataLoader worker processes (0 is fastest for in-memory tensors).
        download: fetch missing files with torchvision in ``prepare_data``.
        on_device: keep the images on the training device (a GPU) and shuffle and slice batches there, so
            that no step waits for the host; needs ``num_workers: 0``. (On a CPU only the shuffling differs.)
    """

    def __init__(
        self,
        dataset: str = "mnist",
        data_dir: str | None = None,
        batch_size: int = 64,
        val_split: int | float = 5000,
        split_seed: int = 42,
        num_workers: int = 0,
        download: bool = True,
        on_device: bool = False,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if on_device and num_workers:
            raise ValueError(
                f"on_device keeps the images on the GPU, where worker processes cannot read them: "
                f"set num_workers to 0 (got {num_workers}) or on_device to false"
            )
        if data_dir is not None and Path(data_dir).exists() and not Path(data_dir).is_dir():
            raise ValueError(f"data_dir {data_dir!r} is a file; give the folder that holds the IDX files")
        split_sizes(60_000, val_split)  # rejects malformed values now; the real size is checked in setup
        self.save_hyperparameters()
        self.dataset = dataset
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.val_split = val_split
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.download = download
        self.on_device = on_device
        self.train_set: ImageTensorDataset | None = None
        self.val_set: ImageTensorDataset | None = None
        self.test_set: ImageTensorDataset | None = None

    @property
    def spec(self) -> IDXDataset:
        return DATASETS[self.dataset]

    @property
    def root(self) -> Path:
        """Where files are downloaded to (torchvision puts them under ``<root>/<Class>/raw``)."""
        return Path(self.data_dir if self.data_dir is not None else "data")

    def _search_dirs(self) -> list[Path]:
        roots = [self.root] if self.data_dir is not None else [self.root, *map(Path, self.spec.default_dirs)]
        return [d for r in roots for d in (r, r / self.spec.torchvision_class / "raw")]

    def _required_files(self) -> list[str]:
        return [name for names in _SPLIT_FILES.values() for name in names]

    def _find(self, name: str) -> Path | None:
        return find_idx_file(self._search_dirs(), name)

    def _missing_error(self, reason: str) -> FileNotFoundError:
        names = ", ".join(f"{n}[.gz]" for n in self._required_files())
        return FileNotFoundError(
            f"{self.spec.torchvision_class} files not found in {self.root.resolve()} ({reason}). "
            f"Put the four IDX files there (flat, or in {self.spec.torchvision_class}/raw/): {names}; "
            "or point --data.data_dir at the folder that holds them."
        )

    def prepare_data(self) -> None:
        """Download missing files (runs on one process per node under DDP)."""
        if all(self._find(name) for name in self._required_files()):
            return
        if not self.download:
            raise self._missing_error("download is off")
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, self.spec.torchvision_class)
        try:
            for train in (True, False):
                dataset_class(str(self.root), train=train, download=True)
        except Exception as e:  # noqa: BLE001 - any failure to fetch means the same thing to the user
            raise self._missing_error(f"download failed: {e}") from e

    def _load(self, split: str) -> Tensor:
        images_name = _SPLIT_FILES[split][0]
        path = self._find(images_name)
        if path is None:
            raise self._missing_error(f"{images_name} is missing")
        images = read_idx(path)
        if images.ndim != 3:
            raise ValueError(f"{path}: expected images of shape (N, H, W), got {tuple(images.shape)}")
        return images.unsqueeze(1).contiguous()  # (N, 1, H, W)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            images = self._load("train")
            n_train, _ = split_sizes(len(images), self.val_split)
            perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.split_seed))
            self.train_set = ImageTensorDataset(images[perm[:n_train]])
            self.val_set = ImageTensorDataset(images[perm[n_train:]])
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = ImageTensorDataset(self._load("test"))

    def _loader(self, dataset: ImageTensorDataset | None, shuffle_seed: int | None = None) -> DataLoader:
        """A loader in file order, or (with ``shuffle_seed``) a resumable shuffled one for training."""
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        if self.on_device:
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            dataset.images = dataset.images.to(device)  # once: a no-op when they are already there
            sampler = DeviceBatchSampler(len(dataset), self.batch_size, shuffle_seed is not None, device)
            return DataLoader(dataset, batch_sampler=sampler, collate_fn=_batch_collate)
        kwargs: dict = dict(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_batch_collate,
            persistent_workers=self.num_workers > 0,
        )
        if shuffle_seed is None:
            return DataLoader(dataset, **kwargs)
        trainer = self.trainer
        world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return ResumableDataLoader(dataset, EpochShuffleSampler(dataset, shuffle_seed, world_size, rank), **kwargs)

    def _shuffle_seed(self) -> int:
        # The training order follows seed_everything; under DDP rank 0's seed wins so that all ranks agree.
        seed = torch.initial_seed() % 2**62
        return seed if self.trainer is None else self.trainer.strategy.broadcast(seed)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle_seed=self._shuffle_seed())

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)
