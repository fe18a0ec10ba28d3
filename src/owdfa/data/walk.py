"""Image files below a folder that came from elsewhere: links stay inside, loops end, only regular files.

An input folder (`data.folder.path`, the folders given to `owdfa attribute`) may hold symbolic links.
A link is followed only when its target lies inside `within` (for a class folder: that class
folder, so no image changes class; for `owdfa attribute`: the folder given), a folder already walked
is not walked again (a loop ends), and only regular files are taken: a FIFO, socket or device never
reaches a reader that would block on it. Everything left out is reported with the reason, for the
caller to warn about; nothing here raises on a single bad entry.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Walk", "display_name", "is_hidden", "is_inside", "link_outside", "regular_file_problem", "walk_images"]


@dataclass
class Walk:
    files: list[Path] = field(default_factory=list)  # relative to the walked folder, sorted
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (path as found, why), in walk order


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def display_name(path: str | os.PathLike[str]) -> str:
    """`path` safe to print: no control characters, undecodable bytes as \\x escapes."""
    text = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    raw = os.fsencode(text)
    decoded = raw.decode("utf-8", errors="backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in decoded)


def is_inside(path: str, root: str) -> bool:
    """Real path `path` is `root` or below it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def link_outside(path: str | os.PathLike[str], bound: str) -> str | None:
    """Why `path` may not be followed: a link whose real target lies outside real path `bound`; else None."""
    target = os.path.realpath(path)
    if is_inside(target, bound):
        return None
    return f"a symbolic link to {display_name(target)}, outside {display_name(bound)}"


def regular_file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why `path` (links followed) is not a regular file that can be read, or None when it is one."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return "a broken link" if os.path.islink(path) else f"cannot read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file (a FIFO, socket or device)"


def walk_images(folder: Path, suffixes: Iterable[str], within: Path | None = None) -> Walk:
    """Regular files with one of `suffixes` below `folder`, hidden entries and __MACOSX left out.

    `within` (default: `folder`) bounds where a symbolic link may lead.
    """
    wanted = {s.lower() for s in suffixes}
    bound = os.path.realpath(within if within is not None else folder)
    walk = Walk()
    walked: set[str] = set()
    pending = [Path(folder)]
    linked: list[Path] = []  # folder links, walked after every real folder: a folder's images come once
    while pending or linked:
        current = pending.pop() if pending else linked.pop(0)
        real = os.path.realpath(current)
        if real in walked:
            walk.skipped.append((current, "a link to a folder already walked (a loop or a second path to it)"))
            continue
        walked.add(real)
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as exc:
            walk.skipped.append((current, f"cannot list ({exc.strerror or exc})"))
            continue
        subfolders = []
        for entry in entries:
            if is_hidden(entry.name):
                continue
            path = Path(entry.path)
            is_link = entry.is_symlink()
            if is_link and (why := link_outside(path, bound)):
                walk.skipped.append((path, why))
                continue
            try:
                is_dir = entry.is_dir()  # follows a link that stays inside
            except OSError:
                is_dir = False
            if is_dir:
                (linked if is_link else subfolders).append(path)
                continue
            if path.suffix.lower() not in wanted:
                continue
            problem = regular_file_problem(path)
            if problem:
                walk.skipped.append((path, problem))
            else:
                walk.files.append(path.relative_to(folder))
        pending.extend(reversed(subfolders))
        linked.sort()
    walk.files.sort()
    return walk
