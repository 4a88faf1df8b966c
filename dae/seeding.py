"""Random streams named by a key of integers, e.g. (seed, stream, rank, batch): each key gets its own generator,
and generators of different keys are statistically independent.

Adding numbers (``seed + step``) makes streams overlap: seed 0 at step 1 would replay seed 1 at step 0. Here the
key is hashed instead, by numpy's ``SeedSequence`` (the hash numpy itself uses to spawn independent streams).
"""

from __future__ import annotations

import numpy as np
import torch


def key_seed(*key: int) -> int:
    """A 63-bit seed that is a hash of ``key``: any change of any item gives an unrelated seed.

    Each item is taken modulo 2**64 (negative numbers as two's complement) and the key's length is hashed with
    it, so that keys of different lengths never collide.
    """
    words = np.array([k % 2**64 for k in key] + [len(key)], dtype=np.uint64).view(np.uint32)
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def torch_generator(*key: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded by ``key_seed(*key)``."""
    return torch.Generator(device=device).manual_seed(key_seed(*key))


def numpy_generator(*key: int) -> np.random.Generator:
    """A numpy ``Generator`` seeded by ``key_seed(*key)``."""
    return np.random.default_rng(key_seed(*key))
