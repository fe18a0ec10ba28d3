"""The `owdfa` command: model directories (inspect, attribute images), the authors' checkpoints, grids, the study.

    owdfa info data/runs/p1-cal-0                           # what the model is (card.json)
    owdfa attribute photos/ x.jpg --model data/runs/p1-cal-0 --format json
    owdfa import protocol1/protocol1_seed2025.ckpt --revision <commit> --out models/cal-p1-2025
                                                            # a CAL authors' checkpoint, made safe
    owdfa grid regime-warmup-p1                             # a grid table of params/grids.yaml, as a queued
                                                            # dvc experiment
    owdfa study p1                                          # the regime study's tables and figures (p1)

`attribute` treats every image exactly as the pipeline does, so a prediction here equals the
evaluate stage's for the same picture: robust decoding (`owdfa.data.faces.decode_rgb`), the align
stage's `FaceAligner` with the settings recorded in the card (`preprocessing`, the params'
`align:` section; a card without it means mode `resize` at the card's `image_size`), then
`owdfa.models.inference.predict` (eval mode, argmax over the active prototypes). Folders are searched
recursively in sorted order for the align stage's image suffixes (dotfiles and `__MACOSX` skipped);
files named explicitly are always tried. Weights are read from safetensors only: a pickled
checkpoint is never unpickled (`owdfa.modeldir.io`).

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

This module is the command line only (arguments, output formats); the attribution itself (model
checks, inputs, the run) is `owdfa.attribution`, usable from Python.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from owdfa.attribution import Attributor, Row
from owdfa.core.errors import DataError, OwdfaError
from owdfa.core.numerics import DEFAULT_THREADS, Numerics, configure_torch, pin
from owdfa.core.stage import exit_status
from owdfa.data.walk import display_name

if TYPE_CHECKING:
    from owdfa.modeldir.card import CardClass, ModelCard, SkippedPretraining

ALIGN_CHOICES = ("auto", "resize", "crop", "aligned")
MAX_MC_PASSES = 1000  # MC-dropout passes: 100 already gives ~3-digit uncertainties
MAX_BATCH_SIZE = 4096
MAX_THREADS = 1024


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
        "digits from the evaluate stage's (default: exact mode, see owdfa.core.numerics)",
    )
    imp = commands.add_parser(
        "import",
        help="convert a CAL authors' released checkpoint (Hub hyzheng/OWDFA_CAL, or a local .ckpt) into a model dir",
        description="Download one of the CAL authors' Lightning checkpoints at a pinned revision (or take a local "
        ".ckpt), read it without running any code it carries (only tensors and plain data), and write a model "
        "directory (safetensors + card) that `owdfa attribute` and the evaluate stage use. See "
        "docs/official-models.md, 'Using the paper's trained models'.",
    )
    imp.add_argument(
        "source", metavar="SOURCE", nargs="?", help="a file of the Hub repo (see --list) or a local .ckpt path"
    )
    imp.add_argument("--out", type=Path, metavar="MODEL_DIR", help="the model directory to write")
    imp.add_argument("--list", action="store_true", help="list the released checkpoints and exit")
    imp.add_argument("--revision", default="main", help="Hub revision: pin a commit sha (a branch warns)")
    imp.add_argument("--download-dir", type=Path, default=Path("data/downloads"), help="where downloads are kept")
    imp.add_argument("--protocol", choices=("p1", "p2", "p3"), help="default: from the official file name")
    imp.add_argument(
        "--num-active",
        type=_count_up_to(10_000),
        metavar="K",
        help="unknown-K models: DPP's pruned prototype count (not stored by the official code; default all rows)",
    )
    imp.add_argument("--force", action="store_true", help="replace MODEL_DIR if it is a model directory already")
    grid = commands.add_parser(
        "grid",
        help="regenerate grid tables (reports/grid/) as queued DVC experiments",
        description="Queue one `dvc exp run` per grid of params/grids.yaml, run the queue and write each "
        "experiment's report to reports/grid/results-NAME.md, metrics-NAME.json and trajectories-NAME.json. "
        "Run it in the repository.",
    )
    grid.add_argument("names", metavar="NAME", nargs="*", help="grids to run (default: list them)")
    grid.add_argument(
        "-j", "--jobs", type=_positive_int, default=1, help="queue workers: cores // numerics.threads (default 1)"
    )
    grid.add_argument("--grids", type=Path, default=Path("params/grids.yaml"), help="the grids file")
    study = commands.add_parser(
        "study",
        help="write the regime study's tables and figures (reports/study/) from the regime grids' reports",
        description="Read reports/grid/ files of the grids named regime-<start>-PROTOCOL (run them first with "
        "`owdfa grid`) and write reports/study/regimes-PROTOCOL.md, regimes-PROTOCOL.png and acr-PROTOCOL.png. "
        "Nothing is trained. Run it in the repository.",
    )
    study.add_argument("protocol", metavar="PROTOCOL", help="p1, p2, p3 (or a custom protocol)")
    study.add_argument("--grids", type=Path, default=Path("params/grids.yaml"), help="the grids file")
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

    def command() -> int:
        try:
            if args.command == "info":
                return cmd_info(args.model_dir, args.format)
            if args.command == "grid":
                return cmd_grid(args.names, args.jobs, args.grids)
            if args.command == "study":
                return cmd_study(args.protocol, args.grids)
            if args.command == "import":
                return cmd_import(args)
            return cmd_attribute(args)
        except BrokenPipeError:  # `owdfa ... | head`: the reader left, which is no error of ours
            _silence_stdout()
            return 1

    return exit_status(command, errors=(OwdfaError, OSError))  # OSError: e.g. a model directory we may not read


def _silence_stdout() -> None:
    import contextlib

    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError):  # not a real file (captured in tests)
        os.dup2(devnull, sys.stdout.fileno())


# --------------------------------------------------------------------------------------------
# grid


def cmd_grid(names: list[str], jobs: int, grids_file: Path) -> int:
    from owdfa.experiments.grid import load_grids, run_grids

    if not names:
        for grid in load_grids(grids_file).values():
            print(f"{grid.name}: {grid.description}\n  {grid.command()}")
        return 0
    run_grids(names, Path.cwd(), jobs=jobs, grids_file=grids_file)
    return 0


def cmd_study(protocol: str, grids_file: Path) -> int:
    from owdfa.experiments.study import write_study

    for path in write_study(protocol, Path.cwd(), grids_file):
        print(path, file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------
# import


def cmd_import(args: argparse.Namespace) -> int:
    from owdfa.official import checkpoint as official

    if args.list:
        for run in official.OFFICIAL_RUNS:
            setting = "known K" if run.known_k else "unknown K (DPP)"
            print(f"{run.filename}\t{run.protocol}, {setting}, seed {run.seed}")
        return 0
    if args.source is None or args.out is None:
        raise DataError("owdfa import: give SOURCE and --out MODEL_DIR (or --list)")
    _check_import_target(args.out, args.force)
    source = official.resolve_checkpoint(args.source, args.revision, args.download_dir)
    card = official.import_to_model_dir(source, args.out, protocol=args.protocol, num_active=args.num_active)
    setting = official.import_setting(card)
    print(
        f"owdfa: {display_name(str(args.out))}: CAL {card.protocol}, {setting}, seed {card.seed} "
        f"(sha256 {source.sha256[:12]}...)",
        file=sys.stderr,
    )
    return 0


def _check_import_target(out: Path, force: bool) -> None:
    """Never replace a folder that is not a model directory; a model directory only with --force."""
    from owdfa.modeldir.card import CARD_FILE

    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not (out / CARD_FILE).is_file():
        raise DataError(f"{out}: exists and is not a model directory; choose another --out")
    if not force:
        raise DataError(f"{out}: a model directory already; --force replaces it")


# --------------------------------------------------------------------------------------------
# info


def cmd_info(model_dir: Path, fmt: str) -> int:
    """Show the card; a model that `owdfa attribute` would refuse is shown too, said invalid and why (status 2).

    The same checks as attribute's: the card's fields, then each checkpoint's weights against the card
    (`attribution.load_checked_model`: dtypes, magnitudes, the architecture's tensors, a strict load).
    """
    from owdfa.attribution import load_checked_model
    from owdfa.modeldir.card import ModelCard, inspect_card
    from owdfa.modeldir.io import WEIGHTS

    inspection = inspect_card(model_dir)
    if fmt == "json":
        print(json.dumps(inspection.raw, indent=2))  # as written; JSON escapes every control character
    else:
        print(info_text(model_dir, inspection.card))
    problem = inspection.problem
    if problem is None and isinstance(inspection.card, ModelCard):
        for checkpoint in (name for name, file in WEIGHTS.items() if name == "last" or (model_dir / file).is_file()):
            try:
                load_checked_model(model_dir, checkpoint)
            except DataError as exc:
                problem = str(exc)
                break
    if problem is None:
        return 0
    print(f"error: invalid model: {display_name(problem)} (owdfa attribute refuses this model)", file=sys.stderr)
    return 2


def info_text(model_dir: Path, card: ModelCard | SkippedPretraining) -> str:
    """The card, readable; a field a broken card fails on (None there) shows as `?`."""
    from owdfa.modeldir.card import MethodCard, PretrainCard, SkippedPretraining
    from owdfa.modeldir.io import WEIGHTS

    if isinstance(card, SkippedPretraining):
        return f"model        {model_dir}\nstatus       pretraining skipped (a card without weights)"
    classes = card.classes or ()
    known = [c for c in classes if c.known]
    novel = [c for c in classes if not c.known]
    history = card.history or []
    best = card.val_best_epoch
    checkpoints = [name for name, file in WEIGHTS.items() if (model_dir / file).is_file()]
    k_source = "DPP k_trajectory" if card.estimates_k else "active prototypes"
    method = _shown(card.method)
    if isinstance(card, MethodCard) and card.loss and card.loss != method:
        method += f" (loss {card.loss})"
    pretrain_mode = card.pretrain_mode if isinstance(card, PretrainCard) else None
    lines = [
        ("model", str(model_dir)),
        ("benchmark", f"{_shown(card.benchmark)}, protocol {_shown(card.protocol)}"),
        ("method", f"{method}, seed {_shown(card.seed)}"),
        *([("pretraining", f"pretrain.mode {pretrain_mode}")] if pretrain_mode else []),
        (
            "backbone",
            f"{_shown(card.backbone)}, {_shown(card.num_prototypes)} prototypes "
            f"({_shown(card.num_active)} active), dropout {_shown(card.dropout)}, "
            f"image size {_shown(card.image_size)}",
        ),
        ("classes", f"{len(known)} known, {len(novel)} novel in training ({_shown(card.num_classes_true)} true)"),
        ("  known", _names(known)),
        ("  novel", _names(novel) + "  (predicted as novel-<cluster>)"),
        ("K-hat", f"{card.k_hat} ({k_source})"),
        (
            "val_best",
            "none (no validation split)"
            if best is None
            else f"epoch index {best} (epoch {best + 1} of {len(history)})",
        ),
        ("checkpoints", ", ".join(checkpoints) or "none"),
        ("params hash", _shown(card.params_hash)),
        ("preprocessing", _preprocessing_text(card)),
    ]
    # every value can come from the card, input from elsewhere: printable only (no escape sequences)
    return "\n".join(f"{key:<14}{display_name(value)}" for key, value in lines)


def _shown(value: object) -> str:
    return "?" if value is None else str(value)


def _names(classes: list[CardClass]) -> str:
    return ", ".join(f"{c.target} {c.name}" for c in classes) or "none"


def _preprocessing_text(card: ModelCard) -> str:
    prep = card.preprocessing
    if prep is None:
        return f"not recorded: assumed resize at {_shown(card.image_size)} px (images already face crops)"
    text = f"{prep.mode} at {prep.image_size} px"
    if prep.mode in ("crop", "aligned"):
        text += f", detector upsample {prep.upsample} threshold {prep.threshold}"
        text += f", margin {prep.margin}" if prep.mode == "crop" else ""
        if prep.mode == "aligned":
            text += f", padding {prep.padding}, predictor {prep.predictor or 'auto'}"
    return text


# --------------------------------------------------------------------------------------------
# attribute


def cmd_attribute(args: argparse.Namespace) -> int:
    pin(Numerics(reproducible=not args.native_numerics, threads=args.threads))  # before torch loads
    import torch

    configure_torch()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda: CUDA is not available on this machine")
    attributor = Attributor.load(
        args.model, checkpoint=args.checkpoint, align=args.align, predictor=args.predictor, device=args.device
    )
    rows = attributor.run(
        args.paths,
        batch_size=args.batch_size,
        mc_dropout=args.mc_dropout,
        seed=args.seed,
        progress=not args.no_progress,
    )
    errors = sum(r.error is not None for r in rows)
    write_output(sys.stdout, args.format, rows, args, attributor.settings.mode)
    done = len(rows) - errors
    print(f"owdfa: {done} image(s) attributed, {errors} error(s)", file=sys.stderr)
    return 0 if done else 1


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
