"""What exact mode costs: the embedded benchmark's CAL training step under each numerics pin.

Each set-up runs in its own process (the libraries read their pins when they load): no pin (the
libraries choose, as `numerics.reproducible: false`), each pin of `owdfa.core.numerics` alone, and all of
them (exact mode). The thread count is the same everywhere (`--threads`, default 2 = numerics.threads),
so only the kernels differ; what a fixed thread count costs on a machine with more cores is the ratio
of its core count to `threads`, at most. Rounds take turns over the set-ups; each rate is the best of
`--rounds`. The OpenBLAS and NumPy pins touch only NumPy (evaluation's k-means and metrics), not this
step. Merges {"numerics": ...} into reports/bench.json; another backbone goes under its own key.
Usage: python bench/numerics.py            # about 2.5 minutes on 2 cores
       python bench/numerics.py --backbone resnet50 --image-size 256 --batch-size 8 --steps 4 --only-exact
                                           # the OWDFA-40 preset's network on the CPU (about 3 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import cpu_name, merge_into

from owdfa.core.numerics import EXACT_ISA, THREAD_VARIABLES

ROOT = Path(__file__).resolve().parents[1]
BASE, EXACT = "none (reproducible: false)", "all (exact mode)"
SETUPS: dict[str, dict[str, str]] = {
    BASE: {},
    **{f"{name} only": {name: value} for name, value in EXACT_ISA.items() if name != "OPENBLAS_CORETYPE"},
    EXACT: dict(EXACT_ISA),
}


def child(steps: int, image_size: int, batch_size: int, backbone: str | None) -> None:
    """Time the training step in this process (its environment holds the pins); print images/s."""
    import torch
    import yaml
    from train import synthetic_data, training_step

    from owdfa.core.config import Section
    from owdfa.core.numerics import configure_torch
    from owdfa.methods import build_method
    from owdfa.train.config import TrainConfig
    from owdfa.train.loop import seed_everything

    section = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    config = TrainConfig(backbone=backbone or section["backbone"], dropout=section["dropout"], batch_size=batch_size)
    seed_everything(0)
    configure_torch()
    method = build_method("cal", Section.from_file("methods", ROOT / "params.yaml"))
    step = training_step(config, synthetic_data(4 * batch_size, image_size), torch.device("cpu"), method)
    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    rate = steps * batch_size / (time.perf_counter() - start)
    print(json.dumps({"rate": rate, "capability": torch.backends.cpu.get_cpu_capability()}))


def measure(env: dict[str, str], args: argparse.Namespace) -> dict[str, object]:
    full = {k: v for k, v in os.environ.items() if k not in EXACT_ISA}
    full.update(env, **dict.fromkeys(THREAD_VARIABLES, str(args.threads)))
    cmd = [sys.executable, __file__, "--child", "--steps", str(args.steps), "--image-size", str(args.image_size)]
    if args.backbone:
        cmd += ["--backbone", args.backbone]
    out = subprocess.run(
        [*cmd, "--batch-size", str(args.batch_size)], env=full, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backbone", help="default: params.yaml train.backbone (e.g. resnet50: the OWDFA-40 preset's)")
    parser.add_argument("--only-exact", action="store_true", help="time exact mode against no pin only, not each pin")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.steps, args.image_size, args.batch_size, args.backbone)
        return
    setups = {name: SETUPS[name] for name in (BASE, EXACT)} if args.only_exact else SETUPS
    best: dict[str, float] = dict.fromkeys(setups, 0.0)
    capability: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, env in setups.items():
            result = measure(env, args)
            best[name] = max(best[name], float(result["rate"]))
            capability[name] = str(result["capability"])
    base = best[BASE]
    report = {
        "config": {
            "backbone": args.backbone or "params.yaml train.backbone",
            "variant": "cal",
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "steps": args.steps,
            "best_of_rounds": args.rounds,
        },
        "cpu": cpu_name(),
        "images_per_s": {name: round(rate, 1) for name, rate in best.items()},
        "time_vs_unpinned": {name: round(base / rate, 3) for name, rate in best.items()},
        "aten_capability": capability,
    }
    key = "numerics" if args.backbone is None else f"numerics_{args.backbone}_{args.image_size}px"
    merge_into(args.out, key, report)
    network = f"{args.backbone or 'default backbone'}, {args.image_size} px, batch {args.batch_size}"
    print(f"CAL training step, {network}, {args.threads} threads, {cpu_name()}")
    for name, rate in best.items():
        print(f"  {name:<34}{rate:8.1f} img/s  {base / rate:6.3f}x time   ATen {capability[name]}")


if __name__ == "__main__":
    main()
