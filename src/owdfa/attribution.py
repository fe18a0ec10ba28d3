"""Attributing face images with a trained model directory: the library behind `owdfa attribute`.

A model directory from elsewhere is checked before anything is built from it (`owdfa.model_checks`),
inputs are collected as `owdfa.data.walk` allows (links inside, regular files only), and each image
goes through the align stage's decoding and `FaceAligner` with the card's settings, then
`owdfa.inference.predict`, so a prediction here equals the evaluate stage's for the same picture.
Everything printed is made printable (`display_name`). The command line itself (`owdfa.cli`) only
parses arguments and writes the rows.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from owdfa.data.walk import display_name
from owdfa.errors import DataError, OwdfaError

if TYPE_CHECKING:  # heavy imports (torch, dlib) wait until they are needed: `owdfa --help` stays fast
    from owdfa.data.faces import FaceAligner, FaceSettings
    from owdfa.models import AttributionModel

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
PROGRESS_MIN_IMAGES = 100  # a bar for a long run even into a log file; a terminal always gets one
# Files are aligned and predicted a chunk at a time (bounded memory). MC-dropout masks are keyed by
# (seed + chunk number, position in the chunk), so they depend on the input list, never on the batch size.
CHUNK_IMAGES = 256
CHUNK_BYTES = 256 * 2**20
Jobs = list[tuple[str, str | None]]  # (path, None) to try, (path, reason) for an input that yields none


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def load_checked_model(model_dir: Path, checkpoint: str) -> tuple[AttributionModel, dict[str, Any]]:
    """`load_model`, with anything a hand-edited card can break turned into one DataError line."""
    from owdfa.model_checks import check_card, check_weights
    from owdfa.model_io import WEIGHTS, load_model, load_state, read_card

    try:
        card = read_card(model_dir)
        check_card(card, model_dir)  # before anything is built from it
        check_weights(load_state(model_dir, checkpoint), card, model_dir / WEIGHTS[checkpoint])
        model, card = load_model(model_dir, checkpoint)  # names and shapes: a strict load
    except DataError as exc:
        pickles = sorted(p.name for p in model_dir.glob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
        hint = f" ({', '.join(pickles)} ignored: pickled checkpoints are never loaded)" if pickles else ""
        raise DataError(f"{exc}{hint}") from None
    except (ValueError, TypeError, OSError, RuntimeError) as exc:  # e.g. an unknown backbone or a non-number
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{model_dir}: cannot load the card's model ({first})") from None
    return model, card  # num_known, image_size and num_known <= num_active: checked above


def class_names(card: dict[str, Any], model_dir: Path) -> dict[int, str]:
    """Prototype id -> class name of the card's classes (targets 0..num_known-1 are the known ones).

    Names are made printable (`display_name`): a card is input from elsewhere, and a name with
    terminal escape sequences or carriage returns must not reach a terminal as such.
    """
    try:
        return {int(c["target"]): display_name(str(c["name"])) for c in card.get("classes") or []}
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{model_dir}/card.json: classes must be a list of {{target, name, ...}}") from None


def face_settings(card: dict[str, Any], model_dir: Path, align: str, predictor: Path | None) -> FaceSettings:
    """The align stage's settings from the card; `align` other than auto overrides the mode only."""
    from owdfa.data.align import DEFAULTS
    from owdfa.data.faces import MODES, FaceSettings, bundled_predictor_path

    size = int(card["image_size"])
    prep = card.get("preprocessing")
    where = f"{model_dir}/card.json: preprocessing"
    if prep is None:
        prep = {"mode": "resize", "image_size": size}
        using = (
            f"--align {align} at {size} px"
            if align != "auto"
            else f"mode resize at {size} px (inputs must be face crops)"
        )
        note(f"{model_dir}/card.json records no face preprocessing: using {using}")
    if not isinstance(prep, dict) or prep.get("mode") not in MODES:
        raise DataError(f"{where}: expected a mapping with mode one of {', '.join(MODES)}")
    detector = prep.get("detector") or {}
    try:
        settings = dict(
            image_size=int(prep.get("image_size", size)),
            upsample=int(detector.get("upsample", DEFAULTS["upsample"])),
            threshold=float(detector.get("threshold", DEFAULTS["threshold"])),
            margin=float(prep.get("margin", DEFAULTS["margin"])),
            padding=float(prep.get("padding", DEFAULTS["padding"])),
        )
    except (TypeError, ValueError, AttributeError):
        raise DataError(f"{where}: malformed values") from None
    if settings["image_size"] != size:
        raise DataError(f"{where}: image_size {settings['image_size']} differs from the model's {size}")
    mode = prep["mode"] if align == "auto" else align
    if mode != prep["mode"] and "preprocessing" in card:
        note(f"--align {mode} overrides the card's {prep['mode']} (the model was trained on {prep['mode']} faces)")
    predictor_path = None
    if mode == "aligned":
        recorded = prep.get("predictor", "auto")
        if predictor is not None:
            predictor_path = predictor
        elif recorded in (None, "auto") or not Path(str(recorded)).is_file():
            predictor_path = bundled_predictor_path()
            if recorded not in (None, "auto"):
                note(f"the card's predictor {recorded} is not here: using face-recognition-models' copy")
        else:
            predictor_path = Path(str(recorded))
        if predictor_path is None or not predictor_path.is_file():
            raise DataError(
                f"68-landmark predictor not found ({predictor_path or 'face-recognition-models not installed'});"
                " give --predictor PATH"
            )
    return FaceSettings(mode=mode, predictor_path=None if predictor_path is None else str(predictor_path), **settings)


