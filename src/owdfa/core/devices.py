"""Where and in what arithmetic a model runs: the device, cache rows on it, bf16 autocast, the log line.

Shared by training, evaluation, the uncertainty estimates and `owdfa attribute`.
"""

from __future__ import annotations

import numpy as np
import torch

from owdfa.core.distributed import World


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


def effective_precision(device: torch.device, precision: str) -> str:
    """The arithmetic a run really uses: bf16 autocast on CUDA when asked, fp32 otherwise."""
    return "bf16 autocast" if device.type == "cuda" and precision == "bf16" else "fp32"


def describe_device(device: torch.device, precision: str, world: World | None = None) -> str:
    """What a stage runs on, for its log: the device, the precision actually used and the world size."""
    world = world or World()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return f"device {name}, precision {effective_precision(device, precision)}, world size {world.size}"
