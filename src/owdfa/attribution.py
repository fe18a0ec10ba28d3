"""Attributing face images with a trained model directory: the library behind `owdfa attribute`.

A model directory from elsewhere is checked before anything is built from it (its card by
`owdfa.modeldir.card`, its weights by `owdfa.modeldir.checks`), inputs are collected as `owdfa.data.walk`
allows (links inside, regular files only), and each image goes through the align stage's decoding
and `FaceAligner` with the card's settings, then `owdfa.models.inference.predict`, so a prediction here
equals the evaluate stage's for the same picture.
Everything printed is made printable (`display_name`). From Python, `attribute` is the one call
(`Attributor` when the face mode used matters too); the command line (`owdfa.cli`) only parses
arguments and writes the rows.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from owdfa.core.errors import DataError, OwdfaError
from owdfa.data.walk import display_name

if TYPE_CHECKING:  # heavy imports (torch, dlib) wait until they are needed: `owdfa --help` stays fast
    import torch

    from owdfa.data.faces import FaceAligner, FaceSettings
    from owdfa.modeldir.card import ModelCard
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


def load_checked_model(model_dir: Path, checkpoint: str) -> tuple[AttributionModel, ModelCard]:
    """The card (`ModelCard.read`: every field checked) and its model, anything broken one DataError line."""
    from owdfa.modeldir.card import ModelCard
    from owdfa.modeldir.checks import check_weights
    from owdfa.modeldir.io import WEIGHTS, build_model, load_state

    try:
        card = ModelCard.read(model_dir)  # before anything is built from it
        state = load_state(model_dir, checkpoint)
        check_weights(state, card, model_dir / WEIGHTS[checkpoint])
        model = build_model(card, state, model_dir)  # names and shapes: a strict load
    except DataError as exc:
        pickles = sorted(p.name for p in model_dir.glob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
        hint = f" ({', '.join(pickles)} ignored: pickled checkpoints are never loaded)" if pickles else ""
        raise DataError(f"{exc}{hint}") from None
    except (ValueError, TypeError, OSError, RuntimeError) as exc:  # e.g. a backbone that fails to build
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{model_dir}: cannot load the card's model ({first})") from None
    return model, card


def class_names(card: ModelCard) -> dict[int, str]:
    """Prototype id -> class name of the card's classes (targets 0..num_known-1 are the known ones).

    Names are made printable (`display_name`): a card is input from elsewhere, and a name with
    terminal escape sequences or carriage returns must not reach a terminal as such.
    """
    return {entry.target: display_name(entry.name) for entry in card.classes or ()}


def face_settings(card: ModelCard, model_dir: Path, align: str, predictor: Path | None) -> FaceSettings:
    """The card's face preprocessing (checked with the card); `align` other than auto overrides the mode only."""
    from owdfa.data.face_preprocessing import FacePreprocessing
    from owdfa.data.faces import FaceSettings

    prep = card.preprocessing
    if prep is None:
        size = card.image_size
        using = (
            f"--align {align} at {size} px"
            if align != "auto"
            else f"mode resize at {size} px (inputs must be face crops)"
        )
        note(f"{model_dir}/card.json records no face preprocessing: using {using}")
        prep = FacePreprocessing.from_dict({"mode": "resize", "image_size": size}, model_dir / "card.json")
    mode = prep.mode if align == "auto" else align
    if mode != prep.mode and card.preprocessing is not None:
        note(f"--align {mode} overrides the card's {prep.mode} (the model was trained on {prep.mode} faces)")
    predictor_path = _predictor_path(prep.predictor, predictor, model_dir) if mode == "aligned" else None
    return FaceSettings(replace(prep, mode=mode), None if predictor_path is None else str(predictor_path))


def _predictor_path(recorded: str | None, given: Path | None, model_dir: Path) -> Path:
    """The 68-landmark model: `given` (the user's own), else the card's if it is a file inside the model
    directory, else face-recognition-models' copy.

    A card is input from elsewhere: a path it names outside its own directory is never read (the
    training machine's path, or any file on this disk), only noted.
    """
    from owdfa.data.faces import bundled_predictor_path

    inside = _inside_model_dir(recorded, model_dir) if recorded not in (None, "auto") else None
    if given is not None:
        path = given
    elif inside is not None and inside.is_file():
        path = inside
    else:
        path = bundled_predictor_path()
        if recorded not in (None, "auto"):
            where = "is not here" if inside is not None else "is outside the model directory: not read"
            note(f"the card's predictor {display_name(str(recorded))} {where}; using face-recognition-models' copy")
    if path is None or not path.is_file():
        raise DataError(
            f"68-landmark predictor not found ({path or 'face-recognition-models not installed'});"
            " give --predictor PATH"
        )
    return path


