"""Which rows a training step draws: CAL's labelled-share sampler and CPL's class-balanced one.

Each method names its sampler (`Method.sampler`); a sampler's state (its draw counts) is part of a
resumable checkpoint (`owdfa.train.checkpoints`), so a resumed run draws what an uninterrupted one draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from owdfa.methods.base import Method
from owdfa.train.config import TrainConfig, TrainData


@dataclass(frozen=True, eq=False)
class LabelledShareSampler:
    """CAL's sampler: each draw labelled with probability `share`, rows drawn with replacement."""

    data: TrainData
    batch_size: int
    use_unlabelled: bool
    share: float
    labelled_targets: torch.Tensor

    @classmethod
    def build(cls, data: TrainData, config: TrainConfig, method: Method) -> LabelledShareSampler:
        use_unl = method.uses_unlabelled and len(data.unlabelled_rows) > 0
        return cls(
            data=data,
            batch_size=config.batch_size,
            use_unlabelled=use_unl,
            share=config.labelled_share if use_unl else 1.0,
            labelled_targets=torch.tensor(np.asarray(data.labelled_targets), dtype=torch.long),
        )

    @property
    def steps(self) -> int:
        draws = len(self.data.labelled_rows) + (len(self.data.unlabelled_rows) if self.use_unlabelled else 0)
        return max(1, draws // self.batch_size)

    def draw(self, gen: torch.Generator) -> tuple[np.ndarray, torch.Tensor]:
        """Cache rows and targets (-1 for unlabelled draws) of one global batch."""
        n_lab, n_unl = len(self.data.labelled_rows), len(self.data.unlabelled_rows)
        is_lab = torch.rand(self.batch_size, generator=gen) < self.share
        lab_pick = torch.randint(n_lab, (self.batch_size,), generator=gen)
        unl_pick = torch.randint(max(n_unl, 1), (self.batch_size,), generator=gen)
        rows = np.where(
            is_lab.numpy(),
            self.data.labelled_rows[lab_pick.numpy()],
            self.data.unlabelled_rows[unl_pick.numpy()] if self.use_unlabelled else 0,
        )
        targets = torch.where(is_lab, self.labelled_targets[lab_pick], torch.full_like(lab_pick, -1))
        return rows, targets

    def state_dict(self) -> dict[str, Any]:
        """Nothing carries between steps: every draw depends on the generator alone."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"LabelledShareSampler keeps no state; got {sorted(state)}")


def least_drawn_class(counts: list[int], u: float) -> int:
    """The labelled class a balanced draw takes: one drawn least so far, picked by `u` in [0, 1).

    The official search (owdfa/datasets/utils/sampler.py, `get_class`) lists the tied classes in
    ascending order but lists the first of them twice unless it is class 0 (a new minimum is
    appended once more on the same pass; spec §8.19), then picks uniformly from that list.
    """
    low = min(counts)
    tied = [c for c, n in enumerate(counts) if n == low]
    candidates = tied if tied[0] == 0 else [tied[0], *tied]
    return candidates[int(u * len(candidates))]


class BalancedSampler:
    """CPL's sampler: the official MultilabelBalancedRandomSampler in "balance" mode (spec §2.2).

    Draws alternate, the very first being unlabelled: an unlabelled draw takes the next row of the
    unlabelled pool, a labelled draw the next row of a least-drawn labelled class
    (`least_drawn_class`). Each pool is walked cyclically in a random order fixed once (at the first
    draw), and the per-pool counts and the alternation carry on across epochs, as in the official
    sampler, whose counters are never reset. An epoch is len(labelled) + len(unlabelled) draws. The
    loop trains on whole batches only, so the last (draws mod batch_size) draws of each epoch, the
    official short last batch, are drawn and dropped, keeping the stream aligned with the official
    one. Without unlabelled rows, or for a method not using them, every draw is labelled.

    All randomness (orders, tie-breaks) comes from the loop's generator, so every rank draws the
    same global batch; `state_dict` holds what carries between epochs, for resuming.
    """

    def __init__(self, data: TrainData, batch_size: int, use_unlabelled: bool) -> None:
        if len(data.labelled_rows) == 0:
            raise ValueError("the class-balanced sampler needs labelled rows")
        self.data, self.batch_size, self.use_unlabelled = data, batch_size, use_unlabelled
        targets = np.asarray(data.labelled_targets)
        # Positions into data.labelled_rows per labelled class (ascending class id), then the unlabelled pool.
        self._members = [np.flatnonzero(targets == c) for c in np.unique(targets)]
        self._members.append(np.arange(len(data.unlabelled_rows) if use_unlabelled else 0))
        self._orders: list[np.ndarray] | None = None
        self._counts = [0] * len(self._members)
        self._unlabelled_next = True
        self._step_in_epoch = 0

    @classmethod
    def build(cls, data: TrainData, config: TrainConfig, method: Method) -> BalancedSampler:
        return cls(data, config.batch_size, method.uses_unlabelled and len(data.unlabelled_rows) > 0)

    @property
    def draws_per_epoch(self) -> int:
        return sum(len(m) for m in self._members)

    @property
    def steps(self) -> int:
        return max(1, self.draws_per_epoch // self.batch_size)

    def draw(self, gen: torch.Generator) -> tuple[np.ndarray, torch.Tensor]:
        """Cache rows and targets (-1 for unlabelled draws) of one global batch."""
        if self._orders is None:
            self._orders = [m[torch.randperm(len(m), generator=gen).numpy()] for m in self._members]
        count = self.batch_size
        self._step_in_epoch += 1
        if self._step_in_epoch == self.steps:  # the epoch's last batch: also use up the short one
            count += max(0, self.draws_per_epoch - self.steps * self.batch_size)
            self._step_in_epoch = 0
        ties = torch.rand(count, generator=gen, dtype=torch.float64).tolist()
        unlabelled = len(self._members) - 1
        rows = np.empty(count, dtype=np.int64)
        targets = np.empty(count, dtype=np.int64)
        for i, u in enumerate(ties):
            take_unlabelled = self.use_unlabelled and self._unlabelled_next
            pool = unlabelled if take_unlabelled else least_drawn_class(self._counts[:-1], u)
            if self.use_unlabelled:
                self._unlabelled_next = not self._unlabelled_next
            order = self._orders[pool]
            position = int(order[self._counts[pool] % len(order)])
            self._counts[pool] += 1
            if pool == unlabelled:
                rows[i], targets[i] = self.data.unlabelled_rows[position], -1
            else:
                rows[i], targets[i] = self.data.labelled_rows[position], self.data.labelled_targets[position]
        keep = self.batch_size
        return rows[:keep], torch.from_numpy(targets[:keep])

    def state_dict(self) -> dict[str, Any]:
        """The pools' fixed orders (once drawn), the draw counts, the alternation and the step in the epoch."""
        state: dict[str, Any] = {
            "counts": list(self._counts),
            "unlabelled_next": self._unlabelled_next,
            "step_in_epoch": self._step_in_epoch,
        }
        if self._orders is not None:
            state["orders"] = torch.from_numpy(np.concatenate(self._orders).astype(np.int64))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["counts"]) != len(self._members):
            raise ValueError(f"sampler state for {len(state['counts'])} pools, this data has {len(self._members)}")
        self._counts = [int(n) for n in state["counts"]]
        self._unlabelled_next = bool(state["unlabelled_next"])
        self._step_in_epoch = int(state["step_in_epoch"])
        self._orders = None
        if "orders" in state:
            flat = state["orders"].numpy()
            bounds = np.cumsum([0, *(len(m) for m in self._members)])
            if len(flat) != bounds[-1]:
                raise ValueError(f"sampler orders hold {len(flat)} positions, this data has {bounds[-1]}")
            self._orders = [flat[a:b].copy() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class EveryRowSampler:
    """Self-supervised pretraining's sampler: each epoch a fresh permutation of every row, no targets.

    It reads `unlabelled_rows` only (the pretrain stage puts every training row there and gives no
    labels) and returns -1 as every target. An epoch is len(rows) // batch_size batches, the short
    remainder dropped, as SimCLR's loader does; the permutation comes from the loop's generator at
    the epoch's first draw, so every rank draws the same global batch.
    """

    def __init__(self, data: TrainData, batch_size: int) -> None:
        if len(data.unlabelled_rows) < batch_size:
            raise ValueError(f"{len(data.unlabelled_rows)} training rows are fewer than one batch of {batch_size}")
        self.rows, self.batch_size = np.asarray(data.unlabelled_rows), batch_size
        self._order: np.ndarray | None = None
        self._step_in_epoch = 0

    @classmethod
    def build(cls, data: TrainData, config: TrainConfig, method: Method) -> EveryRowSampler:
        return cls(data, config.batch_size)

    @property
    def steps(self) -> int:
        return len(self.rows) // self.batch_size

    def draw(self, gen: torch.Generator) -> tuple[np.ndarray, torch.Tensor]:
        if self._step_in_epoch == 0:
            self._order = torch.randperm(len(self.rows), generator=gen).numpy()
        start = self._step_in_epoch * self.batch_size
        rows = self.rows[self._order[start : start + self.batch_size]]
        self._step_in_epoch = (self._step_in_epoch + 1) % self.steps
        return rows, torch.full((self.batch_size,), -1, dtype=torch.long)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"step_in_epoch": self._step_in_epoch}
        if self._order is not None:
            state["order"] = torch.from_numpy(self._order.astype(np.int64))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._step_in_epoch = int(state["step_in_epoch"])
        self._order = state["order"].numpy().copy() if "order" in state else None


Sampler = LabelledShareSampler | BalancedSampler | EveryRowSampler  # any of them (a method picks one)
SAMPLERS: dict[str, type[Sampler]] = {
    "labelled_share": LabelledShareSampler,
    "class_balanced": BalancedSampler,
    "every_row": EveryRowSampler,
}


def build_sampler(data: TrainData, config: TrainConfig, method: Method) -> Sampler:
    """The sampler the method's recipe names (`Method.sampler`)."""
    if method.sampler not in SAMPLERS:
        raise ValueError(f"{type(method).__name__}.sampler = {method.sampler!r}; known: {', '.join(SAMPLERS)}")
    return SAMPLERS[method.sampler].build(data, config, method)
