"""Value tests for owdfa.methods.losses and the Baseline objective on hand-built logits.

Every expected number is a literal derived by hand in the comments (natural logs throughout).
"""

from __future__ import annotations

import math

import pytest
import torch

from owdfa.core.config import Section
from owdfa.methods import StepInput, build_method, losses
from owdfa.methods.base import Baseline, Supervised

LN = math.log
LOG3 = 1.0986122886681098  # ln 3


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# supervised_ce


def test_supervised_ce_matches_hand_computed_values():
    # Row [2, 1, 0], target 0: -log(e^2 / (e^2 + e + 1)) = log(1 + e^-1 + e^-2)
    #   = log(1 + 0.367879 + 0.135335) = log(1.503215) = 0.407606
    # Row [0, 0, 0], target 2: -log(1/3) = ln 3 = 1.098612
    # Mean: (0.407606 + 1.098612) / 2 = 0.753109
    logits = t([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    targets = torch.tensor([0, 2])
    assert losses.supervised_ce(logits[:1], targets[:1]).item() == pytest.approx(0.4076059644, abs=1e-9)
    assert losses.supervised_ce(logits[1:], targets[1:]).item() == pytest.approx(LOG3, abs=1e-9)
    assert losses.supervised_ce(logits, targets).item() == pytest.approx(0.7531091266, abs=1e-9)


def test_supervised_ce_is_temperature_one():
    # Logits [ln 0.7, ln 0.2, ln 0.1] are log-probabilities: CE at target 1 = -ln 0.2 = 1.609438.
    logits = t([[LN(0.7), LN(0.2), LN(0.1)]])
    assert losses.supervised_ce(logits, torch.tensor([1])).item() == pytest.approx(1.6094379124, abs=1e-9)


def test_supervised_ce_empty_batch_is_zero_and_differentiable():
    logits = torch.zeros(0, 4, requires_grad=True)
    loss = losses.supervised_ce(logits, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and logits.grad.shape == (0, 4)


# --------------------------------------------------------------------------------------------
# mean_entropy_regulariser


def test_mean_entropy_regulariser_matches_hand_computed_value():
    # Rows are log-probabilities: p1 = [0.5, 0.25, 0.25], p2 = [0.1, 0.2, 0.7].
    # Mean p = [0.3, 0.225, 0.475].
    # H = -(0.3 ln 0.3 + 0.225 ln 0.225 + 0.475 ln 0.475)
    #   = 0.3 * 1.203973 + 0.225 * 1.491655 + 0.475 * 0.744440 = 0.361192 + 0.335622 + 0.353609 = 1.050423
    # (ln 3 - H) / 2 = (1.098612 - 1.050423) / 2 = 0.024094
    logits = t([[LN(0.5), LN(0.25), LN(0.25)], [LN(0.1), LN(0.2), LN(0.7)]])
    assert losses.mean_entropy_regulariser(logits, num_views=2).item() == pytest.approx(0.0240944372, abs=1e-9)
    # One view: no halving, 0.048189.
    assert losses.mean_entropy_regulariser(logits, num_views=1).item() == pytest.approx(0.0481888745, abs=1e-9)
    # Adding a constant to a row does not change its softmax.
    assert losses.mean_entropy_regulariser(logits + 5.0).item() == pytest.approx(0.0240944372, abs=1e-9)


def test_mean_entropy_regulariser_is_zero_for_a_uniform_mean():
    # Three confident rows, cyclic permutations of one another: each is far from uniform, the mean is uniform.
    logits = t([[3.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 3.0]])
    assert losses.mean_entropy_regulariser(logits).item() == pytest.approx(0.0, abs=1e-12)
    assert losses.mean_entropy_regulariser(torch.zeros(4, 5)).item() == pytest.approx(0.0, abs=1e-7)


def test_mean_entropy_regulariser_is_maximal_for_a_collapse():
    # Every row certain of class 0: H(mean p) -> 0, so the term -> ln C / 2 (C = 4: ln 4 / 2 = 0.693147).
    logits = t([[60.0, 0.0, 0.0, 0.0]] * 3)
    assert losses.mean_entropy_regulariser(logits).item() == pytest.approx(0.6931471806, abs=1e-6)


# --------------------------------------------------------------------------------------------
# self_distillation

# Row 1: teacher [0.1, 0, 0] / 0.1 = [1, 0, 0] -> q = [e, 1, 1] / (e + 2) = [0.576117, 0.211942, 0.211942]
#        student [ln 0.5, ln 0.25, ln 0.25] -> log p = [-0.693147, -1.386294, -1.386294]
#        H(q, p) = 0.576117 * 0.693147 + 2 * 0.211942 * 1.386294 = 0.399334 + 0.587627 = 0.986961
# Row 2: teacher and student all zero -> q uniform, H(q, p) = ln 3 = 1.098612
TEACHER = [[0.1, 0.0, 0.0], [0.0, 0.0, 0.0]]
STUDENT = [[LN(0.5), LN(0.25), LN(0.25)], [0.0, 0.0, 0.0]]
ROW1 = 0.9869605667714774


def test_self_distillation_matches_hand_computed_value():
    loss, teacher = losses.self_distillation(t(TEACHER), t(STUDENT), teacher_temp=0.1, student_temp=1.0)
    # Mean over rows: (0.986961 + 1.098612) / 2 = 1.042786
    assert loss.item() == pytest.approx(1.0427864277, abs=1e-9)
    e = math.e
    expected_q = t([[e / (e + 2), 1 / (e + 2), 1 / (e + 2)], [1 / 3, 1 / 3, 1 / 3]])
    assert torch.allclose(teacher, expected_q, atol=1e-12)


def test_self_distillation_weights_scale_rows_before_the_mean():
    # weights [1, 0]: (1 * 0.986961 + 0 * 1.098612) / 2 = 0.493480 (the mean still counts both rows)
    loss, _ = losses.self_distillation(t(TEACHER), t(STUDENT), 0.1, 1.0, weights=t([1.0, 0.0]))
    assert loss.item() == pytest.approx(ROW1 / 2, abs=1e-9)
    # weights [0.5, 2]: (0.5 * 0.986961 + 2 * 1.098612) / 2 = 1.345352
    loss, _ = losses.self_distillation(t(TEACHER), t(STUDENT), 0.1, 1.0, weights=t([0.5, 2.0]))
    assert loss.item() == pytest.approx(1.3453524304, abs=1e-9)


def test_self_distillation_student_temperature():
    # Student temperature 2 on all-zero logits is still uniform: row 2 unchanged (ln 3);
    # row 1: student [ln 0.5, ln 0.25, ln 0.25] / 2 -> p proportional to [sqrt 0.5, 0.5, 0.5]
    #   = [0.707107, 0.5, 0.5] / 1.707107 = [0.414214, 0.292893, 0.292893]
    #   H(q, p) = 0.576117 * 0.881374 + 2 * 0.211942 * 1.227947 = 0.507774 + 0.520507 = 1.028281
    loss, _ = losses.self_distillation(t(TEACHER), t(STUDENT), 0.1, 2.0)
    row1 = -((math.e / (math.e + 2)) * LN(0.41421356237) + 2 * (1 / (math.e + 2)) * LN(0.29289321881))  # = 1.028281
    assert row1 == pytest.approx(1.028281, abs=1e-6)
    assert loss.item() == pytest.approx((row1 + LOG3) / 2, abs=1e-9)


def test_self_distillation_teacher_gets_no_gradient():
    zw = t(TEACHER).requires_grad_(True)
    zs = t(STUDENT).requires_grad_(True)
    weights = t([1.0, 0.5]).requires_grad_(True)
    loss, teacher = losses.self_distillation(zw, zs, 0.1, 1.0, weights=weights)
    assert not teacher.requires_grad
    # Give zw a path to the output that carries zero gradient, so zw.grad is materialised.
    (loss + 0.0 * zw.sum()).backward()
    assert zw.grad is not None and torch.count_nonzero(zw.grad) == 0
    assert weights.grad is None
    assert zs.grad is not None and torch.count_nonzero(zs.grad) > 0
    # Student gradient: w_i / N * (p - q) per row, with N = 2 rows.
    p = torch.softmax(t(STUDENT), dim=1)
    q = torch.softmax(t(TEACHER) / 0.1, dim=1)
    expected = t([[1.0], [0.5]]) / 2 * (p - q)
    assert torch.allclose(zs.grad, expected, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Baseline.step_loss

# weak rows:   [2, 1, 0], [0.1, 0, 0], [0, 0, 0]        targets: 0, -1 (unlabelled), 2
# strong rows: [2, 1, 0], [ln .5, ln .25, ln .25], [0, 0, 0]
#
# CE over the labelled rows of both views (weak 0, weak 2, strong 0, strong 2):
#   (0.407606 + 1.098612 + 0.407606 + 1.098612) / 4 = 0.753109
# Regulariser over all six rows' softmax:
#   [0.665241, 0.244728, 0.090031], [0.355913, 0.322043, 0.322043], [1/3, 1/3, 1/3],
#   [0.665241, 0.244728, 0.090031], [0.5, 0.25, 0.25], [1/3, 1/3, 1/3]
#   mean p = [0.475510, 0.288028, 0.236462], H = 1.052957, (ln 3 - H) / 2 = 0.022828
# Distillation (teacher weak / 0.1, student strong / 1), per row:
#   row 0: q = softmax([20, 10, 0]) = [0.9999546, 0.0000454, 0.0000000], log p = [-0.407606, -1.407606, -2.407606]
#          H = 0.407651
#   row 1: 0.986961 (as above), row 2: ln 3 = 1.098612; mean = 0.831075
# Total = 0.753109 + 1 * 0.022828 + 0.2 * 0.831075 = 0.942152
WEAK = [[2.0, 1.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 0.0]]
STRONG = [[2.0, 1.0, 0.0], [LN(0.5), LN(0.25), LN(0.25)], [0.0, 0.0, 0.0]]
CE, REG, DISTILL, TOTAL = 0.7531091266, 0.0228277491, 0.8310747406, 0.9421518238


def step(weak=WEAK, strong=STRONG, targets=(0, -1, 2), requires_grad=False) -> StepInput:
    lw, ls = t(weak).requires_grad_(requires_grad), t(strong).requires_grad_(requires_grad)
    return StepInput(
        logits_weak=lw,
        logits_strong=ls,
        features_weak=torch.zeros(len(weak), 4, dtype=torch.float64),
        features_strong=torch.zeros(len(weak), 4, dtype=torch.float64),
        targets=torch.tensor(targets),
        epoch=0,
        num_epochs=1,
        num_known=2,
    )


def test_baseline_step_loss_matches_hand_computed_terms():
    method = Baseline()
    total, terms = method.step_loss(step())
    assert terms["ce"] == pytest.approx(CE, abs=1e-9)
    assert terms["entropy_reg"] == pytest.approx(REG, abs=1e-9)
    assert terms["distill"] == pytest.approx(DISTILL, abs=1e-9)
    assert total.item() == pytest.approx(TOTAL, abs=1e-9)
    assert total.item() == pytest.approx(terms["ce"] + 1.0 * terms["entropy_reg"] + 0.2 * terms["distill"], abs=1e-12)


def test_baseline_weights_from_params():
    params = {
        "method": "baseline",
        "entropy_weight": 2.0,
        "distill_weight": 0.5,
        "teacher_temp": 0.1,
        "student_temp": 1.0,
    }
    method = build_method("baseline", Section({"baseline": params}, "methods"))
    total, _ = method.step_loss(step())
    assert total.item() == pytest.approx(CE + 2.0 * REG + 0.5 * DISTILL, abs=1e-9)


def test_unlabelled_rows_never_enter_the_ce():
    base_total, base_terms = Baseline().step_loss(step())
    # Changing the unlabelled row's logits changes the other terms, never the CE.
    weak = [WEAK[0], [9.0, -3.0, 4.0], WEAK[2]]
    strong = [STRONG[0], [-5.0, 7.0, 0.0], STRONG[2]]
    total, terms = Baseline().step_loss(step(weak, strong))
    assert terms["ce"] == pytest.approx(base_terms["ce"], abs=1e-12)
    assert terms["distill"] != pytest.approx(base_terms["distill"], abs=1e-3)
    assert total.item() != pytest.approx(base_total.item(), abs=1e-3)
    # The CE's gradient is zero on the unlabelled row of both views.
    s = step(requires_grad=True)
    ce = Supervised().step_loss(s)[0]
    ce.backward()
    assert ce.item() == pytest.approx(CE, abs=1e-9)
    assert torch.count_nonzero(s.logits_weak.grad[1]) == 0
    assert torch.count_nonzero(s.logits_strong.grad[1]) == 0
    assert torch.count_nonzero(s.logits_weak.grad[0]) > 0


def test_all_unlabelled_batch_has_zero_ce():
    total, terms = Baseline().step_loss(step(targets=(-1, -1, -1)))
    assert terms["ce"] == 0.0
    assert total.item() == pytest.approx(REG + 0.2 * DISTILL, abs=1e-9)


def test_baseline_teacher_view_gets_gradient_only_from_ce_and_regulariser():
    # With entropy_weight = 0 and no labelled row, only distillation remains: no gradient to the weak view.
    method = Baseline(entropy_weight=0.0)
    s = step(targets=(-1, -1, -1), requires_grad=True)
    total, _ = method.step_loss(s)
    total.backward()
    assert s.logits_weak.grad is None or torch.count_nonzero(s.logits_weak.grad) == 0
    assert torch.count_nonzero(s.logits_strong.grad) > 0
