"""Atomic file and folder writes: a stage killed mid-way, or stopped by a full disk, never leaves a
half-written output where a good one was, and a write the disk refuses is one line naming the output."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from owdfa.core.errors import OutputError, printable

# errnos that only a write can give: no space, a file-size limit (`ulimit -f`), a quota, a read-only mount
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS})
# and those a write shares with a read: they are the output's only where they name a path of it
DENIED_ERRNOS = frozenset({errno.EACCES, errno.EPERM})


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once, at import (before any thread): temporary files are created 0600 and folders 0700, and an
# output gets the mode a plain `open`/`mkdir` would have given it, so other users can read the results.
_UMASK = _read_umask()


def write_failure(exc: OSError, destination: Path | None = None) -> str | None:
    """One line for an OSError that stopped writing `destination`, or None when `exc` is not a write
    failure of it (a missing or unreadable input, say), which the caller then raises as it is.

    Without a destination (the last resort of an entry point): any error no read can give, and a
    permission error on a named path, which may be a read's."""
    name = os.fsdecode(exc.filename) if exc.filename is not None else None
    reason = exc.strerror or str(exc)
    if destination is None:
        if exc.errno in NO_ROOM_ERRNOS:
            return f"cannot write {printable(name or 'an output')}: {reason}{_HINT}"
        if exc.errno in DENIED_ERRNOS and name is not None:
            return f"{printable(name)}: {reason}"
        return None
    if exc.errno in DENIED_ERRNOS and (name is None or not _names_part_of(Path(name), Path(destination))):
        return None
    if exc.errno not in NO_ROOM_ERRNOS | DENIED_ERRNOS:
        return None
    where = f" ({printable(name)})" if name is not None and Path(name) != Path(destination) else ""
    return f"cannot write {printable(str(destination))}{where}: {reason}{_HINT}"


_HINT = " (a full disk, a file-size limit or a read-only folder?)"


def _names_part_of(path: Path, destination: Path) -> bool:
    """`path` is `destination`, inside it, or a temporary sibling of it (`.<name>.*`) or its folder."""
    path, destination = path.absolute(), destination.absolute()
    if path == destination or destination in path.parents or path == destination.parent:
        return True
    sibling = next((p for p in (path, *path.parents) if p.parent == destination.parent), None)
    return sibling is not None and sibling.name.startswith(f".{destination.name}.")


@contextmanager
def writing(destination: Path) -> Iterator[None]:
    """Writes towards `destination` that the disk refuses become one `OutputError` naming it."""
    try:
        yield
    except OSError as exc:
        if (message := write_failure(exc, destination)) is None:
            raise
        raise OutputError(message) from None


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = False) -> None:
    """`data` in a temporary sibling renamed onto `path`: a reader sees the old file or the new one.

    `durable`: the file and then its folder are flushed to the disk as well, so that the rename
    survives a power cut, not only a killed process (a training checkpoint, which a resume trusts).
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if durable:
            _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n")


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path` in one rename.

    On any failure (a disk that refuses a write included: one `OutputError` naming `path`) the
    temporary folder goes and `path` is left as it was.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        try:
            yield tmp
            os.chmod(tmp, 0o777 & ~_UMASK)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
