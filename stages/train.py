"""DVC stage `train@<protocol>-<method>-<seed>`: one training run (params: train)."""

import argparse
from pathlib import Path

from owdfa.config import Section
from owdfa.pipeline import train
from owdfa.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--faces", type=Path, required=True)
    parser.add_argument("--init", type=Path, default=None, help="pretrain model directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--live", type=Path, default=None, help="dvclive directory")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    train(
        Section.from_file("train", args.params),
        args.method,
        args.seed,
        args.split,
        args.faces,
        args.init,
        args.out,
        args.live,
    )


if __name__ == "__main__":
    run_stage(main)
