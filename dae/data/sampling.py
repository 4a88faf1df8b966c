"""Training batches in an order that can be rebuilt, so that a run resumed mid-epoch trains exactly as if it had
never stopped.

The order of epoch ``e`` is a permutation seeded by ``seed + e`` (``DistributedSampler``'s rule, so under DDP
every rank takes its share of the same permutation), and the loader's place in the epoch is saved in Lightning
checkpoints through ``state_dict``/``load_state_dict``, Lightning's interface for resumable loaders.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler


class EpochShuffleSampler(DistributedSampler):
    """Shuffles each epoch with a permutation seeded by ``seed + epoch``; can start part-way into an epoch.

    Being a ``DistributedSampler``, Lightning keeps it under DDP instead of swapping in its own sampler, and
    calls ``set_epoch`` on it before every epoch. ``shuffle=False`` serves the data set in order (each rank its
    share), for evaluation loaders.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.skip = 0  # indices of this rank's share to leave out once, at the start of the next pass

    def __iter__(self) -> Iterator[int]:
        # A generator: it reads ``epoch`` and ``skip`` on the first batch, after Lightning has called set_epoch.
        skip, self.skip = self.skip, 0
        yield from itertools.islice(super().__iter__(), skip, None)


class KeyedEpochSampler(EpochShuffleSampler):
    """Yields ``(seed, epoch, index)`` instead of bare indices, for data sets whose items are drawn at random
    (random crops): an item that is a function of its key alone is the same in any worker process and after a
    resume, and differs between epochs and between the indices that DDP ranks take."""

    def __iter__(self) -> Iterator[tuple[int, int, int]]:  # type: ignore[override]
        for index in super().__iter__():
            yield self.seed, self.epoch, index


class DeviceBatchSampler(EpochShuffleSampler):
    """Whole batches of indices as tensors on ``device``, in ``EpochShuffleSampler``'s order (the batches a host
    loader would serve): each epoch's indices are copied to the device once and each batch is a slice of them,
    so that with the images on a GPU a batch is gathered without any host work, copy or synchronisation.

    A ``DataLoader`` takes it as its ``sampler`` with ``batch_size=None``: each item it yields is a batch. Being a
    ``DistributedSampler``, it is kept under DDP, where each rank takes its share of the epoch.
    """

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device | str, seed: int = 0,
                 shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, seed, num_replicas, rank, shuffle)
        self.batch_size = batch_size
        self.device = torch.device(device)

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:  # type: ignore[override]
        indices = torch.tensor(list(super().__iter__()), dtype=torch.long)
        if self.device.type == "cuda":
            indices = indices.pin_memory()  # a copy from pinned memory does not wait for the GPU
        yield from indices.to(self.device, non_blocking=True).split(self.batch_size)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over an ``EpochShuffleSampler`` that tells Lightning how far into the epoch it got.

    With ``batch_size=None`` the sampler serves whole batches (``DeviceBatchSampler``) of its ``batch_size``.

    ``state_dict`` records the sampler seed, the epoch and the number of batches served in it; after
    ``load_state_dict`` the next pass over that same epoch starts with the first batch not served yet.
    """

    sampler: EpochShuffleSampler

    def __init__(self, dataset: Dataset, sampler: EpochShuffleSampler, **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._epoch = sampler.epoch
        self._served = 0
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        self._epoch, self._served = self.sampler.epoch, 0
        resume, self._resume = self._resume, None
        if resume is not None and resume["epoch"] == self._epoch:
            self._served = resume["batches"]
            self.sampler.skip = self._served * (self.batch_size or self.sampler.batch_size)
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.sampler.seed, "epoch": self._epoch, "batches": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.seed = state["seed"]
        self._resume = dict(state)
