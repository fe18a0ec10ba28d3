"""CPL (ICCV'23, "Contrastive Pseudo Learning for Open-World DeepFake Attribution") as a loss object.

Written from the prose of the method spec (§1.2, §2.2, §3.6, §8.15-17); no official code is reused.
CPL trains on a single view per image, so `uses_strong_view` is False: the loop then feeds CPL's
own view (`single_view`) through the weak slot and only the `*_weak` outputs are read. The
objective, with p = softmax(z) of those logits z:

    L = CE_margin + glv_weight * GLV + csp_weight * CSP - entropy_weight * H(mean_i p_i)

* CE_margin: the official `MarginLoss(m=-0.2, s=1)`. Its margin is negative, which *raises* the
  target logit (an easier CE, spec §8.17); params store the positive `margin_boost` = -m = 0.2
  (the params reader only accepts non-negative floats) that is added to the target logit.
* GLV (Global-Local Voting): every row i gets a partner j(i) and the term is the official
  nn.BCELoss of <p_i, p_j(i)> against 1, i.e. -mean_i max(log <p_i, p_j(i)>, -100) with PyTorch's
  BCE gradient (so a tiny agreement still pulls), through both sides. Labelled rows pair with a random
  other labelled row of the same class (themselves when unique). An unlabelled row u pairs with
  its nearest other row n(u) by cosine of the detached BNNeck features if the local vote passes
  (u's best patch-weighted similarity to any other row >= the best any other row has towards
  n(u)), else with itself (pure sharpening). The vote pass mask m_u is reused by CSP.
* CSP (Confidence-based Soft Pseudo-labels), unlabelled rows only: r_u = Gumbel-softmax(z_u, tau=1)
  (soft), yhat_u = argmax r_u, c_u = p_u[yhat_u], CSP = mean_u m_u * c_u * H(r_u, p_u). As released,
  c_u is *not* detached (spec §8.15); `detach_confidence: true` is the fixed variant.
* Entropy: H of the batch-mean prediction over every row, no log C offset (the total subtracts it).

Randomness (labelled partners, Gumbel noise) comes from a private torch.Generator re-seeded every
step from (torch.initial_seed(), step counter), so a run is reproducible from its seed and never
consumes the global RNG. Targets of unlabelled rows are -1 and only rows with target >= 0 are read.

The rest of CPL's recipe lives in the training loop, chosen by this class: its single view is
`owdfa.train.views.single_view` (flip, random resized crop, albumentations brightness/contrast), its
batches come from the class-balanced sampler (`sampler = "class_balanced"`,
`owdfa.train.samplers.BalancedSampler`), and the `cpl` variant in params.yaml carries the official
optimiser differences (weight decay 1e-5, StepLR gamma 0.2) as `optimizer:` overrides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from owdfa.methods import losses
from owdfa.methods.base import Method, StepInput
from owdfa.methods.registry import register_method

GUMBEL_EPS = 1e-10


def margin_ce(logits: torch.Tensor, targets: torch.Tensor, boost: float) -> torch.Tensor:
    """CE after adding `boost` to each row's target logit (MarginLoss with m = -boost, s = 1)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    shifted = logits + boost * F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    return losses.supervised_ce(shifted, targets)


def local_similarity(patches: torch.Tensor) -> torch.Tensor:
    """S[a, b] = sum_k w[a, k] * cos(f_a[k], f_b[k]); w[a] = L2-normalised patch norms of a (not symmetric).

    patches: B x P x D local features. Returns B x B.
    """
    norms = patches.norm(dim=2)  # B x P
    weights = F.normalize(norms, dim=1)
    unit = F.normalize(patches, dim=2)
    cos = torch.einsum("apd,bpd->abp", unit, unit)  # B x B x P
    return (cos * weights[:, None, :]).sum(dim=2)


