"""The user's own pictures: a folder of PNG/JPEG/TIFF/BMP files as a data module.

Every readable image is decoded once into a uint8 tensor (C, H, W) held in memory. Training serves random
``patch_size`` crops (a fresh position every epoch); validation and test serve fixed centre crops, so their
numbers compare across epochs and runs. Files are split into train/val/test by a seeded permutation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset

from dae.data import ImageTensorDataset, InMemoryDataModule, check_split, split_sizes
from dae.images import read_image_tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_NAMED_IN_WARNING = 5


def decode_image(path: Path, channels: int) -> Tensor:
    """Decode one image file into a uint8 tensor (channels, H, W): gray for 1 channel, RGB for 3.

    Colour images are turned gray (ITU-R 601 luma) or gray ones repeated into RGB as ``channels`` asks;
    alpha is dropped; 16-bit images are scaled to 8 bits. Raises ``ImageFileError`` naming the file when
    it is not a readable image (see ``dae.images.read_image``, the project's one image reader).
    """
    return read_image_tensor(path, channels)


def _named(paths: list[Path], root: Path) -> str:
    shown = ", ".join(str(p.relative_to(root)) for p in paths[:_NAMED_IN_WARNING])
    return shown + (", ..." if len(paths) > _NAMED_IN_WARNING else "")


def load_image_folder(root: Path, channels: int, min_size: int) -> list[Tensor]:
    """Decode every image under ``root`` (recursively, in sorted path order) that is at least ``min_size``
    pixels high and wide.

    Files that are not readable PNG/JPEG/TIFF/BMP images, and images too small, are skipped with a single
    warning that counts and names them. Raises ``FileNotFoundError`` when no usable image is left.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder; check data.data_dir")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    images, unreadable, small = [], [], []
    for path in files:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            unreadable.append(path)
            continue
        try:
            image = decode_image(path, channels)
        except Exception:  # noqa: BLE001 - whatever Pillow raises on one file, that file is unreadable
            unreadable.append(path)
            continue
        if min(image.shape[1:]) >= min_size:
            images.append(image)
        else:
            small.append(path)
    skipped = []
    if unreadable:
        skipped.append(f"{len(unreadable)} not readable as PNG/JPEG/TIFF/BMP images ({_named(unreadable, root)})")
    if small:
        skipped.append(f"{len(small)} smaller than the {min_size}x{min_size} patch ({_named(small, root)})")
    if not images:
        raise FileNotFoundError(
            f"no usable images in {root} (searched recursively for {', '.join(IMAGE_SUFFIXES)}): "
            f"{len(files)} files found" + (f", {'; '.join(skipped)}" if skipped else "")
        )
    if skipped:
        rank_zero_warn(f"image folder {root}: skipped {len(unreadable) + len(small)} of {len(files)} files: "
                       + "; ".join(skipped))
    return images


def centre_crop(image: Tensor, size: int) -> Tensor:
    """The central ``size`` x ``size`` crop of an image (C, H, W)."""
    top, left = (image.shape[1] - size) // 2, (image.shape[2] - size) // 2
    return image[:, top : top + size, left : left + size]


class RandomPatchDataset(Dataset):
    """Random ``patch_size`` crops of in-memory images: ``patches_per_image`` per image and epoch."""

    def __init__(self, images: list[Tensor], patch_size: int, patches_per_image: int = 1) -> None:
        self.images = images
        self.patch_size = patch_size
        self.patches_per_image = patches_per_image

    def __len__(self) -> int:
        return len(self.images) * self.patches_per_image

    def __getitem__(self, index: int) -> Tensor:
        image = self.images[index % len(self.images)]
        # The global RNG: seeded by seed_everything, and seeded per worker by Lightning when workers are used.
        top = int(torch.randint(image.shape[1] - self.patch_size + 1, ()))
        left = int(torch.randint(image.shape[2] - self.patch_size + 1, ()))
        return image[:, top : top + self.patch_size, left : left + self.patch_size]

    def __getitems__(self, indices: list[int]) -> Tensor:
        # The same batch form as ImageTensorDataset: one uint8 tensor (B, C, patch, patch).
        return torch.stack([self[i] for i in indices])


class ImageFolderDataModule(InMemoryDataModule):
    """Your own images: every PNG/JPEG/TIFF/BMP under ``data_dir`` (recursively), gray or RGB.

    Args:
        data_dir: the folder of images (subfolders are searched too).
        channels: 1 (gray; colour images are converted) or 3 (RGB; gray images are repeated).
        patch_size: side of the square crops the network sees: random crops for training, centre crops
            for validation and test. Images smaller than this are skipped with a warning.
        patches_per_image: random crops taken from each training image per epoch.
        batch_size: crops per batch.
        val_split: images for validation: a count, or a fraction in (0, 1) of all usable images.
        test_split: images for testing, likewise; the rest train.
        split_seed: seed of the permutation that splits the (sorted) images.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        data_dir: str,
        channels: int = 1,
        patch_size: int = 28,
        patches_per_image: int = 1,
        batch_size: int = 64,
        val_split: int | float = 0.1,
        test_split: int | float = 0.1,
        split_seed: int = 42,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        if patches_per_image < 1:
            raise ValueError(f"patches_per_image must be >= 1, got {patches_per_image}")
        for name, value in (("val_split", val_split), ("test_split", test_split)):
            check_split(value, name)  # fails early on malformed values; setup checks them against the images
        if Path(data_dir).is_file():
            raise ValueError(f"data_dir {data_dir!r} is a file; give the folder that holds the images")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.channels = channels
        self.patch_size = patch_size
        self.patches_per_image = patches_per_image
        self.val_split = val_split
        self.test_split = test_split
        self.split_seed = split_seed
        self._splits: dict[str, list[Tensor]] | None = None

    def _split_images(self) -> dict[str, list[Tensor]]:
        """Decode the folder once and split it: {'train': [...], 'val': [...], 'test': [...]}."""
        if self._splits is None:
            images = load_image_folder(Path(self.data_dir), self.channels, self.patch_size)
            source = f"the image folder {self.data_dir}"
            rest, n_test = split_sizes(len(images), self.test_split, "test_split", source)
            n_train, _ = split_sizes(rest, self.val_split, "val_split", f"{source} without its test images")
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
            picked = [images[i] for i in order]
            self._splits = {"train": picked[:n_train], "val": picked[n_train:rest], "test": picked[rest:]}
        return self._splits

    def _centre_crops(self, images: list[Tensor]) -> ImageTensorDataset:
        return ImageTensorDataset(torch.stack([centre_crop(img, self.patch_size) for img in images]))

    def setup(self, stage: str | None = None) -> None:
        splits = self._split_images()
        if stage in (None, "fit", "validate") and self.train_set is None:
            self.train_set = RandomPatchDataset(splits["train"], self.patch_size, self.patches_per_image)
            self.val_set = self._centre_crops(splits["val"])
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._centre_crops(splits["test"])
