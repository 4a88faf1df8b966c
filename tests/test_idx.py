"""The IDX reader on damaged and crafted files: a one-line error naming the file, and no allocation beyond the file."""

from __future__ import annotations

import gzip
import io
import tracemalloc
from contextlib import contextmanager
import struct
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dae.data import read_idx as read_idx_from_data  # the old import path keeps working
from dae.data.idx import parse_idx, read_idx, read_idx_from_zip
from tests.idx import idx_bytes

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def header(*shape: int, ndim: int | None = None) -> bytes:
    return bytes([0, 0, 0x08, len(shape) if ndim is None else ndim]) + b"".join(struct.pack(">I", d) for d in shape)


@contextmanager
def peak_allocation() -> list[int]:
    """The peak bytes Python allocated inside the block (file reads, decompression, buffers), in a list."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def assert_named_error(error: ValueError, name: str) -> None:
    assert str(error).startswith(f"{name}: ") and "\n" not in str(error), str(error)


def test_old_import_path_is_the_same_reader():
    assert read_idx_from_data is read_idx


@pytest.mark.parametrize("compress", [False, True])
def test_header_claiming_4_billion_images_fails_before_any_allocation(tmp_path, compress):
    data = header(4_000_000_000, 28, 28) + bytes(28 * 28 * 3)  # three images' worth of data
    path = tmp_path / ("huge-idx3-ubyte.gz" if compress else "huge-idx3-ubyte")
    path.write_bytes(gzip.compress(data) if compress else data)
    with peak_allocation() as peak, pytest.raises(ValueError) as error:
        read_idx(path)
    assert_named_error(error.value, str(path))
    assert "(4000000000, 28, 28) needs 3136000000016" in str(error.value)
    assert peak[0] < 4 << 20  # 3 TB claimed; not even a fraction of it was allocated


def test_gzip_is_not_decompressed_past_what_the_header_allows(tmp_path):
    # 10 images declared, then 100 MB of zeros: a small file that would decompress to far more than it says.
    stream = io.BytesIO()
    with gzip.GzipFile(fileobj=stream, mode="wb") as f:
        f.write(header(10, 28, 28) + bytes(28 * 28 * 10))
        for _ in range(100):
            f.write(bytes(1 << 20))
    path = tmp_path / "bomb-idx3-ubyte.gz"
    path.write_bytes(stream.getvalue())
    assert path.stat().st_size < 200_000
    with peak_allocation() as peak, pytest.raises(ValueError, match=r"IDX data goes on past the 7856 bytes its "
                                                                 r"header \(10, 28, 28\) needs"):
        read_idx(path)
    assert peak[0] < 4 << 20  # not the 100 MB the stream would decompress to


def test_zip_member_is_read_within_its_header_too(tmp_path):
    archive = tmp_path / "gzip.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("gzip/a.gz", gzip.compress(header(2_000_000_000, 28, 28) + bytes(100)))
        zf.writestr("gzip/b.gz", gzip.compress(idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))))
        zf.writestr("gzip/c.gz", b"not gzip at all")
    with pytest.raises(ValueError) as error:
        read_idx_from_zip(archive, "gzip/a.gz")
    assert_named_error(error.value, f"{archive}:gzip/a.gz")
    assert read_idx_from_zip(archive, "gzip/b.gz").tolist() == np.arange(24).reshape(2, 3, 4).tolist()
    for member in ("gzip/c.gz", "gzip/missing.gz"):
        with pytest.raises(ValueError) as error:
            read_idx_from_zip(archive, member)
        assert_named_error(error.value, f"{archive}:{member}")


@pytest.mark.parametrize("compress", [False, True])
def test_valid_files_of_every_rank_round_trip(tmp_path, compress):
    for ndim in (1, 2, 3, 4):
        array = np.arange(2 * 3 * 4 * 5, dtype=np.uint8)[: [2, 6, 24, 120][ndim - 1]].reshape([2, 3, 4, 5][:ndim])
        data = idx_bytes(array)
        path = tmp_path / (f"r{ndim}.gz" if compress else f"r{ndim}")
        path.write_bytes(gzip.compress(data) if compress else data)
        assert read_idx(path).tolist() == array.tolist()
        assert parse_idx(data, "bytes").tolist() == array.tolist()


shapes = st.lists(st.integers(0, 6), min_size=1, max_size=4)


@FUZZ
@given(shape=shapes, cut=st.integers(0, 400), extra=st.binary(max_size=8), compress=st.booleans())
def test_fuzzed_sizes_read_exactly_or_fail_naming_the_file(tmp_path, shape, cut, extra, compress):
    """Valid files cut short or with bytes appended: read back exactly when intact, else a one-line error."""
    array = np.random.default_rng(len(shape)).integers(0, 256, shape, dtype=np.uint8)
    data = (idx_bytes(array) + extra)[: cut if cut < 200 else None]
    path = tmp_path / ("f.gz" if compress else "f")
    path.write_bytes(gzip.compress(data) if compress else data)
    try:
        result = read_idx(path)
    except ValueError as e:
        assert_named_error(e, str(path))
        assert data != idx_bytes(array)
    else:
        assert data == idx_bytes(array) and result.dtype == torch.uint8 and result.tolist() == array.tolist()


@FUZZ
@given(data=st.binary(max_size=64) | st.builds(lambda h, b: h + b, st.builds(header, st.integers(0, 2**32 - 1),
                                                                              st.integers(0, 2**32 - 1)),
                                               st.binary(max_size=32)))
def test_fuzzed_bytes_never_crash_hang_or_allocate(tmp_path, data):
    path = tmp_path / "fuzz-idx"
    path.write_bytes(data)
    for name, read in ((str(path), lambda: read_idx(path)), ("bytes", lambda: parse_idx(data, "bytes"))):
        try:
            result = read()
        except ValueError as e:
            assert_named_error(e, name)
        else:
            assert result.numel() <= len(data)


@FUZZ
@given(data=st.binary(min_size=1, max_size=200), flip=st.integers(0, 10_000))
def test_fuzzed_gzip_files_fail_naming_the_file(tmp_path, data, flip):
    """Damaged gzip streams (a byte changed anywhere) end in the same one-line error."""
    packed = bytearray(gzip.compress(idx_bytes(np.zeros((2, 3, 3), np.uint8)) + data))
    packed[flip % len(packed)] ^= 0xFF
    path = tmp_path / "damaged.gz"
    path.write_bytes(bytes(packed))
    try:
        read_idx(path)
    except ValueError as e:
        assert_named_error(e, str(path))
