"""Image files in and out at their own bit depth and channel count."""

import numpy as np
import pytest
from PIL import Image

from dae.images import ImageFileError, from_unit_tensor, read_image, to_unit_tensor, write_image


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
