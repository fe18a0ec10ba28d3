"""Checks of a model directory's weights from elsewhere, made before the model is built from them.

A model directory is input like any other (docs/attribution.md, "Trust model"). Its card is checked when it is
read (`owdfa.modeldir.card.ModelCard.read`); its weights may be another precision, non-finite, or claim
more (or no) active prototypes than the matrix holds. Each problem is one `DataError` line naming
the file; nothing is repaired.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from owdfa.core.errors import DataError

if TYPE_CHECKING:
    from owdfa.modeldir.card import ModelCard

COUNT_BUFFERS = ("num_active", "num_batches_tracked")  # the only integer tensors of a saved model
# No trained tensor comes near this (the pipeline's largest, BatchNorm statistics, stay below 1e3);
# beyond it products of weights and features overflow float32 into infinite, uniform logits.
MAX_MAGNITUDE = 1e6


def check_weights(state: dict[str, Any], card: ModelCard, path: Path) -> None:
    """Every tensor float32 (the count buffers int64), finite and within MAX_MAGNITUDE; the active count in range.

    Names and shapes are the strict load's to check (`owdfa.modeldir.io.build_model`): that load would
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
        largest = float(tensor.abs().max()) if want == torch.float32 and tensor.numel() else 0.0
        if largest > MAX_MAGNITUDE:
            limit = f"beyond {MAX_MAGNITUDE:g} is refused"
            raise DataError(f"{path}: tensor {name} holds values up to {largest:.3g}; {limit}")
    prototypes = state.get("prototypes")
    if prototypes is None or prototypes.ndim != 2:
        raise DataError(f"{path}: no prototypes matrix (tensor prototypes, classes x features)")
    if "num_active" in state:
        if state["num_active"].numel() != 1:
            raise DataError(f"{path}: num_active must be one count, got shape {list(state['num_active'].shape)}")
        active, rows = int(state["num_active"]), int(prototypes.shape[0])
        lowest = max(1, card.num_known)
        if not lowest <= active <= rows:
            raise DataError(f"{path}: num_active {active} is outside [{lowest}, {rows}] (the prototype rows)")
