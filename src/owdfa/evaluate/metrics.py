"""Evaluation metrics for open-world deepfake attribution (generalized category discovery).

Test samples carry true labels ``y`` (known classes are ``0..num_known-1``, novel classes are
``>= num_known``) and predicted cluster ids ``p``. Cluster ids are arbitrary, so most accuracies are
computed after a best one-to-one matching of clusters to classes (Hungarian algorithm). Papers disagree
on *which* samples share one matching, so every convention is a thin variant over one core:

* ``owdfa`` (CAL / CPL papers): joint matching for All, no matching for Known, separate matching
  for Novel.
* ``gcd_v1``: separate matchings on the Old and New subsets; All is their size-weighted mean.
* ``gcd_v2``: a single joint matching scores All, Old and New.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

__all__ = [
    "METRIC_VARIANTS",
    "cluster_acc",
    "contingency_matrix",
    "evaluate_predictions",
    "gcd_v1_metrics",
    "gcd_v2_metrics",
    "k_error",
    "match_clusters",
    "owdfa_metrics",
    "per_class_acc",
]

NAN = float("nan")


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------
def _as_labels(a: ArrayLike, name: str) -> np.ndarray:
    """Coerce to a 1-D int64 array; reject floats/bools so silent truncation can't hide bugs."""
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must contain integers, got dtype {arr.dtype}")
    if arr.min() < 0:
        raise ValueError(f"{name} must be non-negative, got min {int(arr.min())}")
    return arr.astype(np.int64, copy=False)


