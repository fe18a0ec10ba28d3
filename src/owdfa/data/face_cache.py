"""The face cache the align stage writes and every later stage reads (no face detector needed to read it).

`images.npy` (N x H x W x 3 uint8), `faces.csv` (one row per image, `owdfa.data.align` says which
columns) and `preprocessing.json` (the align settings that made it, `owdfa.data.face_preprocessing`).
Kept apart from the aligner so that the stages that only read the cache do not depend on the aligner's code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from owdfa.core.errors import DataError

FACES_FILE = "faces.csv"
IMAGES_FILE = "images.npy"
# The face preprocessing that made the cache, copied into every model card so that `owdfa attribute`
# prepares new images exactly as training saw them (`owdfa.data.face_preprocessing` reads and writes it).
PREPROCESSING_FILE = "preprocessing.json"


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
