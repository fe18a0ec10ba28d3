"""Inference with a trained model: batched forward passes over uint8 cache rows, and their confidence.

What evaluate, the uncertainty estimates and `owdfa attribute` need from a model, kept apart from the
training loop so that none of them depends on (or re-runs after an edit of) the loop's code.
"""

from __future__ import annotations

import numpy as np
import torch

from owdfa.core.devices import autocast, batch_images
from owdfa.models import AttributionModel


@torch.no_grad()
def predict(
    model: AttributionModel,
    images: np.ndarray,
    rows: np.ndarray,
    batch_size: int,
    device: torch.device,
    precision: str = "bf16",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eval-mode logits, features and argmax predictions over the active prototypes."""
    model.eval()
    logits, feats = [], []
    for start_row in range(0, len(rows), batch_size):
        x = batch_images(images, rows[start_row : start_row + batch_size], device)
        with autocast(device, precision):
            out = model(x)
        logits.append(out["logits"].float().cpu())
        feats.append(out["features"].float().cpu())
    if not logits:
        empty = np.zeros((0,), dtype=np.int64)
        return np.zeros((0, int(model.num_active))), np.zeros((0, model.feature_dim)), empty
    all_logits = torch.cat(logits).numpy()
    return all_logits, torch.cat(feats).numpy(), all_logits.argmax(axis=1)


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """Confidence of each prediction: the largest softmax probability over the active prototypes."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).max(axis=1)
