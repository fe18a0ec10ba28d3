"""DVC stage `pretrain@<protocol>`: the starting weights of the protocol's train runs (params: pretrain, numerics).

`pretrain.mode`: supervised on the labelled known classes, self_supervised (SimCLR on every training
image, no label read), both (SimCLR, then supervised), or none. `--metrics` gets the starting
features' known-class accuracy (`owdfa.train.feature_probe`) in every mode. `pretrain.nproc` and
`--checkpoints` work as in the train stage (see stages/train.py).
"""

import argparse
from pathlib import Path

from owdfa.core.config import Section
from owdfa.core.numerics import pin_from_params
from owdfa.core.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--faces", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoints", type=Path, default=None, help="per-epoch checkpoint directory (resume)")
    parser.add_argument("--metrics", type=Path, default=None, help="starting features' known-class accuracy (JSON)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    pin_from_params(args.params)  # before torch loads: the kernels it picks decide the numbers
    from owdfa.core.distributed import relaunch
    from owdfa.train.config import pretrain_plan
    from owdfa.train.stages import RunPaths, pretrain

    section = Section.from_file("pretrain", args.params)
    plan = pretrain_plan(section)  # checks the params before launching
    relaunch(plan.config.nproc if plan.mode != "none" else 1)
    pretrain(section, RunPaths(args.split, args.faces, args.out, checkpoints=args.checkpoints, metrics=args.metrics))


if __name__ == "__main__":
    run_stage(main)
