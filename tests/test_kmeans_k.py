"""GCD's semi-supervised k-means and its K estimate, on synthetic Gaussian blobs."""

from __future__ import annotations

import time

import numpy as np
import pytest

from owdfa.methods.kmeans_k import estimate_k, ss_kmeans
from owdfa.metrics import cluster_acc


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
# estimate_k
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("num_classes", "num_known", "seed"), [(6, 3, 0), (6, 3, 1), (10, 5, 0), (10, 5, 2)])
def test_estimate_k_recovers_true_k(num_classes, num_known, seed):
    feats, truth = blobs(num_classes, seed=seed)
    out = estimate_k(feats, hide(truth, num_known, seed=seed), num_known, 2 * num_classes, seed=seed)
    assert abs(out["k_hat"] - num_classes) <= 1, out
    assert out["k_max"] == 2 * num_classes and out["k_hat"] in out["evaluated"]
    assert all(num_known <= k <= 2 * num_classes and 0.0 <= v <= 1.0 for k, v in out["evaluated"].items())
    assert out["evaluated"][out["k_hat"]] == max(out["evaluated"].values())


def test_estimate_k_is_deterministic_and_leaves_inputs_alone():
    feats, truth = blobs(6, seed=7)
    labels = hide(truth, 3)
    feats_copy, labels_copy = feats.copy(), labels.copy()
    first = estimate_k(feats, labels, 3, 12, seed=11)
    assert first == estimate_k(feats, labels, 3, 12, seed=11)
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
    assert estimate_k(feats, labels_a, 3, 12, seed=4) == estimate_k(feats, labels_b, 3, 12, seed=4)


def test_estimate_k_edge_cases_and_errors():
    feats, truth = blobs(6)
    labels = hide(truth, 3)
    assert estimate_k(feats, labels, 3, 3)["k_hat"] == 3
    for args in [
        (feats, labels, 3, 2),  # k_max < num_known
        (feats, np.full(truth.size, -1), 0, 6),  # nothing known to score with
        (feats[:, 0], labels, 3, 6),
        (feats, labels[:-1], 3, 6),
        (feats, labels, 3, 10_000),  # more clusters than rows
    ]:
        with pytest.raises(ValueError):
            estimate_k(*args)


def test_timing_3000_by_96():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 96))
    truth = rng.integers(0, 20, 3000)
    feats = (centres[truth] + 0.5 * rng.normal(size=(3000, 96))).astype(np.float32)
    labels = hide(truth, 10)
    start = time.perf_counter()
    out = estimate_k(feats, labels, 10, 30)
    elapsed = time.perf_counter() - start
    print(
        f"\nestimate_k 3000x96 (20 classes, 10 known, k_max 30): k_hat={out['k_hat']}, "
        f"{len(out['evaluated'])} K evaluated, {elapsed:.2f} s"
    )
    assert 10 <= out["k_hat"] <= 30
