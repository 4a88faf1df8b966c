"""Helpers for tests: synthetic 28x28 images and the IDX file format that MNIST uses."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
LABEL_FILES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}


def synthetic_images(n: int, size: int = 28, seed: int = 0) -> np.ndarray:
    """``n`` gray uint8 images (n, size, size): a bright rectangle and a disc on a dark background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, size, size), dtype=np.float32)
    for img in images:
        y0, x0 = rng.integers(2, size // 2, 2)
        h, w = rng.integers(4, size // 2, 2)
        img[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0.5, 1.0)
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        r = rng.uniform(2, size / 5)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.uniform(0.6, 1.0)
    return (images * 255).round().astype(np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format: magic 0x0000 08 <ndim>, big-endian dims, raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def write_mnist_files(folder: Path, n_train: int = 320, n_test: int = 96, compress: bool = False) -> dict:
    """Write the four MNIST IDX files into ``folder``; returns the image arrays by split."""
    arrays = {"train": synthetic_images(n_train, seed=1), "test": synthetic_images(n_test, seed=2)}
    for split, images in arrays.items():
        write_idx(folder / IMAGE_FILES[split], images, compress)
        labels = np.arange(len(images), dtype=np.uint8) % 10
        write_idx(folder / LABEL_FILES[split], labels, compress)
    return arrays


def write_emnist_files(folder: Path, split: str, n_train: int = 80, n_test: int = 24) -> dict:
    """Write EMNIST's four IDX files for ``split`` (gzip-compressed, images stored transposed as NIST does).

    Returns the upright image arrays by split.
    """
    arrays = {"train": synthetic_images(n_train, seed=3), "test": synthetic_images(n_test, seed=4)}
    for part, images in arrays.items():
        stem = f"emnist-{split}-{part}"
        write_idx(folder / f"{stem}-images-idx3-ubyte", images.transpose(0, 2, 1), compress=True)
        write_idx(folder / f"{stem}-labels-idx1-ubyte", np.zeros(len(images), np.uint8), compress=True)
    return arrays


IMAGE_SIZE = (70, 76)  # (height, width) of the fixture's RGB images: not 28x28, and larger than 64x64 patches


def synthetic_rgb(n: int, size: tuple[int, int] = IMAGE_SIZE) -> list[np.ndarray]:
    """``n`` RGB uint8 images (height, width, 3) whose three channels hold different shapes."""
    height, width = size
    side = max(height, width)
    return [
        np.stack([synthetic_images(1, side, seed=100 + 3 * i + c)[0, :height, :width] for c in range(3)], axis=-1)
        for i in range(n)
    ]


def write_image_folder(folder: Path, n: int = 30, size: tuple[int, int] = IMAGE_SIZE) -> list[np.ndarray]:
    """Write ``synthetic_rgb(n, size)`` as PNGs, every other one in a subfolder; returns the arrays."""
    arrays = synthetic_rgb(n, size)
    for i, rgb in enumerate(arrays):
        path = folder / ("nested" if i % 2 else "") / f"img{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb, mode="RGB").save(path)
    return arrays
