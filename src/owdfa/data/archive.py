"""Safe extraction of the benchmark's class zips.

The zips come from the internet, so an entry may try to escape the target folder (`../x`, `/x`,
`C:x`, a symlink), carry macOS litter (`__MACOSX/._x.png` would be indexed as an image and crash
the decoder) or unpack to far more bytes than its size suggests. Every entry is checked before a
byte is written, files are streamed with a byte counter (a header that lies about its size cannot
fill the disk), and each file appears under its final name only once complete. The source zip is
only read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from owdfa.core.errors import DataError

_CHUNK = 1 << 20
MAX_NAME_BYTES = 255  # one path component, on every common Linux/macOS file system
MAX_PATH_BYTES = 3072  # inside the target folder; Linux's PATH_MAX is 4096 for the whole path
# A path the file system will not take (a component over 255 bytes, a path over PATH_MAX, bytes it
# rejects): the entry is skipped like other unsafe ones. Anything else (a full disk) is an error.
REFUSED_PATH_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL, errno.EILSEQ})
_MACOS_FOLDER = "__MACOSX"


@dataclass
class ExtractReport:
    """What one archive gave: files and bytes written, and the entries left out with the reason."""

    files: int = 0
    bytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def lost(self) -> list[tuple[str, str]]:
        """The skipped entries that may have been data (not macOS forks or dotfiles, which never are)."""
        return [(name, reason) for name, reason in self.skipped if reason not in NOT_DATA]


MACOS_FORK = "macOS resource fork (__MACOSX)"
HIDDEN_FILE = "hidden file"
NOT_DATA = frozenset({MACOS_FORK, HIDDEN_FILE})  # skip reasons of entries no dataset consists of


def entry_problem(name: str, external_attr: int) -> str | None:
    """Why an entry must not be extracted, or None if it is safe (directories included)."""
    normalised = name.replace("\\", "/")
    if normalised.startswith("/"):
        return "absolute path"
    parts = [p for p in normalised.split("/") if p not in ("", ".")]
    if not parts:
        return "empty name"
    if len(parts[0]) >= 2 and parts[0][1] == ":":
        return "drive letter"
    if ".." in parts:
        return "'..' path component"
    if any(p == _MACOS_FOLDER for p in parts):
        return MACOS_FORK
    if any(p.startswith(".") for p in parts):
        return HIDDEN_FILE
    if "\0" in normalised:
        return "NUL in name"
    if any(len(os.fsencode(p)) > MAX_NAME_BYTES for p in parts):
        return f"a name longer than {MAX_NAME_BYTES} bytes (the file system refuses it)"
    if len(os.fsencode(normalised)) > MAX_PATH_BYTES:
        return f"a path longer than {MAX_PATH_BYTES} bytes (the file system refuses it)"
    mode = external_attr >> 16
    if mode:
        if stat.S_ISLNK(mode):
            return "symbolic link"
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            return "special file"
    return None


# What zipfile raises on opening a damaged archive: besides BadZipFile, a central directory may hold a
# name that is not the UTF-8 its flag promises, or claim a zip version zipfile does not implement.
DAMAGED_ZIP = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, UnicodeDecodeError, ValueError, NotImplementedError)


def extract_zip(zip_path: Path, dest: Path, max_bytes: int) -> ExtractReport:
    """Extract `zip_path` into `dest`; refuse the archive (DataError) if it is corrupt or too big."""
    zip_path = Path(zip_path)
    dest = Path(dest)
    try:
        archive = zipfile.ZipFile(zip_path)
    except DAMAGED_ZIP as exc:
        raise DataError(f"{zip_path}: not a zip file or truncated ({exc}); delete it and fetch again") from None
    except OSError as exc:
        raise DataError(f"{zip_path}: cannot read ({exc.strerror or exc})") from None
    with archive:
        entries = archive.infolist()
        declared = sum(info.file_size for info in entries)
        if declared > max_bytes:
            raise DataError(
                f"{zip_path}: would unpack to {_gb(declared)}, more than the limit of {_gb(max_bytes)} "
                "(data.hub.max_extracted_gb); raise the limit if the archive is trusted"
            )
        dest.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dest).free
        if declared > free:
            raise DataError(f"{zip_path}: needs {_gb(declared)} to unpack but only {_gb(free)} is free under {dest}")
        root = dest.resolve()
        report = ExtractReport()
        seen: set[str] = set()
        for info in entries:
            problem = entry_problem(info.filename, info.external_attr)
            if problem is None:
                parts = [p for p in info.filename.replace("\\", "/").split("/") if p not in ("", ".")]
                rel = PurePosixPath(*parts)
                target = root.joinpath(*parts)
                if not _inside(target, root):
                    problem = "resolves outside the target folder"
                elif rel.as_posix() in seen:
                    problem = "duplicate entry"
            if problem is not None:
                report.skipped.append((info.filename, problem))
                continue
            seen.add(rel.as_posix())
            if info.is_dir() or stat.S_ISDIR(info.external_attr >> 16):
                try:
                    target.mkdir(parents=True, exist_ok=True)
                except (FileExistsError, NotADirectoryError):
                    report.skipped.append((info.filename, "a file of the same name is in the way"))
                except OSError as exc:
                    report.skipped.append((info.filename, _refused_path(exc, zip_path, dest)))
                continue
            if info.flag_bits & 0x1:
                raise DataError(f"{zip_path}: entry {info.filename!r} is encrypted; encrypted zips are not supported")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                if not _inside(target.parent.resolve(), root) or target.is_symlink() or target.is_dir():
                    report.skipped.append((info.filename, "resolves outside the target folder or onto a folder"))
                    continue
                written = _copy_entry(archive, info, target, zip_path, max_bytes - report.bytes)
            except (FileExistsError, NotADirectoryError):
                report.skipped.append((info.filename, "a file of the same name is in the way"))
                continue
            except OSError as exc:
                report.skipped.append((info.filename, _refused_path(exc, zip_path, dest)))
                continue
            report.files += 1
            report.bytes += written
    return report


def _refused_path(exc: OSError, zip_path: Path, dest: Path) -> str:
    """The skip reason for a path the file system will not take; any other OSError is the stage's error."""
    if exc.errno not in REFUSED_PATH_ERRNOS:
        raise DataError(f"{zip_path}: cannot write {dest} ({exc.strerror or exc})") from None
    return f"the file system refuses this path ({exc.strerror})"


