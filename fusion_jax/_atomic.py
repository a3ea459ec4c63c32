"""All-or-nothing file writes (private): a failure never leaves a partial file.

What is guaranteed, for one file (:func:`atomic_open`) and for a set of
files in one folder (:func:`atomic_write_files`):

* The content is built in memory first. Only when it is complete is a
  temporary file created next to the destination, written, flushed and
  fsync'ed, and renamed over the destination with :func:`os.replace`. A
  reader sees the old file or the new one, never a partial one.
* On any failure (an exception, including ``KeyboardInterrupt``) the
  temporary files are removed and every destination is left as it was; for
  a set of files, the ones already replaced are restored from hard-link
  backups, and folders created for the write are removed again.
* The destination keeps its permission bits (a 0600 file stays 0600; a new
  file gets ``0666 & ~umask``, as with :func:`open`), and a symbolic link
  is written through, as :func:`open` does: its target file is replaced,
  the link stays.
* Errors name the destination the caller asked for, never a temporary file.
* Temporary files are named ``.<name>.<pid>.<random>.tmp`` (backups
  ``.<name>.<pid>.<random>.bak``). A process killed during the short write
  window can leave one behind; the next write to the same destination
  removes those of processes that no longer run (on this machine).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any


def _temp_name(base: str, suffix: str) -> str:
    return f".{base}.{os.getpid()}.{secrets.token_hex(6)}.{suffix}"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def remove_stale_temporaries(directory: str, base: str) -> None:
    """Remove temporaries of ``base`` left in ``directory`` by processes that no longer run."""
    pattern = re.compile(rf"\.{re.escape(base)}\.(\d+)\.[0-9a-f]{{12}}\.(tmp|bak)")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match and int(match.group(1)) != os.getpid() and not _pid_running(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def _destination(path: str | os.PathLike[str]) -> str:
    """The file a write to ``path`` lands in: symbolic links followed, as :func:`open` does."""
    return os.path.realpath(os.fspath(path))


def _naming(err: OSError, path: str) -> OSError:
    """``err`` restated with ``path`` (the destination asked for) as its file name."""
    if err.errno is None:
        return err
    return OSError(err.errno, err.strerror, os.fspath(path))


def _write_temporary(target: str, content: bytes) -> str:
    """Write ``content`` to a new temporary file next to ``target``; return its path.

    The temporary file gets the mode of an existing ``target`` (a new one:
    ``0o666`` less the umask, as :func:`open` gives).
    """
    directory, base = os.path.split(target)
    remove_stale_temporaries(directory, base)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    while True:
        tmp_path = os.path.join(directory, _temp_name(base, "tmp"))
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        break
    try:
        with os.fdopen(fd, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise
    return tmp_path


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


def replace_file(path: str | os.PathLike[str], content: bytes) -> None:
    """Replace the file at ``path`` by ``content``, all or nothing (see the module doc)."""
    target = _destination(path)
    try:
        tmp_path = _write_temporary(target, content)
        try:
            os.replace(tmp_path, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_path)
            raise
    except OSError as err:
        raise _naming(err, path) from err
    fsync_directory(os.path.dirname(target))


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], *, binary: bool = False) -> Iterator[IO[Any]]:
    """A file handle whose content replaces ``path`` only if the block succeeds.

    The handle is an in-memory buffer; nothing is created on disk until the
    block has finished. Text mode writes UTF-8 with no newline translation.
    """
    buffer: IO[Any] = io.BytesIO() if binary else io.StringIO(newline="")
    yield buffer
    value = buffer.getvalue()
    replace_file(path, value if binary else value.encode("utf-8"))


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    current = folder.absolute()
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    return missing


def _backup(target: str) -> str | None:
    """A hard link (or, where links are unsupported, a copy) of an existing ``target``."""
    if not os.path.lexists(target):
        return None
    directory, base = os.path.split(target)
    backup = os.path.join(directory, _temp_name(base, "bak"))
    try:
        os.link(target, backup)
    except OSError:
        shutil.copy2(target, backup)
    return backup


def atomic_write_files(folder: str | os.PathLike[str], files: Mapping[str, bytes]) -> None:
    """Write all ``files`` (name -> content) into ``folder``, or change nothing.

    Every file is first written under a temporary name. Then each
    destination is backed up (a hard link) and replaced; if any step fails,
    the replaced files are restored from their backups, files that did not
    exist before are removed, and the folders created for the write (``a/b/c``
    of ``--out a/b/c`` where only ``a`` existed) are removed again. Errors
    name the destination, not a temporary file.

    Raises:
        OSError: if a folder cannot be created or a file written.
    """
    folder = Path(folder)
    created = _missing_folders(folder)
    staged: dict[str, str] = {}
    backups: dict[str, str | None] = {}
    replaced: list[str] = []
    current = os.fspath(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        asked: dict[str, str] = {}
        for name, content in files.items():
            current = os.fspath(folder / name)
            target = _destination(current)
            asked[target] = current
            staged[target] = _write_temporary(target, content)
        for target, tmp in staged.items():
            current = asked[target]
            backups[target] = _backup(target)
            os.replace(tmp, target)
            replaced.append(target)
    except BaseException as err:
        for target in reversed(replaced):
            backup = backups.get(target)
            with contextlib.suppress(OSError):
                if backup is None:
                    os.unlink(target)
                else:
                    os.replace(backup, target)
        for path in [*staged.values(), *(b for b in backups.values() if b)]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for path in created:
            with contextlib.suppress(OSError):
                path.rmdir()
        if isinstance(err, OSError):
            raise _naming(err, current) from err
        raise
    for backup in backups.values():
        if backup:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(backup)
    for directory in {os.path.dirname(t) for t in staged}:
        fsync_directory(directory)