def _inside_model_dir(recorded: str, model_dir: Path) -> Path | None:
    """`recorded` (relative: to the model directory) if it resolves inside the model directory, else None."""
    candidate = (model_dir / recorded).resolve()
    root = model_dir.resolve()
    return candidate if candidate != root and root in candidate.parents else None


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


@dataclass(frozen=True)
class Attributor:
    """A checked model directory, ready to attribute images: its model on the device, card and face settings.

    `load` checks the card and the weights before any image is read; `run` attributes files and
    folders (`attribute` does both in one call; `owdfa attribute` also reports `settings.mode`).
    """

    model_dir: Path
    model: AttributionModel
    card: ModelCard
    settings: FaceSettings
    aligner: FaceAligner
    device: torch.device

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        checkpoint: str = "last",
        align: str = "auto",
        predictor: Path | None = None,
        device: str = "auto",
    ) -> Attributor:
        """`align`: auto (the card's face mode), resize, crop or aligned; `device`: auto, cpu or cuda."""
        import torch

        from owdfa.core.devices import pick_device

        if device == "cuda" and not torch.cuda.is_available():
            raise DataError("device cuda: CUDA is not available on this machine")
        model, card = load_checked_model(model_dir, checkpoint)
        settings = face_settings(card, model_dir, align, predictor)
        aligner = make_aligner(settings)
        target = pick_device(device)
        model.to(target)
        return cls(model_dir, model, card, settings, aligner, target)

    def run(
        self, paths: Sequence[Path], *, batch_size: int = 64, mc_dropout: int = 0, seed: int = 0, progress: bool = False
    ) -> list[Row]:
        """One Row per image found (and per path that yields none, with its error), in input order.

        `mc_dropout` passes (0: none) add epistemic and aleatoric uncertainties, masks seeded by `seed`.
        """
        if batch_size < 1 or mc_dropout < 0:
            raise ValueError(f"batch_size must be >= 1 and mc_dropout >= 0, got {batch_size} and {mc_dropout}")
        mc_predict = None
        if mc_dropout:
            try:
                from owdfa.evaluate.uncertainty import mc_dropout_predict as mc_predict
            except ImportError:
                raise DataError("MC dropout needs owdfa.evaluate.uncertainty, which this installation lacks") from None
            if float(self.model.dropout.p) == 0.0:
                note("the model has no dropout (p = 0): MC-dropout uncertainties are all 0")
        return _attribute_jobs(
            self,
            collect_inputs(paths),
            batch_size=batch_size,
            mc_predict=mc_predict,
            mc_passes=mc_dropout,
            seed=seed,
            progress=progress,
        )


def _attribute_jobs(
    attributor: Attributor,
    jobs: list[tuple[str, str | None]],
    *,
    batch_size: int,
    mc_predict: Any = None,
    mc_passes: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> list[Row]:
    """Decode and align a chunk of files, then predict it as the evaluate stage does (`predict`, same batching).

    `mc_predict` (`owdfa.evaluate.uncertainty.mc_dropout_predict`) adds MC-dropout uncertainties from `mc_passes`
    passes, masks seeded by `seed` + the chunk number; `progress` allows a bar on stderr.
    """
    import numpy as np
    from tqdm import tqdm

    from owdfa.data.faces import decode_rgb
    from owdfa.models.inference import max_softmax, predict

    model, aligner, device = attributor.model, attributor.aligner, attributor.device
    names, num_known = class_names(attributor.card), attributor.card.num_known
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
            if not np.isfinite(logits).all():  # weights that pass the load checks can still overflow
                first = pending[int(np.argmin(np.isfinite(logits).all(axis=1)))].path
                raise DataError(
                    f"the model's logits are not finite (they overflow) on {first}: its weights are unusable"
                )
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


def attribute(
    paths: Sequence[str | Path],
    model_dir: str | Path,
    *,
    checkpoint: str = "last",
    align: str = "auto",
    predictor: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 64,
    mc_dropout: int = 0,
    seed: int = 0,
    progress: bool = False,
) -> list[Row]:
    """Attribute image files and folders with a trained model directory, as `owdfa attribute` does.

    Example::

        from owdfa.attribution import attribute

        for row in attribute(["photos/", "suspect.jpg"], "data/runs/p1-cal-0"):
            print(row.path, row.error or f"{row.attribution} ({row.confidence})")

    A row's `attribution` is a known class name or `novel-<cluster>`; a file that cannot be read gets
    a row with `error` set. A model directory that fails its checks raises DataError (one line).
    For scores identical to the evaluate stage's, pin its numerics before torch loads
    (`owdfa.core.numerics.pin`) and call `owdfa.core.numerics.configure_torch()`, as the command line does.
    """
    attributor = Attributor.load(
        Path(model_dir),
        checkpoint=checkpoint,
        align=align,
        predictor=None if predictor is None else Path(predictor),
        device=device,
    )
    return attributor.run(
        [Path(p) for p in paths], batch_size=batch_size, mc_dropout=mc_dropout, seed=seed, progress=progress
    )
