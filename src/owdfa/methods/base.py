"""The method interface and the registry of methods.

A method is a loss object: given one step's weak/strong outputs it returns the loss and its
named terms; epoch hooks let a method keep statistics (ACR thresholds) or edit the classifier
(DPP). The training loop never looks inside, so CAL, CPL and the baselines share it.
Labels of unlabelled rows never reach a method: the loop passes -1 for them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from owdfa.config import Section
from owdfa.errors import ConfigError
from owdfa.methods import losses


@dataclass
class StepInput:
    logits_weak: torch.Tensor
    logits_strong: torch.Tensor
    features_weak: torch.Tensor
    features_strong: torch.Tensor
    targets: torch.Tensor  # -1 for unlabelled rows
    epoch: int
    num_epochs: int
    num_known: int

    @property
    def labelled(self) -> torch.Tensor:
        return self.targets >= 0


class Method:
    """Base class: subclasses set `name`, their hyper-parameter fields and `step_loss`."""

    name: ClassVar[str] = ""
    uses_unlabelled: ClassVar[bool] = True

    def step_loss(self, step: StepInput) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Reset per-epoch statistics (none by default)."""

    def on_epoch_end(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> dict[str, float]:
        """Update the model or thresholds after an epoch; return values to log."""
        return {}


@dataclass
class Supervised(Method):
    """CE on labelled images only: the pretrain stage and the known-classes-only lower bound."""

    name: ClassVar[str] = "supervised"
    uses_unlabelled: ClassVar[bool] = False

    def step_loss(self, step: StepInput) -> tuple[torch.Tensor, dict[str, float]]:
        mask = step.labelled
        logits = torch.cat([step.logits_weak[mask], step.logits_strong[mask]])
        ce = losses.supervised_ce(logits, step.targets[mask].repeat(2))
        return ce, {"ce": float(ce.detach())}


@dataclass
class Baseline(Method):
    """CE on labelled (both views) + mean-entropy regulariser + weak->strong self-distillation.

    SimGCD-like; CAL's ablation base. CAL and CPL only add or replace terms of this objective.
    """

    name: ClassVar[str] = "baseline"
    entropy_weight: float = 1.0
    distill_weight: float = 0.2
    teacher_temp: float = 0.1
    student_temp: float = 1.0

    def step_loss(self, step: StepInput) -> tuple[torch.Tensor, dict[str, float]]:
        mask = step.labelled
        ce = losses.supervised_ce(
            torch.cat([step.logits_weak[mask], step.logits_strong[mask]]), step.targets[mask].repeat(2)
        )
        reg = losses.mean_entropy_regulariser(torch.cat([step.logits_weak, step.logits_strong]), num_views=2)
        distill, _ = losses.self_distillation(
            step.logits_weak, step.logits_strong, self.teacher_temp, self.student_temp
        )
        total = ce + self.entropy_weight * reg + self.distill_weight * distill
        return total, {"ce": float(ce.detach()), "entropy_reg": float(reg.detach()), "distill": float(distill.detach())}


METHODS: dict[str, type[Method]] = {m.name: m for m in (Supervised, Baseline)}


def build_method(name: str, section: Section | None) -> Method:
    """Instantiate a method from its params subsection (every field must be given, none unknown)."""
    if name not in METHODS:
        raise ConfigError("run.methods", f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    names = [f.name for f in fields(cls)]
    if not names:
        return cls()
    if section is None:
        raise ConfigError(f"train.methods.{name}", "missing section")
    section.check_unknown(names)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.type in ("float", float):
            # Temperatures divide logits: zero would be a division by zero, not a setting.
            kwargs[f.name] = section.float(f.name, min=1e-6 if f.name.endswith("temp") else 0.0)
        else:
            kwargs[f.name] = section.raw(f.name)
    return cls(**kwargs)
