"""The align stage: every indexed image decoded once into a lossless uint8 face cache.

Training and evaluation read only this cache (`images.npy`, N x H x W x 3, plus `faces.csv`),
never the raw files or a face detector. Modes (`owdfa.data.faces`): `resize` (the synthetic
benchmark's, whose images are already face crops) only resizes; `crop` (CAL parity) and `aligned`
run dlib's face detector. Images are processed in worker processes, each with its own dlib
objects; the output does not depend on the number of workers.

faces.csv: row, path, label, class_name, group, face_status (found | no_face in the detection
modes, not_checked in mode resize) and, in the detection modes only, face_score (the detector's
score, 4 decimals; empty without a face), so that mode resize writes the same bytes as before.
An unreadable image is skipped with a warning that names it and counted in the summary.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from owdfa.core.config import Section
from owdfa.core.errors import ConfigError, DataError
from owdfa.core.io import atomic_directory
from owdfa.data.face_cache import FACES_FILE, IMAGES_FILE
from owdfa.data.face_preprocessing import DEFAULTS, MODES, FacePreprocessing
from owdfa.data.faces import (
    PREDICTOR_FILE,
    AlignerSetupError,
    FaceSettings,
    ImageWorker,
    Result,
    bundled_predictor_path,
    init_worker,
    load_rgb,
    run_job,
)
from owdfa.data.index import read_index

__all__ = [
    "MODES",
    "align",
    "load_rgb",
    "read_align_params",
]


def resolve_predictor(value: str, raw: Path, key: str) -> Path:
    """`auto`: <raw>/shape_predictor_68_face_landmarks.dat if there, else face_recognition_models' copy."""
    if value == "auto":
        local = raw / PREDICTOR_FILE
        if local.is_file():
            return local
        bundled = bundled_predictor_path()
        if bundled is None:
            raise ConfigError(
                key, f"auto: no {PREDICTOR_FILE} in {raw} and face-recognition-models is not installed; give a path"
            )
        return bundled
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(key, f"file not found: {value}")
    return path


def read_align_params(section: Section, raw: Path) -> tuple[FaceSettings, int]:
    """Validate the `align` section; returns the per-image settings and the worker count (0 = all cores).

    The section has the record's layout (`FacePreprocessing`: mode, image_size, detector, margin,
    padding, predictor) plus `workers`; its `predictor` is `auto` or a path, kept in mode aligned only.
    """
    workers = section.int("workers", min=0, default=DEFAULTS["workers"])
    prep = FacePreprocessing.from_section(section, extra_keys=("workers",))
    predictor_path = None
    if prep.mode == "aligned":
        predictor = section.str("predictor", default=DEFAULTS["predictor"])
        predictor_path = str(resolve_predictor(predictor, raw, section.key("predictor")))
        prep = replace(prep, predictor=predictor)
    else:
        prep = replace(prep, predictor=None)
    return FaceSettings(prep, predictor_path), workers


def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _make_worker(settings: FaceSettings, key: str) -> ImageWorker:
    """The in-process worker; a predictor file dlib cannot load is a ConfigError naming `key`."""
    try:
        return ImageWorker(settings)
    except AlignerSetupError as exc:
        raise ConfigError(key, str(exc)) from None


