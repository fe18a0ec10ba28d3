"""Model directories: weights as safetensors plus a JSON model card.

Loading never unpickles anything, so a model directory from elsewhere cannot run code.
`model.safetensors` is the last epoch; `val_best.safetensors` the epoch with the best accuracy
on the labelled validation split (absent when there is none).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from owdfa.errors import DataError
from owdfa.io import atomic_directory
from owdfa.models import AttributionModel

CARD_FILE = "card.json"
WEIGHTS = {"last": "model.safetensors", "val_best": "val_best.safetensors"}
CARD_FORMAT = 1


def params_hash(params: Any) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def save_model_dir(
    out: Path,
    state: dict[str, torch.Tensor] | None,
    card: dict[str, Any],
    val_best_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the directory atomically; `state=None` writes a card alone (a skipped pretraining)."""
    card = {"format": CARD_FORMAT, **card}
    with atomic_directory(out) as tmp:
        if state is not None:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS["last"]))
        if val_best_state is not None:
            save_file({k: v.contiguous() for k, v in val_best_state.items()}, str(tmp / WEIGHTS["val_best"]))
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")


def read_card(model_dir: Path) -> dict[str, Any]:
    path = model_dir / CARD_FILE
    if not path.is_file():
        raise DataError(f"{model_dir}: not a model directory ({CARD_FILE} missing)")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path}: malformed model card (not JSON)") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise DataError(
            f"{path}: unsupported model card format {card.get('format') if isinstance(card, dict) else None!r}"
        )
    return card


def load_state(model_dir: Path, checkpoint: str = "last") -> dict[str, torch.Tensor]:
    path = model_dir / WEIGHTS[checkpoint]
    if not path.is_file():
        if checkpoint == "val_best" and (model_dir / WEIGHTS["last"]).is_file():
            raise DataError(f"{model_dir}: no val_best checkpoint (the split has no validation images)")
        raise DataError(f"{path}: weights not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable safetensors file ({exc})") from None


def load_model(model_dir: Path, checkpoint: str = "last") -> tuple[AttributionModel, dict[str, Any]]:
    card = read_card(model_dir)
    try:
        options = {k: bool(v) for k, v in card.get("model_options", {}).items() if k in ("ffe", "patch_features")}
        model = AttributionModel(
            card["backbone"], int(card["num_prototypes"]), pretrained=False, dropout=float(card["dropout"]), **options
        )
    except KeyError as exc:
        raise DataError(f"{model_dir / CARD_FILE}: model card lacks {exc.args[0]!r}") from None
    state = load_state(model_dir, checkpoint)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise DataError(f"{model_dir}: weights do not match the card's model ({first})") from None
    model.eval().to(memory_format=torch.channels_last)  # as it was trained (and the inputs arrive)
    return model, card
