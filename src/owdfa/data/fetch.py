"""The fetch stage: bring a benchmark's raw class folders into data/raw.

`data.source` picks where from: `synthetic` (generated here, deterministic from params),
`hub` (OWDFA-40 from the Hugging Face Hub, see `owdfa.data.hub`) or `folder` (a local copy laid
out like OWDFA-40). Whatever the source, `out` ends up as `<out>/<label>_<Family>_<Method>/...`
plus a `SOURCE.json` that says where the data came from, and it appears in one rename, so a failed
fetch never leaves half a dataset for the next stage.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from owdfa.core.config import Section, check_keys, load_section
from owdfa.core.errors import ConfigError, DataError
from owdfa.core.io import atomic_directory
from owdfa.data.archive import ExtractReport
from owdfa.data.index import IMAGE_SUFFIXES
from owdfa.data.protocols import LANDMARK_PREDICTOR_FILE
from owdfa.data.synthetic import METHODS, SyntheticConfig, images_for, write_benchmark
from owdfa.data.walk import display_name, is_hidden, is_inside, link_outside, regular_file_problem, walk_images

SOURCES = ("synthetic", "hub", "folder")
FOLDER_KEYS = ("path",)
_CLASS_FOLDER = re.compile(r"^(\d+)_(.+)$")


def synthetic_config(section: Section) -> SyntheticConfig:
    return load_section(SyntheticConfig, section)


def fetch(section: Section, out: Path, workers: int | None = None) -> dict:
    """Populate `out` (replaced atomically) and return a summary of what was written."""
    section.check_unknown(("source", "synthetic", "hub", "folder"))
    source = section.str("source", choices=SOURCES)
    _check_unused_sections(section, source)
    if source == "hub":
        return _fetch_hub(section.section("hub"), Path(out))
    if source == "folder":
        return _fetch_folder(section.section("folder"), Path(out))
    config = synthetic_config(section.section("synthetic"))
    total = sum(images_for(config, m) for m in METHODS)
    with atomic_directory(out) as tmp, tqdm(total=total, desc="fetch: generating", unit="img", disable=None) as bar:
        count = write_benchmark(config, tmp, workers=workers, progress=bar.update)
        summary = {
            "source": "synthetic",
            "images": count,
            "classes": {m.folder: images_for(config, m) for m in METHODS},
        }
        (tmp / "SOURCE.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _check_unused_sections(section: Section, source: str) -> None:
    """A typo in a source's section is reported even while another source is selected."""
    from owdfa.data.hub import HubConfig

    for name, config_class in {"synthetic": SyntheticConfig, "hub": HubConfig}.items():
        if name != source and section.has(name):
            check_keys(config_class, section.section(name))
    if source != "folder" and section.has("folder"):
        section.section("folder").check_unknown(FOLDER_KEYS)


