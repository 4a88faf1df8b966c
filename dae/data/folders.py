"""The user's own pictures: a folder of PNG/JPEG/TIFF/BMP files as a data module.

Every readable image is decoded once into a uint8 tensor (C, H, W) held in memory. Training serves random
``patch_size`` crops (a fresh position every epoch); validation and test serve fixed centre crops, so their
numbers compare across epochs and runs. Each file's split (train, val or test) follows from a hash of its path
alone, so that adding or removing pictures, or changing ``patch_size``, moves no other picture between splits.

Folders of photos that are noisy already (``noisy``) get no synthetic noise and train a self-supervised objective;
Noise2Noise pairs are two files of the same name in two sub-folders (``pair_dirs``), cropped alike.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from dae.data.images import read_image_tensor
from dae.data.memory import ImageTensorDataset, InMemoryDataModule
from dae.data.sampling import KeyedEpochSampler
from dae.seeding import numpy_generator

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_NAMED_IN_WARNING = 5


def decode_image(path: Path, channels: int) -> Tensor:
    """Decode one image file into a uint8 tensor (channels, H, W): gray for 1 channel, RGB for 3.

    Colour images are turned gray (ITU-R 601 luma) or gray ones repeated into RGB as ``channels`` asks;
    alpha is dropped; 16-bit images are scaled to 8 bits. Raises ``ImageFileError`` naming the file when
    it is not a readable image (see ``dae.data.images.read_image``, the project's one image reader).
    """
    return read_image_tensor(path, channels)


def _named(paths: list[Path], root: Path) -> str:
    shown = ", ".join(str(p.relative_to(root)) for p in paths[:_NAMED_IN_WARNING])
    return shown + (", ..." if len(paths) > _NAMED_IN_WARNING else "")


def load_image_folder(root: Path, channels: int, min_size: int) -> dict[str, Tensor]:
    """Decode every image under ``root`` (recursively) that is at least ``min_size`` pixels high and wide, as
    ``{path relative to root (with /): image}`` in sorted path order.

    Files that are not readable PNG/JPEG/TIFF/BMP images, and images too small, are skipped with a single
    warning that counts and names them. Raises ``FileNotFoundError`` when no usable image is left.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder; check data.data_dir")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    images, unreadable, small = {}, [], []
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
            images[path.relative_to(root).as_posix()] = image
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


SPLITS = ("train", "val", "test")


def split_of(relative_path: str, seed: int, val_split: float, test_split: float) -> str:
    """``train``, ``val`` or ``test`` for one file, from a hash of ``seed`` and its path alone: the hash, as a
    number in [0, 1), puts the file in test below ``test_split``, in val below ``test_split + val_split``."""
    digest = hashlib.sha256(f"{seed}/{relative_path}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if u < test_split else "val" if u < test_split + val_split else "train"


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, float) or not 0.0 < value < 1.0:
        raise ValueError(
            f"{name} must be a fraction strictly between 0 and 1, got {value!r}: an image folder is split by a "
            "hash of each file's path, so that adding pictures moves none between splits, which a count of "
            "images cannot do"
        )


class RandomPatchDataset(Dataset):
    """Random ``patch_size`` crops of in-memory images: ``patches_per_image`` per image and epoch.

    With ``augment`` each crop is also put in one of the 8 orientations of a square (4 rotations by 90 degrees,
    each mirrored or not), drawn with its position: the standard augmentation of denoising training, which
    changes no pixel value and keeps the crop's size.

    Items are asked for by ``(seed, epoch, index)`` keys (``dae.data.sampling.KeyedEpochSampler``), and each crop's
    position is drawn from a generator seeded by its key alone: the same crop in any worker process and when a run
    resumes, a fresh one every epoch, and different ones on DDP ranks (which take different indices).
    """

    def __init__(self, images: list[Tensor], patch_size: int, patches_per_image: int = 1,
                 augment: bool = False) -> None:
        self.images = images
        self.patch_size = patch_size
        self.patches_per_image = patches_per_image
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images) * self.patches_per_image

    def __getitem__(self, key: tuple[int, int, int]) -> Tensor:
        seed, epoch, index = key
        image = self.images[index % len(self.images)]
        rng = numpy_generator(seed, epoch, index)
        top, left = (int(rng.integers(side - self.patch_size + 1)) for side in image.shape[-2:])
        patch = TF.crop(image, top, left, self.patch_size, self.patch_size)
        if not self.augment:
            return patch
        orientation = int(rng.integers(8))
        patch = torch.rot90(patch, orientation % 4, dims=(-2, -1))
        return TF.horizontal_flip(patch) if orientation >= 4 else patch

    def __getitems__(self, keys: list[tuple[int, int, int]]) -> Tensor:
        # The same batch form as ImageTensorDataset: one uint8 tensor (B, C, patch, patch).
        return torch.stack([self[key] for key in keys])


