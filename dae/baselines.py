"""Classical denoisers to compare against: BM3D (``bm3d``) and NL-means, TV, wavelet (scikit-image).

They live in the optional extra ``baselines`` (``pip install 'dae[baselines]'``). Each is given the true
noise std and has a small parameter grid that ``dae evaluate`` searches on validation images, and settings
for when there are none (``untuned``: BM3D with the true std, as published results use it); a missing package
removes its baselines with a notice (``available_baselines``), never an error. On RGB images BM3D runs as CBM3D
(``bm3d.bm3d_rgb``); the others go channel by channel.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

INSTALL_HINT = "pip install 'dae[baselines]'"


def _bm3d(image: np.ndarray, std: float, sigma_scale: float) -> np.ndarray:
    import bm3d

    return bm3d.bm3d(image, sigma_psd=sigma_scale * std)


def _cbm3d(image: np.ndarray, std: float, sigma_scale: float) -> np.ndarray:
    """CBM3D on a (3, H, W) RGB image: block matching on the luminance of the opponent colour space."""
    import bm3d

    return bm3d.bm3d_rgb(image.transpose(1, 2, 0), sigma_psd=sigma_scale * std).transpose(2, 0, 1)


def _nl_means(image: np.ndarray, std: float, h_scale: float, patch_size: int) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(
        image, h=h_scale * std, sigma=std, patch_size=patch_size, patch_distance=6, fast_mode=True
    )


def _tv(image: np.ndarray, std: float, weight_scale: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(image, weight=weight_scale * std)


def _wavelet(image: np.ndarray, std: float, method: str, wavelet: str) -> np.ndarray:
    from skimage.restoration import denoise_wavelet

    return denoise_wavelet(image, sigma=std, wavelet=wavelet, mode="soft", method=method, rescale_sigma=True)


def _grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of the given parameter values, as keyword dicts."""
    combos: list[dict[str, Any]] = [{}]
    for name, values in axes.items():
        combos = [{**c, name: v} for c in combos for v in values]
    return combos


@dataclass(frozen=True)
class Baseline:
    """A classical denoiser ``fn(image HxW float64, std, **params) -> image`` and the grid to tune it on; with a
    ``color_fn`` (``fn`` of a (3, H, W) RGB image), a colour version named ``color_name`` for colour images."""

    name: str
    packages: tuple[str, ...]  # the import names that must be installed
    fn: Callable[..., np.ndarray]
    grid: list[dict[str, Any]] = field(default_factory=lambda: [{}])
    untuned: dict[str, Any] = field(default_factory=dict)  # the settings without validation images to tune on
    color_fn: Callable[..., np.ndarray] | None = None
    color_name: str = ""

    def name_for(self, channels: int) -> str:
        """The method's name on images of ``channels`` channels: the colour version's on RGB images."""
        return self.color_name if self.color_fn is not None and channels == 3 else self.name

    def denoise(self, noisy: Tensor, std: float, params: dict[str, Any]) -> Tensor:
        """Denoise a (N, C, H, W) batch image by image: RGB images in colour where there is a ``color_fn``,
        every other image channel by channel."""
        joint = self.color_fn is not None and noisy.shape[1] == 3
        fn = self.color_fn if joint else self.fn
        out = np.empty(noisy.shape, dtype=np.float32)
        images = noisy.detach().cpu().double().numpy()
        for index in np.ndindex(*noisy.shape[: 1 if joint else 2]):
            out[index] = fn(images[index], std, **params) if std > 0 else images[index]
        return torch.from_numpy(out)


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        # Noise clipped to [0, 1] is weaker than its nominal std on dark and bright pixels (about 0.6 of it on
        # black), so each method may also scale the std it is given. BM3D costs ~0.5 s per call even on 28x28
        # images (fixed overhead of the bm4d library), hence its short grid.
        # Untuned: the true std (BM3D's published protocol), skimage's recommended h = 0.8 sigma for NL-means.
        # On RGB images BM3D is CBM3D, as colour benchmarks run it.
        Baseline("BM3D", ("bm3d",), _bm3d, _grid(sigma_scale=[0.5, 0.7, 1.0]), dict(sigma_scale=1.0), _cbm3d, "CBM3D"),
        Baseline(
            "NL-means", ("skimage",), _nl_means, _grid(h_scale=[0.15, 0.3, 0.45, 0.6, 0.8, 1.0], patch_size=[3, 5]),
            dict(h_scale=0.8, patch_size=5),
        ),
        Baseline("TV", ("skimage",), _tv, _grid(weight_scale=[0.25, 0.4, 0.6, 0.8, 1.0, 1.3]), dict(weight_scale=1.0)),
        Baseline(
            "wavelet", ("skimage", "pywt"), _wavelet, _grid(method=["BayesShrink", "VisuShrink"], wavelet=["db1", "db2", "sym4"]),
            dict(method="BayesShrink", wavelet="db1"),
        ),
    )
}


def available_baselines(names: Sequence[str]) -> tuple[list[Baseline], list[str]]:
    """The baselines among ``names`` whose package is installed, and a notice for each one that is not."""
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    found, notices = [], []
    for name in names:
        baseline = BASELINES[name]
        missing = [p for p in baseline.packages if importlib.util.find_spec(p) is None]
        if missing:
            notices.append(f"{name} skipped: {', '.join(missing)} not installed ({INSTALL_HINT})")
        else:
            found.append(baseline)
    return found, notices
