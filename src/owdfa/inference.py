"""Inference with a trained model: the device, uint8 cache rows to tensors, batched forward passes.

What evaluate, the uncertainty estimates and `owdfa attribute` need from a model, kept apart from the
training loop so that none of them depends on (or re-runs after an edit of) the loop's code.
"""

from __future__ import annotations

import numpy as np
import torch

from owdfa.distributed import World
from owdfa.models import AttributionModel


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def batch_images(images: np.ndarray, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC cache rows -> uint8 NCHW tensor on device (normalisation happens in the model)."""
    batch = torch.from_numpy(np.ascontiguousarray(images[rows])).permute(0, 3, 1, 2)
    return batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def autocast(device: torch.device, precision: str = "bf16"):
    enabled = device.type == "cuda" and precision == "bf16"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


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


def effective_precision(device: torch.device, precision: str) -> str:
    """The arithmetic a run really uses: bf16 autocast on CUDA when asked, fp32 otherwise."""
    return "bf16 autocast" if device.type == "cuda" and precision == "bf16" else "fp32"


def describe_device(device: torch.device, precision: str, world: World | None = None) -> str:
    """What a stage runs on, for its log: the device, the precision actually used and the world size."""
    world = world or World()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return f"device {name}, precision {effective_precision(device, precision)}, world size {world.size}"
