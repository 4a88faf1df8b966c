"""Padding images to the size a network's resolution steps need, and cropping its output back."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """``x`` (..., H, W) padded at the bottom and right to multiples of ``multiple`` (reflecting; replicating where
    the pad is not smaller than the side, as reflection needs). Crop the result back with ``[..., :H, :W]``."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
