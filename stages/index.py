"""DVC stage `index`: sorted recursive listing of data/raw into data/index.csv (no params)."""

import argparse
import sys
from pathlib import Path

from owdfa.core.stage import run_stage
from owdfa.data.index import build_index, write_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows, skipped = build_index(args.raw)
    for name in skipped:
        print(f"warning: {args.raw / name}: not a '<label>_<Family>_<Method>' class folder, skipped", file=sys.stderr)
    write_index(rows, args.out)
    print(f"index: {len(rows)} images in {len({r.class_name for r in rows})} class folders -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
