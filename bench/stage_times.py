"""Wall time of every stage a `dvc repro` (or `dvc exp run`) runs, and of the whole command.

Runs the command (default `dvc repro`) in the repository, stamps each output line with the seconds
since the start, and takes a stage's time as the span from its "Running stage" line to the next
one (the last stage's to the end). What a change costs is then the sum of the stages it re-runs.
`--log FILE` reads a log written this way instead of running anything.
Merges {"stage_times": ...} into reports/bench.json.
Usage: python bench/stage_times.py [--repo .] [-- dvc repro]       # a real run: minutes
       python bench/stage_times.py --log repro.log
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from common import cpu_name, merge_into

ROOT = Path(__file__).resolve().parents[1]
STAMPED = re.compile(r"^\s*(\d+(?:\.\d+)?) (.*)$")
RUNNING = re.compile(r"Running stage '([^']+)'")


def stage_seconds(stamped: list[tuple[float, str]], end: float) -> dict[str, float]:
    """Stage name -> seconds, from (seconds since start, line) pairs."""
    starts = [(m.group(1), t) for t, line in stamped if (m := RUNNING.search(line))]
    times: dict[str, float] = {}
    for i, (name, t) in enumerate(starts):
        nxt = starts[i + 1][1] if i + 1 < len(starts) else end
        times[name] = round(nxt - t, 1)
    return times


def run_stamped(command: list[str], repo: Path) -> tuple[list[tuple[float, str]], float, int]:
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    stamped = []
    assert proc.stdout is not None
    for line in proc.stdout:
        t = time.monotonic() - start
        stamped.append((t, line.rstrip("\n")))
        print(f"{t:8.1f} {line}", end="", flush=True)
    code = proc.wait()
    return stamped, time.monotonic() - start, code


def read_log(path: Path) -> tuple[list[tuple[float, str]], float]:
    stamped, end = [], 0.0
    for line in path.read_text().splitlines():
        if line.startswith("TOTAL "):
            end = float(line.split()[1])
        elif m := STAMPED.match(line):
            stamped.append((float(m.group(1)), m.group(2)))
    return stamped, end or (stamped[-1][0] if stamped else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=ROOT)
    parser.add_argument("--log", type=Path, help="a stamped log to read instead of running the command")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench.json")
    parser.add_argument("command", nargs="*", default=["dvc", "repro"])
    args = parser.parse_args()
    if args.log:
        stamped, end = read_log(args.log)
        code = 0
    else:
        stamped, end, code = run_stamped(args.command or ["dvc", "repro"], args.repo)
    if code:
        sys.exit(f"error: {' '.join(args.command)} exited with {code}")
    times = stage_seconds(stamped, end)
    report = {"command": " ".join(args.command), "cpu": cpu_name(), "total_s": round(end, 1), "stages": times}
    merge_into(args.out, "stage_times", report)
    groups: dict[str, float] = {}
    for name, seconds in times.items():
        group = name.split("@")[0] + ("@" + name.split("-")[1] if name.startswith(("train@", "evaluate@")) else "")
        groups[group] = groups.get(group, 0.0) + seconds
    print(f"total {end / 60:.1f} min ({end:.0f} s)")
    for group, seconds in groups.items():
        print(f"  {group:<24}{seconds:8.1f} s")


if __name__ == "__main__":
    main()