def _write_source(tmp: Path, summary: dict) -> None:
    (tmp / "SOURCE.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------
# hub


def _fetch_hub(section: Section, out: Path) -> dict:
    from owdfa.data.hub import download, hub_config, unpack

    config = hub_config(section)
    _check_apart(config.download_dir, out, section.key("download_dir"))
    fetched = download(config)
    with atomic_directory(out) as tmp:
        reports = unpack(config, fetched, tmp)
        _check_skipped(reports, config.accept_skipped, section.key("accept_skipped"))
        classes = {folder: count_images(tmp / folder) for folder in config.folders}
        summary = {
            "source": "hub",
            "repo_id": config.repo_id,
            "revision": config.revision,
            "commit": fetched.commit,
            "images": sum(classes.values()),
            "classes": classes,
            "predictor": LANDMARK_PREDICTOR_FILE if config.predictor else None,
            "files": {path: {"sha256": f.sha256, "size": f.size} for path, f in sorted(fetched.files.items())},
            "skipped": {
                folder: {
                    "count": len(report.skipped),
                    "reasons": dict(Counter(reason for _, reason in report.skipped)),
                    "entries": [list(entry) for entry in report.skipped],
                }
                for folder, report in reports.items()
                if report.skipped
            },
        }
        _write_source(tmp, summary)  # a function of the data only: no warnings, which depend on the network
    return {**summary, "warnings": list(fetched.warnings)}


def _check_skipped(reports: dict[str, ExtractReport], accepted: bool, key: str) -> None:
    """Name every skipped zip entry on stderr; fail if any may have been an image, unless `accepted`.

    A source whose image could not be written must not give a dataset that silently lacks it.
    """
    lost = 0
    first = ""
    for folder, report in reports.items():
        for name, reason in report.skipped:
            print(f"fetch: skipped {folder}.zip: {display_name(name)}: {reason}", file=sys.stderr)
        if report.lost and not first:
            name, reason = report.lost[0]
            first = f"{folder}.zip: {display_name(name)}: {reason}"
        lost += len(report.lost)
    if lost and not accepted:
        raise DataError(
            f"{lost} zip entries that may be images were not extracted (the first: {first}; all are listed above); "
            f"to fetch without them set {key}: true"
        )


# --------------------------------------------------------------------------------------------
# folder


def folder_path(section: Section) -> Path:
    section.check_unknown(FOLDER_KEYS)
    value = section.raw("path")
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError(
            section.key("path"), "not set: give a local folder with '<label>_<Type>_<Method>' class folders"
        )
    path = Path(section.str("path")).expanduser()
    if not path.is_dir():
        raise ConfigError(section.key("path"), f"{path} is not a folder")
    return path


def find_class_folders(root: Path) -> dict[str, Path]:
    """Every `<int>_<name>` folder below root (not below another one), by name; hidden folders skipped.

    A folder link that leads outside root is skipped with a warning; two class folders that are one
    folder (or one inside the other, through a link) would give the same images two labels: an error.
    """
    found: dict[str, Path] = {}
    bound = os.path.realpath(root)
    visited: set[str] = set()
    pending = [root]
    while pending:
        folder = pending.pop()
        real = os.path.realpath(folder)
        if real in visited:
            continue
        visited.add(real)
        try:
            children = sorted(folder.iterdir())
        except OSError as exc:
            raise DataError(f"{display_name(folder)}: cannot read ({exc.strerror or exc})") from None
        for child in children:
            if is_hidden(child.name) or not child.is_dir():
                continue
            if child.is_symlink() and (why := link_outside(child, bound)):
                _warn_skipped(child, why)
                continue
            if not _CLASS_FOLDER.match(child.name):
                pending.append(child)
            elif child.name in found:
                raise DataError(f"class folder {child.name} found twice: {found[child.name]} and {child}; keep one")
            else:
                found[child.name] = child
    _check_distinct(found)
    return dict(sorted(found.items()))


def _check_distinct(classes: dict[str, Path]) -> None:
    reals = {name: os.path.realpath(folder) for name, folder in classes.items()}
    for name_a, a in reals.items():
        for name_b, b in reals.items():
            if name_a != name_b and is_inside(b, a):
                raise DataError(
                    f"class folders {display_name(classes[name_a])} and {display_name(classes[name_b])} lead to "
                    "the same images (a symbolic link); each image must have one class"
                )


def _warn_skipped(path: Path, why: str) -> None:
    print(f"fetch: skipped {display_name(path)}: {why}", file=sys.stderr)


def _fetch_folder(section: Section, out: Path) -> dict:
    source = folder_path(section)
    _check_apart(source, out, section.key("path"))
    classes = find_class_folders(source)
    if not classes:
        raise DataError(f"{source}: no class folders named '<label>_<Type>_<Method>' (data.folder.path)")
    plan = {name: _images_below(folder) for name, folder in classes.items()}
    total = sum(len(files) for files in plan.values())
    if total == 0:
        raise DataError(f"{source}: the class folders hold no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    predictor = _find_predictor(source, classes.values())
    with atomic_directory(out) as tmp, tqdm(total=total, desc="fetch: copying", unit="img", disable=None) as bar:
        for name, files in plan.items():
            for rel in files:
                target = tmp / name / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(classes[name] / rel, target)
                bar.update()
        if predictor is not None:
            shutil.copy2(predictor, tmp / LANDMARK_PREDICTOR_FILE)
        summary = {
            "source": "folder",
            "path": str(source),
            "images": total,
            "classes": {name: len(files) for name, files in plan.items()},
            "folders": {name: str(folder.relative_to(source)) for name, folder in classes.items()},
            "predictor": LANDMARK_PREDICTOR_FILE if predictor is not None else None,
        }
        _write_source(tmp, summary)
    return summary


def _images_below(folder: Path) -> list[Path]:
    """Image files below a class folder, relative to it, sorted (`owdfa.data.walk`: links that would
    leave the class folder, loops, FIFOs and other non-regular files are skipped with a warning)."""
    walk = walk_images(folder, IMAGE_SUFFIXES, within=folder)
    for path, why in walk.skipped:
        _warn_skipped(path, why)
    return walk.files


def _find_predictor(root: Path, class_folders: Iterable[Path]) -> Path | None:
    """dlib's predictor next to the class folders or one level up (CAL keeps it beside `data/`)."""
    candidates = [root]
    for folder in class_folders:
        for parent in (folder.parent, folder.parent.parent):
            if parent == root or root in parent.parents:
                candidates.append(parent)
    bound = os.path.realpath(root)
    for candidate in dict.fromkeys(candidates):
        path = candidate / LANDMARK_PREDICTOR_FILE
        if not os.path.lexists(path):
            continue
        if problem := link_outside(path, bound) or regular_file_problem(path):
            _warn_skipped(path, problem)
        else:
            return path
    return None


def count_images(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return len(walk_images(folder, IMAGE_SUFFIXES).files)


def _check_apart(source: Path, out: Path, key: str) -> None:
    """Reading from (or downloading into) the output folder would destroy the data when it is replaced."""
    a, b = source.resolve(), Path(out).resolve()
    if a == b or a.is_relative_to(b) or b.is_relative_to(a):
        raise ConfigError(key, f"{source} overlaps the stage output {out}; use a folder outside it")
