"""DPP - Dynamic Prototype Pruning (CAL, unknown K), as small pure functions.

At the end of every epoch the novel prototypes (rows >= num_known of the classifier) are ranked
by how often they were the top-1 prototype of a weak-view logit row during the epoch. Stage I
takes the most used ones up to a usage coverage (0.9544 by default), Stage II extends that set
along the sorted tail while usages stay above the tail mean or keep dropping by at least the
mean step, and Stage III merges every other novel prototype into its most cosine-similar kept
one. The count can only shrink. Known rows are never touched.

`faithful=True` reproduces the official code's two defects (spec section 8, items 7 and 8):
merged anchors get unit L2 norm while every other row keeps its learned norm, and Adam's moments
stay attached to row positions. `faithful=False` keeps a merged anchor at its own norm (so the
merge does not rescale that class's logits) and moves each anchor's Adam moments with it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_ADAM_ROW_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _as_float32(usage: torch.Tensor | np.ndarray | list) -> torch.Tensor:
    if isinstance(usage, torch.Tensor):
        return usage.detach().to("cpu", torch.float32).flatten()
    return torch.as_tensor(np.asarray(usage), dtype=torch.float32).flatten()


def usage_order(novel_usage: torch.Tensor | np.ndarray | list) -> torch.Tensor:
    """Novel indices by descending usage; ties by lower index (stable, unlike the official sort)."""
    return torch.sort(_as_float32(novel_usage), descending=True, stable=True).indices


def keep_count(novel_usage: torch.Tensor | np.ndarray | list, coverage: float) -> int:
    """How many novel prototypes survive (Stage I + II), in float32 as the official code.

    Stage I: k_min = first 0-based position of the sorted usages whose float32 cumulative share
    reaches `coverage` compared as a Python float (float64), NumPy `searchsorted` of the float32
    shares as the official code does: usage [90, 7, 3] at 0.9 has share float32(0.9) =
    0.89999998 < 0.9 at position 0, so k_min = 1 (a float32 comparison would give 0). Stage II: over the tail
    s[k_min:], keep extending while s[i] >= mean(tail) or |s[i] - s[i-1]| >= mean |successive
    difference| of the tail; stop at the first failure. Always keeps >= k_min + 1. All-zero
    usage (or a coverage never reached) keeps everything.
    """
    values = _as_float32(novel_usage)
    n = int(values.numel())
    if n == 0:
        return 0
    total = values.sum()
    if not bool(total > 0):
        return n
    s = torch.sort(values, descending=True, stable=True).values
    cumulative = torch.cumsum(s, dim=0) / total
    hits = torch.nonzero(cumulative.double() >= float(coverage)).flatten()
    if hits.numel() == 0:
        return n
    k_min = int(hits[0])
    tail = s[k_min:]
    tail_mean = tail.mean()
    steps = (tail[1:] - tail[:-1]).abs()
    mean_step = steps.mean() if steps.numel() else torch.tensor(0.0, dtype=torch.float32)
    last = k_min
    for i in range(k_min + 1, n):
        if bool(s[i] >= tail_mean) or bool((s[i] - s[i - 1]).abs() >= mean_step):
            last = i
        else:
            break
    return last + 1


def _novel_usage(usage: torch.Tensor | np.ndarray | list, num_active: int, num_known: int) -> torch.Tensor:
    values = _as_float32(usage)
    if values.numel() == num_active:
        return values[num_known:]
    if values.numel() == num_active - num_known:
        return values
    raise ValueError(
        f"usage has {values.numel()} entries; expected {num_active} (all) or {num_active - num_known} (novel)"
    )


def merge_prototypes(
    prototypes: torch.Tensor,
    num_known: int,
    usage: torch.Tensor | np.ndarray | list,
    keep: int,
    faithful: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage III: merge the novel rows of `prototypes` (C_active x D) into `keep` anchors.

    `usage` counts every active row (length C_active) or only the novel ones. Anchors are the
    `keep` most used novel prototypes in usage order; every other novel prototype joins its most
    cosine-similar anchor (first on ties). An anchor with members becomes the mean of itself and
    its members, then has unit L2 norm (faithful) or the anchor's original norm (fixed); anchors
    without members are copied unchanged. Returns (new rows, (num_known + keep) x D; assignment,
    a long tensor mapping each old active row to its new row). Known rows are copied bit-for-bit.
    """
    num_active = int(prototypes.shape[0])
    num_novel = num_active - num_known
    if not 0 < keep <= num_novel:
        raise ValueError(f"keep must be in 1..{num_novel}, got {keep}")
    novel_usage = _novel_usage(usage, num_active, num_known)
    order = usage_order(novel_usage)
    anchors, members = order[:keep], order[keep:]
    novel = prototypes[num_known:].detach()

    new_rows = torch.empty(num_known + keep, prototypes.shape[1], dtype=prototypes.dtype, device=prototypes.device)
    new_rows[:num_known] = prototypes[:num_known].detach()
    new_rows[num_known:] = novel[anchors.to(novel.device)]
    assignment = torch.empty(num_active, dtype=torch.long)
    assignment[:num_known] = torch.arange(num_known)
    assignment[num_known + anchors] = num_known + torch.arange(keep)
    if members.numel() == 0:
        return new_rows, assignment

    anchor_vecs = novel[anchors.to(novel.device)]
    member_vecs = novel[members.to(novel.device)]
    similarity = F.normalize(member_vecs, dim=1) @ F.normalize(anchor_vecs, dim=1).t()
    slot = similarity.argmax(dim=1).cpu()  # first maximum on ties
    assignment[num_known + members] = num_known + slot
    for j in torch.unique(slot).tolist():
        group = member_vecs[(slot == j).to(novel.device)]
        merged = (anchor_vecs[j] + group.sum(dim=0)) / (1 + group.shape[0])
        if faithful:
            merged = F.normalize(merged, dim=0)
        else:
            norm = merged.norm()
            merged = merged * (anchor_vecs[j].norm() / norm) if bool(norm > 0) else anchor_vecs[j]
        new_rows[num_known + j] = merged
    return new_rows, assignment


