"""The noise level of an image, estimated from the image alone, for noise-conditioned networks.

The estimate is Donoho's: the finest diagonal wavelet details (Daubechies-2, ``HH``) of a natural image are
mostly noise, so the median of their absolute values over 0.6745 (the median of ``|N(0, 1)|``) estimates the
noise's std. Edges and texture leave some of the image in ``HH``: the estimate runs a little high on textured
images (measured on Set12 in docs/photos.md). It is ``skimage.restoration.estimate_sigma``'s method, without the
coefficients at the borders, where padding the image would mix in edges of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Daubechies-2 decomposition high-pass filter (the order a convolution applies it in).
_DB2_HIGH = (-0.48296291314469025, 0.836516303737469, -0.22414386804185735, -0.12940952255092145)
_MAD_TO_STD = 0.6744897501960817  # the median of |N(0, 1)|


def estimate_sigma(image: Tensor) -> float:
    """The std of the additive white Gaussian noise in ``image`` (C, H, W), on the image's own scale (for an
    image in [0, 1], 25/255 at sigma 25); the channels' estimates averaged. Images smaller than 4x4 raise
    ``ValueError``."""
    if image.ndim != 3 or min(image.shape[-2:]) < 4:
        raise ValueError(f"estimating the noise level needs a (C, H, W) image of at least 4x4 pixels, got "
                         f"{tuple(image.shape)}")
    high = torch.tensor(_DB2_HIGH, dtype=torch.float64, device=image.device)
    kernel = torch.outer(high, high)[None, None]
    # No padding: details at the borders would mix in the padding's own edges.
    details = F.conv2d(image.double()[:, None], kernel, stride=2).abs().flatten(1)
    sigmas = [d[d > 0].median() if bool((d > 0).any()) else d.new_zeros(()) for d in details]
    return float(torch.stack(sigmas).mean()) / _MAD_TO_STD
