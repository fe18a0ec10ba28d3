"""The model card: what a model directory's `card.json` records, typed, in one place.

The pretrain and train stages and `owdfa import` build a `ModelCard` and write it (`owdfa.modeldir.io.save_model_dir`);
evaluate, `owdfa attribute` and `owdfa info` read it with `ModelCard.read`, which checks every field
first. A model directory is input from elsewhere (docs/attribution.md, "Trust model"): the backbone must be a
timm architecture this installation builds offline, counts, sizes and dropout must have their types
and lie in range, the face preprocessing within the align stage's own (`FacePreprocessing`). Each
problem is one DataError line naming the file and the key: `<dir>/card.json: card.dropout: ...`.

The file is `{"format": 1, ...fields}`, keys sorted, indented by 2. A field left None is not
written (`source`, for one: only an imported model has it), except those a training run records
even when empty: `val_best_epoch` (null: no validation split), `preprocessing` (null: a face cache
from before it was recorded) and, on a train stage's card (one without `enabled` or `source`),
`pretrained_from` (null: trained from scratch). A pretrain stage with `mode: none` writes
`SkippedPretraining`'s card, `{"enabled": false, "format": 1}`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from owdfa.core.config import Section
from owdfa.core.errors import ConfigError, DataError
from owdfa.data.face_preprocessing import RANGES, FacePreprocessing

CARD_FILE = "card.json"
MAX_CARD_BYTES = 64 << 20  # far above any card written here (the embedded benchmark's: ~10 KB)
MAX_CARD_DEPTH = 16  # a card's deepest value (history records in a list in the card) is 3 levels down
CARD_FORMAT = 1
MAX_PROTOTYPES = 10_000
MODEL_OPTIONS = ("ffe", "patch_features")
NETWORK_BACKBONE_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")
CLASS_KEYS = ("target", "name", "label", "folder", "known")
NORMALISATION_KEYS = ("mean", "std")
WRITTEN_WHEN_NULL = ("val_best_epoch", "preprocessing")
PRETRAINED_MODES = ("supervised", "self_supervised", "both")  # pretrain.mode none writes SkippedPretraining's card


@dataclass(frozen=True)
class CardClass:
    """One class of the split the model was trained on, as the split's classes.json lists it."""

    target: int  # the class's id: known classes are 0..num_known-1, novel ones follow
    name: str
    label: int | None = None  # the benchmark's label of the class
    folder: str | None = None
    known: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


