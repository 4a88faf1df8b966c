"""Files that readers see whole or not at all: written to a temporary file beside the target, then renamed."""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def replaced_whole(path: str | os.PathLike) -> Iterator[Path]:
    """Give the block a new, empty temporary file in ``path``'s folder to write; when the block ends without an
    error, flush that file to disk and rename it over ``path``, so that a reader (or a job killed mid-write) sees
    the previous file or the new one, never a part. An error in the block (a failed check, a full disk) removes
    the temporary file and leaves ``path`` as it was.

    The temporary file gets the permissions a plain ``open(path, "w")`` would give: 0o666 less the umask, and a
    default ACL of the folder. (``tempfile.mkstemp`` would make it 0o600, which the rename carries over to
    ``path``: others sharing the folder could not read it.)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue  # a name another writer took just now
    try:
        yield temporary
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)  # the bytes are on disk before the rename makes them visible
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
