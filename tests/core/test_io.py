"""Atomic writes (`owdfa.core.io`) when the disk refuses a write: the old output stays, nothing half-written is
left, and the error is one line naming the output. The failures are injected in process here; the
stages under a real file-size limit and a read-only tree are in `test_full_disk.py`."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from owdfa.core import io as owdfa_io
from owdfa.core.errors import OutputError
from owdfa.core.io import atomic_directory, atomic_write_bytes, write_failure
from owdfa.core.stage import exit_status


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class FullDiskHandle:
    """A file handle whose every write finds the disk full, as `write(2)` reports it (no file name)."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()

    def write(self, data: bytes) -> int:
        self.handle.write(data[: len(data) // 2])  # part of it landed
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_refused_file_write_keeps_the_old_file_and_names_it(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "reports" / "metrics.json"
    atomic_write_bytes(target, b'{"good": 1}\n')
    real_fdopen = os.fdopen
    monkeypatch.setattr(owdfa_io.os, "fdopen", lambda fd, mode: FullDiskHandle(real_fdopen(fd, mode)))
    with pytest.raises(OutputError) as caught:
        atomic_write_bytes(target, b'{"new": 2}\n' * 100)
    message = str(caught.value)
    assert message.startswith(f"cannot write {target}: No space left on device") and "\n" not in message
    assert target.read_bytes() == b'{"good": 1}\n'
    assert entries(target.parent) == ["metrics.json"]  # no temporary file left beside it


def test_a_refused_write_in_a_folder_keeps_the_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "data" / "faces"
    with atomic_directory(out) as folder:
        (folder / "images.npy").write_bytes(b"old images")
    with pytest.raises(OutputError) as caught, atomic_directory(out) as folder:
        (folder / "faces.csv").write_text("row\n")
        raise OSError(errno.EFBIG, "File too large")  # what `ulimit -f` gives a write
    assert str(caught.value).startswith(f"cannot write {out}: File too large")
    assert entries(out) == ["images.npy"] and (out / "images.npy").read_bytes() == b"old images"
    assert entries(out.parent) == ["faces"]  # neither the new folder nor a renamed old one is left


def test_a_read_only_folder_is_named_with_the_file_that_was_refused(tmp_path: Path) -> None:
    out = tmp_path / "data" / "raw"
    refused = OSError(errno.EACCES, "Permission denied", str(tmp_path / "data" / ".raw.x1.tmp" / "real"))
    assert write_failure(refused, out) == (
        f"cannot write {out} ({refused.filename}): Permission denied "
        "(a full disk, a file-size limit or a read-only folder?)"
    )
    with pytest.raises(OutputError, match="Permission denied"), atomic_directory(out):
        raise refused


def test_an_unreadable_input_inside_a_write_is_not_called_an_output_error(tmp_path: Path) -> None:
    # Permission denied on a file that is not the output's: an input the stage reports in its own words.
    out = tmp_path / "data" / "faces"
    unreadable = OSError(errno.EACCES, "Permission denied", str(tmp_path / "data" / "raw" / "a.png"))
    assert write_failure(unreadable, out) is None
    with pytest.raises(OSError) as caught, atomic_directory(out):
        raise unreadable
    assert not isinstance(caught.value, OutputError) and not out.exists()
    # nor is a missing file, whatever its name
    assert write_failure(FileNotFoundError(errno.ENOENT, "No such file", str(out / "x")), out) is None


def test_an_entry_point_turns_a_refused_write_nobody_named_into_one_line(capsys) -> None:
    def full_disk() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    assert exit_status(full_disk) == 2
    err = capsys.readouterr().err
    hint = "(a full disk, a file-size limit or a read-only folder?)"
    assert err == f"error: cannot write an output: No space left on device {hint}\n"

    def read_only(path: str = "reports/train/p1-cal-0/metrics.json") -> None:
        raise OSError(errno.EROFS, "Read-only file system", path)

    assert exit_status(read_only) == 2
    assert capsys.readouterr().err.startswith("error: cannot write reports/train/p1-cal-0/metrics.json: Read-only")

    def a_bug() -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "x")

    with pytest.raises(FileNotFoundError):  # not a disk's refusal: a traceback, as for any other bug
        exit_status(a_bug)
    # `owdfa` names OSError among its errors (an unreadable model directory): a full disk still says so
    assert exit_status(full_disk, errors=(OSError,)) == 2
    assert capsys.readouterr().err == f"error: cannot write an output: No space left on device {hint}\n"


def test_outputs_get_the_modes_a_plain_write_would_give(tmp_path: Path) -> None:
    # The temporary file (0600) and folder (0700) must not pass their private modes on to the results.
    atomic_write_bytes(tmp_path / "report.md", b"x")
    with atomic_directory(tmp_path / "run") as folder:
        (folder / "card.json").write_text("{}")
    mask = umask()
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o777 & ~mask
