"""The two K estimators (GCD's, and our fold-based SS-k-means variant) and SS-k-means, on Gaussian blobs."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.paths import ROOT as REPO_ROOT
from scipy.optimize import linear_sum_assignment, minimize_scalar
from sklearn.cluster import KMeans

from owdfa.core.config import Section, load_params
from owdfa.core.errors import ConfigError
from owdfa.evaluate.estimate_k import (
    K_ESTIMATORS,
    gcd_estimate_k,
    run_k_estimator,
    ss_kmeans,
    ss_kmeans_folds_estimate_k,
)
from owdfa.evaluate.evaluation import evaluate_config, kmeans_k_estimate, training_features
from owdfa.evaluate.metrics import cluster_acc

ROOT = REPO_ROOT


def blobs(num_classes: int, dim: int = 8, per_class: int = 100, std: float = 0.05, seed: int = 0):
    """Gaussian blobs around unit-norm centres at least 0.8 apart (clearly separated at std 0.05)."""
    rng = np.random.default_rng(seed)
    while True:
        centres = rng.normal(size=(num_classes, dim))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        gaps = np.linalg.norm(centres[:, None] - centres[None], axis=2) + 10 * np.eye(num_classes)
        if gaps.min() >= 0.8:
            break
    truth = np.repeat(np.arange(num_classes), per_class)
    feats = centres[truth] + std * rng.normal(size=(truth.size, dim))
    order = rng.permutation(truth.size)
    return feats[order], truth[order]


def hide(truth: np.ndarray, num_known: int, frac: float = 0.5, seed: int = 1) -> np.ndarray:
    """Caller-side labels: a random ``frac`` of known-class rows keep their class, every other row gets -1."""
    keep = (truth < num_known) & (np.random.default_rng(seed).random(truth.size) < frac)
    return np.where(keep, truth, -1)


# --------------------------------------------------------------------------------------------------
# ss_kmeans
# --------------------------------------------------------------------------------------------------
def test_ss_kmeans_pins_labelled_and_recovers_blobs():
    feats, truth = blobs(6)
    labels = hide(truth, 3)
    assign, centroids, inertia = ss_kmeans(feats, labels, 3, 6)
    lab = labels >= 0
    assert assign.shape == truth.shape and centroids.shape == (6, 8)
    assert np.array_equal(assign[lab], labels[lab])
    assert assign.min() >= 0 and assign.max() < 6
    assert cluster_acc(truth, assign) >= 0.99
    # known clusters keep their ids: unlabelled rows of known class c land in cluster c
    known_unl = ~lab & (truth < 3)
    assert np.mean(assign[known_unl] == truth[known_unl]) >= 0.99
    members = centroids[assign]
    assert inertia == pytest.approx(float(((feats - members) ** 2).sum()))


def test_ss_kmeans_k_equal_num_known_and_best_of_inits():
    feats, truth = blobs(4, seed=3)
    labels = hide(truth, 4)
    assign, _, _ = ss_kmeans(feats, labels, 4, 4)
    assert cluster_acc(truth, assign) >= 0.99 and np.array_equal(assign[labels >= 0], labels[labels >= 0])
    feats, truth = blobs(8, seed=4)
    labels = hide(truth, 2)
    one = ss_kmeans(feats, labels, 2, 9, n_init=1, seed=5)
    many = ss_kmeans(feats, labels, 2, 9, n_init=4, seed=5)  # the first init is the same one
    assert many[2] <= one[2] + 1e-9
    again = ss_kmeans(feats, labels, 2, 9, n_init=4, seed=5)
    assert np.array_equal(many[0], again[0]) and np.array_equal(many[1], again[1]) and many[2] == again[2]


@pytest.mark.parametrize(
    "change",
    [
        lambda f, y: (f, y, 3, 2),  # k < num_known
        lambda f, y: (f[:, 0], y, 3, 6),  # 1-D features
        lambda f, y: (f[None], y, 3, 6),  # 3-D features
        lambda f, y: (f, y[:-1], 3, 6),  # length mismatch
        lambda f, y: (f, y.reshape(-1, 1), 3, 6),  # 2-D labels
        lambda f, y: (f, y.astype(float), 3, 6),  # float labels
        lambda f, y: (f, np.where(y == 0, 3, y), 3, 6),  # label >= num_known
        lambda f, y: (f, np.where(y == 0, -2, y), 3, 6),  # label < -1
        lambda f, y: (f, np.where(y == 1, -1, y), 3, 6),  # known class without a labelled row
        lambda f, y: (np.where(np.arange(f.shape[0])[:, None] == 0, np.nan, f), y, 3, 6),  # NaN
        lambda f, y: (f[:0], y[:0], 3, 6),  # empty
    ],
)
def test_ss_kmeans_rejects_bad_input(change):
    feats, truth = blobs(6)
    with pytest.raises(ValueError):
        ss_kmeans(*change(feats, hide(truth, 3)))


def test_ss_kmeans_needs_enough_unlabelled_rows():
    feats = np.eye(4)
    with pytest.raises(ValueError, match="unlabelled"):
        ss_kmeans(feats, np.array([0, 1, -1, -1]), 2, 5)
    assign, _, _ = ss_kmeans(feats, np.array([0, 1, -1, -1]), 2, 4)
    assert sorted(assign.tolist()) == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------------------
# ss_kmeans_folds_estimate_k (our variant)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("num_classes", "num_known", "seed"), [(6, 3, 0), (6, 3, 1), (10, 5, 0), (10, 5, 2)])
def test_ss_folds_estimate_k_recovers_true_k(num_classes, num_known, seed):
    feats, truth = blobs(num_classes, seed=seed)
    out = ss_kmeans_folds_estimate_k(feats, hide(truth, num_known, seed=seed), num_known, 2 * num_classes, seed=seed)
    assert abs(out["k_hat"] - num_classes) <= 1, out
    assert out["k_max"] == 2 * num_classes and out["k_hat"] in out["evaluated"]
    assert all(num_known <= k <= 2 * num_classes and 0.0 <= v <= 1.0 for k, v in out["evaluated"].items())
    assert out["evaluated"][out["k_hat"]] == max(out["evaluated"].values())


def test_ss_folds_estimate_k_is_deterministic_and_leaves_inputs_alone():
    feats, truth = blobs(6, seed=7)
    labels = hide(truth, 3)
    feats_copy, labels_copy = feats.copy(), labels.copy()
    first = ss_kmeans_folds_estimate_k(feats, labels, 3, 12, seed=11)
    assert first == ss_kmeans_folds_estimate_k(feats, labels, 3, 12, seed=11)
    assert np.array_equal(feats, feats_copy) and np.array_equal(labels, labels_copy)


def test_true_labels_of_unlabelled_rows_cannot_matter():
    feats, truth = blobs(6, seed=2)
    labels = hide(truth, 3)
    unl = labels < 0
    other = truth.copy()  # a different ground truth that agrees on every labelled row
    other[unl] = np.random.default_rng(9).integers(0, 6, unl.sum())
    assert not np.array_equal(truth, other)
    labels_a = np.where(~unl, truth, -1)
    labels_b = np.where(~unl, other, -1)
    assert np.array_equal(labels_a, labels_b)  # the -1 the caller writes is all the API ever sees
    a, b = ss_kmeans(feats, labels_a, 3, 6, seed=4), ss_kmeans(feats, labels_b, 3, 6, seed=4)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert ss_kmeans_folds_estimate_k(feats, labels_a, 3, 12, seed=4) == ss_kmeans_folds_estimate_k(
        feats, labels_b, 3, 12, seed=4
    )


def test_ss_folds_estimate_k_edge_cases_and_errors():
    feats, truth = blobs(6)
    labels = hide(truth, 3)
    assert ss_kmeans_folds_estimate_k(feats, labels, 3, 3)["k_hat"] == 3
    for args in [
        (feats, labels, 3, 2),  # k_max < num_known
        (feats, np.full(truth.size, -1), 0, 6),  # nothing known to score with
        (feats[:, 0], labels, 3, 6),
        (feats, labels[:-1], 3, 6),
        (feats, labels, 3, 10_000),  # more clusters than rows
    ]:
        with pytest.raises(ValueError):
            ss_kmeans_folds_estimate_k(*args)


def test_ss_folds_timing_3000_by_96():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 96))
    truth = rng.integers(0, 20, 3000)
    feats = (centres[truth] + 0.5 * rng.normal(size=(3000, 96))).astype(np.float32)
    labels = hide(truth, 10)
    start = time.perf_counter()
    out = ss_kmeans_folds_estimate_k(feats, labels, 10, 30)
    elapsed = time.perf_counter() - start
    print(
        f"\nss_kmeans_folds_estimate_k 3000x96 (20 classes, 10 known, k_max 30): k_hat={out['k_hat']}, "
        f"{len(out['evaluated'])} K evaluated, {elapsed:.2f} s"
    )
    assert 10 <= out["k_hat"] <= 30


# --------------------------------------------------------------------------------------------------
# gcd_estimate_k: GCD's estimator (methods/estimate_k/estimate_k.py), checked against the rule
# re-derived inline from the official file: sklearn KMeans(n_clusters=int(K), random_state=0) with the
# n_init=10 of the scikit-learn GCD pinned, on L2-normalised features of every row; score = Hungarian
# accuracy of the labelled rows; bounded Brent on its negative over (num_known, max_classes).
# --------------------------------------------------------------------------------------------------
def official_rule(feats: np.ndarray, labels: np.ndarray, num_known: int, k_max: int):
    """Returns (int(res.x), res.x, {K: labelled acc}, [int(x) per Brent call]) without owdfa code."""
    x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    lab = labels >= 0
    scores: dict[int, float] = {}
    calls: list[int] = []

    def labelled_acc(pred: np.ndarray) -> float:
        y, p = labels[lab], pred[lab]
        d = max(p.max(), y.max()) + 1
        w = np.zeros((d, d), dtype=np.int64)
        np.add.at(w, (p, y), 1)
        rows, cols = linear_sum_assignment(w.max() - w)
        return w[rows, cols].sum() / y.size

    def objective(k_float: float) -> float:
        k = int(k_float)
        calls.append(k)
        scores[k] = labelled_acc(KMeans(n_clusters=k, random_state=0, n_init=10).fit(x).labels_)
        return -scores[k]

    res = minimize_scalar(objective, bounds=(num_known, k_max), method="bounded")
    return int(res.x), float(res.x), scores, calls


@pytest.mark.parametrize(("num_classes", "num_known", "k_max", "seed"), [(6, 3, 12, 0), (8, 4, 16, 1), (5, 2, 8, 2)])
def test_gcd_equals_the_official_rule(num_classes, num_known, k_max, seed):
    """Same K-hat, Brent point, scores and trial sequence as the rule; ties go to Brent's last best point.

    On clean blobs every K that keeps the known blobs whole scores 1.0 on the labelled rows, so the rule
    need not return the true K (6 true classes give 8 here): GCD's estimator, faithfully, not a bug.
    """
    feats, truth = blobs(num_classes, per_class=60, seed=seed)
    labels = hide(truth, num_known, seed=seed)
    k_hat, x_opt, scores, calls = official_rule(feats, labels, num_known, k_max)
    out = gcd_estimate_k(feats, labels, num_known, k_max)
    assert out["k_hat"] == k_hat and num_classes <= k_hat < k_max and scores[k_hat] == 1.0
    assert out["x"] == pytest.approx(x_opt, abs=0.0)
    assert out["evaluated"] == pytest.approx(scores, abs=0.0)
    assert [k for _, k in out["trace"]] == calls
    assert out["k_max"] == k_max and out["evaluated"][out["k_hat"]] == max(out["evaluated"].values())


def test_gcd_truncates_non_integer_brent_points():
    feats, truth = blobs(6, per_class=50, seed=3)
    labels = hide(truth, 2, seed=3)
    out = gcd_estimate_k(feats, labels, 2, 6)
    first_x, first_k = out["trace"][0]
    # bounded Brent's first point is a + (3 - sqrt 5) / 2 * (b - a) = 3.528: int() gives 3, round() 4
    assert first_x == pytest.approx(2 + (3 - np.sqrt(5)) / 2 * 4) and first_k == 3
    assert all(k == int(np.floor(x)) for x, k in out["trace"])
    assert any(x - k >= 0.5 for x, k in out["trace"])  # a point where rounding would have differed
    assert out["k_hat"] == int(np.floor(out["x"])) and set(out["evaluated"]) == {k for _, k in out["trace"]}
    assert max(k for _, k in out["trace"]) <= 5  # points stay inside (2, 6): K = k_max is never tried


def test_gcd_scores_labelled_rows_only():
    feats, truth = blobs(6, per_class=50, seed=4)
    labels = hide(truth, 3, seed=4)
    lab = labels >= 0
    out = gcd_estimate_k(feats, labels, 3, 9)
    x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    differs = False
    for k, score in out["evaluated"].items():
        pred = KMeans(n_clusters=k, random_state=0, n_init=10).fit(x).labels_
        assert score == cluster_acc(labels[lab], pred[lab])
        # scoring every row, with -1 read as one more class, would give another number
        differs |= score != cluster_acc(np.where(lab, labels, 3), pred)
    assert differs
    # only the -1 reaches the estimator: any hidden truth behind it gives the same answer
    other = np.where(lab, labels, np.random.default_rng(0).integers(0, 6, truth.size))
    assert not np.array_equal(other, truth) and np.array_equal(np.where(lab, other, -1), labels)
    assert gcd_estimate_k(feats, np.where(lab, other, -1), 3, 9) == out


def test_gcd_runs_kmeans_as_gcd_ran_it(monkeypatch):
    """Plain k-means with GCD's settings on every row, normalised; float32 features stay float32."""
    import owdfa.evaluate.estimate_k as kmeans_k

    calls = []

    class Spy(KMeans):
        def fit(self, X, y=None, sample_weight=None):
            calls.append((self.get_params(), X))
            return super().fit(X, y, sample_weight)

    monkeypatch.setattr(kmeans_k, "KMeans", Spy)
    feats, truth = blobs(5, per_class=40, seed=5)
    feats32 = (3.0 * feats).astype(np.float32)
    gcd_estimate_k(feats32, hide(truth, 2, seed=5), 2, 8)
    assert calls
    for params, X in calls:
        assert params["n_init"] == 10 and params["random_state"] == 0 and params["init"] == "k-means++"
        assert params["algorithm"] == "lloyd" and params["max_iter"] == 300 and params["tol"] == 1e-4
        assert X.dtype == np.float32 and X.shape == feats32.shape
        assert np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-6)


