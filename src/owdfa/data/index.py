"""Sorted, recursive listing of a class-folder tree into an index table.

Layout (OWDFA-40's and the synthetic benchmark's): `<root>/<label>_<Family>_<Method>/.../<image>`.
The label is the integer before the first underscore (several folders may share one, as the two
real folders of OWDFA-40 do); the image's parent folder, relative to the class folder, is its
group (the source video or identity), used later for leakage-free splits. Images lying directly in
the class folder get their group from the file name without its trailing frame number
(`c23-000_003-0012.png` -> `c23-000_003`, the CPL-era FF++ naming), so flat folders of video frames
still group by video; a name without one (`00017.png`, a generated image) is its own group.
Paths are sorted so the table, and every split drawn from it, is identical on every machine.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from owdfa.core.errors import DataError
from owdfa.core.io import atomic_write_text
from owdfa.data.walk import display_name, is_hidden, walk_images

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
_CLASS_FOLDER = re.compile(r"^(\d+)_(.+)$")
_FRAME_SUFFIX = re.compile(r"[-_ .]\d+$")
INDEX_COLUMNS = ("path", "label", "class_name", "group")


@dataclass(frozen=True)
class IndexRow:
    path: str
    label: int
    class_name: str
    group: str


def unprintable_name_problem(name: str) -> str | None:
    """Why a file or folder name cannot go into the index (a UTF-8 CSV read back by every stage)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8"
    if not name.isprintable():
        return "its name holds control characters"
    return None


def build_index(root: Path) -> tuple[list[IndexRow], list[str]]:
    """Index every image under root's class folders; also return the names of skipped folders.

    Files and folders whose names are not printable UTF-8 are left out with a warning that shows
    the name escaped; so are links that leave their class folder and non-regular files
    (`owdfa.data.walk`).
    """
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    rows: list[IndexRow] = []
    skipped: list[str] = []

    def warn(path: Path, why: str) -> None:
        print(f"index: skipped {display_name(path)}: {why}", file=sys.stderr)

    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not is_hidden(p.name)):
        match = _CLASS_FOLDER.match(folder.name)
        if not match:
            skipped.append(display_name(folder.name))
            continue
        if problem := unprintable_name_problem(folder.name):
            warn(folder, problem)
            continue
        label = int(match.group(1))
        walk = walk_images(folder, IMAGE_SUFFIXES)
        for path, why in walk.skipped:
            warn(path, why)
        for rel in walk.files:
            if problem := next(filter(None, map(unprintable_name_problem, rel.parts)), None):
                warn(folder / rel, problem)
                continue
            group = rel.parent.as_posix() if rel.parent.parts else _group_of_flat_file(rel.stem)
            path = (folder / rel).relative_to(root).as_posix()
            rows.append(IndexRow(path, label, folder.name, f"{folder.name}/{group}"))
    if not rows:
        raise DataError(f"{root}: no images found in '<label>_<Family>_<Method>' class folders")
    rows.sort(key=lambda r: r.path)
    return rows, skipped


def _group_of_flat_file(stem: str) -> str:
    video = _FRAME_SUFFIX.sub("", stem)
    return video if video and video != stem else stem


def write_index(rows: list[IndexRow], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(INDEX_COLUMNS)
    for row in rows:
        writer.writerow((row.path, row.label, row.class_name, row.group))
    atomic_write_text(path, buffer.getvalue())


def read_index(path: Path) -> list[IndexRow]:
    if not path.is_file():
        raise DataError(f"{path}: index not found (run the index stage first)")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != INDEX_COLUMNS:
            raise DataError(f"{path}: not an index table (columns {reader.fieldnames})")
        return [IndexRow(r["path"], int(r["label"]), r["class_name"], r["group"]) for r in reader]
