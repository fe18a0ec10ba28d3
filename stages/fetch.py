"""DVC stage `fetch`: bring the benchmark's raw class folders into data/raw (params: data)."""

import argparse
from pathlib import Path

from owdfa.core.config import Section
from owdfa.core.stage import run_stage
from owdfa.data.fetch import fetch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    summary = fetch(Section.from_file("data", args.params), args.out)
    print(f"fetch: {summary['images']} images in {len(summary['classes'])} classes -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