def test_gcd_is_deterministic_and_leaves_inputs_alone():
    feats, truth = blobs(5, per_class=40, seed=6)
    labels = hide(truth, 2, seed=6)
    feats_copy, labels_copy = feats.copy(), labels.copy()
    assert gcd_estimate_k(feats, labels, 2, 8) == gcd_estimate_k(feats, labels, 2, 8)
    assert np.array_equal(feats, feats_copy) and np.array_equal(labels, labels_copy)


def test_gcd_rejects_bad_input():
    feats, truth = blobs(4, per_class=20, seed=7)
    labels = hide(truth, 2, seed=7)
    for args, match in [
        ((feats, labels, 2, 2), "k_max"),  # empty search interval
        ((feats, labels, 2, 1), "k_max"),
        ((feats, np.full(truth.size, -1), 0, 6), "num_known"),  # nothing labelled to score with
        ((feats, labels, 2, truth.size + 1), "rows"),  # more clusters than rows
        ((feats, labels, True, 6), "num_known"),
        ((feats, labels, 2, 6.0), "k_max"),
        ((feats[:, 0], labels, 2, 6), "2-D"),
        ((feats, labels[:-1], 2, 6), "labels"),
        ((feats, labels.astype(float), 2, 6), "integers"),
        ((feats, np.where(labels == 0, 2, labels), 2, 6), r"\[0, 2\)"),
        ((feats, np.where(labels == 1, -1, labels), 2, 6), "without a labelled sample"),
        ((np.where(np.arange(truth.size)[:, None] == 0, np.nan, feats), labels, 2, 6), "NaN"),
    ]:
        with pytest.raises(ValueError, match=match):
            gcd_estimate_k(*args)


