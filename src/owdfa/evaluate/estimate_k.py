"""Two K estimators on model features: GCD's own, and our fold-based SS-k-means variant.

* :func:`gcd_estimate_k` (public label ``gcd``) is GCD's estimator as the official code runs it
  (Vaze et al., "Generalized Category Discovery", CVPR 2022; ``methods/estimate_k/estimate_k.py``,
  ``test_kmeans_for_scipy`` + ``scipy_optimise``): plain scikit-learn k-means with ``random_state=0``
  on the L2-normalised features of every training row, a ``K`` scored by the Hungarian cluster
  accuracy of the labelled rows only, and bounded Brent (``scipy.optimize.minimize_scalar``) over
  ``[num_known, k_max]`` with each trial point truncated by ``int()``. This is the estimator behind
  the "GCD" K figures CAL's paper compares DPP against.
* :func:`ss_kmeans_folds_estimate_k` (public label ``ss_kmeans_folds``) is *our* variant, not GCD's:
  it runs :func:`ss_kmeans` (GCD's label-pinned *clustering* method) inside the K search. With
  labelled rows pinned the labelled score would be trivially 100 %, so labelled rows are split into
  pinned and held-out ones. Holding out only half of each class's rows leaves the score flat for every
  K below the truth (known clusters stay anchored whatever the novel ones do), so each known class is
  also held out *entirely* in one of two complementary folds (see :func:`_folds`), where too small a K
  shows up as merged classes.

:func:`ss_kmeans` clusters labelled and unlabelled features together. Known class ``c`` owns cluster
``c`` (``0..num_known-1``); its centroid starts at the class mean and its labelled samples never move.
The other ``k - num_known`` centroids start from k-means++ on the unlabelled features (distances
counted to every centroid chosen so far, the class means included). Each Lloyd step re-assigns only
the unlabelled samples and recomputes every centroid from all its members.

Only the ``-1`` / label values passed in are used; true labels of unlabelled samples are never seen.
"""

from __future__ import annotations

import numbers
from contextlib import AbstractContextManager

import numpy as np
from numpy.typing import ArrayLike
from scipy import sparse
from scipy.optimize import minimize_scalar
from sklearn.cluster import KMeans
from threadpoolctl import ThreadpoolController

from owdfa.evaluate.metrics import cluster_acc

__all__ = [
    "GCD_KMEANS_PARAMS",
    "K_ESTIMATORS",
    "gcd_estimate_k",
    "run_k_estimator",
    "ss_kmeans",
    "ss_kmeans_folds_estimate_k",
]

