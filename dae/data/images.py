"""Image files in and out at their own bit depth; the one reader for every command that reads pictures.

Pixels travel as ``uint8`` or ``uint16`` numpy arrays of shape (H, W, C): C is 1 (gray), 2 (gray + alpha),
3 (RGB) or 4 (RGBA). Pillow decodes every format it knows; palette, bilevel and CMYK pictures are read as
RGB(A) or gray, and pictures are turned upright by their EXIF orientation. 16-bit PNGs are decoded by pypng,
since Pillow reduces 16-bit colour to 8 bits. (torchvision.io's decoders are deprecated since torchvision
0.29, and its PNG decoder returns palette indices, not colours.) A file's header is read first, and a picture
of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (Pillow's decompression-bomb limit, about 89 million) is
refused before anything is decoded. Every file that cannot be read ends in an ``ImageFileError`` naming it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import png
import torch
from PIL import Image, ImageOps

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pillow modes read as they are (8-bit) and the modes other pictures are converted to first.
_NATIVE_MODES = {"L", "LA", "RGB", "RGBA"}
_CONVERT = {"1": "L", "P": "RGBA", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "I;16": "I;16",
            "I;16B": "I;16", "I;16L": "I;16"}


class ImageFileError(ValueError):
    """An image file that cannot be read or written; the message names the file."""


def image_suffixes() -> set[str]:
    """File name endings Pillow can open (lower case, with the dot), used to pick images out of folders."""
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _png_bit_depth(path: Path) -> int | None:
    with open(path, "rb") as f:
        head = f.read(25)
    return head[24] if head[:8] == _PNG_SIGNATURE and len(head) == 25 else None


def _decode(image: Image.Image, path: Path) -> np.ndarray:
    """Pixels of an opened picture, upright, as gray, gray + alpha, RGB(A) or 16-bit."""
    mode = image.mode
    if mode not in _NATIVE_MODES and mode not in _CONVERT:
        raise ImageFileError(f"{path}: unsupported pixel format {mode!r}; save it as 8- or 16-bit PNG")
    if _png_bit_depth(path) == 16:  # Pillow would reduce 16-bit colour to 8 bits
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        pixels = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
        return pixels.reshape(height, width, info["planes"])
    image = ImageOps.exif_transpose(image)
    if mode == "P" and "transparency" not in image.info:
        image = image.convert("RGB")
    elif mode in _CONVERT:
        image = image.convert(_CONVERT[mode])
    return np.asarray(image)


def read_image(path: str | Path) -> np.ndarray:
    """Pixels of an image file as a (H, W, C) ``uint8`` or ``uint16`` array (16-bit PNG and TIFF stay 16-bit).

    Raises ``ImageFileError`` naming the file when it is missing, empty, truncated, not a picture, of an
    unsupported pixel format, or has more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # reads the header only
                limit = Image.MAX_IMAGE_PIXELS
                if limit and image.width * image.height > limit:
                    raise Image.DecompressionBombError(f"{image.width}x{image.height} pixels")
                pixels = _decode(image, path)
    except ImageFileError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageFileError(f"{path}: refused, too many pixels ({e}); dae decodes at most "
                             f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,} (a decompression-bomb guard)") from e
    except FileNotFoundError as e:
        raise ImageFileError(f"{path}: no such file") from e
    except Exception as e:  # noqa: BLE001 - decoders fail on damaged files in many ways; each means "unreadable"
        reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ImageFileError(f"{path}: not a readable image ({reason})") from e
    if pixels.dtype != np.uint8:
        pixels = pixels.astype(np.uint16)
    return np.ascontiguousarray(pixels[..., None] if pixels.ndim == 2 else pixels)


def has_alpha(channels: int) -> bool:
    """Whether pixels with this many channels end with an alpha channel (gray + alpha, or RGBA)."""
    return channels in (2, 4)


def read_image_tensor(path: str | Path, channels: int) -> torch.Tensor:
    """An image file as a uint8 tensor (channels, H, W): gray for 1 channel, RGB for 3.

    Colour pictures are turned gray (ITU-R 601 luma, as Pillow's ``convert("L")``), gray ones repeated into
    RGB; alpha is dropped; 16-bit pictures are scaled to 8 bits. Raises ``ImageFileError`` like ``read_image``.
    """
    pixels = read_image(path)
    if pixels.dtype == np.uint16:
        pixels = (pixels.astype(np.float32) / 257.0).round().astype(np.uint8)
    if has_alpha(pixels.shape[2]):
        pixels = pixels[..., :-1]
    if channels == 1 and pixels.shape[2] == 3:
        pixels = np.asarray(Image.fromarray(pixels).convert("L"))[..., None]
    elif channels == 3 and pixels.shape[2] == 1:
        pixels = pixels.repeat(3, axis=2)
    return torch.from_numpy(np.array(pixels, order="C")).permute(2, 0, 1).contiguous()  # a copy: Pillow's may be read-only


def write_png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG of (H, W, C) ``uint16`` pixels (Pillow cannot write 16-bit colour PNGs)."""
    height, width, channels = pixels.shape
    writer = png.Writer(width, height, greyscale=channels < 3, alpha=has_alpha(channels), bitdepth=16)
    with open(path, "wb") as f:
        writer.write(f, pixels.reshape(height, width * channels))


def write_image(path: str | Path, pixels: np.ndarray) -> Path:
    """Write (H, W, C) pixels in the format the name's ending says; ``uint16`` needs a .png (or .tif) name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if pixels.dtype == np.uint16 and suffix == ".png":
        write_png16(path, pixels)
        return path
    if pixels.dtype == np.uint16 and pixels.shape[2] != 1:
        raise ImageFileError(f"{path}: 16-bit colour pixels can only be written as .png")
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    options = {"quality": 95} if suffix in (".jpg", ".jpeg") else {}
    try:
        image.save(path, **options)
    except (OSError, ValueError, KeyError) as e:
        raise ImageFileError(f"{path}: cannot write this image ({e})") from e
    return path


def to_unit_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, C) integer pixels to a (C, H, W) float tensor in [0, 1]."""
    scale = float(np.iinfo(pixels.dtype).max)
    return torch.from_numpy(pixels.astype(np.float32) / scale).permute(2, 0, 1).contiguous()


def from_unit_tensor(image: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """A (C, H, W) float tensor to (H, W, C) pixels of ``dtype``, clipped to [0, 1] and rounded."""
    scale = float(np.iinfo(dtype).max)
    return (image.detach().float().clamp(0, 1).mul(scale).round().permute(1, 2, 0).cpu().numpy()).astype(dtype)
