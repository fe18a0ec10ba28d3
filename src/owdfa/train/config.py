"""What one training run is given: its settings (the `train` or `pretrain` params section) and its data.

Kept apart from the loop (`owdfa.train.loop`) so that what reads or records a run's setting, such as
the resume fingerprint (`owdfa.train.checkpoints`), needs none of the loop's code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from owdfa.core.config import Param, Section, load_section, param, read_params
from owdfa.core.errors import ConfigError
from owdfa.train.views import VIEWS, AugmentConfig

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("bf16", "fp32")
# AugmentConfig (owdfa.train.views) is declared without params bounds; these are its section's.
AUGMENT_PARAMS = {
    "flip_prob": Param(min=0.0, max=1.0),
    "crop_prob": Param(min=0.0, max=1.0),
    "crop_scale": Param(min=0.05, max=1.0),
    "jitter_prob": Param(min=0.0, max=1.0),
    "jitter": Param(min=0.0, max=0.95),
    "view": Param(choices=VIEWS, optional=True),  # absent: direct (the pretrain phases' views)
}


@dataclass(frozen=True)
class TrainConfig:
    """The training loop's settings (params sections `train` and `pretrain`; nproc, precision, compile optional)."""

    backbone: str = param("test_resnet")
    pretrained: bool = param(False)
    dropout: float = param(0.2, min=0.0, max=0.95)
    epochs: int = param(10, min=1)
    batch_size: int = param(64, min=2)
    lr: float = param(2e-3, min=0.0)
    weight_decay: float = param(1e-4, min=0.0)
    lr_step: int = param(10, min=1)
    lr_gamma: float = param(0.1, min=0.0, max=1.0)
    labelled_share: float = param(0.5, min=0.0, max=1.0)
    augment: AugmentConfig = param(default_factory=AugmentConfig, nested=AUGMENT_PARAMS)
    eval_batch_size: int = param(256, min=1)
    device: str = param("auto", choices=DEVICES)
    nproc: int = param(1, min=1, optional=True)
    precision: str = param("bf16", choices=PRECISIONS, optional=True)
    compile: bool = param(False, optional=True)

    def validate(self, section: Section) -> None:
        check_divisible(self.batch_size, self.nproc, section.name, f"{section.key('nproc')} = {self.nproc}")


OPTIMIZER_KEYS = ("lr", "weight_decay", "lr_step", "lr_gamma")  # what a method variant may override


def train_config(section: Section, extra_keys: tuple[str, ...] = ()) -> TrainConfig:
    return load_section(TrainConfig, section, extra_keys=extra_keys)


def with_method_optimizer(config: TrainConfig, variant: Section) -> TrainConfig:
    """`config` with the variant's `optimizer:` overrides (any of lr, weight_decay, lr_step, lr_gamma).

    The methods' official optimiser settings differ (CAL: weight decay 1e-3, StepLR gamma 0.05;
    CPL: 1e-5, 0.2), so a variant (`methods.<variant>`) may replace the train section's values
    for its own runs; keys it leaves out keep the train section's. Unknown keys are typos.
    """
    if not variant.has("optimizer"):
        return config
    overrides = variant.section("optimizer")
    overrides.check_unknown(OPTIMIZER_KEYS)
    return replace(config, **read_params(TrainConfig, overrides, [k for k in OPTIMIZER_KEYS if overrides.has(k)]))


def check_divisible(batch_size: int, processes: int, section_name: str, what: str) -> None:
    if batch_size % processes:
        raise ConfigError(
            f"{section_name}.batch_size",
            f"{batch_size} is not divisible by {what}: each process takes batch_size / processes rows",
        )


@dataclass
class TrainData:
    """Cache rows and targets of each split a training run may see (no test rows)."""

    images: np.ndarray
    labelled_rows: np.ndarray
    labelled_targets: np.ndarray
    unlabelled_rows: np.ndarray
    val_rows: np.ndarray
    val_targets: np.ndarray
    num_known: int
    num_classes: int
    # what names the split and the cache (their classes and preprocessing record), for the checkpoint
    # fingerprint, which samples the images rather than hashing them whole
    identity: dict[str, Any] | None = None


PRETRAIN_MODES = ("none", "supervised", "self_supervised", "both")


@dataclass(frozen=True)
class SelfSupervisedConfig:
    """SimCLR pretraining (`pretrain.self_supervised`, read in modes self_supervised and both).

    Its own epochs, learning rate (constant: no step decay) and views (strong on both sides, a
    stronger crop and jitter than the methods' own strong view, as SimCLR needs); batch size,
    weight decay, backbone and device are the pretrain section's.
    """

    epochs: int = param(30, min=1)
    lr: float = param(2e-3, min=0.0)
    temperature: float = param(0.2, min=1e-3)
    projection_dim: int = param(64, min=1)
    augment: AugmentConfig = param(default_factory=AugmentConfig, nested=AUGMENT_PARAMS)


@dataclass(frozen=True)
class PretrainPlan:
    """What the pretrain stage runs (`pretrain.mode`, `pretrain.seed`, `pretrain.self_supervised`).

    none: no pretraining, the train stage starts from a random initialisation; supervised: the
    labelled known classes (the section's training keys); self_supervised: SimCLR on every training
    image, no label read; both: SimCLR, then the supervised warm-up from its weights.
    """

    mode: str
    seed: int
    config: TrainConfig  # the section's training keys: the supervised phase's, and SimCLR's batch size and device
    self_supervised: SelfSupervisedConfig | None  # modes self_supervised and both

    @property
    def supervised(self) -> bool:
        return self.mode in ("supervised", "both")


PRETRAIN_KEYS = ("mode", "seed", "self_supervised")


def pretrain_plan(section: Section) -> PretrainPlan:
    """The pretrain section, checked whole: the training keys are read in every mode."""
    config = train_config(section, extra_keys=PRETRAIN_KEYS)
    mode = section.str("mode", choices=PRETRAIN_MODES)
    ssl = None
    if mode in ("self_supervised", "both"):
        ssl = load_section(SelfSupervisedConfig, section.section("self_supervised"))
    return PretrainPlan(mode=mode, seed=section.int("seed", min=0), config=config, self_supervised=ssl)


def self_supervised_run(base: TrainConfig, ssl: SelfSupervisedConfig) -> TrainConfig:
    """The training loop's settings of the SimCLR phase: its epochs, lr and views; the lr stays constant."""
    return replace(base, epochs=ssl.epochs, lr=ssl.lr, lr_step=ssl.epochs, lr_gamma=1.0, augment=ssl.augment)