class ImageFolderDataModule(InMemoryDataModule):
    """Your own images: every PNG/JPEG/TIFF/BMP under ``data_dir`` (recursively), gray or RGB.

    Args:
        data_dir: the folder of images (subfolders are searched too).
        channels: 1 (gray; colour images are converted) or 3 (RGB; gray images are repeated).
        patch_size: side of the square crops the network sees: random crops for training, centre crops
            for validation and test. Images smaller than this are skipped with a warning.
        patches_per_image: random crops taken from each training image per epoch.
        augment: put each training crop in a random one of the 8 orientations of a square (rotations by 90
            degrees and mirror images), as denoisers of photos are usually trained.
        batch_size: crops per batch.
        val_split: the fraction of the files, in (0, 1), that validate.
        test_split: the fraction of the files, in (0, 1), that test; the rest train. Each file's split follows
            from a hash of ``split_seed`` and its path relative to ``data_dir``, so the split sizes are close
            to these fractions, and a file stays in its split whatever else is added, removed or skipped.
        split_seed: seed of that hash.
        num_workers: DataLoader worker processes.
        noisy: the files are noisy photos, with no clean version: every split serves them as they are (no
            synthetic noise is added), the model needs a self-supervised objective, and validation and test
            log that objective's loss instead of PSNR/SSIM.
        pair_dirs: two sub-folders of ``data_dir`` that hold two noisy shots of each picture under the same
            relative path, for Noise2Noise (implies ``noisy``); both shots get the same crops.
    """

    train_sampler = KeyedEpochSampler

    def __init__(
        self,
        data_dir: str,
        channels: int = 1,
        patch_size: int = 28,
        patches_per_image: int = 1,
        augment: bool = False,
        batch_size: int = 64,
        val_split: float = 0.1,
        test_split: float = 0.1,
        split_seed: int = 42,
        num_workers: int = 0,
        noisy: bool = False,
        pair_dirs: list[str] | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if pair_dirs is not None and (len(pair_dirs) != 2 or pair_dirs[0] == pair_dirs[1]):
            raise ValueError(f"pair_dirs must name two different sub-folders of data_dir, got {pair_dirs}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        if patches_per_image < 1:
            raise ValueError(f"patches_per_image must be >= 1, got {patches_per_image}")
        for name, value in (("val_split", val_split), ("test_split", test_split)):
            _check_fraction(name, value)
        if not val_split + test_split < 1:
            raise ValueError(f"val_split + test_split must be below 1 to leave images for training, got "
                             f"{val_split} + {test_split}")
        if Path(data_dir).is_file():
            raise ValueError(f"data_dir {data_dir!r} is a file; give the folder that holds the images")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.channels = channels
        self.patch_size = patch_size
        self.patches_per_image = patches_per_image
        self.augment = augment
        self.val_split = val_split
        self.test_split = test_split
        self.split_seed = split_seed
        self.noisy = noisy or pair_dirs is not None
        self.pair_dirs = pair_dirs
        if self.noisy:
            self.noisy_splits = frozenset(SPLITS)
            self.observations = 2 if pair_dirs is not None else 1
        self.split_files: dict[str, list[str]] = {}  # after setup: each split's files, relative to data_dir
        self._splits: dict[str, list[Tensor]] | None = None

    def _split_images(self) -> dict[str, list[Tensor]]:
        """Decode the folder once and split it: {'train': [...], 'val': [...], 'test': [...]}."""
        if self._splits is None:
            images = self._load()
            files: dict[str, list[str]] = {split: [] for split in SPLITS}
            for name in images:
                files[split_of(name, self.split_seed, self.val_split, self.test_split)].append(name)
            for split, fraction in (("val", self.val_split), ("test", self.test_split), ("train", None)):
                if not files[split]:
                    fix = f"raise {split}_split (now {fraction})" if fraction else "lower val_split and test_split"
                    raise ValueError(
                        f"no image of the {len(images)} usable ones in {self.data_dir} falls into the {split} "
                        f"split (each file's split follows from a hash of its path): {fix}, or add images"
                    )
            self.split_files = files
            self._splits = {split: [images[name] for name in names] for split, names in files.items()}
        return self._splits

    def _load(self) -> dict[str, Tensor]:
        """Every image by its relative path: (C, H, W), or (2, C, H, W) for the two shots of a pair."""
        root = Path(self.data_dir)
        if self.pair_dirs is None:
            return load_image_folder(root, self.channels, self.patch_size)
        first, second = (load_image_folder(root / d, self.channels, self.patch_size) for d in self.pair_dirs)
        unpaired = sorted(set(first) ^ set(second))
        if unpaired:
            raise ValueError(
                f"{len(unpaired)} pictures in {root} have no partner of the same name in the other pair_dirs "
                f"sub-folder ({', '.join(unpaired[:_NAMED_IN_WARNING])}): every picture needs two noisy shots"
            )
        for name in first:
            if first[name].shape != second[name].shape:
                raise ValueError(f"{name} has different sizes in {root / self.pair_dirs[0]} "
                                 f"{tuple(first[name].shape)} and {root / self.pair_dirs[1]} "
                                 f"{tuple(second[name].shape)}: the two shots of a pair must be the same size")
        return {name: torch.stack([first[name], second[name]]) for name in first}

    def _centre_crops(self, images: list[Tensor]) -> ImageTensorDataset:
        return ImageTensorDataset(torch.stack([TF.center_crop(img, [self.patch_size]) for img in images]))

    def setup(self, stage: str | None = None) -> None:
        splits = self._split_images()
        if stage in (None, "fit", "validate") and self.train_set is None:
            self.train_set = RandomPatchDataset(splits["train"], self.patch_size, self.patches_per_image,
                                                self.augment)
            self.val_set = self._centre_crops(splits["val"])
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._centre_crops(splits["test"])
