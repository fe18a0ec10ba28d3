"""DVC stage `pretrain@<protocol>`: supervised training on the labelled known classes (params: pretrain)."""

import argparse
from pathlib import Path

from owdfa.config import Section
from owdfa.pipeline import pretrain
from owdfa.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--faces", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    pretrain(Section.from_file("pretrain", args.params), args.split, args.faces, args.out)


if __name__ == "__main__":
    run_stage(main)
