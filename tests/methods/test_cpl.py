"""Value tests for the CPL objective (owdfa.methods.cpl) on hand-built batches.

Every expected number is derived by hand in the comments (natural logs throughout).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from owdfa.core.config import Section
from owdfa.methods import StepInput
from owdfa.methods import cpl as C
from owdfa.methods.cpl import CPL

LN3 = math.log(3.0)
LN4 = math.log(4.0)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def patches_at(angles_deg: list[float], num_patches: int = 9) -> torch.Tensor:
    """B x P x 2: every patch of row a is the unit vector at angle a (so all patch norms are 1)."""
    rad = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180.0
    unit = torch.stack([torch.cos(rad), torch.sin(rad)], dim=1)
    return unit[:, None, :].expand(-1, num_patches, -1).clone()


# The 4-row GLV batch: rows 0, 1 labelled class 0; rows 2, 3 unlabelled.
# Probabilities: p0 = softmax([ln3, 0]) = [.75, .25]; p1 = [.5, .5]; p2 = [.25, .75]; p3 = [.8, .2].
LOGITS = [[LN3, 0.0], [0.0, 0.0], [0.0, LN3], [LN4, 0.0]]
TARGETS = [0, 0, -1, -1]
# Global features: cos(2, 0) = 1/sqrt(1.01) = .995 beats cos(2, 3) = .198 and cos(2, 1) = .0995, so
# n(2) = 0; symmetrically n(3) = 1.
FEATURES = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]]
# Local features: 9 equal unit patches per row, so w_a = (1/3, ..., 1/3) and S(a, b) = 3 cos(angle_a - angle_b).
# Angles 0, 60, 0, 180 degrees give the off-diagonal S:
#   S(0,1)=1.5  S(0,2)=3    S(0,3)=-3
#   S(1,0)=1.5  S(1,2)=1.5  S(1,3)=-1.5
#   S(2,0)=3    S(2,1)=1.5  S(2,3)=-3
#   S(3,0)=-3   S(3,1)=-1.5 S(3,2)=-3
# Row 2: best own score 3 >= best score towards n(2)=0, max(S(1,0), S(2,0), S(3,0)) = 3 -> pass, pair (2, 0).
# Row 3: best own score -1.5 < best score towards n(3)=1, max(1.5, 1.5, -1.5) = 1.5 -> fail, pair (3, 3).
ANGLES = [0.0, 60.0, 0.0, 180.0]
# Pairs: 0<->1 (the only other labelled row of class 0), 1<->0, 2->0, 3->3.
# <p0,p1> = .5, <p1,p0> = .5, <p2,p0> = .25*.75 + .75*.25 = .375, <p3,p3> = .64 + .04 = .68
# GLV = -(ln .5 + ln .5 + ln .375 + ln .68) / 4 = (.693147*2 + .980829 + .385662) / 4 = .688197
GLV = 0.6881965237359005
# Margin CE on rows 0, 1 (boost .2, target 0): log(1 + e^-.2 / 3) = .241306, log(1 + e^-.2) = .598139
CE = 0.4197223422640185


def step(logits=LOGITS, targets=TARGETS, features=FEATURES, angles=ANGLES, requires_grad=False) -> StepInput:
    z = t(logits).requires_grad_(requires_grad)
    return StepInput(
        logits_weak=z,
        logits_strong=None,
        features_weak=t(features),
        features_strong=None,
        targets=torch.tensor(targets),
        epoch=0,
        num_epochs=1,
        num_known=1,
        patches_weak=patches_at(angles),
    )


# --------------------------------------------------------------------------------------------
# margin CE


def test_margin_ce_is_ce_with_boosted_target_logit():
    # [2, 1, 0] target 0 -> [2.2, 1, 0]: log(1 + e^-1.2 + e^-2.2) = log(1 + .301194 + .110803) = .345005
    # [0, 0, 0] target 2 -> [0, 0, .2]: log(2 + e^.2) - .2 = log(3.221403) - .2 = .969817
    # Mean .657411 (the plain CE of these rows is .753109: the negative margin makes CE easier).
    logits = t([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    targets = torch.tensor([0, 2])
    assert C.margin_ce(logits, targets, 0.2).item() == pytest.approx(0.6574110902654052, abs=1e-9)
    shifted = logits + 0.2 * F.one_hot(targets, 3).double()
    assert C.margin_ce(logits, targets, 0.2).item() == pytest.approx(
        F.cross_entropy(shifted, targets).item(), abs=1e-12
    )
    assert C.margin_ce(logits, targets, 0.0).item() == pytest.approx(0.7531091266, abs=1e-9)
    assert C.margin_ce(logits[:0], targets[:0], 0.2).item() == 0.0


# --------------------------------------------------------------------------------------------
# GLV


def test_local_similarity_is_weighted_by_own_patch_norms():
    # a: patches (3,0), (0,4) -> norms (3,4) -> w_a = (.6, .8); b: patches (1,0), (1,0) -> w_b = (1/sqrt2, 1/sqrt2).
    # Per-patch cosines between a and b: patch 0 -> 1, patch 1 -> 0.
    # S(a,b) = .6*1 + .8*0 = .6; S(b,a) = .7071*1 + .7071*0 = .7071; S(a,a) = 1.4; S(b,b) = sqrt2.
    patches = t([[[3.0, 0.0], [0.0, 4.0]], [[1.0, 0.0], [1.0, 0.0]]])
    s = C.local_similarity(patches)
    expected = t([[1.4, 0.6], [1 / math.sqrt(2), math.sqrt(2)]])
    assert torch.allclose(s, expected, atol=1e-12)


def test_votes_on_hand_built_batch():
    nearest, passed = C.unlabelled_votes(t(FEATURES), patches_at(ANGLES))
    assert nearest[2:].tolist() == [0, 1]
    assert passed[2:].tolist() == [True, False]


def test_glv_on_hand_built_batch_one_vote_passes_one_fails():
    total, terms = CPL().step_loss(step())
    assert terms["glv"] == pytest.approx(GLV, abs=1e-9)
    assert terms["vote_pass_rate"] == pytest.approx(0.5)
    assert terms["ce"] == pytest.approx(CE, abs=1e-9)
    # Direct form: partners (1, 0, 0, 3).
    probs = F.softmax(t(LOGITS), dim=1)
    assert C.glv_loss(probs, torch.tensor([1, 0, 0, 3])).item() == pytest.approx(GLV, abs=1e-9)


def test_glv_gradient_flows_through_both_sides_of_the_pair():
    # Row 2 pairs with row 0: with both sides live, row 0's logits get gradient from row 2's pair
    # too, so it differs from the gradient with p_partner detached.
    z = t(LOGITS).requires_grad_(True)
    partners = torch.tensor([1, 0, 0, 3])
    C.glv_loss(F.softmax(z, dim=1), partners).backward()
    both = z.grad.clone()
    z.grad = None
    p = F.softmax(z, dim=1)
    (-torch.log((p * p[partners].detach()).sum(dim=1)).mean()).backward()
    assert not torch.allclose(both[0], z.grad[0])
    assert torch.allclose(both[2], z.grad[2])  # row 2 is nobody's partner: same gradient


def test_glv_forward_is_bce_with_the_log_clamped_at_minus_100():
    # Official GLV = nn.BCELoss(<p_i, p_j>, 1) = -mean_i max(log <p_i, p_j>, -100).
    # p0 = [1, 0], p1 = [1e-50, 1 - 1e-50] (= [1e-50, 1] in float64), pairs 0<->1: both agreements 1e-50,
    # log 1e-50 = -115.1 -> clamped to -100 -> loss 100 (a clamp of the probability at 1e-7 gave 16.1).
    probs = t([[1.0, 0.0], [1e-50, 1.0]])
    assert C.glv_loss(probs, torch.tensor([1, 0])).item() == pytest.approx(100.0, abs=1e-9)
    # Agreements .5 and .25: (ln 2 + ln 4) / 2 = 1.039721 (no clamp in the usual range).
    probs = t([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]])
    assert C.glv_loss(probs, torch.tensor([1, 0, 0])).item() == pytest.approx(
        (math.log(2) + math.log(2) + math.log(2)) / 3, abs=1e-12
    )


@pytest.mark.parametrize(
    ("agreement", "expected_grad"),
    [
        # BCE's gradient w.r.t. its input x (target 1, mean over N = 2 rows): (x - 1) / max(x (1 - x), 1e-12) / 2.
        # Rows 0 and 1 pair with each other, both agreements are x = <p0, p1>, and dx/dp0 = p1 for both, so
        # dL/dp0 = 2 * (x - 1) / max(x (1 - x), 1e-12) / 2 * p1.
        # x = 1e-9: x (1 - x) > 1e-12, so dL/dp0 = -p1 / x = [-1, -(1e9 - 1)] (the log's own gradient).
        (1e-9, [-1.0, -(1e9 - 1.0)]),
        # x = 1e-13: x (1 - x) < 1e-12, BCE divides by 1e-12: dL/dp0 = -(1 - x) / 1e-12 * [x, 1 - x]
        #          = [-(1 - 1e-13) * .1, -(1 - 1e-13)^2 * 1e12] (ten times smaller than -p1 / x).
        (1e-13, [-(1 - 1e-13) * 0.1, -((1 - 1e-13) ** 2) * 1e12]),
    ],
)
def test_glv_gradient_at_tiny_agreement_is_bces(agreement, expected_grad):
    p0 = t([1.0, 0.0]).requires_grad_(True)
    p1 = t([agreement, 1.0 - agreement])
    C.glv_loss(torch.stack([p0, p1]), torch.tensor([1, 0])).backward()
    # rel 1e-8: PyTorch holds the 1e-12 as a float32 constant (9.99999996e-13, 4e-9 relative).
    assert p0.grad.tolist() == pytest.approx(expected_grad, rel=1e-8)
    # The same as the official nn.BCELoss on the agreements, computed here directly.
    q0 = t([1.0, 0.0]).requires_grad_(True)
    x = torch.stack([(q0 * p1).sum(), (p1 * q0).sum()])
    torch.nn.BCELoss()(x, torch.ones(2, dtype=torch.float64)).backward()
    assert torch.allclose(p0.grad, q0.grad, rtol=1e-12, atol=0.0)


def test_glv_tolerates_rounding_above_one():
    # <p, p> may round above 1 in float arithmetic; BCE rejects inputs > 1, GLV clamps them to 1 (loss 0).
    probs = t([[1.0 + 1e-12, 0.0]])
    loss = C.glv_loss(probs, torch.tensor([0]))
    assert loss.item() == 0.0


def test_labelled_partners_are_same_class_others_or_self():
    targets = torch.tensor([0, 0, 0, 1, -1])
    seen = set()
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        partners = C.labelled_partners(targets, gen)
        assert partners[0].item() in (1, 2)
        assert partners[3].item() == 3  # unique class: itself
        assert partners[4].item() == 4  # unlabelled: never a labelled candidate
        seen.add(partners[0].item())
    assert seen == {1, 2}


def test_glv_skipped_for_single_row_and_for_short_batch_when_full_batch_required():
    _, terms = CPL().step_loss(step(logits=LOGITS[:1], targets=TARGETS[:1], features=FEATURES[:1], angles=ANGLES[:1]))
    assert terms["glv"] == 0.0
    method = CPL()
    method.step_loss(step())  # first batch fixes the configured size (4)
    _, short = method.step_loss(step(logits=LOGITS[:3], targets=TARGETS[:3], features=FEATURES[:3], angles=ANGLES[:3]))
    assert short["glv"] == 0.0 and short["csp"] == 0.0 and short["vote_pass_rate"] == 0.0
    lenient = CPL(require_full_batch=False)
    lenient.step_loss(step())
    _, short = lenient.step_loss(step(logits=LOGITS[:3], targets=TARGETS[:3], features=FEATURES[:3], angles=ANGLES[:3]))
    assert short["glv"] > 0.0


# --------------------------------------------------------------------------------------------
# CSP


def test_csp_values_and_the_confidence_gradient():
    # Row a: z = [ln3, 0] -> p = [.75, .25]; r = [1, 0] -> yhat 0, c = .75, H(r, p) = -ln .75 = .287682
    #   c * H = .215762
    # Row b: z = [0, 0] -> p = [.5, .5]; r = [.5, .5] -> yhat 0 (first max), c = .5, H = ln2 -> .346574
    # mask (1, 0): .215762 / 2 = .107881; mask (1, 1): (.215762 + .346574) / 2 = .281168
    z = t([[LN3, 0.0], [0.0, 0.0]])
    r = t([[1.0, 0.0], [0.5, 0.5]])
    assert C.csp_loss(z, r, torch.tensor([True, False]), False).item() == pytest.approx(0.10788077716941784, abs=1e-9)
    assert C.csp_loss(z, r, torch.tensor([True, True]), True).item() == pytest.approx(0.28116757230940415, abs=1e-9)
    # Gradient of row a, mask (1, 0), mean over 2 rows:
    #   detached c: c (p - r) / 2 = .75 * [-.25, .25] / 2 = [-.09375, .09375]
    #   live c adds H * dc/dz / 2 = .287682 * [.75*.25, -.75*.25] / 2 = [.026970, -.026970]
    #   -> [-.066780, .066780]: the extra term pushes the sampled class's probability down.
    grads = {}
    for detach in (True, False):
        zz = z.clone().requires_grad_(True)
        C.csp_loss(zz, r, torch.tensor([True, False]), detach).backward()
        grads[detach] = zz.grad
    assert grads[True][0].tolist() == pytest.approx([-0.09375, 0.09375], abs=1e-9)
    assert grads[False][0].tolist() == pytest.approx([-0.06677980570764554, 0.06677980570764554], abs=1e-9)
    assert grads[True][1].tolist() == [0.0, 0.0] and grads[False][1].tolist() == [0.0, 0.0]


def test_csp_detach_flag_same_value_different_gradient_in_step():
    torch.manual_seed(7)
    results = {}
    for detach in (True, False):
        s = step(requires_grad=True)
        total, terms = CPL(detach_confidence=detach).step_loss(s)
        total.backward()
        results[detach] = (terms["csp"], s.logits_weak.grad.clone())
    assert results[True][0] == pytest.approx(results[False][0], abs=1e-12)
    assert results[True][0] > 0.0  # row 2's vote passed, so CSP is live
    assert not torch.allclose(results[True][1][2], results[False][1][2])
    assert torch.allclose(results[True][1][3], results[False][1][3])  # row 3 failed its vote: masked out


def test_gumbel_soft_labels_are_softmax_of_logits_plus_gumbel_noise():
    z = t([[LN3, 0.0, 0.0], [0.0, 1.0, 2.0]])
    r = C.gumbel_soft_labels(z, torch.Generator().manual_seed(3))
    u = torch.rand(z.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.allclose(r, F.softmax(z - torch.log(-torch.log(u)), dim=1), atol=1e-12)
    assert torch.allclose(r.sum(dim=1), torch.ones(2, dtype=torch.float64))
    # argmax r is a sample of Cat(softmax(z)): row 0 -> class 0 with probability 3/5 = .6
    gen = torch.Generator().manual_seed(0)
    hits = sum(int(C.gumbel_soft_labels(z, gen)[0].argmax() == 0) for _ in range(4000))
    assert hits / 4000 == pytest.approx(0.6, abs=0.03)


# --------------------------------------------------------------------------------------------
# entropy and total


def test_batch_entropy_has_no_log_c_offset():
    # mean([.75, .25], [.25, .75]) = [.5, .5] -> ln 2; two equal one-hot rows -> 0
    assert C.batch_entropy(t([[0.75, 0.25], [0.25, 0.75]])).item() == pytest.approx(math.log(2.0), abs=1e-12)
    assert C.batch_entropy(t([[1.0, 0.0], [1.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-9)
    # Hand batch: mean p = ([.75,.25] + [.5,.5] + [.25,.75] + [.8,.2]) / 4 = [.575, .425]
    # H = -(.575 ln .575 + .425 ln .425) = .318206 + .363632 = .681838
    _, terms = CPL().step_loss(step())
    assert terms["batch_entropy"] == pytest.approx(-(0.575 * math.log(0.575) + 0.425 * math.log(0.425)), abs=1e-9)


def test_total_is_the_weighted_sum():
    method = CPL(margin_boost=0.2, glv_weight=0.3, csp_weight=0.7, entropy_weight=0.2)
    total, terms = method.step_loss(step())
    expected = terms["ce"] + 0.3 * terms["glv"] + 0.7 * terms["csp"] - 0.2 * terms["batch_entropy"]
    assert total.item() == pytest.approx(expected, abs=1e-12)
    assert terms["ce"] == pytest.approx(CE, abs=1e-9) and terms["glv"] == pytest.approx(GLV, abs=1e-9)


def test_from_section_reads_every_field():
    params = {
        "method": "cpl",
        "margin_boost": 0.2,
        "glv_weight": 0.5,
        "csp_weight": 0.5,
        "entropy_weight": 1.0,
        "detach_confidence": False,
        "require_full_batch": True,
    }
    method = CPL.from_section(Section(params, "methods.cpl"))
    assert method == CPL()
    assert method.model_options() == {"patch_features": True}
    assert CPL.uses_strong_view is False


# --------------------------------------------------------------------------------------------
# determinism and label hygiene


def test_same_seed_same_losses_and_global_rng_untouched():
    def run(seed: int) -> list[float]:
        torch.manual_seed(seed)
        method = CPL()
        before = torch.get_rng_state()
        out = [method.step_loss(step())[1]["csp"] for _ in range(3)]
        assert torch.equal(before, torch.get_rng_state())
        return out

    first, again, other = run(11), run(11), run(12)
    assert first == again
    assert len(set(first)) == 3  # the step counter changes the noise every step
    assert first != other


def test_unlabelled_targets_are_minus_one_and_never_read():
    # All unlabelled rows carry -1; CE must not index them (one_hot(-1) would raise) and every
    # term must stay finite, also for all-unlabelled and all-labelled batches.
    for targets in (TARGETS, [-1, -1, -1, -1], [0, 0, 1, 1]):
        total, terms = CPL().step_loss(step(targets=targets))
        assert math.isfinite(total.item()) and all(math.isfinite(v) for v in terms.values())
    # Unlabelled logits do not reach the CE.
    _, base = CPL().step_loss(step())
    _, moved = CPL().step_loss(step(logits=[LOGITS[0], LOGITS[1], [5.0, -5.0], [-3.0, 2.0]]))
    assert moved["ce"] == pytest.approx(base["ce"], abs=1e-12)


def test_missing_patch_features_is_an_error():
    s = step()
    s.patches_weak = None
    with pytest.raises(ValueError, match="patch"):
        CPL().step_loss(s)


# --------------------------------------------------------------------------------------------
# end to end


def test_run_training_smoke():
    from owdfa.train.config import TrainConfig, TrainData
    from owdfa.train.loop import run_training

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(16) % 5
    known = labels < 3
    rows = np.arange(16)
    data = TrainData(
        images=images,
        labelled_rows=rows[known][::2],
        labelled_targets=labels[known][::2],
        unlabelled_rows=np.setdiff1d(rows, rows[known][::2]),
        val_rows=rows[:4],
        val_targets=labels[:4],
        num_known=3,
        num_classes=5,
    )
    config = TrainConfig(backbone="test_resnet", epochs=1, batch_size=8, eval_batch_size=8, device="cpu")
    result = run_training(config, data, CPL(), seed=0)
    record = result.history[-1]
    for key in ("ce", "glv", "csp", "batch_entropy", "vote_pass_rate", "loss"):
        assert math.isfinite(record[f"train/{key}"])
    assert result.model.options["patch_features"]
