"""The align stage: every indexed image decoded once into a lossless uint8 face cache.

Training and evaluation read only this cache (`images.npy`, N x H x W x 3, plus `faces.csv`),
never the raw files or a face detector. Mode `resize` (the synthetic benchmark's, whose images are
already face crops) only resizes; the dlib modes `crop` and `aligned` arrive with OWDFA-40.
An unreadable image is skipped with a warning that names it and counted in the summary.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from owdfa.config import Section
from owdfa.data.index import read_index
from owdfa.errors import ConfigError, DataError
from owdfa.io import atomic_directory

MODES = ("resize", "crop", "aligned")
FACES_FILE = "faces.csv"
IMAGES_FILE = "images.npy"


def load_rgb(path: Path, size: int) -> np.ndarray:
    """Decode any PIL-readable image to size x size RGB uint8 (alpha dropped, 16-bit scaled)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                img = Image.fromarray(np.clip(arr / max(arr.max(), 1) * 255, 0, 255).astype(np.uint8))
            rgb = img.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
            return np.asarray(rgb, dtype=np.uint8)


def align(section: Section, raw: Path, index_path: Path, out: Path) -> dict:
    section.check_unknown(("mode", "image_size"))
    mode = section.str("mode", choices=MODES)
    size = section.int("image_size", min=16, max=1024)
    if mode != "resize":
        raise ConfigError(section.key("mode"), f"{mode!r} (dlib face detection) is not available in this version yet; use 'resize'")
    rows = read_index(index_path)
    images = np.empty((len(rows), size, size, 3), dtype=np.uint8)
    kept: list[int] = []
    failures: Counter[str] = Counter()
    for i, row in enumerate(tqdm(rows, desc="align: decoding", unit="img", disable=None)):
        path = raw / row.path
        try:
            images[len(kept)] = load_rgb(path, size)
        except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            failures[row.class_name] += 1
            print(f"warning: skipped unreadable image {path}: {exc}", file=sys.stderr)
            continue
        kept.append(i)
    if not kept:
        raise DataError(f"{raw}: none of the {len(rows)} indexed images could be read")
    table = pd.DataFrame(
        {
            "row": range(len(kept)),
            "path": [rows[i].path for i in kept],
            "label": [rows[i].label for i in kept],
            "class_name": [rows[i].class_name for i in kept],
            "group": [rows[i].group for i in kept],
            "face_status": "not_checked",
        }
    )
    with atomic_directory(out) as tmp:
        np.save(tmp / IMAGES_FILE, images[: len(kept)])
        table.to_csv(tmp / FACES_FILE, index=False, lineterminator="\n")
    return {
        "mode": mode,
        "image_size": size,
        "images": len(kept),
        "skipped": sum(failures.values()),
        "skipped_per_class": dict(sorted(failures.items())),
    }


def read_faces(faces_dir: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The cache's table and images (memory-mapped: OWDFA-40-sized caches need not fit in RAM)."""
    table_path, images_path = faces_dir / FACES_FILE, faces_dir / IMAGES_FILE
    if not table_path.is_file() or not images_path.is_file():
        raise DataError(f"{faces_dir}: face cache not found (run the align stage first)")
    table = pd.read_csv(table_path, keep_default_na=False)
    images = np.load(images_path, mmap_mode="r")
    if len(images) != len(table):
        raise DataError(f"{faces_dir}: {IMAGES_FILE} holds {len(images)} images but {FACES_FILE} {len(table)} rows")
    return table, images