UNLABELLED = -1


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------
def _int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _validate(features: ArrayLike, labels: ArrayLike, num_known: int) -> tuple[np.ndarray, np.ndarray, int]:
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"features must be a non-empty 2-D array (N x D), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)) or x.dtype == np.bool_:
        raise ValueError(f"features must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be 1-D with one entry per feature row ({x.shape[0]}), got shape {y.shape}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers (-1 for unlabelled), got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    num_known = _int(num_known, "num_known", 0)
    bad = (y < UNLABELLED) | (y >= num_known)
    if bad.any():
        raise ValueError(f"labels must be -1 or in [0, {num_known}), got {int(y[bad][0])}")
    missing = np.setdiff1d(np.arange(num_known), y)
    if missing.size:
        raise ValueError(f"known classes without a labelled sample: {missing[:10].tolist()}")
    return x, y, num_known


# --------------------------------------------------------------------------------------------------
# semi-supervised k-means
# --------------------------------------------------------------------------------------------------
def _sq_dists(x: np.ndarray, x_sq: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``|x|^2 - 2 x.c + |c|^2`` (one matrix product), clipped at 0."""
    d = x_sq[:, None] - 2.0 * (x @ c.T) + np.einsum("ij,ij->i", c, c)[None, :]
    return np.maximum(d, 0.0, out=d)


def _kmeanspp(x: np.ndarray, x_sq: np.ndarray, chosen: np.ndarray, n_new: int, rng: np.random.Generator) -> np.ndarray:
    """``n_new`` k-means++ seeds from rows of ``x``, D^2 counted to ``chosen`` and earlier seeds.

    With nothing chosen yet (or every row already on a centroid) the pick is uniform over rows not
    taken so far.
    """
    seeds = np.empty((n_new, x.shape[1]))
    d2 = _sq_dists(x, x_sq, chosen).min(axis=1) if chosen.shape[0] else np.zeros(x.shape[0])
    taken = np.zeros(x.shape[0], dtype=bool)
    for i in range(n_new):
        total = d2.sum()
        idx = int(rng.choice(x.shape[0], p=d2 / total)) if total > 0 else int(rng.choice(np.flatnonzero(~taken)))
        taken[idx] = True
        seeds[i] = x[idx]
        np.minimum(d2, _sq_dists(x, x_sq, x[idx : idx + 1])[:, 0], out=d2)
    return seeds


def _class_means(x: np.ndarray, y: np.ndarray, num_known: int) -> np.ndarray:
    lab = y >= 0
    onehot = sparse.csr_matrix((np.ones(lab.sum()), (y[lab], np.flatnonzero(lab))), shape=(num_known, x.shape[0]))
    return np.asarray(onehot @ x) / np.bincount(y[lab], minlength=num_known)[:, None]


def _lloyd(
    x: np.ndarray, x_sq: np.ndarray, y: np.ndarray, centroids: np.ndarray, max_iter: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd iterations with labelled rows pinned to their class cluster; returns (assign, centroids, inertia)."""
    n, k = x.shape[0], centroids.shape[0]
    unl = np.flatnonzero(y < 0)
    x_u, x_u_sq = x[unl], x_sq[unl]
    assign = y.copy()
    rows = np.arange(n)
    for it in range(max_iter):
        if unl.size:
            new_u = _sq_dists(x_u, x_u_sq, centroids).argmin(axis=1)
            if it > 0 and np.array_equal(new_u, assign[unl]):
                break
            assign[unl] = new_u
        elif it > 0:
            break
        members = sparse.csr_matrix((np.ones(n), (assign, rows)), shape=(k, n))
        counts = np.bincount(assign, minlength=k)
        sums = np.asarray(members @ x)
        full = counts > 0  # an emptied free cluster keeps its previous centroid
        centroids = centroids.copy()
        centroids[full] = sums[full] / counts[full, None]
    d = x - centroids[assign]
    return assign, centroids, float(np.einsum("ij,ij->", d, d))


def ss_kmeans(
    features: ArrayLike,
    labels: ArrayLike,
    num_known: int,
    k: int,
    *,
    n_init: int = 3,
    max_iter: int = 100,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Semi-supervised k-means (GCD); returns ``(assignments (N,), centroids (k x D), inertia)``.

    ``labels`` holds the class ``0..num_known-1`` of labelled rows and ``-1`` for unlabelled ones;
    every known class needs at least one labelled row. Labelled rows always end in cluster = their
    class. Features are used as given (no normalisation). Of ``n_init`` seeded inits the one with
    the lowest inertia (sum of squared distances of all rows to their centroid) is returned.
    """
    x, y, num_known = _validate(features, labels, num_known)
    k = _int(k, "k", 1)
    n_init = _int(n_init, "n_init", 1)
    max_iter = _int(max_iter, "max_iter", 1)
    seed = _int(seed, "seed", 0)
    if k < num_known:
        raise ValueError(f"k ({k}) must be >= num_known ({num_known})")
    unl = y < 0
    n_free = k - num_known
    if n_free > unl.sum():
        raise ValueError(f"k - num_known = {n_free} new clusters but only {int(unl.sum())} unlabelled rows")
    x_sq = np.einsum("ij,ij->i", x, x)
    known = _class_means(x, y, num_known) if num_known else np.empty((0, x.shape[1]))
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for child in np.random.SeedSequence(seed).spawn(n_init):
        rng = np.random.default_rng(child)
        free = _kmeanspp(x[unl], x_sq[unl], known, n_free, rng) if n_free else np.empty((0, x.shape[1]))
        result = _lloyd(x, x_sq, y, np.vstack([known, free]), max_iter)
        if best is None or result[2] < best[2]:
            best = result
    assert best is not None
    return best


# --------------------------------------------------------------------------------------------------
# K estimation
# --------------------------------------------------------------------------------------------------
def _l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _folds(y: np.ndarray, num_known: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int, np.ndarray]]:
    """Two complementary folds ``(labels to fit, num pinned classes, scored mask)`` over the labelled rows.

    The known classes are shuffled into halves A and B. In the fold pinning A, a random half of each
    A class's rows keeps its label (A renumbered ``0..|A|-1``); the other half of A and every row of
    B are passed as unlabelled and scored. The second fold swaps A and B, so each known class is once
    clustered freely, like a novel class (the only way too small a K can show on labelled rows).
    """
    order = rng.permutation(num_known)
    held = np.zeros(y.shape[0], dtype=bool)
    for c in range(num_known):  # per-class half, at least one row kept
        rows = rng.permutation(np.flatnonzero(y == c))
        held[rows[max(1, rows.size // 2) :]] = True
    labelled = y >= 0
    folds = []
    for pinned_classes in (order[: num_known // 2], order[num_known // 2 :]):
        remap = np.full(num_known, UNLABELLED)
        remap[np.sort(pinned_classes)] = np.arange(pinned_classes.size)
        fit = np.where(labelled & ~held, remap[np.maximum(y, 0)], UNLABELLED)
        folds.append((fit, int(pinned_classes.size), labelled & (fit < 0)))
    return folds


def ss_kmeans_folds_estimate_k(
    features: ArrayLike,
    labels: ArrayLike,
    num_known: int,
    k_max: int,
    *,
    seed: int = 0,
    n_init: int = 2,
    n_repeats: int = 2,
) -> dict[str, object]:
    """Our variant (``ss_kmeans_folds``): the ``K`` whose SS-k-means best clusters held-out labelled rows.

    Not GCD's estimator (that is :func:`gcd_estimate_k`, which scores plain k-means on all labelled
    rows). Features are L2-normalised. Labelled rows are split into pinned and held-out ones (see
    :func:`_folds`; ``n_repeats`` seeded splits of two folds each); for a candidate ``K`` the score is
    the mean over folds of ``cluster_acc`` of the held-out rows' labels vs. their SS-k-means clusters.
    Bounded Brent over ``K`` (rounded to an int inside the objective, evaluations cached) maximises
    it; Brent on this step function stops after few distinct ``K``, so the integer neighbours of the
    best ``K`` are then scored until the best ones have no unscored neighbour. When several ``K`` tie
    for the best score, the upper median of them is returned.
    Returns ``{"k_hat": int, "evaluated": {K: score}, "k_max": k_max}``.
    """
    x, y, num_known = _validate(features, labels, num_known)
    num_known = _int(num_known, "num_known", 1)
    k_max = _int(k_max, "k_max", num_known)
    seed = _int(seed, "seed", 0)
    n_init = _int(n_init, "n_init", 1)
    n_repeats = _int(n_repeats, "n_repeats", 1)
    x = _l2_normalise(x)
    rng = np.random.default_rng(seed)
    folds = [fold for _ in range(n_repeats) for fold in _folds(y, num_known, rng)]
    for fit, n_pinned, _ in folds:
        if k_max - n_pinned > int((fit < 0).sum()):
            raise ValueError(f"k_max ({k_max}) exceeds the number of clusters the {y.shape[0]} rows can fill")
    evaluated: dict[int, float] = {}

    def score(k: int) -> float:
        if k not in evaluated:
            accs = [
                cluster_acc(y[scored], ss_kmeans(x, fit, n_pinned, k, n_init=n_init, seed=seed)[0][scored])
                for fit, n_pinned, scored in folds
            ]
            evaluated[k] = float(np.mean(accs))
        return evaluated[k]

    if k_max == num_known:
        score(num_known)
    else:
        minimize_scalar(
            lambda k: -score(int(np.clip(round(k), num_known, k_max))), bounds=(num_known, k_max), method="bounded"
        )
    while True:  # integer polish: score every unseen neighbour of the best K(s) until none is left
        best = max(evaluated.values())
        ties = sorted(k for k, value in evaluated.items() if value == best)
        unseen = {n for k in ties for n in (k - 1, k + 1) if num_known <= n <= k_max and n not in evaluated}
        if not unseen:
            break
        for n in sorted(unseen):
            score(n)
    return {"k_hat": int(ties[len(ties) // 2]), "evaluated": dict(sorted(evaluated.items())), "k_max": k_max}


# --------------------------------------------------------------------------------------------------
# GCD's K estimator, as the official code runs it
# --------------------------------------------------------------------------------------------------
# GCD calls ``KMeans(n_clusters=K, random_state=0)`` and relies on the defaults of the scikit-learn it
# pinned (requirements.txt: 1.1.1; environment.yml: 0.21.3). Both used n_init=10; since 1.4 the
# default is n_init="auto" (a single k-means++ run), so the old values are passed explicitly here.
# 1.1.1's default algorithm is "lloyd"; 0.21.3's "auto" meant Elkan, which in exact arithmetic gives
# Lloyd's result from the same seeds (it only skips provably useless distance computations).
# scikit-learn does not promise the same k-means++ draws for random_state=0 across versions, so this is
# GCD's procedure and settings, not a bit-for-bit replay of its runs.
GCD_KMEANS_PARAMS: dict[str, object] = {
    "init": "k-means++",
    "n_init": 10,
    "max_iter": 300,
    "tol": 1e-4,
    "algorithm": "lloyd",
    "random_state": 0,
}
# minimize_scalar(method="bounded") options: GCD passes only disp=True (printing, no effect on the
# result), so scipy's defaults apply; pinned here so a future default change cannot move K-hat.
GCD_BRENT_OPTIONS: dict[str, float] = {"xatol": 1e-5, "maxiter": 500}
# scikit-learn's Lloyd iteration adds each OpenMP thread's partial centre sums under a lock, in the
# order the threads finish (sklearn/cluster/_k_means_lloyd.pyx, lloyd_iter_chunked_dense; its inertia
# likewise). With one or two threads that order cannot change a bit (0 + a + b == 0 + b + a); with
# three or more it can, from run to run. So k-means never runs on more than two threads.
KMEANS_MAX_THREADS = 2


def _kmeans_threads_capped() -> AbstractContextManager[object]:
    """A context in which OpenMP runs at most KMEANS_MAX_THREADS threads (fewer stay as they are)."""
    controller = ThreadpoolController()
    current = [info["num_threads"] for info in controller.info() if info["user_api"] == "openmp"]
    return controller.limit(limits=min([KMEANS_MAX_THREADS, *current]), user_api="openmp")


def _gcd_features(features: ArrayLike) -> np.ndarray:
    """L2-normalised rows as ``torch.nn.functional.normalize`` does it (``x / max(|x|, 1e-12)``).

    GCD clusters its saved float32 features in float32, so float32 input stays float32 (k-means
    then runs in float32 too); anything else is computed in float64.
    """
    raw = np.asarray(features)
    x = raw.astype(np.float32 if raw.dtype == np.float32 else np.float64, copy=True)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def gcd_estimate_k(features: ArrayLike, labels: ArrayLike, num_known: int, k_max: int) -> dict[str, object]:
    """GCD's K estimate: bounded Brent over ``K`` on plain k-means' accuracy on the labelled rows.

    ``labels`` holds the class of labelled rows and ``-1`` for unlabelled ones; all rows are
    clustered, only labelled rows are scored, so an unlabelled row's true class cannot matter.
    Each Brent trial point ``x`` in ``(num_known, k_max)`` is clustered with ``K = int(x)``
    (truncation, as GCD); the score is ``cluster_acc`` (GCD's: one Hungarian matching on a square
    contingency matrix). K-means is seeded with ``random_state=0``, so there is no seed argument.
    ``k_hat = int(res.x)``: the K of Brent's best point (GCD prints ``res.x``; its score is the one at
    ``int(res.x)``). A ``K`` Brent revisits is not re-clustered (same data, same seed: same result).

    Returns ``{"k_hat", "x" (res.x), "evaluated" {K: labelled accuracy}, "trace" [(x, K)] in Brent's
    order, "k_max"}``.
    """
    _, y, num_known = _validate(features, labels, num_known)
    num_known = _int(num_known, "num_known", 1)
    k_max = _int(k_max, "k_max", num_known + 1)
    if k_max > y.shape[0]:
        raise ValueError(f"k_max ({k_max}) exceeds the number of rows ({y.shape[0]}) k-means can split")
    x = _gcd_features(features)
    labelled = y >= 0
    y_lab = y[labelled]
    evaluated: dict[int, float] = {}
    trace: list[tuple[float, int]] = []

    def negative_score(point: float) -> float:
        k = int(point)
        trace.append((float(point), k))
        if k not in evaluated:
            with _kmeans_threads_capped():
                pred = KMeans(n_clusters=k, **GCD_KMEANS_PARAMS).fit(x).labels_
            evaluated[k] = cluster_acc(y_lab, pred[labelled].astype(np.int64))
        return -evaluated[k]

    res = minimize_scalar(negative_score, bounds=(num_known, k_max), method="bounded", options=GCD_BRENT_OPTIONS)
    return {
        "k_hat": int(res.x),
        "x": float(res.x),
        "evaluated": dict(sorted(evaluated.items())),
        "trace": trace,
        "k_max": k_max,
    }


# --------------------------------------------------------------------------------------------------
# the estimators by public name
# --------------------------------------------------------------------------------------------------
K_ESTIMATORS = ("gcd", "ss_kmeans_folds")


def run_k_estimator(
    name: str, features: ArrayLike, labels: ArrayLike, num_known: int, k_max: int, *, seed: int = 0
) -> int:
    """K-hat of the estimator called ``name`` (one of :data:`K_ESTIMATORS`); ``seed`` only feeds ours."""
    if name == "gcd":
        return int(gcd_estimate_k(features, labels, num_known, k_max)["k_hat"])
    if name == "ss_kmeans_folds":
        return int(ss_kmeans_folds_estimate_k(features, labels, num_known, k_max, seed=seed)["k_hat"])
    raise ValueError(f"unknown K estimator {name!r}; choose from {list(K_ESTIMATORS)}")
