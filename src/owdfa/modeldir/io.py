"""Model directories: weights as safetensors plus a JSON model card (`owdfa.modeldir.card`).

Loading never unpickles anything, so a model directory from elsewhere cannot run code.
`model.safetensors` is the last epoch; `val_best.safetensors` the epoch with the best accuracy
on the labelled validation split (absent when there is none).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from owdfa.core.errors import DataError
from owdfa.core.io import atomic_directory
from owdfa.modeldir.card import CARD_FILE, ModelCard, SkippedPretraining, card_json
from owdfa.models import AttributionModel

WEIGHTS = {"last": "model.safetensors", "val_best": "val_best.safetensors"}


def params_hash(params: Any) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def save_model_dir(
    out: Path,
    state: dict[str, torch.Tensor] | None,
    card: ModelCard | SkippedPretraining | Mapping[str, Any],
    val_best_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the directory atomically; `state=None` writes a card alone (a skipped pretraining).

    A mapping as `card` is written as it is: a hand-made card (the tests make broken ones this way).
    """
    with atomic_directory(out) as tmp:
        # Serialised in memory and written by Python: a refused write is an OSError, which
        # atomic_directory names (safetensors' own file writer reports it as a string).
        if state is not None:
            (tmp / WEIGHTS["last"]).write_bytes(save({k: v.contiguous() for k, v in state.items()}))
        if val_best_state is not None:
            (tmp / WEIGHTS["val_best"]).write_bytes(save({k: v.contiguous() for k, v in val_best_state.items()}))
        (tmp / CARD_FILE).write_text(card_json(card))


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


def build_model(card: ModelCard, state: dict[str, torch.Tensor], model_dir: Path) -> AttributionModel:
    """The card's model holding `state`, loaded strictly: every name and shape must match."""
    options = card.options
    model = AttributionModel(card.backbone, card.num_prototypes, pretrained=False, dropout=card.dropout, **options)
    _check_same_tensors(model, state, options, model_dir)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else "load_state_dict failed"
        raise DataError(f"{model_dir}: weights do not match the card's model ({detail})") from None
    model.eval().to(memory_format=torch.channels_last)  # as it was trained (and the inputs arrive)
    return model


def _check_same_tensors(model: AttributionModel, state: dict, options: dict[str, bool], model_dir: Path) -> None:
    """The weights hold exactly the tensors of the card's model; an architectural option they contradict
    is named (`model_options.ffe` is true, but there are no FFE tensors), any other difference listed."""
    wanted = set(model.state_dict())
    missing, unexpected = sorted(wanted - set(state)), sorted(set(state) - wanted)
    if not missing and not unexpected:
        return
    for option, prefix in AttributionModel.OPTION_TENSORS.items():
        said = str(options.get(option, False)).lower()
        if missing and all(name.startswith(prefix) for name in missing) and not unexpected:
            problem = f"is {said} but the weights hold none of its tensors ({prefix}*)"
        elif unexpected and all(name.startswith(prefix) for name in unexpected) and not missing:
            problem = f"is {said} but the weights hold its tensors ({prefix}*)"
        else:
            continue
        raise DataError(f"{model_dir / CARD_FILE}: model_options.{option} {problem}")
    shown = [f"missing {name}" for name in missing[:2]] + [f"unexpected {name}" for name in unexpected[:2]]
    more = len(missing) + len(unexpected) - len(shown)
    listed = ", ".join(shown) + (f" and {more} more" if more else "")
    raise DataError(f"{model_dir}: weights do not match the card's model ({listed})")


def load_model(model_dir: Path, checkpoint: str = "last") -> tuple[AttributionModel, ModelCard]:
    card = ModelCard.read(model_dir)
    return build_model(card, load_state(model_dir, checkpoint), model_dir), card