@dataclass(frozen=True)
class ModelCard:
    """A trained model's card; the six fields without a default are what building the model needs."""

    backbone: str  # a timm architecture name
    num_prototypes: int  # classifier rows
    num_active: int  # rows in use (DPP prunes them)
    num_known: int  # prototype ids below it are the known classes
    dropout: float
    image_size: int  # of the face cache the model was trained on
    classes: tuple[CardClass, ...] | None = None
    num_classes_true: int | None = None
    benchmark: str | None = None
    protocol: str | None = None
    method: str | None = None  # the variant (`cal_dpp`), `supervised` for pretraining
    loss: str | None = None  # the variant's loss (`cal`); train stage only
    method_params: dict[str, Any] | None = None
    method_state: dict[str, Any] | None = None  # what the method learnt besides weights (k_trajectory, ...)
    model_options: dict[str, bool] | None = None  # of MODEL_OPTIONS
    seed: int | None = None
    enabled: bool | None = None  # true on a pretrain stage's card; never written by the train stage
    pretrain_mode: str | None = None  # a pretrain stage's `pretrain.mode` (supervised, self_supervised, both)
    normalisation: dict[str, list[float]] | None = None  # the model's input mean and std
    history: list[dict[str, Any]] | None = None  # per epoch: "epoch", the logged losses, "lr", "val/acc"
    self_supervised_history: list[dict[str, Any]] | None = None  # pretrain mode both: SimCLR's epochs, before history
    val_best_epoch: int | None = None  # index into history; None without a validation split
    trained_on: str | None = None
    numerics: dict[str, Any] | None = None  # owdfa.core.numerics.describe() of the training run
    params_hash: str | None = None
    preprocessing: FacePreprocessing | None = None
    pretrained_from: str | None = None  # the pretrain model directory; train stage only
    source: dict[str, Any] | None = None  # weights made elsewhere (an imported official checkpoint): file, sha256, ...

    @classmethod
    def read(cls, model_dir: Path) -> ModelCard:
        """`model_dir`'s card, every field checked (a skipped pretraining's card is refused: it has no model)."""
        card = read_card(model_dir)
        if isinstance(card, SkippedPretraining):
            raise DataError(_no_model(model_dir / CARD_FILE))
        return card

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str | Path) -> ModelCard:
        """The card of a parsed card.json (`format` is the file reader's to check); `where` names it in errors."""
        try:
            return cls(**_fields(Section(raw, "card"), lenient=False))
        except ConfigError as exc:
            raise DataError(f"{where}: {exc.located}") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON fields (without `format`), None left out but for WRITTEN_WHEN_NULL (module docstring)."""
        train_stage = self.enabled is None and self.source is None
        null_kept = WRITTEN_WHEN_NULL + (("pretrained_from",) if train_stage else ())
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, FacePreprocessing):
                value = value.to_dict()
            elif field.name == "classes" and value is not None:
                value = [entry.to_dict() for entry in value]
            if value is not None or field.name in null_kept:
                out[field.name] = value
        return out

    def to_json(self) -> str:
        return card_json(self)

    @property
    def k_trajectory(self) -> list[int]:
        """Active prototypes per epoch when the method prunes them (DPP), else the final count alone."""
        recorded = (self.method_state or {}).get("k_trajectory")
        return [int(k) for k in recorded] if recorded else [self.num_active]

    @property
    def estimates_k(self) -> bool:
        """Whether the method recorded a K-hat per epoch (DPP's k_trajectory)."""
        return bool((self.method_state or {}).get("k_trajectory"))

    @property
    def k_hat(self) -> int:
        """DPP's last pruned count when the method estimates K, else the active rows (as evaluate reports)."""
        return self.k_trajectory[-1]

    @property
    def dpp_faithful(self) -> bool:
        """Faithful DPP: evaluate also scores the classifier with every prototype row active."""
        return bool((self.method_state or {}).get("dpp_faithful"))


@dataclass(frozen=True)
class SkippedPretraining:
    """The card of a pretrain stage run with `pretrain.mode: none`: no weights, nothing else recorded."""

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": False}

    def to_json(self) -> str:
        return card_json(self)


@dataclass(frozen=True)
class CardInspection:
    """What `owdfa info` shows: the JSON as written, the card as far as its fields pass, the first problem.

    In a card with a problem the fields that fail their check are None, whatever their type says:
    such a card is for display only.
    """

    raw: dict[str, Any]
    card: ModelCard | SkippedPretraining
    problem: str | None


def card_json(card: ModelCard | SkippedPretraining | Mapping[str, Any]) -> str:
    """card.json's text; a mapping is written as it is (a hand-made card, as the tests make broken ones)."""
    fields = dict(card) if isinstance(card, Mapping) else card.to_dict()
    return json.dumps({"format": CARD_FORMAT, **fields}, indent=2, sort_keys=True) + "\n"


def read_card_json(model_dir: Path) -> dict[str, Any]:
    """card.json as parsed, unchecked but for being a JSON object of this format, of bounded size and depth."""
    path = model_dir / CARD_FILE
    if not path.is_file():
        raise DataError(f"{model_dir}: not a model directory ({CARD_FILE} missing)")
    size = path.stat().st_size
    if size > MAX_CARD_BYTES:
        raise DataError(f"{path}: {size} bytes; a model card is at most {MAX_CARD_BYTES} bytes")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path}: malformed model card (not JSON)") from None
    except RecursionError:  # the parser's own limit, far deeper than a card
        raise DataError(f"{path}: nested deeper than a model card is (at most {MAX_CARD_DEPTH} levels)") from None
    if _depth(raw) > MAX_CARD_DEPTH:
        raise DataError(f"{path}: nested deeper than a model card is (at most {MAX_CARD_DEPTH} levels)")
    found = raw.get("format") if isinstance(raw, dict) else None
    if found != CARD_FORMAT:
        raise DataError(f"{path}: unsupported model card format {found!r}")
    return raw


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in parsed JSON, without recursion (a hostile card may nest deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def read_card(model_dir: Path) -> ModelCard | SkippedPretraining:
    """`model_dir`'s card, every field checked; a skipped pretraining's card is one too."""
    return _parse(read_card_json(model_dir), model_dir / CARD_FILE)


def inspect_card(model_dir: Path) -> CardInspection:
    """The card with what `ModelCard.read` refuses in it, rather than an error (a file that is no card still raises)."""
    raw, where = read_card_json(model_dir), model_dir / CARD_FILE
    try:
        card = _parse(raw, where)
    except DataError as exc:
        problem = str(exc)
    else:
        return CardInspection(raw, card, _no_model(where) if isinstance(card, SkippedPretraining) else None)
    if raw.get("enabled") is False:
        return CardInspection(raw, SkippedPretraining(), problem)
    return CardInspection(raw, ModelCard(**_fields(Section(raw, "card"), lenient=True)), problem)


def _no_model(where: Path) -> str:
    return f"{where}: pretraining was skipped (pretrain.mode: none): there is no model"


def _parse(raw: dict[str, Any], where: Path) -> ModelCard | SkippedPretraining:
    if raw.get("enabled") is False:
        extra = sorted(set(raw) - {"enabled", "format"})
        if extra:
            raise DataError(f"{where}: card.{extra[0]}: unexpected in a skipped pretraining's card (enabled: false)")
        return SkippedPretraining()
    return ModelCard.from_dict(raw, where)


def _fields(card: Section, lenient: bool) -> dict[str, Any]:
    """ModelCard's fields, each checked in turn (the first failure raises ConfigError).

    `lenient` (`owdfa info` on a broken card): a field that fails is None instead, and the checks
    that depend on it use the widest bounds.
    """
    fields: dict[str, Any] = {}

    def field(name: str, read: Callable[[], Any]) -> None:
        try:
            fields[name] = read()
        except ConfigError:
            if not lenient:
                raise
            fields[name] = None

    field("backbone", lambda: _backbone(card))
    field("num_prototypes", lambda: card.int("num_prototypes", min=1, max=MAX_PROTOTYPES))
    prototypes = fields["num_prototypes"] or MAX_PROTOTYPES
    field("num_active", lambda: card.int("num_active", min=1, max=prototypes))
    field("num_known", lambda: card.int("num_known", min=0, max=prototypes))
    field("image_size", lambda: _image_size(card))
    field("dropout", lambda: _dropout(card))
    field("model_options", lambda: _model_options(card))
    field("num_classes_true", lambda: _optional(card, "num_classes_true", card.int, min=1))
    # a pretrain model has prototypes for the known classes only, its card lists every class
    targets = fields["num_classes_true"] or prototypes
    field("classes", lambda: _classes(card, targets))
    field("method_state", lambda: _method_state(card, prototypes))
    field("preprocessing", lambda: _preprocessing(card, fields["image_size"]))
    for name in ("benchmark", "protocol", "method", "loss", "trained_on", "params_hash", "pretrained_from"):
        field(name, lambda name=name: card.optional_str(name))
    field("seed", lambda: _optional(card, "seed", card.int, min=0))
    field("enabled", lambda: _enabled(card))
    field("method_params", lambda: _optional(card, "method_params", partial(_mapping, card)))
    field("numerics", lambda: _optional(card, "numerics", partial(_mapping, card)))
    field("normalisation", lambda: _optional(card, "normalisation", partial(_normalisation, card)))
    field("history", lambda: _optional(card, "history", partial(_history, card)))
    field("self_supervised_history", lambda: _optional(card, "self_supervised_history", partial(_history, card)))
    field("pretrain_mode", lambda: _optional(card, "pretrain_mode", card.str, choices=PRETRAINED_MODES))
    field("val_best_epoch", lambda: _optional(card, "val_best_epoch", card.int, min=0))
    field("source", lambda: _optional(card, "source", partial(_mapping, card)))
    if not lenient:
        card.check_unknown([*(f.name for f in dataclasses.fields(ModelCard)), "format"])
    return fields


def _optional(card: Section, key: str, read: Callable[..., Any], **bounds: Any) -> Any:
    """None when the card leaves `key` out or null, else `read(key, **bounds)`."""
    return None if card.raw(key, None) is None else read(key, **bounds)


def _backbone(card: Section) -> str:
    """A timm architecture this installation builds without the network (a pretrained tag is allowed)."""
    backbone = card.str("backbone")
    if backbone.startswith(NETWORK_BACKBONE_PREFIXES):
        raise ConfigError(card.key("backbone"), f"{backbone!r} is fetched from the network; refused")
    import timm

    if not timm.is_model(backbone):
        raise ConfigError(card.key("backbone"), f"{backbone!r} is not a timm architecture this installation builds")
    return backbone


def _image_size(section: Section) -> int:
    return section.int("image_size", **RANGES["image_size"])


def _dropout(card: Section) -> float:
    dropout = card.float("dropout", min=0.0)
    if dropout >= 1.0:
        raise ConfigError(card.key("dropout"), f"must be < 1, got {dropout}")
    return dropout


def _model_options(card: Section) -> dict[str, bool] | None:
    if not card.has("model_options"):
        return None
    options = card.section("model_options")
    options.check_unknown(MODEL_OPTIONS)
    return {key: options.bool(key) for key in options.as_dict()}


def _classes(card: Section, num_targets: int) -> tuple[CardClass, ...] | None:
    entries = card.raw("classes", None)
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise ConfigError(card.key("classes"), f"expected a list, got {type(entries).__name__}")
    classes = []
    for i, raw in enumerate(entries):
        entry = Section(raw, card.key(f"classes[{i}]"))
        classes.append(
            CardClass(
                target=entry.int("target", min=0, max=num_targets - 1),
                name=entry.str("name"),
                label=_optional(entry, "label", entry.int, min=0),
                folder=entry.optional_str("folder"),
                known=_optional(entry, "known", entry.bool),
            )
        )
        entry.check_unknown(CLASS_KEYS)
    return tuple(classes)


def _method_state(card: Section, prototypes: int) -> dict[str, Any] | None:
    if card.raw("method_state", None) is None:
        return None
    state = card.section("method_state")
    trajectory = state.raw("k_trajectory", None)
    counts = trajectory if isinstance(trajectory, list) else [None]
    if trajectory is not None and not all(
        isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= prototypes for k in counts
    ):
        raise ConfigError(state.key("k_trajectory"), f"expected a list of counts in [1, {prototypes}]")
    return state.as_dict()


def _preprocessing(card: Section, image_size: int | None) -> FacePreprocessing | None:
    if card.raw("preprocessing", None) is None:
        return None
    record = FacePreprocessing.from_section(card.section("preprocessing"))
    if image_size is not None and record.image_size != image_size:
        raise ConfigError(
            card.key("preprocessing.image_size"), f"{record.image_size} differs from the model's {image_size}"
        )
    return record


def _enabled(card: Section) -> bool | None:
    """True on a pretrain stage's card; false marks a skipped pretraining, whose card holds nothing else."""
    enabled = _optional(card, "enabled", card.bool)
    if enabled is False:
        raise ConfigError(card.key("enabled"), "false marks a skipped pretraining, whose card holds no model")
    return enabled


def _mapping(section: Section, key: str) -> dict[str, Any]:
    return section.section(key).as_dict()


def _normalisation(card: Section, key: str) -> dict[str, list[float]]:
    record = card.section(key)
    record.check_unknown(NORMALISATION_KEYS)
    for name in NORMALISATION_KEYS:
        values = record.raw(name)
        if not isinstance(values, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        ):
            raise ConfigError(record.key(name), "expected a list of numbers")
    return record.as_dict()


def _history(card: Section, key: str) -> list[dict[str, Any]]:
    history = card.raw(key)
    if not isinstance(history, list) or not all(isinstance(epoch, dict) for epoch in history):
        raise ConfigError(card.key(key), "expected a list of mappings (one per epoch)")
    return history