def labelled_partners(targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For every row a uniformly random *other* labelled row of the same class; itself when there is none.

    Rows with target -1 are never candidates and get themselves (callers overwrite them).
    """
    b = targets.shape[0]
    labelled = targets >= 0
    same = (targets[:, None] == targets[None, :]) & labelled[:, None] & labelled[None, :]
    same &= ~torch.eye(b, dtype=torch.bool, device=targets.device)
    scores = torch.rand(b, b, generator=generator).to(targets.device)
    scores = torch.where(same, scores, torch.full_like(scores, -1.0))
    pick = scores.argmax(dim=1)
    own = torch.arange(b, device=targets.device)
    return torch.where(same.any(dim=1), pick, own)


def unlabelled_votes(features: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Global candidate n(u) and local vote for every row (callers keep the unlabelled ones).

    n(u) = the other row with the highest cosine similarity of the (detached) global features.
    The vote passes if max_{b != u} S[u, b] >= max_{a != n(u)} S[a, n(u)] (S = `local_similarity`).
    Needs B >= 2. Returns (n, passed).
    """
    b = features.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=features.device)
    with torch.no_grad():
        unit = F.normalize(features.detach().float(), dim=1)
        global_sim = (unit @ unit.t()).masked_fill(eye, float("-inf"))
        nearest = global_sim.argmax(dim=1)
        local = local_similarity(patches.detach().float()).masked_fill(eye, float("-inf"))
        own_best = local.max(dim=1).values  # u's best local score towards any other row
        towards = local.max(dim=0).values  # best local score any other row has towards each column
        passed = own_best >= towards[nearest]
    return nearest, passed


def glv_loss(probs: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
    """Mean BCE(<p_i, p_partner(i)>, 1), gradient through both sides, as the official nn.BCELoss.

    F.binary_cross_entropy clamps the log at -100 in the forward pass and keeps its own gradient
    (x - 1) / max(x (1 - x), 1e-12), so a row whose agreement is tiny still gets a (large) pull
    instead of none. An agreement above 1 can only be rounding, which BCE would reject: it is
    clamped to 1, where the BCE gradient is 0 anyway. PyTorch refuses BCE inside autocast; the loop
    computes every loss outside it, on float32 outputs.
    """
    if probs.shape[0] == 0:
        return probs.sum() * 0.0
    agreement = (probs * probs[partners]).sum(dim=1).clamp(max=1.0)
    return F.binary_cross_entropy(agreement, torch.ones_like(agreement))


def gumbel_soft_labels(logits: torch.Tensor, generator: torch.Generator, tau: float = 1.0) -> torch.Tensor:
    """softmax((z + g) / tau) with g ~ Gumbel(0, 1) drawn from `generator` (z detached)."""
    uniform = torch.rand(logits.shape, generator=generator, dtype=torch.float64).to(logits.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(GUMBEL_EPS, 1.0 - GUMBEL_EPS)))
    return F.softmax((logits.detach() + gumbel.to(logits.dtype)) / tau, dim=1)


def csp_loss(
    logits: torch.Tensor, soft_labels: torch.Tensor, mask: torch.Tensor, detach_confidence: bool
) -> torch.Tensor:
    """mean_u m_u * c_u * H(r_u, softmax(z_u)), c_u = softmax(z_u)[argmax r_u]; 0 for no rows."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    probs = F.softmax(logits, dim=1)
    confidence = probs.gather(1, soft_labels.argmax(dim=1, keepdim=True)).squeeze(1)
    if detach_confidence:
        confidence = confidence.detach()
    per_row = losses.soft_cross_entropy(soft_labels, logits)
    return (mask.to(logits.dtype) * confidence * per_row).mean()


def batch_entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(mean_i p_i) (natural log, no log C offset)."""
    mean_prob = probs.mean(dim=0)
    return -(mean_prob * torch.log(mean_prob.clamp_min(1e-12))).sum()


