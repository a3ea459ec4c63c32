"""Atomic file writes (private): a failure never leaves a partial file.

Content goes to a uniquely named temporary file in the destination's folder,
is flushed and fsync'ed, and only then renamed over the destination with
:func:`os.replace`. On any failure the temporary file is removed and an
existing destination is left untouched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import IO, Any


def temporary_file(directory: str, base: str, binary: bool) -> tuple[str, IO[Any]]:
    """Create and open a new, uniquely named file ``.<base>.<random>.tmp`` in ``directory``.

    Opened with mode 0o666 so the process umask applies, as for ``open(path, "w")``.
    """
    while True:
        tmp_path = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            if binary:
                return tmp_path, os.fdopen(fd, "wb")
            return tmp_path, os.fdopen(fd, "w", encoding="utf-8", newline="")
        except BaseException:
            os.close(fd)
            os.unlink(tmp_path)
            raise


def fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (best effort where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], *, binary: bool = False) -> Iterator[IO[Any]]:
    """A file handle whose content replaces ``path`` only if the block succeeds.

    Text mode writes UTF-8 with no newline translation.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp_path, fh = temporary_file(directory, os.path.basename(path), binary)
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise
    fsync_directory(directory)