def _validate(y: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y_arr = _as_labels(y, "y")
    p_arr = _as_labels(p, "p")
    if y_arr.shape != p_arr.shape:
        raise ValueError(f"y and p must have the same length, got {y_arr.size} and {p_arr.size}")
    return y_arr, p_arr


def _validate_num_known(num_known: int) -> int:
    if isinstance(num_known, bool) or not isinstance(num_known, numbers.Integral) or num_known < 0:
        raise ValueError(f"num_known must be a non-negative int, got {num_known!r}")
    return int(num_known)


# --------------------------------------------------------------------------------------------------
# core: contingency + Hungarian matching (operates on validated arrays)
# --------------------------------------------------------------------------------------------------
def _contingency(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Square D x D count matrix, rows = clusters, cols = classes; one bincount, no per-sample loop."""
    d = int(max(p.max(), y.max())) + 1
    return np.bincount(p * d + y, minlength=d * d).reshape(d, d)


def _assignment(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Array ``m`` with ``m[cluster] = class`` maximising the number of matched samples.

    The matrix is square, so surplus clusters get paired with absent classes (zero weight) and
    classes without a cluster get nothing: both simply count as errors, as intended.
    """
    w = _contingency(y, p)
    rows, cols = linear_sum_assignment(w, maximize=True)
    mapping = np.empty(w.shape[0], dtype=np.int64)
    mapping[rows] = cols
    return mapping


def _hits(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Boolean per-sample correctness under the best one-to-one matching of ``(y, p)``."""
    return _assignment(y, p)[p] == y


def _mean(mask: np.ndarray) -> float:
    """Mean of a boolean array, NaN when empty (an undefined metric must not read as 0)."""
    return float(mask.mean()) if mask.size else NAN


def _acc(y: np.ndarray, p: np.ndarray) -> float:
    """Matched accuracy on a possibly empty subset."""
    return _mean(_hits(y, p)) if y.size else NAN


def _nmi_ari(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """NMI/ARI, NaN when fewer than 2 samples (the scores are meaningless there)."""
    if y.size < 2:
        return NAN, NAN
    return float(normalized_mutual_info_score(y, p)), float(adjusted_rand_score(y, p))


# --------------------------------------------------------------------------------------------------
# public core
# --------------------------------------------------------------------------------------------------
def contingency_matrix(y: ArrayLike, p: ArrayLike) -> np.ndarray:
    """Square count matrix ``C[cluster, class]`` of size ``max(max(p), max(y)) + 1``."""
    return _contingency(*_validate(y, p))


def match_clusters(y: ArrayLike, p: ArrayLike) -> dict[int, int]:
    """Best one-to-one mapping ``cluster -> class`` for every cluster id present in ``p``.

    A surplus cluster may map to a class absent from ``y``; its samples are then all errors.
    """
    y_arr, p_arr = _validate(y, p)
    mapping = _assignment(y_arr, p_arr)
    return {int(c): int(mapping[c]) for c in np.unique(p_arr)}


def cluster_acc(y: ArrayLike, p: ArrayLike) -> float:
    """Accuracy under the best one-to-one cluster -> class matching (permutation-invariant)."""
    return _acc(*_validate(y, p))


def per_class_acc(y: ArrayLike, p: ArrayLike) -> dict[int, float]:
    """Per-true-class accuracy under the joint matching, to spot which classes get merged or split."""
    y_arr, p_arr = _validate(y, p)
    hits = _hits(y_arr, p_arr)
    classes, inv = np.unique(y_arr, return_inverse=True)
    correct = np.bincount(inv, weights=hits, minlength=classes.size)
    total = np.bincount(inv, minlength=classes.size)
    return {int(c): float(k / n) for c, k, n in zip(classes, correct, total, strict=True)}


def k_error(k_hat: int, k_true: int) -> float:
    """Relative error of the estimated number of classes, ``|k_hat - k_true| / k_true``."""
    if k_true <= 0:
        raise ValueError(f"k_true must be positive, got {k_true!r}")
    if k_hat < 0:
        raise ValueError(f"k_hat must be non-negative, got {k_hat!r}")
    return float(abs(k_hat - k_true) / k_true)


# --------------------------------------------------------------------------------------------------
# variants
# --------------------------------------------------------------------------------------------------
def owdfa_metrics(y: ArrayLike, p: ArrayLike, num_known: int) -> dict[str, float]:
    """OW-DFA (CAL / CPL) convention.

    * All: one joint matching over every sample.
    * Known: plain accuracy (``p == y``), since known classes are supervised and their ids are fixed.
    * Novel: a *separate* matching on novel samples only. This follows the OW-DFA papers; it is more
      lenient than GCD v2 because a novel class may claim a cluster id already used by a known class.
    NMI / ARI are reported on the same three subsets. Undefined subsets give NaN.
    """
    y_arr, p_arr = _validate(y, p)
    num_known = _validate_num_known(num_known)
    known = y_arr < num_known
    novel = ~known
    all_nmi, all_ari = _nmi_ari(y_arr, p_arr)
    known_nmi, known_ari = _nmi_ari(y_arr[known], p_arr[known])
    novel_nmi, novel_ari = _nmi_ari(y_arr[novel], p_arr[novel])
    return {
        "all_acc": _acc(y_arr, p_arr),
        "known_acc": _mean(p_arr[known] == y_arr[known]),
        "novel_acc": _acc(y_arr[novel], p_arr[novel]),
        "all_nmi": all_nmi,
        "all_ari": all_ari,
        "novel_nmi": novel_nmi,
        "novel_ari": novel_ari,
        "known_nmi": known_nmi,
        "known_ari": known_ari,
    }


def gcd_v1_metrics(y: ArrayLike, p: ArrayLike, num_known: int) -> dict[str, float]:
    """GCD "v1": independent matchings on Old and New; All is their size-weighted mean.

    Kept for comparison with early GCD papers; it over-credits because the two subsets may reuse the
    same cluster ids. An empty subset is NaN and drops out of the mean.
    """
    y_arr, p_arr = _validate(y, p)
    num_known = _validate_num_known(num_known)
    old = y_arr < num_known
    new = ~old
    old_acc = _acc(y_arr[old], p_arr[old])
    new_acc = _acc(y_arr[new], p_arr[new])
    n_old, n_new = int(old.sum()), int(new.sum())
    parts = [(n, a) for n, a in ((n_old, old_acc), (n_new, new_acc)) if n]
    all_acc = sum(n * a for n, a in parts) / sum(n for n, _ in parts)
    return {"all_acc": float(all_acc), "old_acc": old_acc, "new_acc": new_acc}


def gcd_v2_metrics(y: ArrayLike, p: ArrayLike, num_known: int) -> dict[str, float]:
    """GCD "v2" (the stricter, now-standard protocol): one joint matching scores All, Old and New."""
    y_arr, p_arr = _validate(y, p)
    num_known = _validate_num_known(num_known)
    hits = _hits(y_arr, p_arr)
    old = y_arr < num_known
    return {"all_acc": _mean(hits), "old_acc": _mean(hits[old]), "new_acc": _mean(hits[~old])}


MetricFn = Callable[[ArrayLike, ArrayLike, int], dict[str, float]]

METRIC_VARIANTS: dict[str, MetricFn] = {
    "owdfa": owdfa_metrics,
    "gcd_v1": gcd_v1_metrics,
    "gcd_v2": gcd_v2_metrics,
}

# Prefix each variant's keys get in ``evaluate_predictions`` (owdfa is the headline, unprefixed).
_PREFIX = {"owdfa": "", "gcd_v1": "gcd_v1_", "gcd_v2": "gcd_v2_"}


def evaluate_predictions(y: ArrayLike, p: ArrayLike, num_known: int) -> dict[str, float]:
    """Flat dict of every variant's metrics plus counts, all plain Python floats (log/JSON friendly)."""
    y_arr, p_arr = _validate(y, p)
    num_known = _validate_num_known(num_known)
    out: dict[str, float] = {}
    for name, fn in METRIC_VARIANTS.items():
        for key, value in fn(y_arr, p_arr, num_known).items():
            out[_PREFIX[name] + key] = float(value)
    out["num_clusters"] = float(np.unique(p_arr).size)
    out["num_samples"] = float(y_arr.size)
    return out