def test_run_k_estimator_dispatches_by_public_name():
    feats, truth = blobs(5, per_class=40, seed=8)
    labels = hide(truth, 2, seed=8)
    assert K_ESTIMATORS == ("gcd", "ss_kmeans_folds")
    assert run_k_estimator("gcd", feats, labels, 2, 8, seed=3) == gcd_estimate_k(feats, labels, 2, 8)["k_hat"]
    ours = ss_kmeans_folds_estimate_k(feats, labels, 2, 8, seed=3)["k_hat"]
    assert run_k_estimator("ss_kmeans_folds", feats, labels, 2, 8, seed=3) == ours
    for old in ("sskmeans", "kmeans_k", "GCD"):
        with pytest.raises(ValueError, match="unknown K estimator"):
            run_k_estimator(old, feats, labels, 2, 8)


def test_gcd_timing_3000_by_96():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 96))
    truth = rng.integers(0, 20, 3000)
    feats = (centres[truth] + 0.5 * rng.normal(size=(3000, 96))).astype(np.float32)
    start = time.perf_counter()
    out = gcd_estimate_k(feats, hide(truth, 10), 10, 40)
    elapsed = time.perf_counter() - start
    print(
        f"\ngcd_estimate_k 3000x96 (20 classes, 10 known, k_max 40): k_hat={out['k_hat']}, "
        f"{len(out['evaluated'])} K clustered over {len(out['trace'])} Brent calls, {elapsed:.2f} s"
    )
    assert 10 <= out["k_hat"] < 40


