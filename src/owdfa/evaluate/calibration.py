"""Calibration of any confidence score against per-sample correctness (pure NumPy).

Reliability table and expected calibration error (ECE; Naeini et al. 2015, Guo et al. 2017). Open-world
predictions are cluster ids, so `matched_correct` scores them after the Hungarian matching of
`owdfa.evaluate.metrics`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from owdfa.core.arguments import check_positive_int
from owdfa.evaluate.metrics import match_clusters

__all__ = ["expected_calibration_error", "matched_correct", "reliability_table"]


def _validate_calibration(confidence: ArrayLike, correct: ArrayLike, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Reject what would silently give a wrong ECE: mismatched lengths, NaN or out-of-[0,1] confidences."""
    bins = check_positive_int(bins, "bins")
    conf = np.asarray(confidence)
    hits = np.asarray(correct)
    if conf.ndim != 1 or hits.ndim != 1:
        raise ValueError(f"confidence and correct must be 1-D, got shapes {conf.shape} and {hits.shape}")
    if conf.shape != hits.shape:
        raise ValueError(f"confidence and correct must have the same length, got {conf.size} and {hits.size}")
    if conf.size == 0:
        raise ValueError("confidence is empty")
    if not (np.issubdtype(conf.dtype, np.floating) or np.issubdtype(conf.dtype, np.integer)):
        raise ValueError(f"confidence must be numeric, got dtype {conf.dtype}")
    conf = conf.astype(np.float64)
    if not np.all(np.isfinite(conf)) or conf.min() < 0.0 or conf.max() > 1.0:
        raise ValueError("confidence must be finite and within [0, 1]")
    if hits.dtype != np.bool_:
        if not np.issubdtype(hits.dtype, np.number) or not np.all(np.isin(hits, (0, 1))):
            raise ValueError("correct must be boolean (or 0/1)")
        hits = hits.astype(bool)
    return conf, hits


def reliability_table(confidence: ArrayLike, correct: ArrayLike, bins: int = 15) -> pd.DataFrame:
    """Per-bin count, mean confidence and accuracy: the data behind a reliability diagram.

    Equal-width bins ``[lower, upper)`` on [0, 1], the last one closed so confidence 1.0 is counted.
    Empty bins stay in the table (count 0, NaN means) so tables from different models line up.
    """
    conf, hits = _validate_calibration(confidence, correct, bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # searchsorted against the very edges that are reported keeps the assignment consistent with them
    index = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=conf, minlength=bins)
    hit_sum = np.bincount(index, weights=hits.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, hit_sum / count, np.nan)
    return pd.DataFrame(
        {
            "bin_lower": edges[:-1],
            "bin_upper": edges[1:],
            "count": count.astype(np.int64),
            "mean_confidence": mean_conf,
            "accuracy": accuracy,
        }
    )


def expected_calibration_error(confidence: ArrayLike, correct: ArrayLike, bins: int = 15) -> float:
    """ECE = sum over bins of count/N * |accuracy - mean confidence| (bins as in `reliability_table`)."""
    table = reliability_table(confidence, correct, bins)
    filled = table[table["count"] > 0]
    weights = filled["count"].to_numpy() / table["count"].sum()
    gaps = np.abs(filled["accuracy"].to_numpy() - filled["mean_confidence"].to_numpy())
    return float(np.sum(weights * gaps))


def matched_correct(targets: ArrayLike, preds: ArrayLike) -> np.ndarray:
    """Per-sample correctness of cluster predictions under one Hungarian matching over all samples.

    Open-world cluster ids are arbitrary, so a prediction counts as correct when its cluster's matched
    class is the target (the same matching as the "All" accuracy).
    """
    mapping = match_clusters(targets, preds)  # validates: 1-D, same length, non-negative ints
    y = np.asarray(targets, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    lookup = np.full(int(p.max()) + 1, -1, dtype=np.int64)
    lookup[list(mapping)] = list(mapping.values())
    return lookup[p] == y
