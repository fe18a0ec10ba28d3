"""CAL (AAAI'26): CE + mean-entropy regulariser + CCR + ACR, with optional FFE and DPP.

Per step (spec sections 3.1-3.5 and 10.1-10.3):
* CE on the labelled rows of both views; the mean-entropy regulariser over both views of all rows
  (C = the active prototypes, i.e. the logits' width); both on logits / student_temp;
* CCR: teacher q = softmax(z_weak / teacher_temp) (detached), rho = max q, lambda = (epoch+1)/E,
  per-row weight (1-lambda)*rho + lambda*(1-rho) (detached), loss = mean over all rows of
  weight * H(q, softmax(z_strong / student_temp));
* ACR: statistics every step from epoch 0 over all rows whose weak and strong argmax agree
  (labelled rows too), r = max softmax(z_weak) at temperature 1; the per-step sums are float32 and
  are accumulated in float64, the ratio mean_novel / mean_known (float64) is clamped to [0.1, 10] in
  float32 and tau_novel = gamma * that ratio in float64, kept when either group was empty (initially
  0.0), as the official code computes it. From `acr_start_epoch` on, unlabelled rows whose
  max softmax(z_weak / student_temp) passes the threshold of their predicted group (>=; gamma when
  predicted known, the novel threshold otherwise) are trained with CE on their own weak logits (at
  temperature 1, as the official code) and argmax.
Total = ce + entropy_weight * reg + acr + ccr_weight * ccr. As in the official code, CE, the
regulariser and ACR's confidences divide the logits by `student_temp` (1.0 in every released
script), CCR's student too; ACR's CE and the threshold statistics use the raw logits.

Labels of unlabelled rows never reach a method (targets are -1) and none is used.

Unknown K (`dpp`): the classifier starts with dpp_initial_factor * num_known rows; top-1 usage of
every weak-view row is counted during the epoch and `owdfa.methods.dpp.apply_dpp` prunes at every
epoch end. The pruned count is a saved buffer (`num_active`); with `dpp_faithful` the evaluate stage
also scores every checkpoint with all rows, as the official offline evaluation (which does not save
the count) does, beside the pruned classifier its training logs used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from owdfa.core.config import Section
from owdfa.core.errors import ConfigError
from owdfa.methods import losses
from owdfa.methods.base import Method, StepInput
from owdfa.methods.dpp import apply_dpp
from owdfa.methods.registry import register_method

RATIO_MIN, RATIO_MAX = 0.1, 10.0


@register_method
@dataclass
class CAL(Method):
    name: ClassVar[str] = "cal"

    entropy_weight: float = 1.0
    ccr: bool = True
    ccr_weight: float = 0.2
    teacher_temp: float = 0.1
    student_temp: float = 1.0
    acr: bool = True
    acr_start_epoch: int = 5
    known_threshold: float = 0.9
    asymmetric: bool = True
    cap_novel_threshold: bool = False
    ffe: bool = True
    dpp: bool = False
    dpp_initial_factor: int = 10
    dpp_coverage: float = 0.9544
    dpp_faithful: bool = True

    def __post_init__(self) -> None:
        # Plain attributes, not dataclass fields: `from_section` builds every field from params.
        self.raw_tau_novel = 0.0  # gamma * clamped ratio, before `asymmetric` / the cap apply
        self.k_trajectory: list[int] = []
        self._num_known: int | None = None
        self._reset_epoch_stats()

    def _reset_epoch_stats(self) -> None:
        self._conf_sum = {"known": torch.zeros((), dtype=torch.float64), "novel": torch.zeros((), dtype=torch.float64)}
        self._conf_count = {"known": torch.zeros((), dtype=torch.long), "novel": torch.zeros((), dtype=torch.long)}
        self._usage: torch.Tensor | None = None

    # --- configuration -------------------------------------------------------------------------

    def validate(self, section: Section) -> None:
        if not 0.0 < self.known_threshold <= 1.0:
            raise ConfigError(section.key("known_threshold"), f"must be in (0, 1], got {self.known_threshold}")
        if not 0.0 < self.dpp_coverage <= 1.0:
            raise ConfigError(section.key("dpp_coverage"), f"must be in (0, 1], got {self.dpp_coverage}")
        if self.dpp and self.dpp_initial_factor < 2:
            raise ConfigError(
                section.key("dpp_initial_factor"),
                f"must be >= 2 with dpp (factor x known rows, the known ones included), got {self.dpp_initial_factor}",
            )

    def model_options(self) -> dict[str, bool]:
        return {"ffe": self.ffe}

    def num_prototypes(self, num_known: int, num_classes: int) -> int:
        return self.dpp_initial_factor * num_known if self.dpp else num_classes

    # --- thresholds ----------------------------------------------------------------------------

    @property
    def tau_novel(self) -> float:
        """The threshold for predicted-novel rows now in force."""
        if not self.asymmetric:
            return self.known_threshold
        return min(self.raw_tau_novel, 1.0) if self.cap_novel_threshold else self.raw_tau_novel

    def update_thresholds(self) -> None:
        """Epoch end: tau = gamma * clamp(mean_novel / mean_known, 0.1, 10) (kept if a group is empty).

        The means and ratio are float64; the clamp runs on the ratio rounded to float32 and the
        product is float64, as the official code does it.
        """
        count_k, count_n = int(self._conf_count["known"]), int(self._conf_count["novel"])
        if count_k == 0 or count_n == 0:
            return
        ratio = (float(self._conf_sum["novel"]) / count_n) / (float(self._conf_sum["known"]) / count_k)
        clamped = float(torch.clamp(torch.tensor(ratio, dtype=torch.float32), RATIO_MIN, RATIO_MAX))
        self.raw_tau_novel = self.known_threshold * clamped

    def _accumulate_stats(self, zw: torch.Tensor, zs: torch.Tensor, num_known: int) -> None:
        with torch.no_grad():
            conf, pred = F.softmax(zw.float(), dim=1).max(dim=1)
            agree = pred == zs.argmax(dim=1)
            known = agree & (pred < num_known)
            novel = agree & (pred >= num_known)
            for group, mask in (("known", known), ("novel", novel)):
                self._conf_sum[group] = self._conf_sum[group].to(conf.device) + conf[mask].sum().double()
                self._conf_count[group] = self._conf_count[group].to(conf.device) + mask.sum()

    # --- the loss ------------------------------------------------------------------------------

    def step_loss(self, step: StepInput) -> tuple[torch.Tensor, dict[str, float]]:
        zw, zs = step.logits_weak, step.logits_strong
        if zs is None:
            raise ValueError("CAL needs the strong view")
        labelled = step.labelled
        self._num_known = step.num_known
        temp = self.student_temp
        ce = losses.supervised_ce(torch.cat([zw[labelled], zs[labelled]]) / temp, step.targets[labelled].repeat(2))
        reg = losses.mean_entropy_regulariser(torch.cat([zw, zs]) / temp, num_views=2)

        self._accumulate_stats(zw, zs, step.num_known)
        if self.dpp:
            self._count_usage(zw)

        ccr = zw.sum() * 0.0
        if self.ccr:
            ccr, _ = ccr_loss(zw, zs, step.epoch, step.num_epochs, self.teacher_temp, self.student_temp)

        acr = zw.sum() * 0.0
        kept_fraction = 0.0
        if self.acr and step.epoch >= self.acr_start_epoch:
            acr, keep = acr_loss(zw, ~labelled, step.num_known, self.known_threshold, self.tau_novel, temp)
            num_unlabelled = int((~labelled).sum())
            kept_fraction = int(keep.sum()) / num_unlabelled if num_unlabelled else 0.0

        total = ce + self.entropy_weight * reg + acr + self.ccr_weight * ccr
        terms = {
            "ce": float(ce.detach()),
            "entropy_reg": float(reg.detach()),
            "ccr": float(ccr.detach()),
            "acr": float(acr.detach()),
            "acr_kept_fraction": kept_fraction,
            "tau_novel": self.tau_novel,
        }
        return total, terms

    def _count_usage(self, zw: torch.Tensor) -> None:
        counts = torch.bincount(zw.detach().argmax(dim=1), minlength=zw.shape[1])
        if self._usage is None or self._usage.shape[0] != counts.shape[0]:
            self._usage = torch.zeros_like(counts)
        self._usage = self._usage.to(counts.device) + counts

    # --- epoch hooks ---------------------------------------------------------------------------

    def on_epoch_start(self, epoch: int) -> None:
        self._reset_epoch_stats()

    def on_epoch_end(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> dict[str, float]:
        self.update_thresholds()
        record: dict[str, float] = {"tau_novel": self.tau_novel}
        if self.dpp:
            num_active = int(model.num_active)
            if self._usage is not None and self._num_known is not None:
                usage = self._usage.cpu()
                if usage.shape[0] == num_active:
                    num_active = apply_dpp(
                        model, optimizer, usage, self._num_known, self.dpp_coverage, self.dpp_faithful
                    )
            self.k_trajectory.append(num_active)
            record["k_hat"] = float(num_active)
        return record

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tau_novel": self.tau_novel}
        if self.dpp:
            out["k_trajectory"] = list(self.k_trajectory)
            out["dpp_faithful"] = self.dpp_faithful
        return out

    def state_dict(self) -> dict[str, Any]:
        """The threshold, K trajectory and known count, plus this epoch's ACR statistics and DPP usage.

        The last two are reset at every epoch start; they are kept so a snapshot is complete at any moment.
        """
        state: dict[str, Any] = {
            "raw_tau_novel": self.raw_tau_novel,
            "k_trajectory": list(self.k_trajectory),
            "num_known": self._num_known,
        }
        for group in ("known", "novel"):
            state[f"conf_sum_{group}"] = self._conf_sum[group].detach().cpu().clone()
            state[f"conf_count_{group}"] = self._conf_count[group].detach().cpu().clone()
        if self._usage is not None:
            state["usage"] = self._usage.detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.raw_tau_novel = float(state["raw_tau_novel"])
        self.k_trajectory = [int(k) for k in state["k_trajectory"]]
        self._num_known = None if state["num_known"] is None else int(state["num_known"])
        for group in ("known", "novel"):
            self._conf_sum[group] = state[f"conf_sum_{group}"].clone()
            self._conf_count[group] = state[f"conf_count_{group}"].clone()
        self._usage = state["usage"].clone() if "usage" in state else None


def ccr_loss(
    logits_weak: torch.Tensor,
    logits_strong: torch.Tensor,
    epoch: int,
    num_epochs: int,
    teacher_temp: float,
    student_temp: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidence-aware consistency (spec 3.3 / 10.1); returns (loss, per-row weights)."""
    with torch.no_grad():
        rho = F.softmax(logits_weak.detach() / teacher_temp, dim=1).max(dim=1).values
        lam = (epoch + 1) / num_epochs
        weights = (1.0 - lam) * rho + lam * (1.0 - rho)
    loss, _ = losses.self_distillation(logits_weak, logits_strong, teacher_temp, student_temp, weights)
    return loss, weights


def acr_loss(
    logits_weak: torch.Tensor,
    unlabelled: torch.Tensor,
    num_known: int,
    known_threshold: float,
    novel_threshold: float,
    student_temp: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-label CE of the weak view on its own argmax (spec 3.4 / 10.2); returns (loss, keep mask).

    Only unlabelled rows qualify; a row is kept when its max softmax(logits / student_temp) is >=
    the threshold of its predicted group (known when argmax < num_known). The CE itself is on the
    raw logits, as the official code. The loss is 0 when no row is kept.
    """
    with torch.no_grad():
        conf, pred = F.softmax(logits_weak.detach() / student_temp, dim=1).max(dim=1)
        threshold = torch.where(
            pred < num_known,
            torch.tensor(known_threshold, dtype=conf.dtype, device=conf.device),
            torch.tensor(novel_threshold, dtype=conf.dtype, device=conf.device),
        )
        keep = unlabelled & (conf >= threshold)
    if not bool(keep.any()):
        return logits_weak.sum() * 0.0, keep
    return F.cross_entropy(logits_weak[keep], pred[keep]), keep
