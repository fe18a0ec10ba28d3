"""DVC stage `split@<protocol>`: CAL-rule split manifest for one protocol (params: split)."""

import argparse
from pathlib import Path

from owdfa.core.config import Section
from owdfa.core.stage import run_stage
from owdfa.data.face_cache import read_faces
from owdfa.data.split import write_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--protocol", required=True)
    parser.add_argument("--faces", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    faces, _ = read_faces(args.faces)
    table = write_split(Section.from_file("split", args.params), faces, args.protocol, args.out)
    counts = ", ".join(f"{k} {v}" for k, v in table["counts"].items())
    print(f"split {args.protocol}: {table['num_known']} known / {table['num_classes']} classes; {counts}")


if __name__ == "__main__":
    run_stage(main)
