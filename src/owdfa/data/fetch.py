"""The fetch stage: bring a benchmark's raw class folders into data/raw.

`data.source` picks where from: `synthetic` (generated here, deterministic from params),
`hub` (OWDFA-40 from the Hugging Face Hub) or `folder` (a local copy). Only the synthetic source
exists in this version; the other two stop with a one-line message instead of half-working.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from owdfa.config import Section
from owdfa.data.synthetic import METHODS, SyntheticConfig, images_for, write_benchmark
from owdfa.errors import ConfigError
from owdfa.io import atomic_directory

SOURCES = ("synthetic", "hub", "folder")


def synthetic_config(section: Section) -> SyntheticConfig:
    section.check_unknown(SyntheticConfig.__dataclass_fields__)
    return SyntheticConfig(
        seed=section.int("seed", min=0),
        image_size=_image_size(section),
        identities=section.int("identities", min=2),
        real_images=section.int("real_images", min=1),
        images_per_method=section.int("images_per_method", min=1),
        fingerprint_strength=section.float("fingerprint_strength", min=0.0, max=5.0),
        jpeg_quality=section.int_pair("jpeg_quality", min=10, max=100),
        sensor_noise=section.float_pair("sensor_noise", min=0.0, max=0.2),
    )


def _image_size(section: Section) -> int:
    size = section.int("image_size", min=16, max=1024)
    if size % 8:
        raise ConfigError(section.key("image_size"), f"must be a multiple of 8 (the generators down-sample by 8), got {size}")
    return size


def fetch(section: Section, out: Path, workers: int | None = None) -> dict:
    """Populate `out` (replaced atomically) and return a summary of what was written."""
    section.check_unknown(("source", "synthetic", "hub", "folder"))
    source = section.str("source", choices=SOURCES)
    if source != "synthetic":
        raise ConfigError(
            section.key("source"),
            f"{source!r} is not available in this version yet (OWDFA-40 download and local folders "
            "come with the real-data support); use 'synthetic'",
        )
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
