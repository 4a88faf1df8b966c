"""The base of dae's data modules: images held in memory as uint8 tensors, split, and served as batches.

Batches are uint8 tensors of shape (B, C, H, W); the LightningModule turns them into floats in [0, 1] on
its own device.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dae.data.sampling import EpochShuffleSampler, ResumableDataLoader


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


def batch_collate(batch: Tensor) -> Tensor:
    """``__getitems__`` already returns a batch tensor; there is nothing left to collate."""
    return batch


def check_split(split: int | float, name: str = "val_split") -> None:
    """Refuse a split size that is neither a count >= 1 nor a fraction strictly between 0 and 1."""
    if isinstance(split, bool) or not isinstance(split, (int, float)):
        raise ValueError(f"{name} must be a count or a fraction, got {split!r}")
    if isinstance(split, float) and not 0.0 < split < 1.0:
        raise ValueError(f"{name} as a fraction must lie strictly between 0 and 1, got {split}")
    if isinstance(split, int) and split < 1:
        raise ValueError(f"{name} as a count must be >= 1, got {split}")


def split_sizes(
    total: int, split: int | float, name: str = "val_split", source: str = "the training file"
) -> tuple[int, int]:
    """(rest, split) sizes for a split of ``total`` images given as a count (int >= 1) or a fraction in (0, 1).

    ``name`` (the argument) and ``source`` (where the ``total`` images come from) word the error messages.
    """
    check_split(split, name)
    n_split = max(1, round(total * split)) if isinstance(split, float) else split
    if not n_split < total:
        raise ValueError(
            f"{name}={split!r} leaves no images for the other splits: {source} has {total} images, "
            f"so give a count between 1 and {total - 1} or a fraction such as 0.1"
        )
    return total - n_split, n_split


class InMemoryDataModule(L.LightningDataModule):
    """What every dae data module shares: datasets built in ``setup``, served as uint8 batches (B, C, H, W).

    Subclasses set ``channels`` (the network's ``in_channels`` follows it) and fill ``train_set``,
    ``val_set`` and ``test_set`` in ``setup``; the test split also serves ``predict``. Splits named in
    ``noisy_splits`` hold noisy observations and no clean images: batches (B, C, H, W), or (B, K, C, H, W) for
    ``observations`` K > 1. With ``clean_targets`` the training batches are (B, K + 1, C, H, W): each image's
    noisy observations, then its clean original, the target of the supervised objective alone.
    """

    channels: int = 1
    noisy_splits: frozenset[str] = frozenset()
    observations: int = 1
    clean_targets: bool = False
    train_sampler: type[EpochShuffleSampler] = EpochShuffleSampler  # how the training loader orders the data

    def __init__(self, batch_size: int, num_workers: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        """A loader in file order, or (``shuffle``) a shuffled one that resumes mid-epoch (see dae.sampling)."""
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        kwargs: dict = dict(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=batch_collate,
            persistent_workers=self.num_workers > 0,
        )
        if not shuffle:
            return DataLoader(dataset, **kwargs)
        trainer = self.trainer
        world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = self.train_sampler(dataset, self._shuffle_seed(), world_size, rank)
        return ResumableDataLoader(dataset, sampler, **kwargs)

    def observe(self, noise: nn.Module, count: int, keep_clean: bool = False) -> None:
        """Called by the model before training with its noise model and the number of noisy observations of each
        image its objective needs; data that noises its clean training images once does it here, and with
        ``keep_clean`` (a supervised objective) serves each image's clean original after them (``clean_targets``)."""

    def _shuffle_seed(self) -> int:
        # The training order follows seed_everything; under DDP rank 0's seed wins so that all ranks agree.
        seed = torch.initial_seed() % 2**62
        return seed if self.trainer is None else self.trainer.strategy.broadcast(seed)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
