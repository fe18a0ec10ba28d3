"""A tiny folder with OWDFA-40's 42 class folders (41 labels), so that the official models' classes fit it.

The CAL authors' models are OWDFA-40 models: 41 classes, 256 px crops. Their import insists on
that class list, and evaluate scores a model only on a split of its own classes and face size, so
the official-model tests need OWDFA-40's layout, not the embedded 15-class benchmark: a few
smooth random images per folder (PNG, small on disk) at the official 256 px.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from owdfa.data.protocols import OWDFA40_FOLDERS

OFFICIAL_SIZE = 256
IMAGES_PER_FOLDER = 4
# split params that fit IMAGES_PER_FOLDER: every image drawn, half of each class held out for test
SPLIT_PARAMS = {
    "seed": 1,
    "budgets": {"real": 2 * IMAGES_PER_FOLDER, "known": IMAGES_PER_FOLDER, "novel": IMAGES_PER_FOLDER},
    "test_fraction": 0.5,
    "labelled_fraction": 1.0,
    "val_fraction": 0.0,
    "allow_short_classes": False,
    "group_by_video": False,
    "custom_protocols": {},
}


def write_owdfa40_folders(root: Path, per_folder: int = IMAGES_PER_FOLDER, size: int = OFFICIAL_SIZE) -> Path:
    """`root/<folder>/<i>.png` for every OWDFA-40 class folder: an 8x8 colour pattern blown up to `size`."""
    rng = np.random.default_rng(0)
    for folder in OWDFA40_FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_folder):
            pattern = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            Image.fromarray(pattern).resize((size, size), Image.BILINEAR).save(root / folder / f"{i:03d}.png")
    return root


def build_owdfa40_split(base: Path, protocol: str = "p1", size: int = OFFICIAL_SIZE) -> tuple[Path, Path]:
    """The folder, its index, a `size` px face cache (mode resize) and `protocol`'s split under `base`
    (each made once: further calls reuse what is there); returns (faces, split)."""
    from owdfa.core.config import Section
    from owdfa.data.align import align
    from owdfa.data.face_cache import read_faces
    from owdfa.data.index import build_index, write_index
    from owdfa.data.split import write_split

    raw = base / "raw"
    if not raw.is_dir():
        write_owdfa40_folders(raw)
    rows, _ = build_index(raw)
    write_index(rows, base / "index.csv")
    faces_dir, split_dir = base / f"faces-{size}", base / f"split-{protocol}-{size}"
    if not faces_dir.is_dir():
        section = Section({"mode": "resize", "image_size": size, "workers": 1}, "align")
        align(section, raw, base / "index.csv", faces_dir)
    faces, _ = read_faces(faces_dir)
    write_split(Section(SPLIT_PARAMS, "split"), faces, protocol, split_dir)
    return faces_dir, split_dir
