"""A training run's state, named: what a checkpoint saves and a resume restores, and what identifies the run.

`TrainState` holds everything the next epochs depend on (in the manner of timm's `CheckpointSaver`,
which is handed the model, optimiser and scheduler once); `RunSpec` is what makes two runs the same
run (`owdfa.train.checkpoints.run_fingerprint`); `RunOptions` how a run reports and resumes, none of which
changes its weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from owdfa.methods.base import Method
    from owdfa.train.config import TrainConfig, TrainData
    from owdfa.train.samplers import Sampler


@dataclass
class Best:
    """The epoch with the best validation accuracy so far and its weights (on the CPU)."""

    acc: float = -1.0
    state: dict[str, torch.Tensor] | None = None
    epoch: int | None = None


@dataclass
class TrainState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # torch.optim.lr_scheduler.StepLR (LRScheduler's typing is private)
    generator: torch.Generator  # the run's own draws: batches, views
    method: Method
    sampler: Sampler
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch
    best: Best = field(default_factory=Best)


@dataclass(frozen=True)
class RunSpec:
    """What makes two runs the same run (with the code and library versions, which the fingerprint adds)."""

    config: TrainConfig
    data: TrainData
    method: Method
    seed: int
    num_prototypes: int
    init_state: dict[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class RunOptions:
    """How a run reports and resumes; none of it changes the weights."""

    desc: str = "train"  # the prefix of its progress lines
    section_name: str = "train"  # the params section that errors name
    live_dir: Path | None = None  # dvclive curves
    checkpoint_dir: Path | None = None  # per-epoch checkpoints: a killed run resumes here
