"""DVC stage `train@<protocol>-<method>-<seed>`: one training run (params: train, numerics).

The run's variant comes resolved from the `variants` stage (`--variant data/variants/<method>.json`,
params.yaml's `methods.<method>` with its bases applied): the file is a dependency, so a run re-runs
when its variant's settings change, and only then.

`train.nproc: N > 1` re-runs this command under `torchrun --standalone --nproc_per_node N` (one node,
N data-parallel processes: one per GPU, or gloo processes on the CPU). For several nodes start it
under torchrun yourself (`--nnodes`, `--rdzv_endpoint`); the stage then sees WORLD_SIZE and does not
re-launch. `--checkpoints` holds the last epoch's checkpoint: a killed run re-run with the same
params, data and code resumes there and ends with the same weights and curves.
"""

import argparse
from pathlib import Path

from owdfa.core.config import Section
from owdfa.core.numerics import pin_from_params
from owdfa.core.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", type=Path, required=True, help="data/variants/<method>.json")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--faces", type=Path, required=True)
    parser.add_argument("--init", type=Path, default=None, help="pretrain model directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--live", type=Path, default=None, help="dvclive directory")
    parser.add_argument("--checkpoints", type=Path, default=None, help="per-epoch checkpoint directory (resume)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    pin_from_params(args.params)  # before torch loads: the kernels it picks decide the numbers
    from owdfa.core.distributed import relaunch
    from owdfa.methods.registry import read_variant
    from owdfa.train.config import train_config
    from owdfa.train.stages import RunPaths, train

    section = Section.from_file("train", args.params)
    config = train_config(section)  # checks the params before launching
    relaunch(config.nproc)
    paths = RunPaths(args.split, args.faces, args.out, args.init, args.live, args.checkpoints)
    train(section, read_variant(args.variant), args.variant.stem, args.seed, paths, config)


if __name__ == "__main__":
    run_stage(main)
