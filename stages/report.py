"""DVC stage `report`: aggregate every run into reports/metrics.json and reports/results.md (params: run,
official.models: the imported models' names, whose evaluations join the tables)."""

import argparse
from pathlib import Path

from owdfa.core.config import Section
from owdfa.core.stage import run_stage
from owdfa.evaluate.report import ReportedRuns, build_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--protocols", nargs="+", required=True)
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, help="folder of per-run prediction CSVs (comparison figures)")
    parser.add_argument("--pretrain", type=Path, help="folder of the pretrain stages' metrics (starting features)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    imported = list(Section.from_file("official", args.params).section("models").keys())
    runs = ReportedRuns(args.protocols, args.methods, args.seeds, imported)
    build_report(args.runs, runs, args.out, args.predictions, args.pretrain)
    print(f"report: {args.out / 'results.md'}")


if __name__ == "__main__":
    run_stage(main)
