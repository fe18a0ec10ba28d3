"""DVC stage `pretrain@<protocol>`: supervised training on the labelled known classes (params: pretrain, numerics).

`pretrain.nproc` and `--checkpoints` work as in the train stage (see stages/train.py).
"""

import argparse
from pathlib import Path

from owdfa.config import Section
from owdfa.numerics import pin_from_params
from owdfa.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--faces", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoints", type=Path, default=None, help="per-epoch checkpoint directory (resume)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    pin_from_params(args.params)  # before torch loads: the kernels it picks decide the numbers
    from owdfa.distributed import relaunch
    from owdfa.train_config import train_config
    from owdfa.training_stages import PRETRAIN_EXTRA, pretrain

    section = Section.from_file("pretrain", args.params)
    nproc = train_config(section, extra_keys=PRETRAIN_EXTRA).nproc  # checks the params before launching
    relaunch(nproc if section.bool("enabled") else 1)
    pretrain(section, args.split, args.faces, args.out, args.checkpoints)


if __name__ == "__main__":
    run_stage(main)
