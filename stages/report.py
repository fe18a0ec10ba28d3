"""DVC stage `report`: aggregate every run into reports/metrics.json and reports/results.md (params: run)."""

import argparse
from pathlib import Path

from owdfa.report import build_report
from owdfa.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--protocols", nargs="+", required=True)
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, help="folder of per-run prediction CSVs (comparison figures)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    build_report(args.runs, args.protocols, args.methods, args.seeds, args.out, args.predictions)
    print(f"report: {args.out / 'results.md'}")


if __name__ == "__main__":
    run_stage(main)
