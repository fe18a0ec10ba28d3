"""Self-supervised pretraining (`pretrain.mode: self_supervised | both`): SimCLR on every training image.

ImageNet weights are what CAL and CPL start from; none exist for the embedded benchmark, so this
stands in for them: features learnt from every training image, labelled and unlabelled alike,
without reading a single label (the loop is given the rows only, `owdfa.train.stages`).

Per step (Chen et al. 2020): two strong views of each drawn image, each through the network in
its own pass as every method here does; the BNNeck features go through a projection head (a
two-layer MLP, D -> D -> `projection_dim`, owned by this loss object and dropped afterwards: the
train stage starts from the backbone and neck only); NT-Xent with temperature `temperature` over
the 2B projections, each view's positive being the other view of its image and the 2B - 2 other
projections its negatives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from owdfa.methods.base import Method, StepInput


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: mean over the 2B views of -log softmax(cos / T) at the other view of their image."""
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)
    n = z_a.shape[0]
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, positives)


@dataclass
class SimCLR(Method):
    """NT-Xent on projected BNNeck features of two strong views; labels are never looked at."""

    name: ClassVar[str] = "self_supervised"
    sampler: ClassVar[str] = "every_row"
    two_strong_views: ClassVar[bool] = True
    temperature: float = 0.2
    projection_dim: int = 64
    head: nn.Module | None = field(default=None, repr=False, compare=False)

    def make_head(self, feature_dim: int, device: torch.device) -> list[nn.Parameter]:
        """The projection head, built from the current torch seed (the loop seeds before it calls this)."""
        self.head = nn.Sequential(
            nn.Linear(feature_dim, feature_dim), nn.ReLU(inplace=True), nn.Linear(feature_dim, self.projection_dim)
        ).to(device)
        return list(self.head.parameters())

    def step_loss(self, step: StepInput) -> tuple[torch.Tensor, dict[str, float]]:
        if self.head is None or step.features_strong is None:
            raise RuntimeError("SimCLR needs its head (make_head) and two views")
        loss = nt_xent(self.head(step.features_weak), self.head(step.features_strong), self.temperature)
        return loss, {"nt_xent": float(loss.detach())}

    def state_dict(self) -> dict[str, Any]:
        """The head's weights: a resumed run continues with the head it had."""
        return {} if self.head is None else {f"head.{k}": v.detach().cpu() for k, v in self.head.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.head is None:
            raise RuntimeError("make_head before load_state_dict")
        self.head.load_state_dict({k.removeprefix("head."): v for k, v in state.items()}, strict=True)