# --------------------------------------------------------------------------------------------------
# evaluate.k_estimators and the evaluate stage's call
# --------------------------------------------------------------------------------------------------
def evaluate_section(**changes):
    params = load_params(ROOT / "params.yaml")["evaluate"]
    params.update(changes)
    return Section(params, "evaluate")


def test_k_estimators_config():
    assert evaluate_config(evaluate_section()).k_estimators == ("gcd",)  # the default: GCD's estimator only
    assert evaluate_config(evaluate_section(k_estimators=[])).k_estimators == ()
    both = evaluate_config(evaluate_section(k_estimators=["ss_kmeans_folds", "gcd"]))
    assert both.k_estimators == ("ss_kmeans_folds", "gcd")
    for value, match in [
        (["sskmeans"], "unknown estimator"),
        (["gcd", "gcd"], "twice"),
        ("gcd", "list of strings"),
        (True, "list of strings"),
    ]:
        with pytest.raises(ConfigError, match=match) as err:
            evaluate_config(evaluate_section(k_estimators=value))
        assert err.value.key == "evaluate.k_estimators"
    with pytest.raises(ConfigError) as err:  # the old switch is gone, not silently ignored
        evaluate_config(evaluate_section(kmeans_k=True))
    assert err.value.key == "evaluate.kmeans_k"


