"""The method interface.

A method is a loss object: given one step's weak/strong outputs it returns the loss and its
named terms; epoch hooks let a method keep statistics (ACR thresholds) or edit the classifier
(DPP). The training loop never looks inside, so CAL, CPL and the baselines share it.
Labels of unlabelled rows never reach a method: the loop passes -1 for them.

Runs name *variants* (`methods.<variant>` in params.yaml; `owdfa.methods.registry` resolves them):
a variant picks a method class with `method:` and sets every hyper-parameter of it, or names a
`base:` and lists what differs, so ablations are just more variants
(`cal_no_acr: {base: cal, acr: false}`) and `dvc exp run -S` reaches every switch. A variant
may also carry an `optimizer:` mapping overriding the train section's lr, weight_decay, lr_step or
lr_gamma for its runs (methods differ in their official optimiser settings); the training code
reads it (`owdfa.train.config.with_method_optimizer`), the loss object ignores it.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from owdfa.core.config import Param, Section, load_section
from owdfa.methods import losses
from owdfa.methods.registry import METHOD_KEY, register_method


@dataclass
class StepInput:
    logits_weak: torch.Tensor
    logits_strong: torch.Tensor | None
    features_weak: torch.Tensor
    features_strong: torch.Tensor | None
    targets: torch.Tensor  # -1 for unlabelled rows
    epoch: int
    num_epochs: int
    num_known: int
    patches_weak: torch.Tensor | None = None  # B x 9 x D, only for methods asking for patch features

    @property
    def labelled(self) -> torch.Tensor:
        return self.targets >= 0


class Method:
    """Base class: subclasses set `name`, their hyper-parameter fields and `step_loss`."""

    name: ClassVar[str] = ""
    uses_unlabelled: ClassVar[bool] = True
    uses_strong_view: ClassVar[bool] = True
    # How the loop draws batches (owdfa.train.loop.SAMPLERS): "labelled_share" = CAL's sampler (each
    # draw labelled with probability train.labelled_share, with replacement); "class_balanced" =
    # CPL's (alternating unlabelled / least-drawn labelled class). Part of a method's recipe.
    sampler: ClassVar[str] = "labelled_share"
    # Both views strong (a contrastive objective's pair) instead of weak + strong.
    two_strong_views: ClassVar[bool] = False

    def step_loss(self, step: StepInput) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def model_options(self) -> dict[str, bool]:
        """Model parts this method needs (`ffe`, `patch_features`)."""
        return {}

    def make_head(self, feature_dim: int, device: torch.device) -> list[torch.nn.Parameter]:
        """Trainable parts the loss itself owns (a projection head), built once the model is; none by default.

        They are optimised with the model's parameters and kept in `state_dict` for resuming, never
        saved with the model.
        """
        return []

    def num_prototypes(self, num_known: int, num_classes: int) -> int:
        """Classifier rows to start with: the true class count when K is known."""
        return num_classes

    def on_epoch_start(self, epoch: int) -> None:
        """Reset per-epoch statistics (none by default)."""

    def on_epoch_end(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> dict[str, float]:
        """Update the model or thresholds after an epoch; return values to log."""
        return {}

    def state(self) -> dict[str, Any]:
        """Values worth recording in the model card (thresholds, estimated K, ...)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything that carries into later epochs, for resuming a run: tensors or JSON values.

        A method keeping no state between steps returns {} (the default).
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what `state_dict` returned, so the resumed run continues bit for bit."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state; got {sorted(state)}")

    @classmethod
    def from_section(cls, section: Section) -> Method:
        """Every field must be given and typed right; unknown keys are typos.

        `optimizer` is allowed beside the fields: it belongs to the training config, which checks it.
        A field declared without `param(...)` gets the methods' common bounds (`_common_param`).
        """
        hints = typing.get_type_hints(cls)
        specs = {f.name: _common_param(f.name, hints[f.name]) for f in fields(cls)}
        return load_section(cls, section, extra_keys=(METHOD_KEY, "optimizer"), specs=specs)

    def validate(self, section: Section) -> None:
        """Cross-field checks, raising ConfigError naming the key (none by default)."""


def _common_param(name: str, hint: Any) -> Param:
    """Weights, counts and epochs are >= 0; a temperature divides logits, so zero would be a
    division by zero, not a setting. Other types are passed through as written."""
    if hint is float:
        return Param(min=1e-6 if name.endswith("temp") else 0.0)
    if hint is int:
        return Param(min=0)
    if hint in (bool, str):
        return Param()
    return Param(read=Section.raw)


@dataclass
class Supervised(Method):
    """CE on labelled images only: the pretrain stage and the known-classes-only lower bound."""

    name: ClassVar[str] = "supervised"
    uses_unlabelled: ClassVar[bool] = False

    def step_loss(self, step: StepInput) -> tuple[torch.Tensor, dict[str, float]]:
        mask = step.labelled
        parts = [step.logits_weak[mask]]
        if step.logits_strong is not None:
            parts.append(step.logits_strong[mask])
        ce = losses.supervised_ce(torch.cat(parts), step.targets[mask].repeat(len(parts)))
        return ce, {"ce": float(ce.detach())}


@register_method
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
