"""The align stage's record of its face settings: `preprocessing.json` beside the face cache.

One record, one format: the align stage writes it, training copies it into every model card
(`owdfa.modeldir.card`, key `preprocessing`), and `owdfa attribute` prepares new images with it, so a
new picture is cropped as the training images were. The modes, defaults and bounds of the face
settings live here, beside the record: the align stage reads its params with them and a record is
held to them, and a reader of cards (training, evaluate, the CLI) needs none of the aligner's code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from owdfa.core.config import Section
from owdfa.core.errors import ConfigError, DataError
from owdfa.data.face_cache import PREPROCESSING_FILE

MODES = ("resize", "crop", "aligned")
DEFAULTS = {"upsample": 0, "threshold": 0.0, "margin": 1.2, "padding": 0.25, "predictor": "auto", "workers": 0}
# The bounds of each face setting: the align stage's params and every record of them (cards included)
RANGES = {
    "image_size": {"min": 16, "max": 1024},
    "upsample": {"min": 0, "max": 4},
    "threshold": {"min": -10.0, "max": 10.0},
    "margin": {"min": 1.0, "max": 4.0},
    "padding": {"min": 0.0, "max": 2.0},
}
RECORD_KEYS = ("mode", "image_size", "detector", "margin", "padding", "predictor")
DETECTOR_KEYS = ("upsample", "threshold")


@dataclass(frozen=True)
class FacePreprocessing:
    """How the face cache was made: mode, size, dlib detector settings, crop margin, alignment padding."""

    mode: str  # one of MODES
    image_size: int
    upsample: int
    threshold: float
    margin: float
    padding: float
    predictor: str | None = None  # mode aligned: the params' `predictor` (`auto` or a path); else None

    @property
    def detects(self) -> bool:
        """Whether dlib looks for a face (modes crop and aligned); resize only resizes."""
        return self.mode != "resize"

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout of `preprocessing.json`, and of a model card's `preprocessing`."""
        return {
            "mode": self.mode,
            "image_size": self.image_size,
            "detector": {"upsample": self.upsample, "threshold": self.threshold},
            "margin": self.margin,
            "padding": self.padding,
            "predictor": self.predictor,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def write(self, faces_dir: Path) -> None:
        (faces_dir / PREPROCESSING_FILE).write_text(self.to_json())

    @classmethod
    def from_dict(cls, raw: Any, where: str | Path) -> FacePreprocessing:
        """The record checked; a problem is one DataError line `<where>: preprocessing.<key>: ...`."""
        try:
            return cls.from_section(Section(raw, "preprocessing"))
        except ConfigError as exc:
            raise DataError(f"{where}: {exc.located}") from None

    @classmethod
    def from_section(cls, record: Section, extra_keys: tuple[str, ...] = ()) -> FacePreprocessing:
        """As `from_dict`, raising ConfigError under the section's own dotted name (`card.preprocessing.mode`).

        Keys left out take the align stage's defaults (a record written by hand, or by an older version).
        The align section has the same layout plus `extra_keys` (`workers`), which the caller reads.
        """
        mode = record.str("mode", choices=MODES)
        image_size = record.int("image_size", **RANGES["image_size"])
        detector = record.section("detector") if record.has("detector") else Section({}, record.key("detector"))
        upsample = detector.int("upsample", **RANGES["upsample"], default=DEFAULTS["upsample"])
        threshold = detector.float("threshold", **RANGES["threshold"], default=DEFAULTS["threshold"])
        margin = record.float("margin", **RANGES["margin"], default=DEFAULTS["margin"])
        padding = record.float("padding", **RANGES["padding"], default=DEFAULTS["padding"])
        predictor = record.optional_str("predictor")
        record.check_unknown((*RECORD_KEYS, *extra_keys))
        detector.check_unknown(DETECTOR_KEYS)
        return cls(mode, image_size, upsample, threshold, margin, padding, predictor)


def read_preprocessing(faces_dir: Path) -> FacePreprocessing | None:
    """The record beside the cache, checked (None for a cache from before it was recorded)."""
    path = faces_dir / PREPROCESSING_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path}: not JSON (re-run the align stage)") from None
    return FacePreprocessing.from_dict(raw, path)
