"""Checks of a model directory from elsewhere, made before any image is read: its card, then its weights.

A model directory is input like any other (README, "Trust model"): its card may name a backbone
that only the network can build, carry numbers of the wrong type or out of range, and its weights
may be another precision, non-finite, or claim more (or no) active prototypes than the matrix
holds. Each problem is one `DataError` line naming the file and the key; nothing is repaired.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from owdfa.config import Section
from owdfa.errors import ConfigError, DataError

MAX_PROTOTYPES = 10_000
MODEL_OPTIONS = ("ffe", "patch_features")
NETWORK_BACKBONE_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")
COUNT_BUFFERS = ("num_active", "num_batches_tracked")  # the only integer tensors of a saved model


def check_card(card: dict[str, Any], model_dir: Path) -> None:
    """Types and ranges of every field `owdfa attribute` uses; backbones buildable offline only."""
    where = model_dir / "card.json"
    try:
        _check_card(Section(card, "card"))
    except ConfigError as exc:
        raise DataError(f"{where}: {exc}") from None


def _finite(section: Section, key: str, **bounds: float) -> float:
    value = section.float(key, **bounds)
    if not math.isfinite(value):
        raise ConfigError(section.key(key), f"must be a finite number, got {value}")
    return value


def _check_image_size(section: Section) -> None:
    from owdfa.data.align import RANGES

    section.int("image_size", **RANGES["image_size"])


def _check_card(card: Section) -> None:
    backbone = card.str("backbone")
    if backbone.startswith(NETWORK_BACKBONE_PREFIXES):
        raise ConfigError(card.key("backbone"), f"{backbone!r} is fetched from the network; refused")
    import timm

    if backbone not in timm.list_models():
        raise ConfigError(card.key("backbone"), f"{backbone!r} is not a timm architecture this installation builds")
    prototypes = card.int("num_prototypes", min=1, max=MAX_PROTOTYPES)
    card.int("num_active", min=1, max=prototypes)
    card.int("num_known", min=0, max=prototypes)
    _check_image_size(card)
    dropout = _finite(card, "dropout", min=0.0)
    if dropout >= 1.0:
        raise ConfigError(card.key("dropout"), f"must be < 1, got {dropout}")
    options = card.section("model_options") if card.has("model_options") else None
    if options is not None:
        options.check_unknown(MODEL_OPTIONS)
        for key in options.as_dict():
            options.bool(key)
    classes = card.raw("classes", [])
    if not isinstance(classes, list):
        raise ConfigError(card.key("classes"), f"expected a list, got {type(classes).__name__}")
    for i, entry in enumerate(classes):
        item = Section(entry, card.key(f"classes[{i}]"))
        item.int("target", min=0, max=prototypes - 1)
        item.str("name")
    state = card.raw("method_state", None)
    if state is not None:
        state = Section(state, card.key("method_state"))
        trajectory = state.raw("k_trajectory", None)
        counts = trajectory if isinstance(trajectory, list) else [None]
        if trajectory is not None and not all(
            isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= prototypes for k in counts
        ):
            raise ConfigError(state.key("k_trajectory"), f"expected a list of counts in [1, {prototypes}]")
    if card.raw("preprocessing", None) is not None:
        _check_preprocessing(card.section("preprocessing"))


def _check_preprocessing(prep: Section) -> None:
    """The align stage's record of its settings, held to that stage's own modes and ranges."""
    from owdfa.data.align import DEFAULTS, RANGES
    from owdfa.data.faces import MODES

    prep.str("mode", choices=MODES)
    _check_image_size(prep)
    if prep.has("detector"):
        detector = prep.section("detector")
        detector.int("upsample", **RANGES["upsample"], default=DEFAULTS["upsample"])
        _finite(detector, "threshold", **RANGES["threshold"], default=DEFAULTS["threshold"])
    for key in ("margin", "padding"):
        _finite(prep, key, **RANGES[key], default=DEFAULTS[key])


def check_weights(state: dict[str, Any], card: dict[str, Any], path: Path) -> None:
    """Every tensor float32 (the count buffers int64) and finite, the active-prototype count in range.

    Names and shapes are the strict load's to check (`owdfa.model_io.load_model`): that load would
    silently cast another precision, so the dtypes are checked here, on the file's own tensors.
    """
    import torch

    for name, tensor in sorted(state.items()):
        want = torch.int64 if name.rsplit(".", 1)[-1] in COUNT_BUFFERS else torch.float32
        if tensor.dtype != want:
            raise DataError(
                f"{path}: tensor {name} is {str(tensor.dtype).removeprefix('torch.')}, "
                f"expected {str(want).removeprefix('torch.')}"
            )
        if want == torch.float32 and not bool(torch.isfinite(tensor).all()):
            raise DataError(f"{path}: tensor {name} holds NaN or infinite values")
    prototypes = state.get("prototypes")
    if prototypes is None or prototypes.ndim != 2:
        raise DataError(f"{path}: no prototypes matrix (tensor prototypes, classes x features)")
    if "num_active" in state:
        if state["num_active"].numel() != 1:
            raise DataError(f"{path}: num_active must be one count, got shape {list(state['num_active'].shape)}")
        active, rows = int(state["num_active"]), int(prototypes.shape[0])
        lowest = max(1, int(card.get("num_known", 0)))
        if not lowest <= active <= rows:
            raise DataError(f"{path}: num_active {active} is outside [{lowest}, {rows}] (the prototype rows)")
