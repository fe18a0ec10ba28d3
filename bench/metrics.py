"""Time the metric core on an OWDFA-40-sized test set (18,000 samples, 41 classes, K̂ = 45 clusters).

One call of `evaluate_predictions` computes every variant (owdfa, gcd_v1, gcd_v2, NMI, ARI): the
contingency matrix is one bincount and the matching one Hungarian solve, so this should take well
under a second. Merges {"metrics": ...} into reports/bench.json. Usage: python bench/metrics.py
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
from common import merge_into

from owdfa.evaluate.metrics import evaluate_predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=18_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("reports/bench.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 41, size=args.samples)
    noisy = rng.random(args.samples) < 0.4
    preds = np.where(noisy, rng.integers(0, 45, size=args.samples), (targets * 7) % 41)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        evaluate_predictions(targets, preds, num_known=19)
        times.append(time.perf_counter() - start)
    report = {
        "samples": args.samples,
        "classes": 41,
        "clusters": 45,
        "seconds_median": round(float(np.median(times)), 4),
        "seconds_max": round(max(times), 4),
        "target_seconds": 1.0,
        "machine": {"platform": platform.platform(), "cpu": platform.processor() or platform.machine()},
    }
    merge_into(args.out, "metrics", report)
    print(f"metrics for {args.samples} samples: median {report['seconds_median']} s, max {report['seconds_max']} s")


if __name__ == "__main__":
    main()
