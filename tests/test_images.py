"""Image files in and out at their own bit depth and channel count; hostile and unusual files."""

import io
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dae.data.folders import decode_image
from dae.data.images import ImageFileError, from_unit_tensor, read_image, to_unit_tensor, write_image


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16_bit_png_round_trips_exactly(tmp_path, channels):
    pixels = np.random.default_rng(channels).integers(0, 65536, (33, 35, channels), dtype=np.uint16)
    write_image(tmp_path / "x.png", pixels)
    back = read_image(tmp_path / "x.png")
    assert back.dtype == np.uint16 and np.array_equal(back, pixels)
    assert Image.open(tmp_path / "x.png").size == (35, 33)  # other readers agree on the file


@pytest.mark.parametrize("mode,channels", [("L", 1), ("LA", 2), ("RGB", 3), ("RGBA", 4)])
def test_8_bit_png_keeps_mode(tmp_path, mode, channels):
    pixels = np.random.default_rng(0).integers(0, 256, (9, 13, channels), dtype=np.uint8)
    write_image(tmp_path / "x.png", pixels)
    assert Image.open(tmp_path / "x.png").mode == mode
    assert np.array_equal(read_image(tmp_path / "x.png"), pixels)


def test_palette_image_reads_as_rgb(tmp_path):
    Image.new("RGB", (6, 4), (200, 10, 30)).quantize(2).save(tmp_path / "p.png")
    pixels = read_image(tmp_path / "p.png")
    assert pixels.shape == (4, 6, 3) and tuple(pixels[0, 0]) == (200, 10, 30)


def test_unreadable_file_is_named(tmp_path):
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(ImageFileError, match="fake.png: not a readable image"):
        read_image(tmp_path / "fake.png")


def test_unit_tensor_conversion_round_trips_both_depths():
    for dtype in (np.uint8, np.uint16):
        pixels = np.linspace(0, np.iinfo(dtype).max, 2 * 5 * 3).round().astype(dtype).reshape(2, 5, 3)
        tensor = to_unit_tensor(pixels)
        assert tensor.shape == (3, 2, 5) and 0 <= tensor.min() and tensor.max() <= 1
        assert np.array_equal(from_unit_tensor(tensor, np.dtype(dtype)), pixels)



def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking 8-bit gray PNG of a few KB whose header claims ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(bytes(width + 1) * 100, 9)  # the first 100 rows, all zero
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def gradient(height: int = 12, width: int = 20) -> np.ndarray:
    """RGB pixels that differ along both axes, so that any rotation or flip shows."""
    y, x = np.mgrid[:height, :width]
    return np.stack([y * 20, x * 12, 255 - y * 20], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("width,height", [(30_000, 30_000), (12_000, 12_000)])
def test_decompression_bomb_is_refused_before_decoding(tmp_path, width, height):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(width, height))
    assert bomb.stat().st_size < 10_000
    start = time.perf_counter()
    for read in (read_image, lambda p: decode_image(p, 1)):
        with pytest.raises(ImageFileError, match=rf"bomb.png: refused, too many pixels \({width}x{height} pixels|"
                                                 rf"bomb.png: refused, too many pixels \(Image size"):
            read(bomb)
    assert time.perf_counter() - start < 2  # nothing was decoded


@pytest.mark.parametrize("name,content", [("empty.png", b""), ("text.png", b"just some text\n"),
                                          ("noise.jpg", bytes(range(256)) * 4)])
def test_files_that_are_not_pictures_are_named(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    for read in (read_image, lambda p: decode_image(p, 3)):
        with pytest.raises(ImageFileError, match=rf"{name}: not a readable image \(.+\)$"):
            read(tmp_path / name)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ImageFileError, match=r"gone.png: no such file$"):
        read_image(tmp_path / "gone.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF", "GIF"])
def test_truncated_files_are_named(tmp_path, fmt):
    buffer = io.BytesIO()
    Image.fromarray(gradient(64, 80)).save(buffer, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
    with pytest.raises(ImageFileError, match=r"cut\.\w+: not a readable image"):
        read_image(path)


def test_wrong_extension_is_read_by_its_content(tmp_path):
    Image.fromarray(gradient()).save(tmp_path / "really_a_png.jpg", "PNG")
    assert np.array_equal(read_image(tmp_path / "really_a_png.jpg"), gradient())


def test_exif_rotated_jpeg_is_read_upright(tmp_path):
    upright = gradient(12, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the file holds the picture turned left
    Image.fromarray(np.rot90(upright, 1)).save(tmp_path / "phone.jpg", quality=100, exif=exif)
    pixels = read_image(tmp_path / "phone.jpg")
    assert pixels.shape == upright.shape
    assert np.abs(pixels.astype(int) - upright).mean() < 3  # JPEG rounding only
    assert decode_image(tmp_path / "phone.jpg", 3).shape == (3, 12, 20)


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "print.jpg", quality=100)  # pure red
    pixels = read_image(tmp_path / "print.jpg")
    assert pixels.shape == (6, 8, 3) and np.abs(pixels[3, 4].astype(int) - [255, 0, 0]).max() < 8


def test_gray_with_alpha_and_palette_with_transparency(tmp_path):
    la = np.stack([np.full((5, 7), 90, np.uint8), np.full((5, 7), 200, np.uint8)], axis=-1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert np.array_equal(read_image(tmp_path / "la.png"), la)
    assert decode_image(tmp_path / "la.png", 1).tolist() == torch.full((1, 5, 7), 90).tolist()  # alpha dropped
    palette = Image.new("RGB", (6, 4), (200, 10, 30)).quantize(2)
    palette.save(tmp_path / "pt.png", transparency=0)
    pixels = read_image(tmp_path / "pt.png")
    assert pixels.shape == (4, 6, 4) and tuple(pixels[0, 0, :3]) == (200, 10, 30)


def test_16_bit_colour_is_scaled_not_cut_for_image_folders(tmp_path):
    pixels = np.array([[[0, 257 * 100, 65535]]], np.uint16)
    write_image(tmp_path / "deep.png", pixels)
    assert decode_image(tmp_path / "deep.png", 3)[:, 0, 0].tolist() == [0, 100, 255]


def sample_files() -> dict[str, bytes]:
    files = {}
    for fmt, mode in [("PNG", "RGB"), ("PNG", "P"), ("JPEG", "RGB"), ("BMP", "L"), ("TIFF", "RGB"), ("GIF", "P"),
                      ("WEBP", "RGB")]:
        buffer = io.BytesIO()
        image = Image.fromarray(gradient(16, 24))
        (image.quantize(16) if mode == "P" else image.convert(mode)).save(buffer, fmt)
        files[fmt + mode] = buffer.getvalue()
    return files


SAMPLES = sample_files()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(SAMPLES)), edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                             max_size=6), cut=st.integers(0, 10**6))
def test_fuzzed_pictures_decode_or_fail_naming_the_file(tmp_path, kind, edits, cut):
    """Valid files of every format with bytes changed and the end cut off: pixels or a one-line ImageFileError."""
    data = bytearray(SAMPLES[kind])
    for position, value in edits:
        data[position % len(data)] = value
    path = tmp_path / "fuzzed.img"
    path.write_bytes(bytes(data[: max(1, cut % (len(data) + 50))]))
    start = time.perf_counter()
    try:
        pixels = read_image(path)
    except ImageFileError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
    else:
        assert pixels.ndim == 3 and pixels.shape[2] in (1, 2, 3, 4) and pixels.dtype in (np.uint8, np.uint16)
        assert pixels.size <= Image.MAX_IMAGE_PIXELS * 4
    assert time.perf_counter() - start < 5
