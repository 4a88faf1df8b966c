import numpy as np
import pytest
import torch

from dae.seeding import key_seed, numpy_generator, torch_generator


def test_every_item_of_a_key_matters_and_sums_do_not_collide():
    keys = [(0, 0, 0, 5), (0, 0, 0, 6), (0, 0, 1, 5), (0, 1, 0, 5), (1, 0, 0, 5), (1, 0, 0, 4), (5, 0, 0, 0)]
    seeds = [key_seed(*k) for k in keys]
    assert len(set(seeds)) == len(keys)  # (1, ..., 4) is not (0, ..., 5), though both sum to 5
    assert all(0 <= s < 2**63 for s in seeds)
    assert key_seed(0, 0, 0, 5) == key_seed(0, 0, 0, 5)  # a hash: the same key, the same seed, in every process


@pytest.mark.parametrize("a,b", [((1,), (1, 0)), ((2**32,), (0, 1)), ((-1,), (2**64 - 1, 1))])
def test_keys_of_other_lengths_or_large_items_do_not_collide(a, b):
    assert key_seed(*a) != key_seed(*b)


def test_generators_of_neighbouring_keys_draw_unrelated_numbers():
    a = torch.randn(10_000, generator=torch_generator(0, 1))
    b = torch.randn(10_000, generator=torch_generator(1, 0))  # seed + index rules would make these equal
    assert torch.equal(a, torch.randn(10_000, generator=torch_generator(0, 1)))
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.05
    x, y = numpy_generator(3, 4).random(10_000), numpy_generator(4, 3).random(10_000)
    assert abs(np.corrcoef(x, y)[0, 1]) < 0.05