def make_aligner(settings: FaceSettings) -> FaceAligner:
    from owdfa.data.faces import FaceAligner

    try:
        return FaceAligner.from_settings(settings)
    except (ValueError, OSError, RuntimeError) as exc:  # dlib raises RuntimeError for a file that is no model
        raise DataError(f"cannot set up face {settings.mode} ({exc})") from None


def collect_inputs(paths: Sequence[Path]) -> list[tuple[str, str | None]]:
    """(path, None) for every image to try, (path, reason) for an argument that yields none; no duplicates."""
    from owdfa.data.index import IMAGE_SUFFIXES
    from owdfa.data.walk import regular_file_problem, walk_images

    jobs: list[tuple[str, str | None]] = []
    seen: set[str] = set()

    def add(path: str, reason: str | None) -> None:
        if path not in seen:
            seen.add(path)
            jobs.append((path, reason))

    for path in paths:
        if path.is_dir():
            walk = walk_images(path, IMAGE_SUFFIXES)  # links stay inside the folder, loops end
            for skipped, why in walk.skipped:
                add(str(skipped), f"skipped: {why}")
            if not walk.files and not walk.skipped:
                add(str(path), f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
            for rel in walk.files:
                add(str(path / rel), None)
        elif os.path.lexists(path):
            add(str(path), regular_file_problem(path))  # a FIFO would block the reader for ever
        else:
            add(str(path), "no such file or directory")
    return jobs


@dataclass
class Row:
    path: str
    attribution: str | None = None
    known: bool | None = None
    cluster: int | None = None
    confidence: float | None = None
    face_found: bool | None = None
    epistemic: float | None = None
    aleatoric: float | None = None
    error: str | None = None

    def as_dict(self, mc: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "attribution": self.attribution,
            "known": self.known,
            "cluster": self.cluster,
            "confidence": self.confidence,
            "face_found": self.face_found,
        }
        if mc:
            out.update(epistemic=self.epistemic, aleatoric=self.aleatoric)
        if self.error is not None:
            out["error"] = self.error
        return out


def _chunks(items: list[tuple[str, str | None]], size: int) -> Iterator[list[tuple[str, str | None]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _round(value: Any) -> float | None:
    """6 decimals, rounded and printed as the evaluate stage's predictions CSV does (numpy, shortest repr)."""
    import numpy as np

    rounded = np.round(value, 6)
    return None if math.isnan(rounded) else float(str(rounded))


def chunk_size(image_size: int) -> int:
    """Images decoded and aligned per step: CHUNK_IMAGES, fewer when large images would exceed CHUNK_BYTES."""
    return max(1, min(CHUNK_IMAGES, CHUNK_BYTES // (image_size * image_size * 3)))


def run_attribution(
    jobs: list[tuple[str, str | None]],
    model: AttributionModel,
    aligner: FaceAligner,
    names: dict[int, str],
    num_known: int,
    device: Any,
    *,
    batch_size: int,
    mc_predict: Any = None,
    mc_passes: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> list[Row]:
    """Decode and align a chunk of files, then predict it as the evaluate stage does (`predict`, same batching).

    `mc_predict` (`owdfa.uncertainty.mc_dropout_predict`) adds MC-dropout uncertainties from `mc_passes`
    passes, masks seeded by `seed` + the chunk number; `progress` allows a bar on stderr.
    """
    import numpy as np
    from tqdm import tqdm

    from owdfa.data.faces import decode_rgb
    from owdfa.inference import max_softmax, predict

    detecting = aligner.mode != "resize"
    tty = sys.stderr.isatty()
    show = progress and (tty or len(jobs) >= PROGRESS_MIN_IMAGES)
    bar = tqdm(
        total=len(jobs), desc="attribute", unit="img", file=sys.stderr, disable=not show, mininterval=0.1 if tty else 10
    )
    rows: list[Row] = []
    with bar:
        size = aligner.image_size
        for chunk_index, chunk in enumerate(_chunks(jobs, chunk_size(size))):
            # a failed file leaves its slot empty, so a file's slot (its MC-dropout key) is its position
            batch = np.zeros((len(chunk), size, size, 3), dtype=np.uint8)
            slots, pending = [], []
            for slot, (path, reason) in enumerate(chunk):
                row = Row(display_name(path))  # printable: no control characters, undecodable bytes escaped
                rows.append(row)
                if reason is None:
                    try:
                        face = aligner(decode_rgb(Path(path)))
                    except (OwdfaError, OSError, ValueError, RuntimeError) as exc:
                        reason = str(exc).removeprefix(f"{path}: ") or type(exc).__name__
                    else:
                        batch[slot] = face.image
                        slots.append(slot)
                        pending.append(row)
                        row.face_found = bool(face.found) if detecting else None
                if reason is not None:
                    row.error = display_name(reason)
                    tqdm.write(f"error: {row.path}: {row.error}", file=sys.stderr)
            bar.update(len(chunk))
            if not pending:
                continue
            index = np.asarray(slots, dtype=np.int64)
            logits, _, pred = predict(model, batch, index, batch_size, device)
            confidence = max_softmax(logits)  # the evaluate stage's confidence
            mc = None
            if mc_predict is not None:
                mc = mc_predict(
                    model,
                    batch,
                    index,
                    passes=mc_passes,
                    batch_size=batch_size,
                    device=device,
                    seed=seed + chunk_index,
                )
            for i, row in enumerate(pending):
                cluster = int(pred[i])
                row.cluster = cluster
                row.known = cluster < num_known
                row.attribution = names.get(cluster, f"class-{cluster}") if row.known else f"novel-{cluster}"
                row.confidence = _round(confidence[i])
                if mc is not None:
                    row.epistemic = _round(mc.epistemic[i])
                    row.aleatoric = _round(mc.aleatoric[i])
    return rows
