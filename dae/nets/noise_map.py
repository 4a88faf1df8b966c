"""The noise-level map that a noise-conditioned network (``noise_map=True``) takes beside the image."""

from __future__ import annotations

import torch
from torch import Tensor


def takes_noise_level(net: object) -> bool:
    """Whether ``net`` is noise-conditioned: called as ``net(noisy, sigma)`` (a true ``noise_map`` attribute)."""
    return bool(getattr(net, "noise_map", False))


def append_noise_map(x: Tensor, sigma: Tensor | float | None) -> Tensor:
    """``x`` (B, C, H, W) with one more channel: the noise level ``sigma``, the noise's std on the [0, 1] scale.

    ``sigma`` is one number for the batch, one per image ((B,) or (B, 1, 1, 1)), or a map per pixel
    (B, 1, H, W); it is broadcast to (B, 1, H, W).
    """
    if sigma is None:
        raise ValueError(
            "this network is noise-conditioned (noise_map=True) and needs the noise level: call it as "
            "net(noisy, sigma), sigma the noise's std on the [0, 1] scale (dae denoise --sigma takes it on 0..255)"
        )
    level = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    given = tuple(level.shape)
    if level.ndim == 1:
        level = level.view(-1, 1, 1, 1)
    try:
        level = level.expand(x.shape[0], 1, *x.shape[2:])
    except RuntimeError:
        raise ValueError(f"a noise level of shape {given} does not fit a batch of shape "
                         f"{tuple(x.shape)}: give one number, one per image or a (B, 1, H, W) map") from None
    return torch.cat([x, level], dim=1)
