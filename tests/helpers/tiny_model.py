"""An untrained tiny model directory: test_resnet with 5 prototypes and a typed card (no training run)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from owdfa.modeldir.card import CardClass, TrainCard
from owdfa.modeldir.io import save_model_dir
from owdfa.models import AttributionModel

SIZE = 32
NAMES = ("Real", "Swap_A", "Reenact_B", "Gan_C", "Diff_D")
NUM_KNOWN = 3


def tiny_card(**changes: Any) -> TrainCard:
    """A train stage's card for `tiny_model()`: 3 known classes of 5, resize preprocessing not recorded."""
    card = TrainCard(
        backbone="test_resnet",
        num_prototypes=len(NAMES),
        num_active=len(NAMES),
        num_known=NUM_KNOWN,
        dropout=0.2,
        image_size=SIZE,
        classes=tuple(
            CardClass(target=i, name=name, label=i, folder=f"{i}_{name}", known=i < NUM_KNOWN)
            for i, name in enumerate(NAMES)
        ),
        num_classes_true=len(NAMES),
        benchmark="synthetic",
        protocol="p1",
        method="cal",
        loss="cal",
        seed=0,
        model_options={"ffe": False, "patch_features": False},
        history=[{"epoch": 0}, {"epoch": 1}],
        val_best_epoch=1,
        params_hash="0123456789abcdef",
    )
    return replace(card, **changes)


def tiny_model(seed: int = 0) -> AttributionModel:
    """Large random prototype rows, so that predictions vary between images."""
    torch.manual_seed(seed)
    model = AttributionModel("test_resnet", len(NAMES), dropout=0.2)
    with torch.no_grad():
        model.prototypes.normal_()
    return model.eval()


def save_tiny_model_dir(out: Path, card: TrainCard | None = None) -> Path:
    model = tiny_model()
    save_model_dir(out, model.state_dict(), card or tiny_card(), val_best_state=model.state_dict())
    return out
