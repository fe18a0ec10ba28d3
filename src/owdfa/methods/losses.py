"""Loss terms shared by the methods, each a small pure function of logits (tested on values)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def supervised_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Plain cross-entropy at temperature 1 on labelled rows; 0 when the batch has none."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets)


def mean_entropy_regulariser(logits: torch.Tensor, num_views: int = 2) -> torch.Tensor:
    """(log C - H(p_mean)) / num_views = KL(p_mean || uniform) / num_views.

    Pooled over every row of every view; pushes the *average* prediction towards uniform over the
    C active prototypes so training does not collapse onto the known classes.
    """
    mean_prob = F.softmax(logits, dim=1).mean(dim=0)
    entropy = -(mean_prob * torch.log(mean_prob.clamp_min(1e-12))).sum()
    return (math.log(logits.shape[1]) - entropy) / num_views


def soft_cross_entropy(target_probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-row H(q, softmax(logits)) (teacher entropy included)."""
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(dim=1)


def self_distillation(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    teacher_temp: float,
    student_temp: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weak-view teacher (sharpened, detached) -> strong-view student; returns (loss, teacher probs).

    `weights` (per row, detached) lets CAL's CCR reuse this term with its confidence weighting;
    the plain baseline uses uniform weights.
    """
    teacher = F.softmax(teacher_logits.detach() / teacher_temp, dim=1)
    per_row = soft_cross_entropy(teacher, student_logits / student_temp)
    if weights is not None:
        per_row = per_row * weights.detach()
    return per_row.mean(), teacher
