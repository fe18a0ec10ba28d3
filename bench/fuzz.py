"""The fuzz targets of tests/test_fuzz.py for as long as asked: examples per target, findings, the CPU.

    python bench/fuzz.py --minutes 30        # writes reports/fuzz.json; exit 1 if a target failed

The suite runs every target with the small, derandomised `ci` profile. Here each target first runs
that profile once to measure its speed, then the `long` profile (new random examples every run)
with as many examples as its share of the minutes allows. A failure prints hypothesis' falsifying
example; make it an `@example` in tests/test_fuzz.py, fix the code, and run again.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from common import cpu_name

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests" / "test_fuzz.py"
CI_EXAMPLES = 25  # the ci profile's max_examples
STATS = re.compile(r"(\d+) passing examples?, (\d+) failing examples?, (\d+) invalid examples?")
PHASE = re.compile(r"during generate phase \(([\d.]+) seconds\)")  # the examples' own time, no start-up


def targets() -> list[str]:
    """The tests of test_fuzz.py that hypothesis drives (decorated `@given`)."""
    tree = ast.parse(TESTS.read_text())
    names = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            decorators = [d.func for d in node.decorator_list if isinstance(d, ast.Call)]
            if any(isinstance(d, ast.Name) and d.id == "given" for d in decorators):
                names.append(node.name)
    return names


def run(name: str, profile: str, examples: int) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, OWDFA_FUZZ_PROFILE=profile, OWDFA_FUZZ_EXAMPLES=str(examples))
    command = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider", "-W", "ignore"]
    command += ["--hypothesis-show-statistics", f"{TESTS}::{name}"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    return done, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="in all, shared equally by the targets")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "fuzz.json")
    args = parser.parse_args()
    names = targets()
    share = args.minutes * 60 / len(names)
    report: dict = {"cpu": cpu_name(), "minutes": args.minutes, "targets": {}}
    failed = False
    for name in names:
        calibration, wall = run(name, "ci", CI_EXAMPLES)
        phases = [float(t) for t in PHASE.findall(calibration.stdout)]
        per_example = (sum(phases) if phases else wall) / CI_EXAMPLES
        totals = {"asked": 0, "passing": 0, "failing": 0, "invalid": 0, "runs": 0}
        spent, ok, tail = wall, True, ""
        while ok and spent < share:  # runs of new random examples until the target's share is spent
            examples = max(CI_EXAMPLES, int((share - spent) / max(per_example, 1e-4)))
            done, seconds = run(name, "long", examples)
            counts = [tuple(map(int, m)) for m in STATS.findall(done.stdout)]
            passing, failing, invalid = (sum(c[i] for c in counts) for i in range(3)) if counts else (0, 0, 0)
            phases = [float(t) for t in PHASE.findall(done.stdout)]
            per_example = max(sum(phases) if phases else seconds, 1e-3) / max(passing + invalid, 1)
            for key, value in (("asked", examples), ("passing", passing), ("failing", failing), ("invalid", invalid)):
                totals[key] += value
            totals["runs"] += 1
            spent += seconds
            ok = done.returncode == 0
            tail = "" if ok else done.stdout[-3000:]
        failed |= not ok
        found = {"output_tail": tail} if tail else {}
        report["targets"][name] = {**totals, "seconds": round(spent, 1), "ok": ok, **found}
        line = f"{totals['passing']} passing, {totals['failing']} failing, {totals['invalid']} invalid"
        print(f"{name}: {line} in {spent:.0f} s ({totals['runs']} runs)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
