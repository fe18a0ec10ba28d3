"""What exact mode costs: the embedded benchmark's CAL training step under each numerics pin.

Each set-up runs in its own process (the libraries read their pins when they load): no pin (the
libraries choose, as `numerics.reproducible: false`), each pin of `owdfa.numerics` alone, and all of
them (exact mode). The thread count is the same everywhere (`--threads`, default 2 = numerics.threads),
so only the kernels differ; what a fixed thread count costs on a machine with more cores is the ratio
of its core count to `threads`, at most. Rounds take turns over the set-ups; each rate is the best of
`--rounds`. The OpenBLAS pin touches only NumPy (evaluation's k-means and metrics), not this step.
Merges {"numerics": ...} into reports/bench.json.
Usage: python bench/numerics.py            # about 2 minutes on 2 cores
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

from owdfa.numerics import EXACT_ISA, THREAD_VARIABLES

ROOT = Path(__file__).resolve().parents[1]
SETUPS: dict[str, dict[str, str]] = {
    "none (reproducible: false)": {},
    **{f"{name} only": {name: value} for name, value in EXACT_ISA.items() if name != "OPENBLAS_CORETYPE"},
    "all (exact mode)": dict(EXACT_ISA),
}


def child(steps: int, image_size: int, batch_size: int) -> None:
    """Time the training step in this process (its environment holds the pins); print images/s."""
    import torch
    import yaml
    from train import synthetic_data, training_step

    from owdfa.config import Section
    from owdfa.methods import build_method
    from owdfa.train_config import TrainConfig
    from owdfa.training import seed_everything

    section = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    config = TrainConfig(backbone=section["backbone"], dropout=section["dropout"], batch_size=batch_size)
    seed_everything(0)
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
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.steps, args.image_size, args.batch_size)
        return
    best: dict[str, float] = dict.fromkeys(SETUPS, 0.0)
    capability: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, env in SETUPS.items():
            result = measure(env, args)
            best[name] = max(best[name], float(result["rate"]))
            capability[name] = str(result["capability"])
    base = best["none (reproducible: false)"]
    report = {
        "config": {
            "backbone": "params.yaml train.backbone",
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
    merge_into(args.out, "numerics", report)
    print(f"CAL training step, {args.image_size} px, batch {args.batch_size}, {args.threads} threads, {cpu_name()}")
    for name, rate in best.items():
        print(f"  {name:<34}{rate:8.1f} img/s  {base / rate:6.3f}x time   ATen {capability[name]}")


if __name__ == "__main__":
    main()
