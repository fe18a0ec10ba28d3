"""Run the benchmarks and print the issue's table (a)-(e) from reports/bench.json.

    python bench/run.py              # run every benchmark (about 6 minutes on 2 CPU cores), then the table
    python bench/run.py --table      # only print the table of what reports/bench.json holds
    python bench/run.py --only train repro

Each script merges its own key into reports/bench.json (see its docstring); `repro` needs an
up-to-date pipeline (`dvc repro` first). Extra options go to the scripts themselves, e.g.
`python bench/train.py --backbone resnet50 --image-size 256 --batch-size 128` on a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# name -> (script, extra arguments); each merges its own key (the name) into bench.json
RUNS = {
    "metrics": ("metrics.py", ()),
    "align": ("align.py", ()),
    "train": ("train.py", ()),  # the CPU-sized set-up: test backbone, 64 px
    "train_resnet50": (
        "train.py",
        (
            "--backbone",
            "resnet50",
            "--image-size",
            "256",
            "--batch-size",
            "8",
            "--steps",
            "2",
        ),
    ),  # fmt: skip
    "budget": ("budget.py", ()),
    "repro": ("repro.py", ()),
}


def _where(machine: dict) -> str:
    if machine.get("gpu"):
        return f"{machine['gpu']}, {machine.get('precision', '')}"
    return f"CPU ({machine.get('cpu') or machine.get('platform', '?')}), {machine.get('precision', 'fp32')}".strip()


def table(bench: dict) -> list[tuple[str, str, str, str, str]]:
    """(item, measured, target, met, where) rows; items not measured yet say so."""
    rows = []
    trains = [key for key in ("train", "train_resnet50") if bench.get(key)]
    a_rows, b_rows = [], []
    for key in trains:
        train = bench[key]
        cfg = train["config"]
        where = f"{_where(train['machine'])}; {cfg['backbone']} {cfg['image_size']} px, batch {cfg['batch_size']}"
        eff, head = train["step_efficiency"], train["input_headroom"]
        a_rows.append(("(a) CAL step / bare backbone fwd+bwd", f"{eff:.3f}", ">= 0.90", _met(eff >= 0.9), where))
        b_rows.append(("(b) input pipeline / training rate", f"{head:.1f}", ">= 3", _met(head >= 3), where))
    rows += a_rows + b_rows
    if not trains:
        rows.append(("(a) step efficiency", "not run", ">= 0.90", "", ""))
        rows.append(("(b) input headroom", "not run", ">= 3", "", ""))
    align = bench.get("align")
    if align:
        for result in align["results"]:
            if result["workers"] == 1:
                rows.append(
                    (
                        f"(c) align, {result['mode']}, per worker",
                        f"{result['images_per_s_after_startup']:.0f} img/s",
                        "-",
                        "",
                        f"CPU ({align['machine']['cpu']}), {align['corpus']['image_size']} px",
                    )
                )
    else:
        rows.append(("(c) align per worker", "not run", "-", "", ""))
    metrics = bench.get("metrics")
    if metrics:
        seconds = metrics["seconds_median"]
        rows.append(
            (
                f"(d) metrics, {metrics['samples']:,} samples",
                f"{seconds:.3f} s",
                "< 1 s",
                _met(seconds < 1.0),
                "CPU",
            )
        )
    else:
        rows.append(("(d) metrics", "not run", "< 1 s", "", ""))
    repro = bench.get("repro_noop")
    if repro:
        seconds = repro["repro_seconds_median"]
        rows.append(
            (
                f"(e) dvc repro, nothing to do ({repro['stages']} stages)",
                f"{seconds:.2f} s",
                "<= 3 s",
                _met(seconds <= 3.0),
                f"CPU, {repro['machine']['cpu_count']} cores",
            )
        )
    else:
        rows.append(("(e) dvc repro no-op", "not run", "<= 3 s", "", ""))
    return rows


def _met(ok: bool) -> str:
    return "yes" if ok else "NO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", action="store_true", help="only print the table")
    parser.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench.json")
    args = parser.parse_args()
    if not args.table:
        for name in args.only:
            script, extra = RUNS[name]
            extra = (*extra, "--key", name) if script == "train.py" else extra
            print(f"== bench/{script} {' '.join(extra)}", flush=True)
            command = [sys.executable, str(ROOT / "bench" / script), *extra, "--out", str(args.out)]
            if subprocess.run(command, cwd=ROOT).returncode != 0:
                print(f"bench/{script} failed; its rows keep the previous results", flush=True)
    if not args.out.is_file():
        sys.exit(f"error: {args.out}: no benchmark results yet; run python bench/run.py")
    rows = table(json.loads(args.out.read_text()))
    header = ("item", "measured", "target", "met", "where")
    widths = [max(len(r[i]) for r in (*rows, header)) for i in range(len(header))]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    main()
