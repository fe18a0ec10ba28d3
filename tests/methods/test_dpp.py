"""DPP (spec section 4, 8.7-8.9, 10.5-10.6) on constructed usages and prototypes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from owdfa.methods.dpp import apply_dpp, keep_count, merge_prototypes, usage_order

# --------------------------------------------------------------------------------------------
# keep_count


def test_keep_count_float32_share_at_the_default_coverage():
    # 28925 / 30307 = 0.95439997... in float64, but the float32 share is 0.95440000296 (the float32
    # nearest 0.9544, which lies above it), and that is >= 0.9544 compared as a float64 too, so Stage I
    # stops at k_min = 0. Tail = everything: mean 30307/7 = 4329.6, mean step
    # (28425+0+400+0+0+18)/6 = 4807.2 -> index 1 kept by its drop (28425), index 2 (500, step 0)
    # fails -> 2. With float64 shares k_min would be 1 and the tail rule would keep 4.
    usage = np.array([100, 500, 82, 28925, 100, 500, 100])
    assert keep_count(usage, 0.9544) == 2
    assert keep_count(torch.tensor(usage), 0.9544) == 2


def test_keep_count_compares_float32_shares_with_a_float64_coverage():
    # The official cut is NumPy searchsorted(float32 cumulative shares, coverage as a Python float).
    # Sorted usage [90, 7, 3], total 100: shares float32 [0.9, 0.97, 1.0]; float32(0.9) =
    # 0.89999998 < 0.9, so the first share reaching 0.9 is at index 1: k_min = 1. Tail [7, 3]:
    # mean 5, mean step 4; index 2: 3 < 5 but |3 - 7| = 4 >= 4 -> kept -> 3 rows.
    # (Comparing with float32(0.9) would give k_min = 0, tail mean 33.3, mean step 43.5: index 1 kept by
    # its drop 83, index 2 (3 < 33.3, step 4 < 43.5) not -> 2.)
    assert np.searchsorted(np.float32([0.9, 0.97, 1.0]), 0.9) == 1  # the official rule, independently
    assert keep_count([90, 7, 3], 0.9) == 3
    assert keep_count([3, 90, 7], 0.9) == 3


def test_keep_count_flat_tail_is_kept_whole():
    # cumulative 0.90, 0.95, 0.96 -> k_min = 2; tail [10]*5, every value >= mean 10 -> keep all 7.
    assert keep_count([900, 50, 10, 10, 10, 10, 10], 0.9544) == 7
    # all tied at a lower coverage: k_min = 3 (cumulative 0.5), tied tail kept whole -> 8.
    assert keep_count([10] * 8, 0.5) == 8


def test_keep_count_big_drop_keeps_the_element_after_it():
    # cumulative 0.90, 0.96 -> k_min = 1; tail [60, 30, 5, 3, 2]: mean 20, mean step (30+25+2+1)/4 = 14.5.
    # 30 >= 20 kept; 5 < 20 but its step 25 >= 14.5 kept; 3: step 2 < 14.5 stops -> 4.
    assert keep_count([2, 60, 900, 3, 30, 5], 0.9544) == 4


def test_keep_count_dominant_prototype_keeps_a_second():
    # k_min = 0; tail [1000, 0, 0, 0]: mean 250, mean step 1000/3; index 1 step 1000 kept, index 2 step 0 stops.
    assert keep_count([0, 0, 1000, 0], 0.9544) == 2


def test_keep_count_sparse_tail_keeps_nonzero_plus_one_zero():
    # coverage 0.5 -> k_min = 1 (cumulative 0.4, 0.7); tail [30, 20, 10, 0, 0, 0]: mean 10,
    # mean step (10+10+10+0+0)/5 = 6: 20, 10 >= mean; first 0 has step 10 >= 6; second 0 step 0 stops -> 5.
    assert keep_count([40, 30, 20, 10, 0, 0, 0], 0.5) == 5


def test_keep_count_all_zero_and_empty():
    assert keep_count([0, 0, 0, 0, 0], 0.9544) == 5
    assert keep_count([], 0.9544) == 0
    assert keep_count([7], 0.9544) == 1


def test_usage_order_is_stable_descending():
    assert usage_order([5, 7, 5, 7]).tolist() == [1, 3, 0, 2]


# --------------------------------------------------------------------------------------------
# merge_prototypes

KNOWN = torch.tensor([[0.3, -0.7]])
# novel rows (local index): 0 = A, 1 = member m, 2 = B, 3 = member n
NOVEL = torch.tensor([[1.0, 0.0], [1.0, 0.8], [10.0, 10.0], [0.0, -2.0]])
# usage over all active rows: known 50, then A 30, m 1, B 40, n 2 -> anchors (keep 2) = [B, A]
USAGE = torch.tensor([50, 30, 1, 40, 2])


def _protos() -> torch.Tensor:
    return torch.cat([KNOWN, NOVEL])


def test_merge_assigns_by_cosine_not_distance():
    new, assignment = merge_prototypes(_protos(), 1, USAGE, keep=2, faithful=True)
    # m = [1, 0.8] is closer to A in Euclidean distance (0.8 vs 12.7) but its cosine to B is
    # 1.8 / (1.2806 * 1.4142) = 0.994 > to A 1 / 1.2806 = 0.781 -> joins B (new row 1).
    # n = [0, -2]: cosine to A 0, to B -0.707 -> joins A (new row 2).
    assert assignment.tolist() == [0, 2, 1, 1, 2]
    assert new.shape == (3, 2)


def test_merge_faithful_unit_norm_and_known_untouched():
    new, _ = merge_prototypes(_protos(), 1, USAGE, keep=2, faithful=True)
    assert torch.equal(new[0], KNOWN[0])  # bit for bit
    # B' = normalise(([10, 10] + [1, 0.8]) / 2) = normalise([5.5, 5.4]) = [0.71360, 0.70063]
    assert new[1].tolist() == pytest.approx([5.5 / math.hypot(5.5, 5.4), 5.4 / math.hypot(5.5, 5.4)], abs=1e-6)
    # A' = normalise(([1, 0] + [0, -2]) / 2) = normalise([0.5, -1]) = [0.44721, -0.89443]
    assert new[2].tolist() == pytest.approx([0.5 / math.hypot(0.5, 1), -1 / math.hypot(0.5, 1)], abs=1e-6)
    assert float(new[1].norm()) == pytest.approx(1.0, abs=1e-6)


def test_merge_fixed_keeps_anchor_norm():
    new, _ = merge_prototypes(_protos(), 1, USAGE, keep=2, faithful=False)
    assert torch.equal(new[0], KNOWN[0])
    # B' = [5.5, 5.4] rescaled to |B| = 14.1421 -> [10.0915, 9.9080]
    scale = math.hypot(10, 10) / math.hypot(5.5, 5.4)
    assert new[1].tolist() == pytest.approx([5.5 * scale, 5.4 * scale], abs=1e-4)
    # A' = [0.5, -1] rescaled to |A| = 1 -> [0.44721, -0.89443]
    assert float(new[2].norm()) == pytest.approx(1.0, abs=1e-6)
    assert float(new[1].norm()) == pytest.approx(math.hypot(10, 10), abs=1e-4)


def test_merge_anchor_without_members_is_copied():
    # keep 3 -> anchors [B, A, n]; m joins B; A and n have no members and keep their vectors.
    new, _ = merge_prototypes(_protos(), 1, USAGE, keep=3, faithful=True)
    assert torch.equal(new[2], NOVEL[0]) and torch.equal(new[3], NOVEL[3])
    # novel-only usage gives the same result
    new2, _ = merge_prototypes(_protos(), 1, USAGE[1:], keep=3, faithful=True)
    assert torch.equal(new, new2)


# --------------------------------------------------------------------------------------------
# apply_dpp


class _Classifier(nn.Module):
    def __init__(self, rows: torch.Tensor) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(rows.clone())
        self.register_buffer("num_active", torch.tensor(rows.shape[0], dtype=torch.long))


def _model_and_adam(extra_rows: int = 1) -> tuple[_Classifier, torch.optim.Adam]:
    rows0 = torch.cat([_protos(), torch.full((extra_rows, 2), 0.5)])
    model = _Classifier(rows0)
    model.num_active.fill_(5)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model.prototypes.grad = torch.ones_like(model.prototypes)
    optimizer.step()  # creates the state; then restore the rows so values stay hand-checkable
    model.prototypes.data.copy_(rows0)
    state = optimizer.state[model.prototypes]
    # row r of the moments holds r (exp_avg) and 10 + r (exp_avg_sq) so moves are visible
    rows = torch.arange(6, dtype=torch.float32).unsqueeze(1).expand(6, 2)
    state["exp_avg"].copy_(rows)
    state["exp_avg_sq"].copy_(10 + rows)
    return model, optimizer


def _dropping_usage() -> torch.Tensor:
    # novel usage [30, 1, 40, 2]: k_min = 1 (0.41, 0.96); tail [30, 2, 1]: mean 11, mean step 14.5;
    # 2 < 11 but step 28 >= 14.5 kept; 1: step 1 stops -> keep 3 -> anchors [B, A, n], m joins B.
    return torch.tensor([50, 30, 1, 40, 2])


def test_apply_dpp_fixed_moves_adam_moments_and_zeroes_beyond():
    model, optimizer = _model_and_adam()
    known_before = model.prototypes.data[0].clone()
    new_active = apply_dpp(model, optimizer, _dropping_usage(), 1, 0.9544, faithful=False)
    assert new_active == 4 and int(model.num_active) == 4
    assert torch.equal(model.prototypes.data[0], known_before)
    assert torch.equal(model.prototypes.data[3], NOVEL[3])  # n kept as is
    assert torch.count_nonzero(model.prototypes.data[4:]) == 0
    state = optimizer.state[model.prototypes]
    # new rows [known, B (old 3), A (old 1), n (old 4)], beyond zero
    assert state["exp_avg"][:, 0].tolist() == [0, 3, 1, 4, 0, 0]
    assert state["exp_avg_sq"][:, 0].tolist() == [10, 13, 11, 14, 0, 0]


def test_apply_dpp_faithful_leaves_adam_state():
    model, optimizer = _model_and_adam()
    before = {k: v.clone() for k, v in optimizer.state[model.prototypes].items()}
    assert apply_dpp(model, optimizer, _dropping_usage(), 1, 0.9544, faithful=True) == 4
    after = optimizer.state[model.prototypes]
    for key, value in before.items():
        assert torch.equal(after[key], value)
    # the merged anchor B' has unit norm, the unmerged ones keep theirs
    assert float(model.prototypes.data[1].norm()) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(model.prototypes.data[2], NOVEL[0])


def test_apply_dpp_without_optimizer_state():
    model = _Classifier(torch.cat([_protos(), torch.zeros(1, 2)]))
    model.num_active.fill_(5)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)  # no step yet: no state
    assert apply_dpp(model, optimizer, _dropping_usage(), 1, 0.9544, faithful=False) == 4
    assert len(optimizer.state) == 0


def test_apply_dpp_only_shrinks():
    model, optimizer = _model_and_adam()
    before = model.prototypes.data.clone()
    # all-zero novel usage keeps all 4 novel rows: no change at all
    assert apply_dpp(model, optimizer, torch.tensor([9, 0, 0, 0, 0]), 1, 0.9544, faithful=False) == 5
    assert torch.equal(model.prototypes.data, before) and int(model.num_active) == 5
    assert apply_dpp(model, optimizer, _dropping_usage(), 1, 0.9544, faithful=False) == 4
    # the next epoch cannot grow it back (usage now counts the 4 active rows)
    assert apply_dpp(model, optimizer, torch.tensor([5, 1, 1, 1]), 1, 0.9544, faithful=False) == 4
    assert int(model.num_active) == 4
