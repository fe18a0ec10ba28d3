"""DVC stage `align`: decode every indexed image once into the face cache data/faces (params: align)."""

import argparse
from pathlib import Path

from owdfa.core.config import Section
from owdfa.core.io import atomic_write_json
from owdfa.core.stage import run_stage
from owdfa.data.align import align


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--summary", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    summary = align(Section.from_file("align", args.params), args.raw, args.index, args.out)
    atomic_write_json(args.summary, summary)
    faces = f", no face found in {summary['no_face']} (whole image kept)" if "no_face" in summary else ""
    print(f"align: {summary['images']} images cached, {summary['skipped']} unreadable skipped{faces} -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