@register_method
@dataclass
class CPL(Method):
    """CPL baseline: margin CE + GLV + CSP - batch entropy on a single view.

    margin_boost: added to the labelled target logit (official MarginLoss m = -0.2, so 0.2).
    detach_confidence: False = as released (c_u carries gradient, spec §8.15); True = fixed.
    require_full_batch: True = as released, GLV (and with it the vote mask, hence CSP) is 0 on a
      batch whose size differs from the configured one, taken here as the first batch size seen
      since epoch 0 (the official code hard-codes 128). Our loop always draws full batches, so this
      never triggers there. With False GLV runs on every batch of >= 2 rows. GLV is always 0 for a
      batch of < 2 rows; its labelled/unlabelled parts simply drop out when the batch has none.
    """

    name: ClassVar[str] = "cpl"
    uses_strong_view: ClassVar[bool] = False
    sampler: ClassVar[str] = "class_balanced"
    margin_boost: float = 0.2
    glv_weight: float = 0.5
    csp_weight: float = 0.5
    entropy_weight: float = 1.0
    detach_confidence: bool = False
    require_full_batch: bool = True

    def __post_init__(self) -> None:
        self._step = 0
        self._full_batch: int | None = None

    def model_options(self) -> dict[str, bool]:
        return {"patch_features": True}

    def state_dict(self) -> dict[str, Any]:
        """The noise stream's step counter and the batch size GLV takes as full."""
        return {"step": self._step, "full_batch": self._full_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._step = int(state["step"])
        self._full_batch = None if state["full_batch"] is None else int(state["full_batch"])

    def on_epoch_start(self, epoch: int) -> None:
        if epoch == 0:  # a fresh run: restart the noise stream and forget the batch size
            self._step = 0
            self._full_batch = None

    def _generator(self) -> torch.Generator:
        seed = (torch.initial_seed() * 1_000_003 + self._step) % (2**63 - 1)
        self._step += 1
        return torch.Generator().manual_seed(seed)

    def _glv_enabled(self, batch: int) -> bool:
        if self._full_batch is None:
            self._full_batch = batch
        if batch < 2:
            return False
        return not self.require_full_batch or batch == self._full_batch

    def step_loss(self, step: StepInput) -> tuple[torch.Tensor, dict[str, float]]:
        if step.patches_weak is None:
            raise ValueError("CPL needs patch features: build the model with model_options() (patch_features=True)")
        logits, targets = step.logits_weak, step.targets
        generator = self._generator()
        labelled = targets >= 0
        unlabelled = ~labelled
        probs = F.softmax(logits, dim=1)

        ce = margin_ce(logits[labelled], targets[labelled], self.margin_boost)

        # Draw the labelled partners first and the Gumbel noise second, every step, so the noise
        # stream does not depend on whether GLV ran.
        partners = labelled_partners(targets, generator)
        soft_labels = gumbel_soft_labels(logits[unlabelled], generator)
        votes = torch.zeros(int(unlabelled.sum()), dtype=torch.bool, device=logits.device)
        if self._glv_enabled(logits.shape[0]):
            nearest, passed = unlabelled_votes(step.features_weak, step.patches_weak)
            own = torch.arange(logits.shape[0], device=logits.device)
            partners = torch.where(unlabelled & passed, nearest, partners)
            partners = torch.where(unlabelled & ~passed, own, partners)
            votes = passed[unlabelled]
            glv = glv_loss(probs, partners)
        else:
            glv = logits.sum() * 0.0

        csp = csp_loss(logits[unlabelled], soft_labels, votes, self.detach_confidence)
        entropy = batch_entropy(probs)
        total = ce + self.glv_weight * glv + self.csp_weight * csp - self.entropy_weight * entropy
        terms = {
            "ce": float(ce.detach()),
            "glv": float(glv.detach()),
            "csp": float(csp.detach()),
            "batch_entropy": float(entropy.detach()),
            "vote_pass_rate": float(votes.float().mean()) if votes.numel() else 0.0,
        }
        return total, terms
