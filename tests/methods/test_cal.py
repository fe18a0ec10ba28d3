"""CAL's losses (spec 3.1-3.5, 10.1-10.3) on hand-computed values, its DPP hooks and a smoke run."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.tiny_run import tiny_data
from torch import nn

from owdfa.core.config import Section
from owdfa.core.errors import ConfigError
from owdfa.methods.base import StepInput
from owdfa.methods.cal import CAL, acr_loss, ccr_loss


def _cal(**overrides) -> CAL:
    params = dict(ffe=False, dpp=False)
    params.update(overrides)
    return CAL(**params)


def _row(conf: float, cls: int, width: int) -> list[float]:
    """Logits whose softmax has max `conf` at `cls` and (1 - conf)/(width - 1) elsewhere."""
    top, rest = (math.log(conf), math.log((1.0 - conf) / (width - 1))) if conf < 1.0 else (0.0, -100.0)
    return [top if i == cls else rest for i in range(width)]


def _step(weak, strong=None, targets=None, epoch=0, num_epochs=10, num_known=1) -> StepInput:
    zw = torch.tensor(weak, dtype=torch.float32)
    zs = zw.clone() if strong is None else torch.tensor(strong, dtype=torch.float32)
    t = torch.full((zw.shape[0],), -1, dtype=torch.long) if targets is None else torch.tensor(targets)
    feats = torch.zeros(zw.shape[0], 2)
    return StepInput(zw, zs, feats, feats, t, epoch, num_epochs, num_known)


# --------------------------------------------------------------------------------------------
# CCR


def test_ccr_values_and_weights_at_two_epochs():
    # teacher softmax(zw / 0.1): row 0 [0, 0] -> q = [1/2, 1/2], rho = 0.5;
    # row 1 [0.1 ln 3, 0] -> q = [3/4, 1/4], rho = 0.75.
    zw = torch.tensor([[0.0, 0.0], [0.1 * math.log(3), 0.0]])
    # student softmax(zs): row 0 uniform -> H(q, p) = ln 2; row 1 = q -> H = H(3/4, 1/4) = 0.562335
    zs = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]])
    h1 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    # epoch 0 of 4: lambda = 1/4; w0 = 0.75*0.5 + 0.25*0.5 = 0.5; w1 = 0.75*0.75 + 0.25*0.25 = 0.625
    loss, w = ccr_loss(zw, zs, 0, 4, 0.1, 1.0)
    assert w.tolist() == pytest.approx([0.5, 0.625], abs=1e-6)
    assert float(loss) == pytest.approx((0.5 * math.log(2) + 0.625 * h1) / 2, abs=1e-6)  # 0.348984
    # epoch 2 of 4: lambda = 3/4; w0 = 0.5; w1 = 0.25*0.75 + 0.75*0.25 = 0.375
    loss, w = ccr_loss(zw, zs, 2, 4, 0.1, 1.0)
    assert w.tolist() == pytest.approx([0.5, 0.375], abs=1e-6)
    assert float(loss) == pytest.approx((0.5 * math.log(2) + 0.375 * h1) / 2, abs=1e-6)  # 0.278729


def test_ccr_teacher_gets_no_gradient():
    zw = torch.randn(4, 3, requires_grad=True)
    zs = torch.randn(4, 3, requires_grad=True)
    loss, _ = ccr_loss(zw, zs, 1, 5, 0.1, 1.0)
    loss.backward()
    assert zw.grad is None
    assert zs.grad is not None and float(zs.grad.abs().sum()) > 0


# --------------------------------------------------------------------------------------------
# ACR thresholds


def test_thresholds_from_statistics_include_labelled_and_need_agreement():
    m = _cal()
    width = 3
    weak = [_row(0.8, 0, width), _row(0.8, 0, width), _row(0.6, 1, width), _row(0.9, 2, width)]
    strong = [_row(0.8, 0, width), _row(0.8, 0, width), _row(0.6, 1, width), _row(0.9, 0, width)]
    # row 1 is labelled (still counted), row 3 disagrees between views (not counted):
    # mean known 0.8, mean novel 0.6 -> tau = 0.9 * 0.75 = 0.675
    m.on_epoch_start(0)
    m.step_loss(_step(weak, strong, targets=[-1, 0, -1, -1]))
    assert m.tau_novel == 0.0  # initial value until the first epoch end
    m.on_epoch_end(None, None, 0)
    assert m.tau_novel == pytest.approx(0.675, abs=1e-6)
    # an epoch with no predicted-novel agreeing row keeps the previous value
    m.on_epoch_start(1)
    m.step_loss(_step([_row(0.7, 0, width)]))
    m.on_epoch_end(None, None, 1)
    assert m.tau_novel == pytest.approx(0.675, abs=1e-6)


def _tau_after(known_conf: float, novel_conf: float, width: int, **overrides) -> CAL:
    m = _cal(**overrides)
    m.on_epoch_start(0)
    m.step_loss(_step([_row(known_conf, 0, width), _row(novel_conf, 1, width)]))
    m.on_epoch_end(None, None, 0)
    return m


def test_threshold_ratio_is_clamped():
    # 0.09 / 0.99 = 0.0909 -> clamped to 0.1 -> tau 0.09
    assert _tau_after(0.99, 0.09, 20).tau_novel == pytest.approx(0.09, abs=1e-6)
    # 0.6 / 0.05 = 12 -> clamped to 10 -> tau 9.0
    assert _tau_after(0.05, 0.6, 30).tau_novel == pytest.approx(9.0, abs=1e-5)


def test_uncapped_threshold_above_one_disables_novel_pseudo_labels():
    # 0.6 / 0.5 = 1.2 -> tau 1.08: even a certain (p = 1.0) novel prediction is refused
    m = _tau_after(0.5, 0.6, 3, acr_start_epoch=0)
    assert m.tau_novel == pytest.approx(1.08, abs=1e-6)
    _, terms = m.step_loss(_step([_row(1.0, 1, 3)], epoch=1))
    assert terms["acr_kept_fraction"] == 0.0 and terms["acr"] == 0.0
    capped = _tau_after(0.5, 0.6, 3, acr_start_epoch=0, cap_novel_threshold=True)
    assert capped.tau_novel == 1.0
    _, terms = capped.step_loss(_step([_row(1.0, 1, 3)], epoch=1))
    assert terms["acr_kept_fraction"] == 1.0


def test_threshold_arithmetic_is_the_official_float64_around_a_float32_clamp():
    # Official: per-step float32 sums accumulated as Python floats, means and ratio in float64, the
    # ratio clamped as a float32 tensor, then gamma * ratio in float64.
    width = 3
    known, novel = _row(0.8, 0, width), _row(0.6, 1, width)
    m = _tau_after(0.8, 0.6, width)
    probs = torch.softmax(torch.tensor([known, novel]), dim=1).max(dim=1).values  # float32, as the official step
    ratio = float(probs[1]) / float(probs[0])
    expected = 0.9 * float(torch.clamp(torch.tensor(ratio, dtype=torch.float32), 0.1, 10.0))
    assert m.raw_tau_novel == expected  # exactly; a float32 product float32(0.9) * ratio is off in bit 24


def test_student_temperature_enters_ce_regulariser_and_acr_confidence_as_official():
    # student_temp 2: row 0 labelled (class 0) with logits [2 ln 3, 0] -> softmax(z/2) = [3/4, 1/4];
    # rows 1, 2 unlabelled [2 ln 4, 0] -> [4/5, 1/5] and [2 ln 19, 0] -> [19/20, 1/20] (at T = 1: 16/17 and
    # 361/362). CE = -ln(3/4) (both views). R = (ln 2 - H(pbar)) / 2 with pbar = [5/6, 1/6].
    # ACR (known threshold 0.9, one known class): row 1 has 0.8 < 0.9 at T = 2 (refused, although 16/17 >= 0.9
    # at T = 1), row 2 has 0.95 (kept); its CE is on the raw logits: -ln(361/362).
    m = _cal(student_temp=2.0, ccr=False, acr_start_epoch=0)
    weak = [[2 * math.log(3), 0.0], [2 * math.log(4), 0.0], [2 * math.log(19), 0.0]]
    total, terms = m.step_loss(_step(weak, targets=[0, -1, -1], num_known=1))
    pbar = [5 / 6, 1 / 6]
    entropy = -sum(p * math.log(p) for p in pbar)
    assert terms["ce"] == pytest.approx(-math.log(3 / 4), abs=1e-6)
    assert terms["entropy_reg"] == pytest.approx((math.log(2) - entropy) / 2, abs=1e-6)
    assert terms["acr_kept_fraction"] == 0.5
    assert terms["acr"] == pytest.approx(math.log(362 / 361), abs=1e-6)
    assert float(total) == pytest.approx(terms["ce"] + terms["entropy_reg"] + terms["acr"], abs=1e-6)


def test_initial_threshold_accepts_every_novel_prediction():
    m = _cal(acr_start_epoch=5)
    # epoch 5, no statistics yet: novel row p = 0.4 kept (>= 0.0); known row p = 0.85 < 0.9 refused
    _, terms = m.step_loss(_step([_row(0.4, 1, 3), _row(0.85, 0, 3)], epoch=5))
    assert terms["acr_kept_fraction"] == 0.5
    assert terms["acr"] == pytest.approx(-math.log(0.4), abs=1e-6)  # 0.916291


def test_acr_loss_uses_ge_and_mean_over_kept():
    logits = torch.tensor([_row(0.95, 0, 3), _row(0.8, 2, 3), _row(0.5, 1, 3), _row(0.89, 0, 3)])
    unlabelled = torch.tensor([True, True, True, True])
    # novel row 1 has p = float32(0.8) exactly, equal to the threshold: kept only because of >=
    assert float(torch.softmax(logits[1], 0).max()) == float(torch.tensor(0.8))
    loss, keep = acr_loss(logits, unlabelled, 1, 0.9, 0.8)
    # kept: known 0.95 >= 0.9, novel 0.8 >= 0.8; refused: novel 0.5 < 0.8, known 0.89 < 0.9
    assert keep.tolist() == [True, True, False, False]
    assert float(loss) == pytest.approx(-(math.log(0.95) + math.log(0.8)) / 2, abs=1e-6)  # 0.137218
    none, keep = acr_loss(logits, torch.zeros(4, dtype=torch.bool), 1, 0.9, 0.0)
    assert float(none) == 0.0 and not keep.any()


def test_fixed_gamma_when_not_asymmetric():
    m = _tau_after(0.8, 0.6, 3, asymmetric=False, acr_start_epoch=0)
    assert m.tau_novel == 0.9  # the statistics (ratio 0.75) are ignored
    _, terms = m.step_loss(_step([_row(0.85, 1, 3), _row(0.95, 2, 3)], epoch=1))
    assert terms["acr_kept_fraction"] == 0.5


def test_acr_off_before_start_epoch_and_labelled_never_pseudo_labelled():
    m = _cal(acr_start_epoch=5)
    weak = [_row(0.99, 1, 3), _row(0.99, 0, 3)]
    _, terms = m.step_loss(_step(weak, epoch=4))
    assert terms["acr"] == 0.0 and terms["acr_kept_fraction"] == 0.0
    _, terms = m.step_loss(_step(weak, epoch=5))
    assert terms["acr_kept_fraction"] == 1.0
    assert terms["acr"] == pytest.approx(-math.log(0.99), abs=1e-6)
    # row 0 labelled (target 0, predicted 1 with p = 0.99): never pseudo-labelled
    _, terms = m.step_loss(_step(weak, targets=[0, -1], epoch=5))
    assert terms["acr_kept_fraction"] == 1.0  # 1 of 1 unlabelled rows
    assert terms["acr"] == pytest.approx(-math.log(0.99), abs=1e-6)


# --------------------------------------------------------------------------------------------
# the total


def test_ce_regulariser_and_ccr_on_uniform_logits():
    m = _cal(acr=False)
    zeros = [[0.0] * 4] * 2
    total, terms = m.step_loss(_step(zeros, targets=[2, -1], epoch=0, num_epochs=1))
    # CE = ln 4 on both views of row 0; regulariser 0 (uniform mean); CCR: rho = 1/4, lambda = 1 ->
    # weight 3/4, H(uniform, uniform) = ln 4 -> 0.75 ln 4; total = ln 4 + 0.2 * 0.75 ln 4 = 1.594238
    assert terms["ce"] == pytest.approx(math.log(4), abs=1e-6)
    assert terms["entropy_reg"] == pytest.approx(0.0, abs=1e-6)
    assert terms["ccr"] == pytest.approx(0.75 * math.log(4), abs=1e-6)
    assert float(total) == pytest.approx(1.15 * math.log(4), abs=1e-6)


def test_total_is_the_weighted_sum_and_switches():
    gen = torch.Generator().manual_seed(0)
    weak = (torch.randn(6, 5, generator=gen) * 3).tolist()
    strong = (torch.randn(6, 5, generator=gen) * 3).tolist()
    targets = [0, -1, 1, -1, -1, -1]
    m = _cal(entropy_weight=0.5, ccr_weight=0.3, acr_start_epoch=0)
    total, t = m.step_loss(_step(weak, strong, targets, epoch=2, num_known=2))
    assert t["ccr"] > 0 and t["acr"] > 0
    assert float(total) == pytest.approx(t["ce"] + 0.5 * t["entropy_reg"] + t["acr"] + 0.3 * t["ccr"], abs=1e-5)
    total, t2 = _cal(ccr=False, acr_start_epoch=0).step_loss(_step(weak, strong, targets, epoch=2, num_known=2))
    assert t2["ccr"] == 0.0
    assert float(total) == pytest.approx(t2["ce"] + t2["entropy_reg"] + t2["acr"], abs=1e-5)
    total, t3 = _cal(acr=False, acr_start_epoch=0).step_loss(_step(weak, strong, targets, epoch=2, num_known=2))
    assert t3["acr"] == 0.0 and t3["acr_kept_fraction"] == 0.0
    assert float(total) == pytest.approx(t3["ce"] + t3["entropy_reg"] + 0.2 * t3["ccr"], abs=1e-5)


# --------------------------------------------------------------------------------------------
# configuration and DPP hooks

PARAMS = dict(
    method="cal", entropy_weight=1.0, ccr=True, ccr_weight=0.2, teacher_temp=0.1, student_temp=1.0, acr=True,
    acr_start_epoch=5, known_threshold=0.9, asymmetric=True, cap_novel_threshold=False, ffe=False, dpp=True,
    dpp_initial_factor=10, dpp_coverage=0.9544, dpp_faithful=True,
)  # fmt: skip


def test_from_section_and_validation():
    m = CAL.from_section(Section(PARAMS, "methods.cal"))
    assert m.dpp and m.num_prototypes(3, 5) == 30 and m.model_options() == {"ffe": False}
    assert _cal().num_prototypes(3, 5) == 5
    with pytest.raises(ConfigError, match="known_threshold"):
        CAL.from_section(Section({**PARAMS, "known_threshold": 1.5}, "m"))
    with pytest.raises(ConfigError, match="dpp_coverage"):
        CAL.from_section(Section({k: v for k, v in PARAMS.items() if k != "dpp_coverage"}, "m"))


class _Classifier(nn.Module):
    def __init__(self, rows: int, dim: int = 2) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(rows, dim, generator=torch.Generator().manual_seed(1)))
        self.register_buffer("num_active", torch.tensor(rows, dtype=torch.long))


@pytest.mark.parametrize("faithful", [True, False])
def test_dpp_hooks_count_usage_and_prune(faithful):
    m = _cal(dpp=True, dpp_faithful=faithful, dpp_initial_factor=6)
    model = _Classifier(6)
    model.num_active.fill_(5)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    # top-1 usage per active row: known 50, novel [30, 1, 40, 2] -> keep 3 novel (see test_dpp) -> K = 4
    rows = [c for c, n in enumerate([50, 30, 1, 40, 2]) for _ in range(n)]
    weak = [[5.0 if i == c else 0.0 for i in range(5)] for c in rows]
    m.on_epoch_start(0)
    m.step_loss(_step(weak[:60]))
    m.step_loss(_step(weak[60:]))
    record = m.on_epoch_end(model, optimizer, 0)
    assert record["k_hat"] == 4 and int(model.num_active) == 4
    # next epoch: usage restarts over the 4 active rows; all on the known row keeps everything
    m.on_epoch_start(1)
    m.step_loss(_step([[5.0, 0.0, 0.0, 0.0]] * 3))
    assert m.on_epoch_end(model, optimizer, 1)["k_hat"] == 4
    assert m.state()["k_trajectory"] == [4, 4] and m.state()["dpp_faithful"] == faithful
    assert int(model.num_active) == 4  # saved pruned in both modes; evaluate adds faithful's all-rows classifier


# --------------------------------------------------------------------------------------------
# end to end


@pytest.mark.parametrize(("dpp", "ffe"), [(False, False), (True, False), (True, True)])
def test_run_training_smoke(dpp, ffe):
    from owdfa.train.config import TrainConfig
    from owdfa.train.loop import run_training

    config = TrainConfig(backbone="test_resnet", epochs=2, batch_size=8, eval_batch_size=8, device="cpu")
    method = _cal(dpp=dpp, ffe=ffe, acr_start_epoch=1, dpp_faithful=False)
    result = run_training(config, tiny_data(16), method, seed=0)
    record = result.history[-1]
    for key in ("ce", "entropy_reg", "ccr", "acr", "loss"):
        assert math.isfinite(record[f"train/{key}"])
    assert result.model.options["ffe"] == ffe
    if dpp:
        k = [r["method/k_hat"] for r in result.history]
        assert 3 < k[-1] <= k[0] <= 30 and int(result.model.num_active) == k[-1]
    else:
        assert int(result.model.num_active) == 5
