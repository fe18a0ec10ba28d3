"""Concurrent jobs on one CPU machine: how the OpenMP wait policy and thread count share the cores.

For each candidate policy: one job alone, then `--jobs` (default 2) jobs started together. A job
is a fresh Python process (it calls `owdfa.numerics.pin()` first, as the stages do, then loads
torch) that times real CAL training steps (`bench/train.py`'s `training_step`, the params' CAL
variant) after a warm-up. Reported per candidate: seconds per step alone and together, slowdown
(together / alone), throughput (jobs x steps / the slowest job's wall) and `vs serial`: that
throughput over running the same jobs one after another with the same policy (>= 1: starting
them together does not lose). `alone vs today` compares one job alone with libgomp's default.
Every number is the median over `--repeats` rounds; the candidates take turns within each round.

Candidates: libgomp's default (spin about 300,000 iterations at every barrier, ~ms), shorter spins
(GOMP_SPINCOUNT), no spinning (OMP_WAIT_POLICY=PASSIVE), each with `numerics.threads` threads,
and `threads = cores // jobs` (which changes the numbers in exact mode, so it is shown for
comparison only). torch's pip wheel uses GNU libgomp, which reads these variables once when it
loads; the candidate's are set in the worker before torch is imported.

Why it matters: a libgomp thread that reaches a barrier spins while it waits; when another process
holds the core its partner needs, the spin burns the time slice that partner would have used, so
two 2-thread jobs on 2 cores (or one job next to any busy process) ran several times slower than
one after another. `owdfa.numerics.pin()` therefore sets a short spin (`WAIT_POLICY` there, chosen
from this bench; a user's own OMP_WAIT_POLICY / GOMP_SPINCOUNT wins).

Sweeps (`dvc queue start -j J`, `dvc exp run --run-all -j J`): in exact mode every job uses
`numerics.threads` threads whatever the machine (the count is part of the numbers), so use
J = cores // numerics.threads, i.e. 1 on a 2-core machine with the default 2 threads and 8 on a
16-core one. More jobs than that oversubscribe the cores: with the short spin they still finish
about as soon as one after another (throughput ~ serial), not faster, and each job takes J times
as long; with libgomp's default spin they were many times slower. To run more jobs at once on
few cores, lower `numerics.threads` (e.g. 1: J = cores), which gives other, equally valid numbers
than the committed tables.

Merges {"concurrency": ...} into reports/bench.json.
Usage: python bench/concurrency.py                        # about 5 minutes on 2 cores
       python bench/concurrency.py --jobs 4 --steps 10    # four jobs at once
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common import cpu_name, merge_into

from owdfa.config import Section
from owdfa.numerics import DEFAULT_THREADS, WAIT_POLICY, WAIT_VARIABLES, Numerics, pin

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPINCOUNT = 300_000  # libgomp's spin when no wait variable is set (its env.c)


def load_variant(params: Mapping[str, Any], name: str) -> Any:
    """The run variant `name` as a Method, from a top-level `methods:` section or `train.methods`."""
    from owdfa.methods import build_method

    methods = params.get("methods")
    where = "methods"
    if not isinstance(methods, Mapping):  # the variants still live in the train section
        methods, where = params["train"]["methods"], "train.methods"
    return build_method(name, Section(methods, where))


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def candidates(jobs: int, threads: int) -> dict[str, dict[str, Any]]:
    """name -> {"threads": ..., "env": the wait variables (none set: libgomp's default)}."""
    spins = {f"GOMP_SPINCOUNT={n}": {"GOMP_SPINCOUNT": str(n)} for n in (1000, 10000, 100000)}
    out = {
        "libgomp default": {"threads": threads, "env": {}},
        **{name: {"threads": threads, "env": env} for name, env in spins.items()},
        "OMP_WAIT_POLICY=PASSIVE": {"threads": threads, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    }
    fewer = max(1, cores() // jobs)
    if fewer != threads:
        out[f"threads={fewer} (other numbers)"] = {"threads": fewer, "env": {}}
    return out


# --- one job ------------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    """Pin, load torch under the candidate's wait variables, warm up; then time `--steps` per 'run' line."""
    pin(Numerics(reproducible=True, threads=args.threads))
    for name in WAIT_VARIABLES:  # the candidate's, not pin()'s default: measure each policy as given
        os.environ.pop(name, None)
    os.environ.update(json.loads(args.worker_env))
    import torch
    import yaml
    from train import synthetic_data, training_step

    from owdfa.numerics import configure_torch
    from owdfa.training import TrainConfig, seed_everything

    configure_torch()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    section = params["train"]
    config = TrainConfig(
        backbone=section["backbone"],
        dropout=section["dropout"],
        batch_size=args.batch_size,
        lr=section["lr"],
        weight_decay=section["weight_decay"],
        labelled_share=section["labelled_share"],
    )
    seed_everything(0)
    data = synthetic_data(max(1024, 4 * args.batch_size), args.image_size)
    step = training_step(config, data, torch.device("cpu"), load_variant(params, args.variant))
    for _ in range(args.warmup):
        step()
    print(json.dumps({"ready": True, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


# --- the parent ---------------------------------------------------------------------------------


def read_reply(process: subprocess.Popen[str]) -> dict[str, Any]:
    line = process.stdout.readline() if process.stdout else ""
    if not line:
        process.wait()
        sys.exit(f"error: a worker exited ({process.returncode}):\n{(process.stderr.read() if process.stderr else '')[-3000:]}")
    return json.loads(line)


def round_of(candidate: dict[str, Any], args: argparse.Namespace, together_first: bool) -> tuple[float, list[float]]:
    """One round for one candidate: (alone seconds, [seconds of each job together])."""
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    cmd = [sys.executable, __file__, "--worker", "--threads", str(candidate["threads"])]
    cmd += ["--worker-env", json.dumps(candidate["env"]), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--variant", args.variant]
    workers = [
        subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(args.jobs)
    ]
    try:
        for process in workers:
            read_reply(process)

        def run(chosen: list[subprocess.Popen[str]]) -> list[float]:
            for process in chosen:  # all told at once: they start within a millisecond
                assert process.stdin is not None
                process.stdin.write("run\n")
                process.stdin.flush()
            return [float(read_reply(process)["seconds"]) for process in chosen]

        if together_first:
            together = run(workers)
            alone = run(workers[:1])[0]
        else:
            alone = run(workers[:1])[0]
            together = run(workers)
    finally:
        for process in workers:
            if process.stdin:
                process.stdin.close()
        for process in workers:
            process.wait(timeout=60)
    return alone, together


def summarise(
    rounds: dict[str, list[tuple[float, list[float]]]], specs: dict[str, dict[str, Any]], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    base_alone = statistics.median(alone for alone, _ in rounds["libgomp default"])
    out = {}
    for name, results in rounds.items():
        alone = statistics.median(a for a, _ in results)
        slowest = statistics.median(max(t) for _, t in results)
        mean_job = statistics.median(statistics.fmean(t) for _, t in results)
        out[name] = {
            "threads": specs[name]["threads"],
            "env": specs[name]["env"],
            "alone_ms_per_step": round(1000 * alone / args.steps, 1),
            "together_ms_per_step": round(1000 * mean_job / args.steps, 1),
            "slowdown": round(mean_job / alone, 3),
            "alone_steps_per_s": round(args.steps / alone, 3),
            "together_steps_per_s": round(args.jobs * args.steps / slowest, 3),
            "vs_serial": round(args.jobs * alone / slowest, 3),
            "alone_vs_today": round(alone / base_alone, 3),
            "rounds": [{"alone_s": round(a, 3), "together_s": [round(x, 3) for x in t]} for a, t in results],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="jobs at once")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per job")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each number is their median")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="numerics.threads")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--variant", default="cal")
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-env", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.jobs < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--jobs, --steps and --repeats must be at least 1")
    specs = candidates(args.jobs, args.threads)
    if args.only:
        specs = {name: specs[name] for name in specs if name in args.only or name == "libgomp default"}
    rounds: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in specs}
    started = time.perf_counter()
    for index in range(args.repeats):
        for name, spec in specs.items():  # candidates take turns: drifts of the machine hit all alike
            rounds[name].append(round_of(spec, args, together_first=index % 2 == 1))
    results = summarise(rounds, specs, args)
    report = {
        "config": {
            "backbone": "params.yaml train.backbone",
            "variant": args.variant,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "jobs": args.jobs,
            "threads": args.threads,
            "timed_steps": args.steps,
            "warmup_steps": args.warmup,
            "median_of_repeats": args.repeats,
        },
        "machine": {"cpu_name": cpu_name(), "cores": cores(), "platform": sys.platform},
        "pin_wait_policy": WAIT_POLICY,
        "seconds": round(time.perf_counter() - started, 1),
        "candidates": results,
    }
    merge_into(args.out, "concurrency", report)
    print(
        f"CAL training step, {args.image_size} px, batch {args.batch_size}: 1 job alone vs {args.jobs} at once, "
        f"{cores()} cores, {cpu_name()}, median of {args.repeats} x {args.steps} steps"
    )
    print(f"  {'candidate':<34}{'thr':>4}{'alone ms':>10}{'together ms':>13}{'slowdown':>10}{'vs serial':>11}{'alone vs today':>16}")
    for name, row in results.items():
        mark = " *" if row["env"] == WAIT_POLICY and row["threads"] == args.threads else ""
        print(
            f"  {name + mark:<34}{row['threads']:>4}{row['alone_ms_per_step']:>10.1f}{row['together_ms_per_step']:>13.1f}"
            f"{row['slowdown']:>10.2f}{row['vs_serial']:>11.2f}{row['alone_vs_today']:>16.2f}"
        )
    print("  * = what owdfa.numerics.pin() sets; vs serial >= 1: together is no slower than one after another")


if __name__ == "__main__":
    main()