@torch.no_grad()
def apply_dpp(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    usage: torch.Tensor | np.ndarray | list,
    num_known: int,
    coverage: float,
    faithful: bool,
) -> int:
    """Prune `model.prototypes` in place from one epoch's top-1 usage; returns the new num_active.

    Writes [known rows; anchors] into the parameter, zeroes the rows beyond and sets the
    `num_active` buffer. Only shrinks: when the kept count is not smaller, nothing changes. In
    fixed mode (not faithful) Adam's per-row moments of the prototype parameter are moved with
    their anchors and zeroed beyond num_active; in faithful mode they are left as they are.
    """
    num_active = int(model.num_active)
    novel_usage = _novel_usage(usage, num_active, num_known)
    keep = keep_count(novel_usage, coverage)
    new_active = num_known + keep
    if keep == 0 or new_active >= num_active:
        return num_active
    param = model.prototypes
    new_rows, _ = merge_prototypes(param.data[:num_active], num_known, novel_usage, keep, faithful)
    param.data[:new_active] = new_rows
    param.data[new_active:] = 0
    model.num_active.fill_(new_active)
    if not faithful and optimizer is not None:
        sources = torch.cat([torch.arange(num_known), num_known + usage_order(novel_usage)[:keep]])
        _remap_rows(optimizer.state.get(param, {}), sources, int(param.shape[0]))
    return new_active


def _remap_rows(state: dict, sources: torch.Tensor, num_rows: int) -> None:
    """Row i of each per-row moment becomes old row sources[i]; rows beyond are zeroed."""
    for key in _ADAM_ROW_STATE:
        moment = state.get(key)
        if not isinstance(moment, torch.Tensor) or moment.ndim == 0 or moment.shape[0] != num_rows:
            continue
        remapped = torch.zeros_like(moment)
        remapped[: sources.numel()] = moment[sources.to(moment.device)]
        moment.copy_(remapped)
