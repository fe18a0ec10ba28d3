"""The model card: what a model directory's `card.json` records, typed, in one place.

A card is one of four kinds (a tagged union; the tag is read from keys every card of the kind has, so
the file carries no extra key and its bytes stay as they were):

* `TrainCard`: a train stage's model (no `enabled`, no `source`);
* `PretrainCard`: a pretrain stage's model (`enabled: true`);
* `ImportedCard`: weights made elsewhere, an official checkpoint imported (`source`);
* `SkippedPretraining`: a pretrain stage run with `pretrain.mode: none` (`enabled: false`), no model.

The first three share `ModelCard`'s fields: what building and using the model needs. Train and imported
cards also record the method (`MethodCard`). Each kind is a frozen dataclass read by the params
reader (`owdfa.core.config.read_params`): every field declares its type and bounds where it is
declared, and the rules between fields are the kind's `validate`.

The stages and `owdfa import` build a card and write it (`owdfa.modeldir.io.save_model_dir`); evaluate,
`owdfa attribute` and `owdfa info` read it with `ModelCard.read`, which checks every field first. A
model directory is input from elsewhere (docs/attribution.md, "Trust model"): the backbone must be a
timm architecture this installation builds offline, counts, sizes and dropout must have their types
and lie in range, the face preprocessing within the align stage's own (`FacePreprocessing`). Each
problem is one DataError line naming the file and the key: `<dir>/card.json: card.dropout: ...`.

The file is `{"format": 1, ...fields}`, keys sorted, indented by 2. A field left None is not
written (`seed` of an imported model whose run is unknown), except those a kind records even when
empty (`WRITTEN_WHEN_NULL`): `val_best_epoch` (null: no validation split) and `preprocessing` (null:
a face cache from before it was recorded) on every card, `pretrained_from` (null: trained from
scratch) on a train stage's. A skipped pretraining's card is `{"enabled": false, "format": 1}`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from owdfa.core.config import Section, load_section, param, read_params
from owdfa.core.errors import ConfigError, DataError
from owdfa.data.face_preprocessing import RANGES, FacePreprocessing

CARD_FILE = "card.json"
MAX_CARD_BYTES = 64 << 20  # far above any card written here (the embedded benchmark's: ~10 KB)
MAX_CARD_DEPTH = 16  # a card's deepest value (history records in a list in the card) is 3 levels down
CARD_FORMAT = 1
MAX_PROTOTYPES = 10_000
MODEL_OPTIONS = ("ffe", "patch_features")
NETWORK_BACKBONE_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")
NORMALISATION_KEYS = ("mean", "std")
PRETRAINED_MODES = ("supervised", "self_supervised", "both")  # pretrain.mode none writes SkippedPretraining's card


@dataclass(frozen=True)
class CardClass:
    """One class of the split the model was trained on, as the split's classes.json lists it."""

    target: int = param(min=0)  # the class's id: known classes are 0..num_known-1, novel ones follow
    name: str = param()
    label: int | None = param(None, optional=True, min=0)  # the benchmark's label of the class
    folder: str | None = param(None, optional=True)
    known: bool | None = param(None, optional=True)

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


# --------------------------------------------------------------------------------------------
# readers of the fields no plain type describes: (the section holding the key, the key) -> the value


def _backbone(card: Section, key: str) -> str:
    """A timm architecture this installation builds without the network (a pretrained tag is allowed)."""
    backbone = card.str(key)
    if backbone.startswith(NETWORK_BACKBONE_PREFIXES):
        raise ConfigError(card.key(key), f"{backbone!r} is fetched from the network; refused")
    import timm

    if not timm.is_model(backbone):
        raise ConfigError(card.key(key), f"{backbone!r} is not a timm architecture this installation builds")
    return backbone


def _dropout(card: Section, key: str) -> float:
    dropout = card.float(key, min=0.0)
    if dropout >= 1.0:
        raise ConfigError(card.key(key), f"must be < 1, got {dropout}")
    return dropout