@contextmanager
def _result_stream(
    settings: FaceSettings, jobs: list[tuple[int, str]], workers: int, section: Section
) -> Iterator[Iterator[Result]]:
    """Every job's result, in job order whatever the number of workers; the pool stops on exit."""
    if workers <= 1:
        yield map(_make_worker(settings, section.key("predictor")), jobs)
        return
    # each child builds its dlib objects once (init_worker), then runs whole chunks of files
    executor = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(settings,),
    )
    try:
        chunksize = max(1, min(32, math.ceil(len(jobs) / (workers * 8))))
        yield executor.map(run_job, jobs, chunksize=chunksize)
    except AlignerSetupError as exc:  # raised by the first job of a worker whose setup failed
        raise ConfigError(section.key("predictor"), str(exc)) from None
    except BrokenProcessPool:
        problem = (
            f"a worker process died (out of memory? or a calling script without an `if __name__ == '__main__':`"
            f" guard); try fewer workers, e.g. 1 (was {workers})"
        )
        raise ConfigError(section.key("workers"), problem) from None
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def align(
    section: Section,
    raw: Path,
    index_path: Path,
    out: Path,
    *,
    workers: int | None = None,
    progress: bool | None = None,
) -> dict:
    """Write the face cache for every indexed image to `out`; returns the summary (reports/align.json).

    `workers` overrides `align.workers` (0 = all available cores); `progress` None shows the bar
    only on a terminal.
    """
    settings, param_workers = read_align_params(section, raw)
    requested = param_workers if workers is None else workers
    if requested < 0:
        raise ValueError(f"workers must be >= 0, got {requested}")
    rows = read_index(index_path)
    if not rows:
        raise DataError(f"{index_path}: the index lists no images")
    n_workers = min(requested or available_cores(), len(rows))
    size = settings.preprocessing.image_size
    detecting = settings.preprocessing.detects
    jobs = [(i, str(raw / row.path)) for i, row in enumerate(rows)]
    kept: list[int] = []
    found: list[bool] = []
    scores: list[float | None] = []
    failures: Counter[str] = Counter()
    with atomic_directory(out) as tmp:
        partial = tmp / f".{IMAGES_FILE}.partial"
        images = _new_array(partial, (len(rows), size, size, 3))
        bar = tqdm(
            total=len(jobs),
            desc=f"align ({settings.mode})",
            unit="img",
            disable=None if progress is None else not progress,
        )
        with bar, _result_stream(settings, jobs, n_workers, section) as results:
            for index, image, has_face, score, error in results:
                bar.update(1)
                if image is None:
                    failures[rows[index].class_name] += 1
                    tqdm.write(f"warning: skipped {error}", file=sys.stderr)
                    continue
                images[len(kept)] = image
                kept.append(index)
                found.append(has_face)
                scores.append(score)
        if not kept:
            raise DataError(f"{raw}: none of the {len(rows)} indexed images could be read")
        images.flush()
        del images
        _finish_images(partial, tmp / IMAGES_FILE, len(kept), (size, size, 3))
        table = pd.DataFrame(
            {
                "row": range(len(kept)),
                "path": [rows[i].path for i in kept],
                "label": [rows[i].label for i in kept],
                "class_name": [rows[i].class_name for i in kept],
                "group": [rows[i].group for i in kept],
                "face_status": [("found" if f else "no_face") for f in found] if detecting else "not_checked",
            }
        )
        if detecting:
            table["face_score"] = ["" if s is None else f"{s:.4f}" for s in scores]
        table.to_csv(tmp / FACES_FILE, index=False, lineterminator="\n")
        settings.preprocessing.write(tmp)
    summary: dict = {
        "mode": settings.mode,
        "image_size": size,
        "images": len(kept),
        "skipped": sum(failures.values()),
        "skipped_per_class": dict(sorted(failures.items())),
    }
    if detecting:
        per_class = Counter(rows[i].class_name for i in kept)
        missing = Counter(rows[i].class_name for i, f in zip(kept, found, strict=True) if not f)
        summary["no_face"] = sum(missing.values())
        summary["no_face_rate_per_class"] = {
            name: round(missing[name] / per_class[name], 4) for name in sorted(per_class)
        }
    return summary


def _new_array(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A uint8 .npy file mapped for writing, its blocks reserved on the disk first.

    A mapped file is sparse until written: on a full disk the page that finds no block kills the
    process with SIGBUS. Reserved up front, a full disk is an OSError here (one line, by the caller).
    """
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    with open(path, "r+b") as handle:
        os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
    return array


def _finish_images(partial: Path, final: Path, kept: int, shape: tuple[int, int, int]) -> None:
    """Rename the full-length array, or copy its first `kept` rows when images were skipped."""
    source = np.load(partial, mmap_mode="r")
    if kept == len(source):
        del source
        os.replace(partial, final)
        return
    target = _new_array(final, (kept, *shape))
    step = 1024
    for start in range(0, kept, step):
        target[start : start + step] = source[start : min(start + step, kept)]
    target.flush()
    del target, source
    partial.unlink()
