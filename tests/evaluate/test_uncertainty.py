"""Calibration on hand-computed cases, MC-dropout identities and determinism, occlusion uncertainty maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from owdfa.evaluate.calibration import expected_calibration_error, matched_correct, reliability_table
from owdfa.evaluate.uncertainty import (
    OCCLUSION_FILL,
    McDropout,
    Occlusion,
    mc_dropout_predict,
    occlusion_uncertainty_maps,
    uncertainty_summary,
)
from owdfa.models import AttributionModel

CPU = torch.device("cpu")
NUM_CLASSES = 4


def _images(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _model(dropout: float = 0.5, seed: int = 0) -> AttributionModel:
    """Tiny timm model with prototypes scaled up so the softmax is far from uniform."""
    torch.manual_seed(seed)
    model = AttributionModel("test_resnet", NUM_CLASSES, dropout=dropout)
    with torch.no_grad():
        model.prototypes.normal_(0.0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> AttributionModel:
    return _model()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return _images(6)


# --------------------------------------------------------------------------------------------------
# calibration


def test_ece_perfectly_calibrated_is_zero():
    # all in one bin at 0.75 with 3 of 4 correct; plus a bin at 0.25 with 1 of 4 correct
    conf = [0.75] * 4 + [0.25] * 4
    correct = [True, True, True, False, True, False, False, False]
    assert expected_calibration_error(conf, correct, bins=10) == pytest.approx(0.0, abs=1e-12)


def test_ece_overconfident_half_wrong_is_half():
    conf = np.ones(10)
    correct = np.arange(10) % 2 == 0
    assert expected_calibration_error(conf, correct) == pytest.approx(0.5)
    table = reliability_table(conf, correct)
    assert table["count"].iloc[-1] == 10  # 1.0 lands in the closed last bin


def test_ece_two_bins_by_hand():
    # bin [0, 0.5): conf 0.2, 0.4 -> mean 0.3, acc 1/2 -> gap 0.2, weight 2/5
    # bin [0.5, 1]: conf 0.5, 0.7, 0.9 -> mean 0.7, acc 1/3 -> gap 11/30, weight 3/5
    conf = [0.2, 0.4, 0.5, 0.7, 0.9]
    correct = [0, 1, 1, 0, 0]
    expected = 0.4 * 0.2 + 0.6 * (0.7 - 1 / 3)  # 0.08 + 0.22 = 0.30
    assert expected_calibration_error(conf, correct, bins=2) == pytest.approx(expected)
    table = reliability_table(conf, correct, bins=2)
    assert table["count"].tolist() == [2, 3]
    assert table["mean_confidence"].tolist() == pytest.approx([0.3, 0.7])
    assert table["accuracy"].tolist() == pytest.approx([0.5, 1 / 3])


def test_reliability_table_columns_and_empty_bins():
    conf = np.array([0.0, 0.05, 0.51, 1.0])
    table = reliability_table(conf, [1, 0, 1, 1], bins=4)
    assert list(table.columns) == ["bin_lower", "bin_upper", "count", "mean_confidence", "accuracy"]
    assert table["bin_lower"].tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert table["bin_upper"].tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert table["count"].tolist() == [2, 0, 1, 1]
    assert table["count"].sum() == conf.size
    assert math.isnan(table["mean_confidence"].iloc[1]) and math.isnan(table["accuracy"].iloc[1])
    assert table["accuracy"].iloc[0] == pytest.approx(0.5)


def test_bin_edges_are_lower_closed():
    # 0.5 is the lower edge of bin 1 of 2, so it belongs there
    assert reliability_table([0.5], [True], bins=2)["count"].tolist() == [0, 1]


@pytest.mark.parametrize(
    ("conf", "correct", "bins"),
    [
        ([0.5, 1.2], [1, 0], 15),  # out of range
        ([-0.1], [1], 15),
        ([float("nan")], [1], 15),
        ([0.5, 0.6], [1], 15),  # length mismatch
        ([[0.5]], [[1]], 15),  # not 1-D
        ([], [], 15),  # empty
        ([0.5], [2], 15),  # correct not boolean
        ([0.5], [1], 0),  # bins
        ([0.5], [1], 2.5),
    ],
)
def test_calibration_validation(conf, correct, bins):
    with pytest.raises(ValueError):
        expected_calibration_error(conf, correct, bins=bins)
    with pytest.raises(ValueError):
        reliability_table(conf, correct, bins=bins)


def test_matched_correct_uses_hungarian_matching():
    targets = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([5, 5, 3, 3, 3, 7])  # 5 -> 0, 3 -> 1 (or 2), 7 -> 2
    hits = matched_correct(targets, preds)
    assert hits.dtype == np.bool_
    assert hits.tolist() == [True, True, True, True, False, True]
    with pytest.raises(ValueError):
        matched_correct([0, 1], [0])
    with pytest.raises(ValueError):
        matched_correct([0.5], [0])


# --------------------------------------------------------------------------------------------------
# MC dropout


def test_mc_dropout_shapes_and_probabilities(model, images):
    mc = mc_dropout_predict(model, images, np.arange(6), passes=8, batch_size=4, device=CPU, seed=0)
    assert isinstance(mc, McDropout) and len(mc) == 6
    assert mc.mean_probs.shape == (6, NUM_CLASSES)
    assert mc.mean_probs.sum(axis=1) == pytest.approx(np.ones(6), abs=1e-9)
    assert np.all(mc.mean_probs >= 0)
    assert mc.pred.tolist() == mc.mean_probs.argmax(axis=1).tolist()
    assert mc.confidence == pytest.approx(mc.mean_probs.max(axis=1))
    assert mc.passes == 8 and mc.dropout_p == pytest.approx(0.5)


def test_mc_dropout_entropy_identities(model, images):
    mc = mc_dropout_predict(model, images, np.arange(6), passes=16, batch_size=6, device=CPU, seed=1)
    h_mean = -(mc.mean_probs * np.log(mc.mean_probs)).sum(axis=1)
    assert mc.predictive_entropy == pytest.approx(h_mean, abs=1e-9)
    assert np.all(mc.predictive_entropy >= mc.aleatoric - 1e-9)  # Jensen: entropy is concave
    assert np.all(mc.epistemic >= 0)
    assert mc.epistemic == pytest.approx(mc.predictive_entropy - mc.aleatoric, abs=1e-9)
    assert np.all(mc.predictive_entropy <= math.log(NUM_CLASSES) + 1e-9)  # nats
    assert mc.epistemic.max() > 1e-4  # dropout at p=0.5 does disagree somewhere


def test_mc_dropout_deterministic_for_a_seed(model, images):
    rows = np.arange(6)
    a = mc_dropout_predict(model, images, rows, passes=5, batch_size=6, device=CPU, seed=3)
    b = mc_dropout_predict(model, images, rows, passes=5, batch_size=6, device=CPU, seed=3)
    c = mc_dropout_predict(model, images, rows, passes=5, batch_size=6, device=CPU, seed=4)
    np.testing.assert_array_equal(a.mean_probs, b.mean_probs)
    np.testing.assert_array_equal(a.epistemic, b.epistemic)
    assert not np.allclose(a.mean_probs, c.mean_probs)


def test_mc_dropout_independent_of_batch_size_and_of_other_rows(model, images):
    rows = np.arange(6)
    whole = mc_dropout_predict(model, images, rows, passes=5, batch_size=6, device=CPU, seed=7)
    for batch_size in (1, 4):
        split = mc_dropout_predict(model, images, rows, passes=5, batch_size=batch_size, device=CPU, seed=7)
        np.testing.assert_allclose(split.mean_probs, whole.mean_probs, atol=1e-6)
        np.testing.assert_allclose(split.epistemic, whole.epistemic, atol=1e-6)
    subset = mc_dropout_predict(model, images, np.array([4, 1]), passes=5, batch_size=2, device=CPU, seed=7)
    np.testing.assert_allclose(subset.mean_probs, whole.mean_probs[[4, 1]], atol=1e-6)


def test_mc_dropout_leaves_training_mode_alone(images):
    model = _model().train()
    mc_dropout_predict(model, images, np.arange(2), passes=2, batch_size=2, device=CPU, seed=0)
    assert model.training


@pytest.mark.parametrize(("dropout", "passes"), [(0.0, 8), (0.5, 1)])
def test_epistemic_vanishes_without_dropout_or_with_one_pass(images, dropout, passes):
    model = _model(dropout=dropout)
    mc = mc_dropout_predict(model, images, np.arange(6), passes=passes, batch_size=3, device=CPU, seed=0)
    assert mc.epistemic == pytest.approx(np.zeros(6), abs=1e-9)
    assert mc.predictive_entropy == pytest.approx(mc.aleatoric, abs=1e-9)


def test_no_dropout_matches_plain_eval_forward(images):
    model = _model(dropout=0.0)
    mc = mc_dropout_predict(model, images, np.arange(6), passes=3, batch_size=6, device=CPU, seed=0)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        probs = model(x)["logits"].double().softmax(-1).numpy()
    np.testing.assert_allclose(mc.mean_probs, probs, atol=1e-6)


def test_mc_dropout_empty_rows(model, images):
    mc = mc_dropout_predict(model, images, np.array([], dtype=np.int64), passes=3, batch_size=2, device=CPU, seed=0)
    assert mc.mean_probs.shape == (0, NUM_CLASSES) and mc.pred.shape == (0,) and len(mc) == 0


@pytest.mark.parametrize(
    "kwargs",
    [dict(passes=0), dict(batch_size=0), dict(seed=-1), dict(seed=1.5), dict(rows=np.array([[0]])), dict(rows=[0.5])],
)
def test_mc_dropout_validation(model, images, kwargs):
    args = dict(rows=np.arange(2), passes=2, batch_size=2, device=CPU, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError):
        mc_dropout_predict(model, images, **args)


# --------------------------------------------------------------------------------------------------
# occlusion maps


class RegionModel(nn.Module):
    """Looks only at the top-left 8x8 pixels: the `forward_maps`/`classify` surface of AttributionModel."""

    def __init__(self, dropout: float = 0.3) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.proj = nn.Parameter(torch.randn(3 * 8 * 8, 16, generator=gen) * 0.2)
        self.prototypes = nn.Parameter(torch.randn(NUM_CLASSES, 16, generator=gen))
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("num_active", torch.tensor(NUM_CLASSES))

    def forward_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        patch = images[:, :, :8, :8].float().div(255.0).sub(0.5).flatten(1)
        return {"features": patch @ self.proj}

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.dropout(features) @ self.prototypes[: int(self.num_active)].t()


def test_occlusion_maps_shape_dtype_finite(model):
    image = _images(1, seed=3)[0]
    maps = occlusion_uncertainty_maps(model, image, Occlusion(16, 8), passes=4, device=CPU, seed=0, batch_size=4)
    assert set(maps) == {"entropy_delta", "epistemic"}
    for value in maps.values():
        assert value.shape == (32, 32) and value.dtype == np.float32
        assert np.all(np.isfinite(value))
    assert np.all(maps["epistemic"] >= 0)


def test_occlusion_highlights_the_region_the_model_uses():
    image = _images(1, seed=5)[0]
    model = RegionModel()
    maps = occlusion_uncertainty_maps(model, image, Occlusion(4, 4), passes=8, device=CPU, seed=0, batch_size=16)
    delta = np.abs(maps["entropy_delta"])
    inside = delta[:8, :8]
    assert inside.mean() > 1e-4
    # outside the 8x8 region no window touches what the model sees and masks are shared: 0 up to
    # float rounding (BLAS results depend slightly on the batch composition)
    assert delta[8:, :].max() < 1e-6 and delta[:, 8:].max() < 1e-6
    assert inside.mean() > 100 * max(delta[8:, :].max(), delta[:, 8:].max(), 1e-9)


def test_occlusion_is_independent_of_batch_size_and_deterministic():
    image = _images(1, seed=6)[0]
    model = RegionModel()
    a = occlusion_uncertainty_maps(model, image, Occlusion(6, 5), passes=4, device=CPU, seed=2, batch_size=3)
    b = occlusion_uncertainty_maps(model, image, Occlusion(6, 5), passes=4, device=CPU, seed=2, batch_size=64)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)


def test_occlusion_baseline_matches_mc_dropout_of_the_image():
    # a fill-coloured image is unchanged by any occlusion: every window's delta is 0 and its epistemic
    # equals the image's own MC-dropout epistemic (row 0, same seed)
    image = np.broadcast_to(np.array(OCCLUSION_FILL, dtype=np.uint8), (16, 16, 3)).copy()
    model = RegionModel()
    maps = occlusion_uncertainty_maps(model, image, Occlusion(8, 8), passes=6, device=CPU, seed=9)
    mc = mc_dropout_predict(model, image[None], np.array([0]), passes=6, batch_size=1, device=CPU, seed=9)
    assert np.abs(maps["entropy_delta"]).max() < 1e-6
    np.testing.assert_allclose(maps["epistemic"], np.full((16, 16), mc.epistemic[0]), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(window=40),  # larger than the image
        dict(window=0),
        dict(stride=0),
        dict(passes=0),
        dict(image=np.zeros((32, 32), dtype=np.uint8)),
        dict(image=np.zeros((32, 32, 3), dtype=np.float32)),
    ],
)
def test_occlusion_validation(kwargs):
    args = dict(image=_images(1)[0], passes=2, window=8, stride=8, device=CPU, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError):
        occlusion = Occlusion(args.pop("window"), args.pop("stride"))
        occlusion_uncertainty_maps(RegionModel(), occlusion=occlusion, **args)


# --------------------------------------------------------------------------------------------------
# summary


def _mc(confidence: list[float], epistemic: list[float]) -> McDropout:
    conf = np.array(confidence)
    probs = np.stack([conf, 1 - conf], axis=1)
    epi = np.array(epistemic)
    return McDropout(probs, epi + 0.1, np.full(conf.size, 0.1), epi, conf, probs.argmax(1), passes=3, dropout_p=0.2)


def test_summary_groups_and_gap():
    mc = _mc([0.9, 0.8, 0.6], [0.0, 0.2, 0.4])
    out = uncertainty_summary(mc, np.array([True, True, False]))
    assert out["known_count"] == 2 and out["novel_count"] == 1 and out["all_count"] == 3
    assert out["known_confidence"] == pytest.approx(0.85)
    assert out["novel_confidence"] == pytest.approx(0.6)
    assert out["confidence_gap"] == pytest.approx(0.25)
    assert out["known_epistemic"] == pytest.approx(0.1)
    assert out["novel_aleatoric"] == pytest.approx(0.1)
    assert out["all_epistemic"] == pytest.approx(0.2)


def test_summary_empty_group_is_none_not_nan():
    out = uncertainty_summary(_mc([0.9, 0.7], [0.1, 0.3]), np.array([True, True]))
    assert out["novel_count"] == 0
    assert out["novel_confidence"] is None and out["novel_epistemic"] is None and out["confidence_gap"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in out.values())
    with pytest.raises(ValueError):
        uncertainty_summary(_mc([0.9], [0.1]), np.array([1]))
    with pytest.raises(ValueError):
        uncertainty_summary(_mc([0.9], [0.1]), np.array([True, False]))
