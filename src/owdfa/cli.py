"""The `owdfa` command: inspect a trained model directory and attribute face images with it.

    owdfa info data/runs/p1-cal-0                           # what the model is (card.json)
    owdfa attribute photos/ x.jpg --model data/runs/p1-cal-0 --format json

`attribute` treats every image exactly as the pipeline does, so a prediction here equals the
evaluate stage's for the same picture: robust decoding (`owdfa.data.faces.decode_rgb`), the align
stage's `FaceAligner` with the settings recorded in the card (`preprocessing`, the params'
`align:` section; a card without it means mode `resize` at the card's `image_size`), then
`owdfa.inference.predict` (eval mode, argmax over the active prototypes). Folders are searched
recursively in sorted order for the align stage's image suffixes (dotfiles and `__MACOSX` skipped);
files named explicitly are always tried. Weights are read from safetensors only: a pickled
checkpoint is never unpickled (`owdfa.model_io`).

JSON output (`--format json`) on stdout::

    {"model": "<model dir>", "checkpoint": "last" | "val_best", "align": "<mode used>",
     "results": [{"path": str,              # as given, or <folder>/<relative path>
                  "attribution": str,       # known class name, or "novel-<cluster>"
                  "known": bool,            # cluster < the card's num_known
                  "cluster": int,           # predicted prototype id
                  "confidence": float,      # max softmax over the active prototypes, 6 decimals
                  "face_found": bool | null,  # null: mode resize does not look for faces
                  "epistemic": float,       # --mc-dropout only: mutual information (nats)
                  "aleatoric": float,       # --mc-dropout only: expected entropy (nats)
                  "error": str}],           # only on a row that failed; its other fields are null
     "errors": int}                         # rows with an error

attribution, cluster and confidence always come from the deterministic eval-mode pass (what the
evaluate stage reports), also with --mc-dropout, which only adds the two uncertainties. A folder
without images, a missing path and an unreadable file each give an error row (and an
`error: <path>: <reason>` line on stderr); a picture without a detectable face is no error: the
whole image is used, as the align stage does, with face_found false.

Exit status: 0 when at least one image was attributed, 1 when none could be, 2 for a usage or
model error (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from owdfa.data.walk import display_name
from owdfa.errors import DataError, OwdfaError
from owdfa.numerics import DEFAULT_THREADS, Numerics, configure_torch, pin

if TYPE_CHECKING:  # heavy imports (torch, dlib) wait until a command needs them: `--help` stays fast
    from owdfa.data.faces import FaceAligner, FaceSettings
    from owdfa.models import AttributionModel

ALIGN_CHOICES = ("auto", "resize", "crop", "aligned")
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
MAX_MC_PASSES = 1000  # MC-dropout passes: 100 already gives ~3-digit uncertainties
MAX_BATCH_SIZE = 4096
MAX_THREADS = 1024
PROGRESS_MIN_IMAGES = 100  # a bar for a long run even into a log file; a terminal always gets one
# Files are aligned and predicted a chunk at a time (bounded memory). MC-dropout masks are keyed by
# (--seed + chunk number, position in the chunk), so they depend on the input list, never on --batch-size.
CHUNK_IMAGES = 256
CHUNK_BYTES = 256 * 2**20


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("owdfa")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="owdfa",
        description="Open-world deepfake attribution: inspect a trained model, attribute face images with it.",
    )
    parser.add_argument("--version", action="version", version=f"owdfa {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = commands.add_parser("info", help="describe a model directory (its card.json)")
    info.add_argument("model_dir", metavar="MODEL_DIR", type=Path)
    info.add_argument("--format", choices=("text", "json"), default="text", help="json: the card as is")

    attr = commands.add_parser(
        "attribute",
        help="attribute images (files or folders) to a known forgery method or a novel cluster",
        description="Attribute each image to a known class or a discovered novel cluster (see the JSON schema "
        "in `owdfa.cli`'s docstring). Exit status 0 if any image was attributed, 1 if none, 2 on a model error.",
    )
    attr.add_argument("paths", metavar="PATH", nargs="+", type=Path, help="image files or folders (recursive)")
    attr.add_argument("--model", required=True, type=Path, metavar="MODEL_DIR", help="a train stage output")
    attr.add_argument("--checkpoint", choices=("last", "val_best"), default="last")
    attr.add_argument("--format", choices=("table", "json", "csv"), default="table")
    attr.add_argument(
        "--mc-dropout",
        type=_count_up_to(MAX_MC_PASSES),
        default=0,
        metavar="N",
        help=f"N stochastic passes (at most {MAX_MC_PASSES}): epistemic/aleatoric",
    )
    attr.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the MC-dropout masks")
    attr.add_argument("--batch-size", type=_count_up_to(MAX_BATCH_SIZE), default=64, metavar="B")
    attr.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    attr.add_argument(
        "--align", choices=ALIGN_CHOICES, default="auto", help="face preprocessing; auto: the card's (default)"
    )
    attr.add_argument("--predictor", type=Path, help="dlib 68-landmark model for --align aligned")
    attr.add_argument("--no-progress", action="store_true", help="never show the progress bar")
    attr.add_argument(
        "--threads",
        type=_count_up_to(MAX_THREADS),
        default=DEFAULT_THREADS,
        help=f"CPU compute threads; the numbers depend on them (default {DEFAULT_THREADS}, as params.yaml's numerics)",
    )
    attr.add_argument(
        "--native-numerics",
        action="store_true",
        help="let torch pick the widest CPU kernels: faster on some machines, but scores may differ in the last "
        "digits from the evaluate stage's (default: exact mode, see owdfa.numerics)",
    )
    grid = commands.add_parser(
        "grid",
        help="regenerate grid tables (reports/grid/) as queued DVC experiments",
        description="Queue one `dvc exp run` per grid of params/grids.yaml, run the queue and write each "
        "experiment's report to reports/grid/results-NAME.md and metrics-NAME.json. Run it in the repository.",
    )
    grid.add_argument("names", metavar="NAME", nargs="*", help="grids to run (default: list them)")
    grid.add_argument(
        "-j", "--jobs", type=_positive_int, default=1, help="queue workers: cores // numerics.threads (default 1)"
    )
    grid.add_argument("--grids", type=Path, default=Path("params/grids.yaml"), help="the grids file")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _count_up_to(maximum: int, minimum: int = 1):
    """An int option with a ceiling: an absurd count is refused in one line, not after allocating ~100 GB."""

    def parse(text: str) -> int:
        value = int(text)
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be between {minimum} and {maximum}, got {value}")
        return value

    parse.__name__ = "count"
    return parse


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "info":
            return cmd_info(args.model_dir, args.format)
        if args.command == "grid":
            return cmd_grid(args.names, args.jobs, args.grids)
        return cmd_attribute(args)
    except BrokenPipeError:  # `owdfa ... | head`: the reader left, which is no error of ours
        _silence_stdout()
        return 1
    except (OwdfaError, OSError) as exc:  # OSError: e.g. a model directory we may not read
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    import contextlib
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError):  # not a real file (captured in tests)
        os.dup2(devnull, sys.stdout.fileno())


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# grid


def cmd_grid(names: list[str], jobs: int, grids_file: Path) -> int:
    from owdfa.grid import load_grids, run_grids

    if not names:
        for grid in load_grids(grids_file).values():
            print(f"{grid.name}: {grid.description}\n  {grid.command()}")
        return 0
    run_grids(names, Path.cwd(), jobs=jobs, grids_file=grids_file)
    return 0


# --------------------------------------------------------------------------------------------
# info


def k_hat(card: dict[str, Any]) -> int | None:
    """DPP's last pruned count when the method estimates K, else the classifier's active rows (as evaluate).

    None when the card does not say (or says something that is not a count: `owdfa info` still shows the rest).
    """
    state = card.get("method_state")
    trajectory = (state.get("k_trajectory") if isinstance(state, dict) else None) or [card.get("num_active")]
    try:
        return None if trajectory[-1] is None else int(trajectory[-1])
    except (TypeError, ValueError, KeyError, IndexError):
        return None


def cmd_info(model_dir: Path, fmt: str) -> int:
    """Show the card; a card that `owdfa attribute` would refuse is shown too, with what is wrong (status 2)."""
    from owdfa.model_checks import check_card
    from owdfa.model_io import read_card

    card = read_card(model_dir)
    try:
        check_card(card, model_dir)
        problem = None
    except DataError as exc:
        problem = str(exc)
    if fmt == "json":
        print(json.dumps(card, indent=2))  # JSON escapes every control character
    else:
        print(info_text(model_dir, card))
    if problem is None:
        return 0
    print(f"error: {display_name(problem)} (owdfa attribute refuses this model)", file=sys.stderr)
    return 2


def info_text(model_dir: Path, card: dict[str, Any]) -> str:
    from owdfa.model_io import WEIGHTS

    if card.get("enabled") is False:
        return f"model        {model_dir}\nstatus       pretraining skipped (a card without weights)"
    classes = [c for c in card.get("classes") or [] if isinstance(c, dict)]
    known = [c for c in classes if c.get("known")]
    novel = [c for c in classes if not c.get("known")]
    history = card.get("history") or []
    best = card.get("val_best_epoch")
    checkpoints = [name for name, file in WEIGHTS.items() if (model_dir / file).is_file()]
    k = k_hat(card)
    state = card.get("method_state")
    k_source = "DPP k_trajectory" if isinstance(state, dict) and state.get("k_trajectory") else "active prototypes"
    method = card.get("method", "?")
    if card.get("loss") and card.get("loss") != method:
        method += f" (loss {card['loss']})"
    lines = [
        ("model", str(model_dir)),
        ("benchmark", f"{card.get('benchmark', '?')}, protocol {card.get('protocol', '?')}"),
        ("method", f"{method}, seed {card.get('seed', '?')}"),
        (
            "backbone",
            f"{card.get('backbone', '?')}, {card.get('num_prototypes', '?')} prototypes "
            f"({card.get('num_active', '?')} active), dropout {card.get('dropout', '?')}, "
            f"image size {card.get('image_size', '?')}",
        ),
        ("classes", f"{len(known)} known, {len(novel)} novel in training ({card.get('num_classes_true', '?')} true)"),
        ("  known", _names(known)),
        ("  novel", _names(novel) + "  (predicted as novel-<cluster>)"),
        ("K-hat", f"{k} ({k_source})"),
        (
            "val_best",
            "none (no validation split)"
            if best is None
            else f"epoch index {best} (epoch {best + 1} of {len(history)})"
            if isinstance(best, int) and isinstance(history, list)
            else f"{best!r} (not an epoch index)",
        ),
        ("checkpoints", ", ".join(checkpoints) or "none"),
        ("params hash", str(card.get("params_hash", "?"))),
        ("preprocessing", _preprocessing_text(card)),
    ]
    # every value can come from the card, input from elsewhere: printable only (no escape sequences)
    return "\n".join(f"{key:<14}{display_name(value)}" for key, value in lines)


def _names(classes: list[dict[str, Any]]) -> str:
    return ", ".join(f"{c.get('target', '?')} {c.get('name', '?')}" for c in classes) or "none"


def _preprocessing_text(card: dict[str, Any]) -> str:
    prep = card.get("preprocessing")
    if not isinstance(prep, dict):
        return f"not recorded: assumed resize at {card.get('image_size', '?')} px (images already face crops)"
    text = f"{prep.get('mode', '?')} at {prep.get('image_size', '?')} px"
    if prep.get("mode") in ("crop", "aligned"):
        detector = prep.get("detector") if isinstance(prep.get("detector"), dict) else {}
        text += f", detector upsample {detector.get('upsample', 0)} threshold {detector.get('threshold', 0.0)}"
        text += f", margin {prep.get('margin', '?')}" if prep.get("mode") == "crop" else ""
        if prep.get("mode") == "aligned":
            text += f", padding {prep.get('padding', '?')}, predictor {prep.get('predictor', 'auto')}"
    return text


# --------------------------------------------------------------------------------------------
# attribute: model, preprocessing, inputs


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
    try:
        num_known = int(card["num_known"])
        int(card["image_size"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{model_dir}: model card lacks a valid num_known / image_size") from None
    if not 0 <= num_known <= int(model.num_active):
        raise DataError(f"{model_dir}: model card's num_known {num_known} exceeds the active prototypes")
    return model, card


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


# --------------------------------------------------------------------------------------------
# attribute: the run


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


def cmd_attribute(args: argparse.Namespace) -> int:
    pin(Numerics(reproducible=not args.native_numerics, threads=args.threads))  # before torch loads
    import torch

    configure_torch()

    from owdfa.inference import pick_device

    if args.device == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda: CUDA is not available on this machine")
    mc_predict = None
    if args.mc_dropout:
        try:
            from owdfa.uncertainty import mc_dropout_predict as mc_predict
        except ImportError:
            raise DataError("--mc-dropout needs owdfa.uncertainty, which this installation lacks") from None
    model, card = load_checked_model(args.model, args.checkpoint)
    settings = face_settings(card, args.model, args.align, args.predictor)
    aligner = make_aligner(settings)
    device = pick_device(args.device)
    model.to(device)
    if args.mc_dropout and float(model.dropout.p) == 0.0:
        note("the model has no dropout (p = 0): MC-dropout uncertainties are all 0")
    names = class_names(card, args.model)
    jobs = collect_inputs(args.paths)
    rows = run_attribution(jobs, model, aligner, names, int(card["num_known"]), device, args, mc_predict)
    errors = sum(r.error is not None for r in rows)
    write_output(sys.stdout, args.format, rows, args, settings.mode)
    done = len(rows) - errors
    print(f"owdfa: {done} image(s) attributed, {errors} error(s)", file=sys.stderr)
    return 0 if done else 1


def run_attribution(
    jobs: list[tuple[str, str | None]],
    model: AttributionModel,
    aligner: FaceAligner,
    names: dict[int, str],
    num_known: int,
    device: Any,
    args: argparse.Namespace,
    mc_predict: Any,
) -> list[Row]:
    """Decode and align a chunk of files, then predict it as the evaluate stage does (`predict`, same batching)."""
    import numpy as np
    from tqdm import tqdm

    from owdfa.data.faces import decode_rgb
    from owdfa.inference import max_softmax, predict

    detecting = aligner.mode != "resize"
    tty = sys.stderr.isatty()
    show = not args.no_progress and (tty or len(jobs) >= PROGRESS_MIN_IMAGES)
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
            logits, _, pred = predict(model, batch, index, args.batch_size, device)
            confidence = max_softmax(logits)  # the evaluate stage's confidence
            mc = None
            if mc_predict is not None:
                mc = mc_predict(
                    model,
                    batch,
                    index,
                    passes=args.mc_dropout,
                    batch_size=args.batch_size,
                    device=device,
                    seed=args.seed + chunk_index,
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


# --------------------------------------------------------------------------------------------
# attribute: output


def write_output(out: TextIO, fmt: str, rows: list[Row], args: argparse.Namespace, mode: str) -> None:
    mc = bool(args.mc_dropout)
    if fmt == "json":
        doc = {
            "model": str(args.model),
            "checkpoint": args.checkpoint,
            "align": mode,
            "results": [r.as_dict(mc) for r in rows],
            "errors": sum(r.error is not None for r in rows),
        }
        out.write(json.dumps(doc, indent=2) + "\n")
    elif fmt == "csv":
        columns = ["path", "attribution", "known", "cluster", "confidence", "face_found"]
        columns += ["epistemic", "aleatoric"] if mc else []
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*columns, "error"])
        for r in rows:
            d = r.as_dict(mc)
            writer.writerow([_csv_cell(d[c]) for c in columns] + [r.error or ""])
    else:
        out.write(table_text(rows, mc) + "\n")
    out.flush()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def table_text(rows: list[Row], mc: bool) -> str:
    header = ["path", "attribution", "confidence", "face"] + (["epistemic", "aleatoric"] if mc else [])
    face = {True: "yes", False: "no", None: "-"}
    body: list[list[str]] = []
    for r in rows:
        if r.error is not None:
            body.append([r.path, f"error: {r.error}"])
            continue
        cells = [r.path, str(r.attribution), f"{r.confidence:.4f}", face[r.face_found]]
        if mc:
            cells += [f"{r.epistemic:.4f}", f"{r.aleatoric:.4f}"]
        body.append(cells)
    # an error row spans the columns after the path, so only the path column counts its width
    widths = [len(h) for h in header]
    for cells in body:
        for i, cell in enumerate(cells if len(cells) == len(header) else cells[:1]):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for cells in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip())
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
