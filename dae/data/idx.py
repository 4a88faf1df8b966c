"""The IDX format of MNIST and its kin, read safely from files that may be damaged or crafted.

An IDX file is a magic number (two zero bytes, a type code, 0x08 for unsigned bytes, and the number of
dimensions), one big-endian 32-bit size per dimension, then the values. The header is checked against the
file before anything is allocated: a header that claims more data than the file holds fails at once, and
a gzip-compressed file is never decompressed past what its header allows. Every failure is a
``ValueError`` whose one-line message names the file.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor

IDX_UBYTE = 0x08
MAX_DIMS = 4
_CHUNK = 1 << 20  # compressed data is read this many bytes at a time, so memory grows only with real data
_READ_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile, KeyError)  # gzip.BadGzipFile is an OSError
_REFETCH = "the file is truncated or corrupt: delete it and download it again"


def _read_shape(f: BinaryIO, name: str) -> list[int]:
    """The sizes the header of an IDX file of unsigned bytes declares; ``f`` is left at the first value."""
    magic = f.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != IDX_UBYTE or not 1 <= magic[3] <= MAX_DIMS:
        raise ValueError(
            f"{name}: not an IDX file of unsigned bytes (magic number {magic.hex() or 'missing'}, "
            f"expected 000008 followed by the number of dimensions)"
        )
    sizes = f.read(4 * magic[3])
    if len(sizes) < 4 * magic[3]:
        raise ValueError(f"{name}: truncated IDX header ({4 + len(sizes)} bytes)")
    return [int.from_bytes(sizes[i : i + 4], "big") for i in range(0, len(sizes), 4)]


def _check_size(name: str, shape: list[int], file_size: int) -> None:
    """Refuse a file whose size is not what its header needs, before its values are read."""
    needed = 4 + 4 * len(shape) + math.prod(shape)
    if file_size != needed:
        raise ValueError(f"{name}: IDX file has {file_size} bytes, but its header {tuple(shape)} needs {needed}; "
                         f"{_REFETCH}")


def _read_values(f: BinaryIO, name: str, shape: list[int], file_size: int | None) -> Tensor:
    """The values after the header, exactly as many as ``shape`` needs, checked against ``file_size`` first
    when it is known, else read in chunks (memory grows only with data that is there) and never past the end
    that the header implies."""
    if file_size is not None:
        _check_size(name, shape, file_size)
    header, count = 4 + 4 * len(shape), math.prod(shape)
    data = bytearray()
    while len(data) < count:
        chunk = f.read(min(_CHUNK, count - len(data)))
        if not chunk:
            raise ValueError(f"{name}: IDX data ends after {header + len(data)} bytes, but its header "
                             f"{tuple(shape)} needs {header + count}; {_REFETCH}")
        data += chunk
    if f.read(1):
        raise ValueError(f"{name}: IDX data goes on past the {header + count} bytes its header {tuple(shape)} "
                         f"needs; {_REFETCH}")
    return torch.frombuffer(data, dtype=torch.uint8).reshape(shape) if count else torch.empty(shape, dtype=torch.uint8)


def parse_idx(data: bytes, name: str) -> Tensor:
    """Decode the bytes of an IDX file of unsigned bytes; ``name`` says where they came from in errors."""
    f = io.BytesIO(data)
    return _read_values(f, name, _read_shape(f, name), len(data))


def read_idx(path: str | os.PathLike) -> Tensor:
    """Read an IDX file of unsigned bytes (gzip-compressed when its name ends in ``.gz``) into a uint8 tensor.

    Raises ``ValueError`` naming the file when it is not an IDX file of unsigned bytes, or its size does not
    match its header. Uncompressed image files (3 dimensions) are decoded by torchvision's MNIST reader once
    the header has been checked against the file's size.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return _read_values(f, str(path), _read_shape(f, str(path)), None)
        with open(path, "rb") as f:
            shape, size = _read_shape(f, str(path)), os.fstat(f.fileno()).st_size
            if len(shape) != 3 or not math.prod(shape):  # torchvision reads non-empty image files only
                return _read_values(f, str(path), shape, size)
        _check_size(str(path), shape, size)
        from torchvision.datasets.mnist import read_image_file

        return read_image_file(str(path))
    except _READ_ERRORS as e:
        raise ValueError(f"{path}: cannot read IDX file ({e}); delete it and download it again") from e


def read_idx_from_zip(archive: Path, member: str) -> Tensor:
    """Read a gzip-compressed IDX file ``member`` straight out of a zip ``archive`` (EMNIST's gzip.zip),
    decompressing no more than its header allows."""
    name = f"{archive}:{member}"
    try:
        with zipfile.ZipFile(archive) as zf, zf.open(member) as raw, gzip.GzipFile(fileobj=raw) as f:
            return _read_values(f, name, _read_shape(f, name), None)
    except _READ_ERRORS as e:
        raise ValueError(f"{name}: cannot read IDX file ({e}); delete the archive and download it again") from e
