"""(e) The cost of `dvc repro` when nothing changed: what a user pays to learn that every result is current.

Run in the repository after a complete `dvc repro` (the script refuses to time a pipeline with
changed stages, which would time a real run). Each repeat is one whole `dvc repro` process: Python
and DVC start-up, reading dvc.yaml/params.yaml/dvc.lock and hashing every dependency and output
against the lock (with DVC's own state database warm after the first call). Also timed: `dvc status`.
Reports the median and best of the repeats. Target: <= 3 s. Merges {"repro_noop": ...} into
reports/bench.json. Usage: python bench/repro.py [--repeats 5] [--repo .]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from common import merge_into

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 3.0


def _timed(command: list[str], repo: Path) -> tuple[float, str]:
    start = time.perf_counter()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--repo", type=Path, default=ROOT, help="the DVC project to time (default: this one)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench.json")
    args = parser.parse_args()
    dvc = [sys.executable, "-m", "dvc"]
    _, changed = _timed([*dvc, "status", "--json"], args.repo)  # also warms DVC's state database
    if json.loads(changed or "{}"):
        sys.exit("error: the pipeline is not up to date (see `dvc status`); run `dvc repro` first")
    stages = sum(
        1 for line in _timed([*dvc, "stage", "list", "--all", "--name-only"], args.repo)[1].splitlines() if line.strip()
    )
    repro, status_times = [], []
    for _ in range(args.repeats):
        seconds, output = _timed([*dvc, "repro"], args.repo)
        if "Running stage" in output:
            sys.exit("error: `dvc repro` ran a stage; the timing is only meaningful on an up-to-date pipeline")
        repro.append(seconds)
        status_times.append(_timed([*dvc, "status"], args.repo)[0])
    report = {
        "stages": stages,
        "repeats": args.repeats,
        "repro_seconds_median": round(statistics.median(repro), 3),
        "repro_seconds_best": round(min(repro), 3),
        "status_seconds_median": round(statistics.median(status_times), 3),
        "target_seconds": TARGET_SECONDS,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "dvc": version("dvc"),
        },
    }
    merge_into(args.out, "repro_noop", report)
    print(f"dvc repro with nothing to do ({stages} stages), {args.repeats} repeats:")
    print(f"  repro  median {report['repro_seconds_median']:.2f} s, best {report['repro_seconds_best']:.2f} s")
    print(f"  status median {report['status_seconds_median']:.2f} s   (target for repro: <= {TARGET_SECONDS:.0f} s)")


if __name__ == "__main__":
    main()