def _classes(card: Section, key: str) -> tuple[CardClass, ...]:
    """The classes; their targets' upper bound depends on the card's counts (`ModelCard.validate`)."""
    entries = card.raw(key)
    if not isinstance(entries, list):
        raise ConfigError(card.key(key), f"expected a list, got {type(entries).__name__}")
    return tuple(load_section(CardClass, Section(raw, card.key(f"{key}[{i}]"))) for i, raw in enumerate(entries))


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


def _preprocessing(card: Section, key: str) -> FacePreprocessing:
    return FacePreprocessing.from_section(card.section(key))


def _model_options(card: Section, key: str) -> dict[str, bool]:
    options = card.section(key)
    options.check_unknown(MODEL_OPTIONS)
    return {name: options.bool(name) for name in options.as_dict()}


def _enabled(card: Section, key: str) -> bool:
    """True on a pretrain stage's card; false marks a skipped pretraining, whose card holds nothing else."""
    if card.bool(key) is False:
        raise ConfigError(card.key(key), "false marks a skipped pretraining, whose card holds no model")
    return True


def _absent_or(read: Callable[..., Any] | None = None, **bounds: Any) -> Any:
    """A card field that may be left out or null (None then): what `param(None, optional=True)` reads."""
    return param(None, optional=True, read=read, **bounds)


# --------------------------------------------------------------------------------------------
# the kinds

