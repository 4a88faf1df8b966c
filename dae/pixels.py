"""How pixels are held: uint8 in [0, 255] where images are stored, floats in [0, 1] where they are computed on."""

from __future__ import annotations

import torch
from torch import Tensor


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 images in [0, 255] to floats in [0, 1]; float images pass through."""
    if images.dtype == torch.uint8:
        return torch.div(images, 255.0)  # one op, the same values as images.float() / 255
    return images.float()
