"""MNIST-format data sets (MNIST, Fashion-MNIST, KMNIST, EMNIST): where their IDX files are, and their data module.

Nothing here touches the network except ``prepare_data`` (and only when files are missing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dae.data.idx import read_idx, read_idx_from_zip
from dae.data.memory import (
    ImageTensorDataset,
    InMemoryDataModule,
    batch_collate,
    split_sizes,
)
from dae.data.sampling import DeviceBatchSampler, ResumableDataLoader
from dae.pixels import to_unit_float
from dae.seeding import torch_generator

_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# EMNIST's splits and the number of images in each one's official training file.
EMNIST_SPLITS = {"byclass": 697_932, "bymerge": 697_932, "balanced": 112_800, "letters": 124_800,
                 "digits": 240_000, "mnist": 60_000}
EMNIST_ARCHIVE = "gzip.zip"  # NIST's download: every split's IDX files, gzip-compressed, under gzip/


@dataclass(frozen=True)
class IDXDataset:
    """How to find and fetch one MNIST-format data set."""

    torchvision_class: str  # class name in torchvision.datasets, which also names its raw folder
    default_dirs: tuple[str, ...] = ()  # offline copies searched when data_dir is not given
    emnist_split: str | None = None  # EMNIST only: the split (torchvision's ``split`` argument)
    train_size: int = 60_000  # images in the official training file

    def files(self, part: str) -> tuple[str, str]:
        """The (images, labels) IDX file names of ``part`` (``train`` or ``test``), without ``.gz``."""
        if self.emnist_split is None:
            return _SPLIT_FILES[part]
        stem = f"emnist-{self.emnist_split}-{part}"
        return f"{stem}-images-idx3-ubyte", f"{stem}-labels-idx1-ubyte"

    @property
    def transposed(self) -> bool:
        """EMNIST stores each image transposed (column by column); it is flipped back on loading."""
        return self.emnist_split is not None

    @property
    def torchvision_kwargs(self) -> dict[str, str]:
        return {} if self.emnist_split is None else {"split": self.emnist_split}


DATASETS: dict[str, IDXDataset] = {
    "mnist": IDXDataset("MNIST"),
    "fashion_mnist": IDXDataset("FashionMNIST", default_dirs=("/usr/share/datasets/fashion-mnist",)),
    "kmnist": IDXDataset("KMNIST"),
    **{f"emnist_{split}": IDXDataset("EMNIST", emnist_split=split, train_size=size)
       for split, size in EMNIST_SPLITS.items()},
}


def find_idx_file(folders: Sequence[Path], name: str) -> Path | None:
    """The first of ``name`` or ``name.gz`` present in ``folders``, or None."""
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None



class MNISTDataModule(InMemoryDataModule):
    """MNIST-format data sets (MNIST, Fashion-MNIST, KMNIST, EMNIST) from IDX files; gray, so ``channels`` is 1.

    The official training file is split into train/val by a seeded permutation; the official test file is
    the test split and is never mixed into training. Local IDX files (``.gz`` or uncompressed, directly in
    ``data_dir`` or in torchvision's ``<Class>/raw`` layout; for EMNIST also NIST's ``gzip.zip``) are used
    without touching the network. EMNIST's transposed images are turned upright.

    Args:
        dataset: ``mnist``, ``fashion_mnist``, ``kmnist`` or ``emnist_<split>`` with split one of byclass,
            bymerge, balanced, letters, digits, mnist (e.g. ``emnist_letters``).
        data_dir: folder with (or for) the IDX files; default ``data``, and for Fashion-MNIST the Debian
            package's copy (/usr/share/datasets/fashion-mnist) when it is installed.
        batch_size: images per training batch (validation and test use the same).
        val_split: validation images taken from the training file: a count, or a fraction in (0, 1).
        split_seed: seed of the train/val permutation.
        num_workers: DataLoader worker processes (0 is fastest for in-memory tensors).
        download: fetch missing files with torchvision in ``prepare_data``.
        on_device: keep the images on the training device (a GPU) and slice batches there, so that no step
            waits for the host; the batches are the same as without it (also under DDP, and when resuming
            mid-epoch). Needs ``num_workers: 0``. ``predict`` reads from the host as usual.
        fixed_noise: train as a user without clean images would: before training each training image is
            noised once (twice for Noise2Noise) with the model's noise model, and only these noisy
            observations are kept and served for training, the same in every epoch and run. Validation and
            test images stay clean, for scoring. With the ``Supervised`` objective each image's clean original
            is kept beside its first observation as the target (the supervised reference on the same noisy
            inputs); a self-supervised objective never gets it.
        noise_seed: seed of those observations: image ``i`` of the training file gets the noise of the key
            (noise_seed, observation, i // 4096) (``dae.seeding``), whatever ``val_split`` and the batches are.
    """

    # The fixed observations are drawn a block of the training file at a time, one generator per block.
    OBSERVATION_BLOCK = 4096

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
        fixed_noise: bool = False,
        noise_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        if on_device and num_workers:
            raise ValueError(
                f"on_device keeps the images on the GPU, where worker processes cannot read them: "
                f"set num_workers to 0 (got {num_workers}) or on_device to false"
            )
        if data_dir is not None and Path(data_dir).exists() and not Path(data_dir).is_dir():
            raise ValueError(f"data_dir {data_dir!r} is a file; give the folder that holds the IDX files")
        split_sizes(DATASETS[dataset].train_size, val_split)  # fails early; setup checks the files' real size
        self.save_hyperparameters()
        self.dataset = dataset
        self.data_dir = data_dir
        self.val_split = val_split
        self.split_seed = split_seed
        self.download = download
        self.on_device = on_device
        self.fixed_noise = fixed_noise
        self.noise_seed = noise_seed
        self.noisy_splits = frozenset({"train"}) if fixed_noise else frozenset()
        self._train_file: Tensor | None = None  # the clean training file until observe() has noised it
        self._train_index: Tensor | None = None

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
        return [name for part in _SPLIT_FILES for name in self.spec.files(part)]

    def _find(self, name: str) -> Path | None:
        return find_idx_file(self._search_dirs(), name)

    def _archive(self) -> Path | None:
        """EMNIST's zip of every split (NIST's download), when it lies in one of the searched folders."""
        if self.spec.emnist_split is None:
            return None
        return next((d / EMNIST_ARCHIVE for d in self._search_dirs() if (d / EMNIST_ARCHIVE).is_file()), None)

    def _missing_error(self, reason: str) -> FileNotFoundError:
        names = ", ".join(f"{n}[.gz]" for n in self._required_files())
        archive = f" (or NIST's {EMNIST_ARCHIVE}, which holds them)" if self.spec.emnist_split else ""
        return FileNotFoundError(
            f"{self.spec.torchvision_class} files not found in {self.root.resolve()} ({reason}). "
            f"Put the four IDX files there{archive} (flat, or in {self.spec.torchvision_class}/raw/): {names}; "
            "or point --data.data_dir at the folder that holds them."
        )

    def prepare_data(self) -> None:
        """Download missing files (runs on one process per node under DDP)."""
        if all(self._find(name) for name in self._required_files()) or self._archive() is not None:
            return
        if not self.download:
            raise self._missing_error("download is off")
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, self.spec.torchvision_class)
        try:
            for train in (True, False):
                dataset_class(str(self.root), train=train, download=True, **self.spec.torchvision_kwargs)
        except Exception as e:  # noqa: BLE001 - any failure to fetch means the same thing to the user
            raise self._missing_error(f"download failed: {e}") from e

    def _load(self, split: str) -> Tensor:
        images_name = self.spec.files(split)[0]
        path, archive = self._find(images_name), self._archive()
        if path is not None:
            images = read_idx(path)
        elif archive is not None:
            path = f"{archive}:gzip/{images_name}.gz"
            images = read_idx_from_zip(archive, f"gzip/{images_name}.gz")
        else:
            raise self._missing_error(f"{images_name} is missing")
        if images.ndim != 3:
            raise ValueError(f"{path}: expected images of shape (N, H, W), got {tuple(images.shape)}")
        if self.spec.transposed:
            images = images.transpose(1, 2)
        return images.unsqueeze(1).contiguous()  # (N, 1, H, W)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            images = self._load("train")
            n_train, _ = split_sizes(len(images), self.val_split)
            perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.split_seed))
            self.val_set = ImageTensorDataset(images[perm[n_train:]])
            if self.fixed_noise:  # no training set until observe() has noised it
                self._train_file, self._train_index = images, perm[:n_train]
            else:
                self.train_set = ImageTensorDataset(images[perm[:n_train]])
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = ImageTensorDataset(self._load("test"))

    def observe(self, noise: nn.Module, count: int, keep_clean: bool = False) -> None:
        """With ``fixed_noise``: the training set becomes ``count`` noisy observations of each training image,
        drawn once with ``noise``, and the clean training images are dropped, unless ``keep_clean`` keeps each
        one after its observations, as a supervised objective's target."""
        if not self.fixed_noise or self._train_file is None:
            return
        blocks = self._train_file.split(self.OBSERVATION_BLOCK)
        views = [
            torch.cat([noise(to_unit_float(block), generator=torch_generator(self.noise_seed, k, b))
                       for b, block in enumerate(blocks)])
            for k in range(count)
        ]
        if keep_clean:
            views.append(to_unit_float(self._train_file))
        stacked = torch.stack(views, dim=1)[self._train_index]  # (N, views, 1, H, W)
        self.train_set = ImageTensorDataset(stacked[:, 0] if len(views) == 1 else stacked)
        self.observations = count
        self.clean_targets = keep_clean
        self._train_file = self._train_index = None

    def train_dataloader(self) -> DataLoader:
        if self.fixed_noise and self.train_set is None:
            raise RuntimeError("fixed_noise: the training images are noised by observe(noise, count) after setup() "
                               "(DenoisingModule does it before training)")
        return super().train_dataloader()

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        if self.on_device and isinstance(dataset, ImageTensorDataset):
            trainer = self.trainer
            device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
            world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            dataset.images = dataset.images.to(device)  # once: a no-op when they are already there
            # The host loader's order (same seed, same batches), sharded by rank; training resumes mid-epoch.
            seed = self._shuffle_seed() if shuffle else 0
            sampler = DeviceBatchSampler(dataset, self.batch_size, device, seed, shuffle, world_size, rank)
            loader = ResumableDataLoader if shuffle else DataLoader
            return loader(dataset, sampler=sampler, batch_size=None, collate_fn=batch_collate)
        return super()._loader(dataset, shuffle)

    def predict_dataloader(self) -> DataLoader:
        # The host loader even with on_device: prediction writes each image under its index in the test set,
        # which Lightning records from plain index batches.
        return super()._loader(self.test_set, shuffle=False)