Check = tuple[str, Callable[[], None]]  # (the field it bounds, a check raising ConfigError)


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """What every card with a model records; the six fields without a default are what building it needs.

    Not a card by itself: a card is a `TrainCard`, a `PretrainCard` or an `ImportedCard`.
    """

    KIND: ClassVar[str] = ""  # in error messages: "a train stage's card"
    WRITTEN_WHEN_NULL: ClassVar[tuple[str, ...]] = ("val_best_epoch", "preprocessing")

    backbone: str = param(read=_backbone)  # a timm architecture name
    num_prototypes: int = param(min=1, max=MAX_PROTOTYPES)  # classifier rows
    num_active: int = param(min=1, max=MAX_PROTOTYPES)  # rows in use (DPP prunes them); <= num_prototypes
    num_known: int = param(min=0, max=MAX_PROTOTYPES)  # prototype ids below it are the known classes
    dropout: float = param(read=_dropout)
    image_size: int = param(**RANGES["image_size"])  # of the face cache the model was trained on
    classes: tuple[CardClass, ...] | None = _absent_or(_classes)
    num_classes_true: int | None = _absent_or(min=1)
    benchmark: str | None = _absent_or()
    protocol: str | None = _absent_or()
    method: str | None = _absent_or()  # the variant (`cal_dpp`), `supervised` for pretraining
    seed: int | None = _absent_or(min=0)
    normalisation: dict[str, list[float]] | None = _absent_or(_normalisation)  # the model's input mean and std
    history: list[dict[str, Any]] | None = _absent_or(_history)  # per epoch: "epoch", the losses, "lr", "val/acc"
    val_best_epoch: int | None = _absent_or(min=0)  # index into history; None without a validation split
    trained_on: str | None = _absent_or()
    numerics: dict[str, Any] | None = _absent_or(_mapping)  # owdfa.core.numerics.describe() of the training run
    params_hash: str | None = _absent_or()
    preprocessing: FacePreprocessing | None = _absent_or(_preprocessing)

    def __post_init__(self) -> None:
        if type(self) is ModelCard or type(self) is MethodCard:
            kinds = ", ".join(kind.__name__ for kind in CARD_KINDS)
            raise TypeError(f"{type(self).__name__} is not a kind of card; build one of {kinds}")

    @classmethod
    def read(cls, model_dir: Path) -> ModelCard:
        """`model_dir`'s card, every field checked (a skipped pretraining's card is refused: it has no model)."""
        card = read_card(model_dir)
        if isinstance(card, SkippedPretraining):
            raise DataError(_no_model(model_dir / CARD_FILE))
        return card

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str | Path) -> ModelCard:
        """The card of a parsed card.json, of the kind its keys tell (`format` is the file reader's to
        check); `where` names it in errors. Called on a kind (`TrainCard.from_dict`), a card of
        another kind is refused."""
        kind = card_kind(raw)
        if cls is not ModelCard and not issubclass(kind, cls):
            raise DataError(f"{where}: {kind.KIND or kind.__name__}, not {cls.KIND or cls.__name__}")
        section = Section(raw, "card")
        try:
            card = kind(**read_params(kind, section))
            card.validate(section)
            _check_card_keys(kind, section)
        except ConfigError as exc:
            raise DataError(f"{where}: {exc.located}") from None
        return card

    def validate(self, card: Section) -> None:
        """The rules between fields, the first broken one raised."""
        for _, check in self._checks(card):
            check()

    def _checks(self, card: Section) -> list[Check]:
        """Each rule between fields: its field, and a check that is skipped where a field it reads is None."""
        prototypes = self.num_prototypes

        def at_most(name: str, high: int | None) -> Check:
            def check() -> None:
                value = getattr(self, name)
                if high is not None and value is not None and value > high:
                    raise ConfigError(card.key(name), f"must be <= {high}, got {value}")

            return name, check

        def class_targets() -> None:
            # a pretrain model has prototypes for the known classes only; its card lists every class
            targets = self.num_classes_true or prototypes
            for i, entry in enumerate(self.classes or ()):
                if targets is not None and entry.target > targets - 1:
                    raise ConfigError(card.key(f"classes[{i}].target"), f"must be <= {targets - 1}, got {entry.target}")

        def preprocessing_size() -> None:
            record = self.preprocessing
            size = self.image_size
            if record is not None and size is not None and record.image_size != size:
                problem = f"{record.image_size} differs from the model's {size}"
                raise ConfigError(card.key("preprocessing.image_size"), problem)

        return [
            at_most("num_active", prototypes),
            at_most("num_known", prototypes),
            ("classes", class_targets),
            ("preprocessing", preprocessing_size),
        ]

    def to_dict(self) -> dict[str, Any]:
        """The JSON fields (without `format`), None left out but for the kind's WRITTEN_WHEN_NULL."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, FacePreprocessing):
                value = value.to_dict()
            elif field.name == "classes" and value is not None:
                value = [entry.to_dict() for entry in value]
            if value is not None or field.name in self.WRITTEN_WHEN_NULL:
                out[field.name] = value
        return out

    def to_json(self) -> str:
        return card_json(self)

    @property
    def options(self) -> dict[str, bool]:
        """The network's architectural options (`MODEL_OPTIONS`); none set: the plain network."""
        return {}

    @property
    def k_trajectory(self) -> list[int]:
        """Active prototypes per epoch when the method prunes them (DPP), else the final count alone."""
        return [self.num_active]

    @property
    def estimates_k(self) -> bool:
        """Whether the method recorded a K-hat per epoch (DPP's k_trajectory)."""
        return False

    @property
    def k_hat(self) -> int:
        """DPP's last pruned count when the method estimates K, else the active rows (as evaluate reports)."""
        return self.k_trajectory[-1]

    @property
    def dpp_faithful(self) -> bool:
        """Faithful DPP: evaluate also scores the classifier with every prototype row active."""
        return False


@dataclass(frozen=True, kw_only=True)
class PretrainCard(ModelCard):
    """A pretrain stage's model: the starting weights of a protocol's train runs."""

    KIND: ClassVar[str] = "a pretrain stage's card (enabled: true)"

    enabled: bool = param(True, read=_enabled)  # the tag: always true (false is SkippedPretraining's)
    pretrain_mode: str | None = _absent_or(choices=PRETRAINED_MODES)  # the stage's `pretrain.mode`
    self_supervised_history: list[dict[str, Any]] | None = _absent_or(_history)  # mode both: SimCLR's epochs