def _copy_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, zip_path: Path, budget: int) -> int:
    """Stream one entry to `<target>.part`, counting bytes, then rename it into place."""
    partial = target.with_name(f".{target.name}.part")
    if len(os.fsencode(partial.name)) > MAX_NAME_BYTES:  # the final name fits, the partial's must too
        partial = target.with_name(f".{hashlib.sha256(os.fsencode(target.name)).hexdigest()[:16]}.part")
    written = 0
    try:
        with archive.open(info) as source, open(partial, "wb") as sink:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                if written > info.file_size:
                    raise DataError(
                        f"{zip_path}: entry {info.filename!r} unpacks to more than its declared "
                        f"{info.file_size} bytes; the archive is corrupt or malicious"
                    )
                if written > budget:
                    raise DataError(f"{zip_path}: unpacks to more than the limit (data.hub.max_extracted_gb)")
                sink.write(chunk)
        if written != info.file_size:
            raise DataError(
                f"{zip_path}: entry {info.filename!r} gave {written} bytes, its header declares {info.file_size}"
            )
        os.replace(partial, target)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        partial.unlink(missing_ok=True)
        raise DataError(
            f"{zip_path}: entry {info.filename!r} is corrupt ({exc}); delete the zip and fetch again"
        ) from None
    except NotImplementedError as exc:
        partial.unlink(missing_ok=True)
        raise DataError(f"{zip_path}: entry {info.filename!r}: {exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return written


def _inside(path: Path, root: Path) -> bool:
    resolved = path.resolve()
    return resolved == root or resolved.is_relative_to(root)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"
