"""Hand-computed checks for owdfa.evaluate.metrics; expected numbers are literals derived in comments."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from owdfa.evaluate.metrics import (
    METRIC_VARIANTS,
    cluster_acc,
    contingency_matrix,
    evaluate_predictions,
    gcd_v1_metrics,
    gcd_v2_metrics,
    k_error,
    match_clusters,
    owdfa_metrics,
    per_class_acc,
)

EXPECTED_KEYS = {
    "all_acc",
    "known_acc",
    "novel_acc",
    "all_nmi",
    "all_ari",
    "novel_nmi",
    "novel_ari",
    "known_nmi",
    "known_ari",
    "gcd_v2_all_acc",
    "gcd_v2_old_acc",
    "gcd_v2_new_acc",
    "gcd_v1_all_acc",
    "gcd_v1_old_acc",
    "gcd_v1_new_acc",
    "num_clusters",
    "num_samples",
}


def brute_force_acc(y: list[int], p: list[int]) -> float:
    """Reference: try every cluster -> class permutation of range(D)."""
    d = max(max(y), max(p)) + 1
    best = max(sum(perm[pi] == yi for yi, pi in zip(y, p, strict=True)) for perm in itertools.permutations(range(d)))
    return best / len(y)


def check(result: dict[str, float], expected: dict[str, float]) -> None:
    for key, want in expected.items():
        got = result[key]
        if math.isnan(want):
            assert math.isnan(got), f"{key}: expected NaN, got {got}"
        else:
            assert got == pytest.approx(want), f"{key}: expected {want}, got {got}"


# ------------------------------------------------------------------------------------------------
# core
# ------------------------------------------------------------------------------------------------
def test_contingency_matrix_is_square_and_counts():
    # y=[0,1,1], p=[2,2,0] -> D = max(2,1)+1 = 3; C[cluster, class]: C[2,0]=1, C[2,1]=1, C[0,1]=1
    c = contingency_matrix([0, 1, 1], [2, 2, 0])
    assert c.shape == (3, 3)
    assert c.tolist() == [[0, 1, 0], [0, 0, 0], [1, 1, 0]]


def test_match_clusters_permuted_ids():
    assert match_clusters([0, 0, 1, 1, 2], [2, 2, 0, 0, 1]) == {2: 0, 0: 1, 1: 2}


def test_cluster_acc_matches_brute_force_on_tiny_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 12))
        y = rng.integers(0, int(rng.integers(1, 5)), n).tolist()
        p = rng.integers(0, int(rng.integers(1, 6)), n).tolist()  # sometimes more, sometimes fewer clusters
        assert cluster_acc(y, p) == pytest.approx(brute_force_acc(y, p))


def test_large_random_case_correctness():
    # 18,000 samples, 300 classes, ids permuted, 10% noise. With ~54 correct per class vs a handful of
    # noisy off-diagonal counts, the planted permutation is the unique optimum, so the exact answer is
    # the fraction of samples that still follow it. Also cross-check against a loop-built contingency.
    rng = np.random.default_rng(123)
    n, k = 18_000, 300
    y = rng.integers(0, k, n)
    perm = rng.permutation(k)
    p = perm[y].copy()
    noisy = rng.random(n) < 0.1
    p[noisy] = rng.integers(0, k, int(noisy.sum()))
    expected = float(np.mean(p == perm[y]))
    assert cluster_acc(y, p) == pytest.approx(expected)
    mapping = match_clusters(y, p)
    assert all(mapping[int(perm[c])] == c for c in range(k))

    from scipy.optimize import linear_sum_assignment

    w = np.zeros((k, k), dtype=np.int64)
    for yi, pi in zip(y, p, strict=True):
        w[pi, yi] += 1
    assert np.array_equal(contingency_matrix(y, p), w)
    r, c = linear_sum_assignment(w, maximize=True)
    assert cluster_acc(y, p) == pytest.approx(w[r, c].sum() / n)


def test_per_class_acc():
    # y=[0,0,1,1,2,2], p=[0,0,0,1,1,1]: joint matching 0->0 (2), 1->2 (2), class 1 gets empty cluster 2.
    # class 0: both hit -> 1.0; class 1: none hit -> 0.0; class 2: both hit -> 1.0
    assert per_class_acc([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1]) == {0: 1.0, 1: 0.0, 2: 1.0}


def test_k_error():
    assert k_error(12, 10) == pytest.approx(0.2)  # |12-10|/10
    assert k_error(5, 10) == pytest.approx(0.5)  # |5-10|/10
    assert k_error(10, 10) == 0.0
    with pytest.raises(ValueError):
        k_error(3, 0)


# ------------------------------------------------------------------------------------------------
# variants through evaluate_predictions
# ------------------------------------------------------------------------------------------------
def test_perfect_clustering_with_permuted_ids():
    # Every class is exactly one cluster, but ids are swapped (0<->1, 2<->3). Matching-based scores are
    # all 1.0; known_acc uses NO matching, so p != y on every known sample -> 0.0.
    y = [0, 0, 1, 1, 2, 2, 3, 3]
    p = [1, 1, 0, 0, 3, 3, 2, 2]
    r = evaluate_predictions(y, p, num_known=2)
    assert set(r) == EXPECTED_KEYS
    assert all(type(v) is float for v in r.values())
    check(
        r,
        {
            "all_acc": 1.0,
            "known_acc": 0.0,
            "novel_acc": 1.0,
            "all_nmi": 1.0,
            "all_ari": 1.0,
            "known_nmi": 1.0,
            "known_ari": 1.0,
            "novel_nmi": 1.0,
            "novel_ari": 1.0,
            "gcd_v1_all_acc": 1.0,
            "gcd_v1_old_acc": 1.0,
            "gcd_v1_new_acc": 1.0,
            "gcd_v2_all_acc": 1.0,
            "gcd_v2_old_acc": 1.0,
            "gcd_v2_new_acc": 1.0,
            "num_clusters": 4.0,
            "num_samples": 8.0,
        },
    )
    # same clustering with known ids left in place: known_acc becomes 1.0
    assert evaluate_predictions(y, [0, 0, 1, 1, 3, 3, 2, 2], 2)["known_acc"] == 1.0


def test_owdfa_novel_more_lenient_than_gcd_v2():
    # Everything is predicted as cluster 0. Joint matching: cluster 0 -> class 0 (3 hits), novel class 1
    # gets nothing -> gcd_v2 new = 0/2, all = 3/5. owdfa's separate novel matching maps cluster 0 ->
    # class 1 -> novel_acc = 2/2. gcd_v1 likewise matches each subset alone: old 1, new 1, all 1.
    y = [0, 0, 0, 1, 1]
    p = [0, 0, 0, 0, 0]
    r = evaluate_predictions(y, p, num_known=1)
    check(
        r,
        {
            "all_acc": 0.6,
            "known_acc": 1.0,
            "novel_acc": 1.0,
            "gcd_v2_all_acc": 0.6,
            "gcd_v2_old_acc": 1.0,
            "gcd_v2_new_acc": 0.0,
            "gcd_v1_all_acc": 1.0,
            "gcd_v1_old_acc": 1.0,
            "gcd_v1_new_acc": 1.0,
            "num_clusters": 1.0,
        },
    )
    assert r["novel_acc"] > r["gcd_v2_new_acc"]


def test_more_clusters_than_classes():
    # K=2, K_hat=4. Counts: cluster0:{c0:2}, cluster2:{c0:2}, cluster1:{c1:3}, cluster3:{c1:1}.
    # Best matching: one of {0,2}->0 (2) + 1->1 (3) = 5/8; the surplus clusters are errors.
    # known_acc: p==y on [0,0,2,2] -> 2/4. novel: [1,1,1,3] vs class 1 -> 3/4.
    # gcd_v1: old 2/4, new 3/4, all (4*.5 + 4*.75)/8 = .625. gcd_v2: same mapping -> .5, .75, .625.
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    p = [0, 0, 2, 2, 1, 1, 1, 3]
    r = evaluate_predictions(y, p, num_known=1)
    check(
        r,
        {
            "all_acc": 0.625,
            "known_acc": 0.5,
            "novel_acc": 0.75,
            "gcd_v1_all_acc": 0.625,
            "gcd_v1_old_acc": 0.5,
            "gcd_v1_new_acc": 0.75,
            "gcd_v2_all_acc": 0.625,
            "gcd_v2_old_acc": 0.5,
            "gcd_v2_new_acc": 0.75,
            "num_clusters": 4.0,
        },
    )
    assert k_error(r["num_clusters"], 2) == pytest.approx(1.0)


def test_fewer_clusters_than_classes_merged():
    # K=4 merged into K_hat=2: cluster 0 = classes {0,1}, cluster 1 = classes {2,3}.
    # Each cluster can match only one of its two classes -> all 4/8. known: p==y on y=[0,0,1,1],
    # p=[0,0,0,0] -> 2/4. novel: y=[2,2,3,3], p=[1,1,1,1] -> 2/4. v1/v2 all 0.5 as well.
    # NMI (arithmetic): I(Y;P)=H(P)=ln2 (P is a function of Y), H(Y)=ln4 -> 2ln2/(ln4+ln2) = 2/3.
    # ARI: sum C(n_ij,2)=4*1=4, clusters sum C(4,2)*2=12, classes sum C(2,2)*4=4, C(8,2)=28,
    #      expected=12*4/28=12/7, max=(12+4)/2=8 -> (4-12/7)/(8-12/7) = 16/44 = 4/11.
    y = [0, 0, 1, 1, 2, 2, 3, 3]
    p = [0, 0, 0, 0, 1, 1, 1, 1]
    r = evaluate_predictions(y, p, num_known=2)
    check(
        r,
        {
            "all_acc": 0.5,
            "known_acc": 0.5,
            "novel_acc": 0.5,
            "all_nmi": 2 / 3,
            "all_ari": 4 / 11,
            "gcd_v1_all_acc": 0.5,
            "gcd_v1_old_acc": 0.5,
            "gcd_v1_new_acc": 0.5,
            "gcd_v2_all_acc": 0.5,
            "gcd_v2_old_acc": 0.5,
            "gcd_v2_new_acc": 0.5,
            "num_clusters": 2.0,
        },
    )


def test_gcd_v1_vs_v2():
    # num_known=2. Counts: cluster0:{c0:3, c2:2}, cluster1:{c1:2, c2:1}.
    # Joint matching: 0->0 (3) + 1->1 (2) = 5 beats 0->2,1->1 (4) and 0->0,1->2 (4): v2 all 5/8,
    #   old 5/5, new 0/3.
    # v1: old subset perfect -> 1; new subset y=[2,2,2], p=[0,0,1] -> 2/3; all (5*1 + 3*2/3)/8 = 7/8.
    # owdfa: all = joint 5/8, known p==y -> 5/5, novel = separate -> 2/3.
    y = [0, 0, 0, 1, 1, 2, 2, 2]
    p = [0, 0, 0, 1, 1, 0, 0, 1]
    r = evaluate_predictions(y, p, num_known=2)
    check(
        r,
        {
            "gcd_v2_all_acc": 0.625,
            "gcd_v2_old_acc": 1.0,
            "gcd_v2_new_acc": 0.0,
            "gcd_v1_all_acc": 0.875,
            "gcd_v1_old_acc": 1.0,
            "gcd_v1_new_acc": 2 / 3,
            "all_acc": 0.625,
            "known_acc": 1.0,
            "novel_acc": 2 / 3,
        },
    )


def test_empty_novel_set_gives_nan():
    # all labels < num_known: novel metrics undefined -> NaN (not 0); v1 all falls back to old only.
    r = evaluate_predictions([0, 1, 1], [0, 1, 1], num_known=2)
    nan = float("nan")
    check(
        r,
        {
            "all_acc": 1.0,
            "known_acc": 1.0,
            "novel_acc": nan,
            "novel_nmi": nan,
            "novel_ari": nan,
            "gcd_v1_all_acc": 1.0,
            "gcd_v1_old_acc": 1.0,
            "gcd_v1_new_acc": nan,
            "gcd_v2_all_acc": 1.0,
            "gcd_v2_old_acc": 1.0,
            "gcd_v2_new_acc": nan,
        },
    )


def test_empty_known_set_gives_nan():
    # num_known=0: every sample is novel. y=[3,3,3], p=[0,1,0] -> best cluster 0 -> 2/3.
    r = evaluate_predictions([3, 3, 3], [0, 1, 0], num_known=0)
    nan = float("nan")
    check(
        r,
        {
            "all_acc": 2 / 3,
            "known_acc": nan,
            "known_nmi": nan,
            "known_ari": nan,
            "novel_acc": 2 / 3,
            "gcd_v1_all_acc": 2 / 3,
            "gcd_v1_old_acc": nan,
            "gcd_v2_old_acc": nan,
            "gcd_v2_new_acc": 2 / 3,
        },
    )


def test_single_class():
    # One known class predicted as cluster 5: matched acc 1.0, unmatched known_acc 0.0. sklearn scores a
    # single-cluster vs single-class labelling as identical -> NMI = ARI = 1.0.
    r = evaluate_predictions([0, 0, 0], [5, 5, 5], num_known=1)
    check(r, {"all_acc": 1.0, "known_acc": 0.0, "all_nmi": 1.0, "all_ari": 1.0, "novel_acc": float("nan")})


def test_single_sample_subset_nmi_ari_nan():
    # novel subset has one sample: acc is defined (1/1) but NMI/ARI are NaN rather than an error.
    r = evaluate_predictions([0, 0, 1], [0, 0, 1], num_known=1)
    check(r, {"novel_acc": 1.0, "novel_nmi": float("nan"), "novel_ari": float("nan"), "all_nmi": 1.0})


def test_variants_registry_consistent_with_evaluate():
    y = [0, 0, 0, 1, 1, 2, 2, 2]
    p = [0, 0, 0, 1, 1, 0, 0, 1]
    assert set(METRIC_VARIANTS) == {"owdfa", "gcd_v1", "gcd_v2"}
    assert METRIC_VARIANTS["owdfa"] is owdfa_metrics
    assert METRIC_VARIANTS["gcd_v1"] is gcd_v1_metrics
    assert METRIC_VARIANTS["gcd_v2"] is gcd_v2_metrics
    r = evaluate_predictions(y, p, 2)
    for key, value in gcd_v2_metrics(y, p, 2).items():
        assert r["gcd_v2_" + key] == value
    for key, value in owdfa_metrics(np.array(y), np.array(p), 2).items():
        assert r[key] == value


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("y", "p", "num_known"),
    [
        ([0, 1], [0], 1),  # length mismatch
        ([], [], 1),  # empty
        ([[0, 1]], [[0, 1]], 1),  # 2-D
        ([0, -1], [0, 1], 1),  # negative label
        ([0, 1], [0, -2], 1),  # negative cluster id
        ([0.0, 1.0], [0, 1], 1),  # float labels
        ([True, False], [0, 1], 1),  # bool labels
        ([0, 1], [0, 1], -1),  # negative num_known
        ([0, 1], [0, 1], 1.5),  # non-int num_known
    ],
)
def test_bad_inputs_raise(y, p, num_known):
    with pytest.raises(ValueError):
        evaluate_predictions(y, p, num_known)


def test_cluster_acc_bad_inputs_raise():
    with pytest.raises(ValueError):
        cluster_acc([0, 1, 2], [0, 1])
    with pytest.raises(ValueError):
        cluster_acc([], [])