@dataclass(frozen=True, kw_only=True)
class MethodCard(ModelCard):
    """What a card records of the open-world method that trained the model (train and imported cards)."""

    loss: str | None = _absent_or()  # the variant's method (`cal`)
    method_params: dict[str, Any] | None = _absent_or(_mapping)
    method_state: dict[str, Any] | None = _absent_or(_mapping)  # what the method learnt besides weights
    model_options: dict[str, bool] | None = _absent_or(_model_options)  # of MODEL_OPTIONS

    def _checks(self, card: Section) -> list[Check]:
        def trajectory() -> None:
            recorded = (self.method_state or {}).get("k_trajectory")
            if recorded is None or self.num_prototypes is None:
                return
            counts, high = recorded if isinstance(recorded, list) else [None], self.num_prototypes
            if not all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= high for k in counts):
                raise ConfigError(card.key("method_state.k_trajectory"), f"expected a list of counts in [1, {high}]")

        return [*super()._checks(card), ("method_state", trajectory)]

    @property
    def options(self) -> dict[str, bool]:
        return dict(self.model_options or {})

    @property
    def k_trajectory(self) -> list[int]:
        recorded = (self.method_state or {}).get("k_trajectory")
        return [int(k) for k in recorded] if recorded else [self.num_active]

    @property
    def estimates_k(self) -> bool:
        return bool((self.method_state or {}).get("k_trajectory"))

    @property
    def dpp_faithful(self) -> bool:
        return bool((self.method_state or {}).get("dpp_faithful"))


@dataclass(frozen=True, kw_only=True)
class TrainCard(MethodCard):
    """A train stage's model."""

    KIND: ClassVar[str] = "a train stage's card"
    WRITTEN_WHEN_NULL: ClassVar[tuple[str, ...]] = (*ModelCard.WRITTEN_WHEN_NULL, "pretrained_from")

    pretrained_from: str | None = _absent_or()  # the pretrain model directory; null: trained from scratch


@dataclass(frozen=True, kw_only=True)
class ImportedCard(MethodCard):
    """Weights made elsewhere (an official checkpoint imported by `owdfa import` or its stage)."""

    KIND: ClassVar[str] = "an imported model's card (source)"

    source: dict[str, Any] = param(read=_mapping)  # the tag: where the weights came from (file, sha256, ...)


CARD_KINDS: tuple[type[ModelCard], ...] = (TrainCard, PretrainCard, ImportedCard)


def card_kind(raw: Mapping[str, Any]) -> type[ModelCard]:
    """The kind of card a parsed card.json with a model is, by its tag keys (`enabled`, `source`)."""
    if raw.get("enabled") is not None:
        return PretrainCard
    if raw.get("source") is not None:
        return ImportedCard
    return TrainCard


def _check_card_keys(kind: type[ModelCard], card: Section) -> None:
    """Keys of no field are typos; a field of another kind says so."""
    own = {field.name for field in dataclasses.fields(kind)} | {"format"}
    for key in sorted(set(card.keys()) - own):
        other = [k for k in CARD_KINDS if key in {field.name for field in dataclasses.fields(k)}]
        if other:
            raise ConfigError(card.key(key), f"unexpected in {kind.KIND}")
        raise ConfigError(card.key(key), "unknown key (typo?)")


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
    return CardInspection(raw, _lenient(card_kind(raw), Section(raw, "card")), problem)


def _lenient(kind: type[ModelCard], card: Section) -> ModelCard:
    """`owdfa info` on a broken card: each field that fails its own check, or a rule between fields, is None."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(kind):
        try:
            values.update(read_params(kind, card, names=[field.name]))
        except ConfigError:
            values[field.name] = None
    for name, check in kind(**values)._checks(card):
        try:
            check()
        except ConfigError:
            values[name] = None
    return kind(**values)


def _no_model(where: Path) -> str:
    return f"{where}: pretraining was skipped (pretrain.mode: none): there is no model"


def _parse(raw: dict[str, Any], where: Path) -> ModelCard | SkippedPretraining:
    if raw.get("enabled") is False:
        extra = sorted(set(raw) - {"enabled", "format"})
        if extra:
            raise DataError(f"{where}: card.{extra[0]}: unexpected in a skipped pretraining's card (enabled: false)")
        return SkippedPretraining()
    return ModelCard.from_dict(raw, where)