class PixelFeatures(torch.nn.Module):
    """Stand-in model: its features are the image's pixels, so blobs in pixel space are blobs in features."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = x.float().flatten(1) / 255.0
        return {"logits": features[:, :3], "features": features}


def test_estimate_k_estimate_returns_each_chosen_estimator():
    rng = np.random.default_rng(0)
    num_classes, per_class = 5, 40
    centres = rng.integers(0, 256, size=(num_classes, 4, 4, 3))
    target = np.repeat(np.arange(num_classes), per_class)
    images = np.clip(centres[target] + rng.normal(0, 8, size=(target.size, 4, 4, 3)), 0, 255).astype(np.uint8)
    split = np.where(target >= 2, "unlabelled", np.where(rng.random(target.size) < 0.5, "labelled", "unlabelled"))
    split[(target < 2) & (np.arange(target.size) % 10 == 0)] = "val"
    rows = np.arange(target.size + 20)
    manifest = pd.DataFrame(
        {"row": rows, "split": [*split, *["test"] * 20], "target": [*target, *rng.integers(0, 5, 20)]}
    )
    images = np.concatenate([images, np.zeros((20, 4, 4, 3), np.uint8)])
    device = torch.device("cpu")
    args = (*training_features(PixelFeatures(), manifest, images, 64, device, "fp32"), 2, 4.0, 0)
    # expected: the rule on the training rows only (test rows dropped), val rows labelled,
    # K searched in [2, round(4.0 x 2)]
    train = split != "test"
    feats = images[: target.size][train].reshape(int(train.sum()), -1).astype(np.float32) / 255.0
    labels = np.where(split[train] == "unlabelled", -1, target[train])
    expected_gcd = official_rule(feats, labels, 2, 8)[0]
    expected_ours = ss_kmeans_folds_estimate_k(feats, labels, 2, 8, seed=0)["k_hat"]
    assert kmeans_k_estimate(*args, ("gcd",)) == {"gcd": expected_gcd}
    assert kmeans_k_estimate(*args, ()) == {}
    both = kmeans_k_estimate(*args)  # default: every estimator, in K_ESTIMATORS order
    assert both == {"gcd": expected_gcd, "ss_kmeans_folds": expected_ours} and list(both) == list(K_ESTIMATORS)


def test_kmeans_runs_on_at_most_two_openmp_threads() -> None:
    # scikit-learn adds its threads' partial centre sums in the order they finish: with three or more
    # threads that order (and so a bit of the centres) can change from run to run, with two it cannot.
    from threadpoolctl import threadpool_info, threadpool_limits

    from owdfa.evaluate.estimate_k import KMEANS_MAX_THREADS, _kmeans_threads_capped

    def openmp_threads() -> set[int]:
        return {info["num_threads"] for info in threadpool_info() if info["user_api"] == "openmp"}

    assert KMEANS_MAX_THREADS == 2
    for outside, inside in ((4, 2), (2, 2), (1, 1)):
        with threadpool_limits(limits=outside, user_api="openmp"):
            with _kmeans_threads_capped():
                assert openmp_threads() == {inside}
            assert openmp_threads() == {outside}
