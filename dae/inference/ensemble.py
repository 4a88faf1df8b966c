"""The self-ensemble: a network run on the 8 flips and rotations of an image, its outputs turned back and
averaged. A denoiser that was trained on all 8 orientations (``augment``) gives 8 slightly different answers;
their mean is a better one, at 8 times the compute."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

# The 8 symmetries of a square: k quarter turns, then a flip of the width or not.
ORIENTATIONS = tuple((turns, flip) for flip in (False, True) for turns in range(4))


def orient(images: Tensor, turns: int, flip: bool) -> Tensor:
    """``images`` (..., H, W) turned by ``turns`` quarter turns and, with ``flip``, mirrored left to right."""
    out = torch.rot90(images, turns, dims=(-2, -1))
    return out.flip(-1) if flip else out


def unorient(images: Tensor, turns: int, flip: bool) -> Tensor:
    """The inverse of ``orient(images, turns, flip)``."""
    out = images.flip(-1) if flip else images
    return torch.rot90(out, -turns, dims=(-2, -1))


def self_ensemble(denoise: Callable[[Tensor], Tensor], images: Tensor) -> Tensor:
    """The mean of ``denoise`` over the 8 orientations of ``images`` (..., H, W), each output turned back.

    ``denoise`` maps a tensor to one of the same shape (a network, or a tiled run of one); a non-square image is
    turned to (W, H) for the odd quarter turns, so ``denoise`` must take both.
    """
    total = torch.zeros_like(images)
    for turns, flip in ORIENTATIONS:
        total += unorient(denoise(orient(images, turns, flip)), turns, flip)
    return total / len(ORIENTATIONS)
