"""Concurrent jobs on one CPU machine: how the OpenMP wait policy and thread count share the cores.

For each candidate policy: one job alone, then `--jobs` (default 2) jobs started together, and with
`--busy` one job next to jobs - 1 single-threaded busy loops. A job is a fresh Python process (it
calls `owdfa.core.numerics.pin()` first, as the stages do, then loads torch) that times real CAL
training steps (`bench/train.py`'s `training_step`, the params' CAL variant) after a warm-up; a
timed run stops early after `--max-seconds` (libgomp's default spin can take seconds per step).
Reported per candidate: ms per step alone and together, slowdown (together / alone), throughput
(all steps / the slowest job's wall) and `vs serial`: that throughput over running the same jobs
one after another with the same policy (>= 1: starting them together does not lose). `alone vs
today` compares one job alone with libgomp's default. Every number is the median over `--repeats`
rounds; the candidates take turns within each round (and alone/together swap order every round).

Candidates: libgomp's default (spin about 300,000 iterations at every barrier, ~ms), shorter spins
(GOMP_SPINCOUNT), no spinning (OMP_WAIT_POLICY=PASSIVE), each with `numerics.threads` threads,
and `threads = cores // jobs` (which changes the numbers in exact mode, so it is shown for
comparison only). torch's pip wheel uses GNU libgomp, which reads these variables once when it
loads; the worker sets the candidate's (instead of pin()'s) before torch is imported.

Why it matters: a libgomp thread that reaches a barrier spins while it waits; when another process
holds the core its partner needs, the spin burns the time slice that partner would have used.
Measured on 2 cores (Intel Xeon, 3 x 12 steps; ms per step alone / each of 2 together / vs serial):
libgomp default 225 / 1315 / 0.34, GOMP_SPINCOUNT=1000 267 / 455 / 1.16, 2000 249 / 471 / 1.05,
10000 224 / 616 / 0.72, PASSIVE 290 / 441 / 1.30, 1 thread each 394 / 428 / 1.72. Next to one busy
loop: default 1331, 2000 472. No value keeps a job alone within 5 % of today and 2 jobs at once no
slower than in turn. So a lone run keeps libgomp's default, and jobs side by side get GOMP_SPINCOUNT=2000
(`owdfa.core.numerics.SHARED_CORES_WAIT_POLICY`, which `owdfa grid -j J>1` gives its queue workers), the
longest spin that still runs 2 jobs at once no slower than in turn (a user's own OMP_WAIT_POLICY or
GOMP_SPINCOUNT wins).

Sweeps (`dvc queue start -j J`, `dvc exp run --run-all -j J`): in exact mode every job uses
`numerics.threads` threads whatever the machine (the count is part of the numbers), so use
J = cores // numerics.threads: 1 on this 2-core machine with the default 2 threads, 8 on a
16-core one. More jobs than that oversubscribe the cores: with pin()'s short spin they finish
about as soon as one after another (throughput ~ serial: nothing gained, nothing lost) and each job
takes about J times as long; with libgomp's default spin they were up to 5 times slower than in turn
(chaotic: vs serial 0.19-0.86 over three runs).
Lowering `numerics.threads` to 1 (J = cores) gained ~5 % throughput here over one 2-thread job at
a time, and gives other (equally valid) numbers than the committed tables.

Merges {"concurrency": ...} into reports/bench.json.
Usage: python bench/concurrency.py                        # about 5 minutes on 2 cores
       python bench/concurrency.py --busy                 # also next to a busy loop (+1 minute)
       python bench/concurrency.py --jobs 4 --steps 8     # four jobs at once
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common import cpu_name, merge_into

from owdfa.core.config import Section
from owdfa.core.numerics import DEFAULT_THREADS, SHARED_CORES_WAIT_POLICY, WAIT_VARIABLES, Numerics, pin

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


def candidates(jobs: int, threads: int, spins: list[int]) -> dict[str, dict[str, Any]]:
    """name -> {"threads": ..., "env": the wait variables (none set: libgomp's default)}."""
    spins = {f"GOMP_SPINCOUNT={n}": {"GOMP_SPINCOUNT": str(n)} for n in spins}
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

    from owdfa.core.numerics import configure_torch
    from owdfa.train.config import TrainConfig
    from owdfa.train.loop import seed_everything

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
    configure_torch()
    data = synthetic_data(max(1024, 4 * args.batch_size), args.image_size)
    step = training_step(config, data, torch.device("cpu"), load_variant(params, args.variant))
    for _ in range(args.warmup):
        step()
    print(json.dumps({"ready": True, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        done = 0
        while done < args.steps and (done == 0 or time.perf_counter() - start < args.max_seconds):
            step()
            done += 1
        print(json.dumps({"seconds": time.perf_counter() - start, "steps": done}), flush=True)


# --- the parent ---------------------------------------------------------------------------------


def read_reply(process: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    line = process.stdout.readline().decode() if process.stdout else ""
    if not line:
        process.wait()
        sys.exit(f"error: a worker exited ({process.returncode}):\n{log.read_text()[-3000:]}")
    return json.loads(line)


Timing = tuple[float, int]  # (seconds, steps) of one job's timed run


def stop(workers: list[subprocess.Popen[bytes]]) -> None:
    """End of stdin: each worker leaves its loop and exits."""
    for process in workers:
        if process.stdin:
            process.stdin.close()
    for process in workers:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


Round = tuple[Timing, list[Timing], Timing | None]  # alone, [each job together], alone next to busy loops


def round_of(candidate: dict[str, Any], args: argparse.Namespace, together_first: bool) -> Round:
    """One round for one candidate: the job alone, every job together, (--busy) the job next to busy loops."""
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    cmd = [sys.executable, __file__, "--worker", "--threads", str(candidate["threads"])]
    cmd += ["--worker-env", json.dumps(candidate["env"]), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--max-seconds", str(args.max_seconds)]
    cmd += ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--variant", args.variant]
    with tempfile.TemporaryDirectory(prefix="concurrency-") as tmp, contextlib.ExitStack() as stack:
        logs = [Path(tmp) / f"worker{i}.log" for i in range(args.jobs)]
        workers = [  # stderr to a file: a full pipe would stall a worker that warns a lot
            subprocess.Popen(
                cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stack.enter_context(log.open("w"))
            )
            for log in logs
        ]
        stack.callback(stop, workers)
        for process, log in zip(workers, logs, strict=True):
            read_reply(process, log)

        def run(count: int) -> list[Timing]:
            for process in workers[:count]:  # all told at once: they start within a millisecond
                assert process.stdin is not None
                process.stdin.write(b"run\n")
                process.stdin.flush()
            replies = [read_reply(process, log) for process, log in zip(workers[:count], logs[:count], strict=True)]
            return [(float(reply["seconds"]), int(reply["steps"])) for reply in replies]

        if together_first:
            together = run(args.jobs)
            alone = run(1)[0]
        else:
            alone = run(1)[0]
            together = run(args.jobs)
        busy = None
        if args.busy:  # one job next to jobs - 1 single-threaded busy loops (any other work on the machine)
            loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.jobs - 1)]
            try:
                time.sleep(0.5)
                busy = run(1)[0]
            finally:
                for loop in loops:
                    loop.kill()
                    loop.wait()
    return alone, together, busy


def summarise(rounds: dict[str, list[Round]], specs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Medians over the rounds of seconds per step alone and together, and what they mean for a sweep."""

    def per_step(timing: Timing) -> float:
        return timing[0] / timing[1]

    out: dict[str, dict[str, Any]] = {}
    for name, results in rounds.items():
        alone = statistics.median(per_step(a) for a, _, _ in results)
        together = statistics.median(statistics.fmean(per_step(t) for t in ts) for _, ts, _ in results)
        # throughput together: every step the jobs did over the slowest job's wall
        rate = statistics.median(sum(n for _, n in ts) / max(s for s, _ in ts) for _, ts, _ in results)
        row: dict[str, Any] = {
            "threads": specs[name]["threads"],
            "env": specs[name]["env"],
            "alone_ms_per_step": round(1000 * alone, 1),
            "together_ms_per_step": round(1000 * together, 1),
            "slowdown": round(together / alone, 3),
            "alone_steps_per_s": round(1 / alone, 3),
            "together_steps_per_s": round(rate, 3),
            "vs_serial": round(rate * alone, 3),
        }
        if all(b is not None for _, _, b in results):
            busy = statistics.median(per_step(b) for _, _, b in results if b is not None)
            row.update(busy_ms_per_step=round(1000 * busy, 1), busy_slowdown=round(busy / alone, 3))
        row["rounds"] = [
            {"alone": [round(a[0], 3), a[1]], "together": [[round(s, 3), n] for s, n in ts]}
            | ({"busy": [round(b[0], 3), b[1]]} if b else {})
            for a, ts, b in results
        ]
        out[name] = row
    if "libgomp default" in out:
        today = out["libgomp default"]["alone_ms_per_step"]
        for row in out.values():
            row["alone_vs_today"] = round(row["alone_ms_per_step"] / today, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="jobs at once")
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per job")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="stop a timed run early after this long")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each number is their median")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="numerics.threads")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--variant", default="cal")
    parser.add_argument("--spins", type=int, nargs="*", default=[1000, 2000, 10000], help="GOMP_SPINCOUNT candidates")
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    parser.add_argument("--busy", action="store_true", help="also one job next to jobs - 1 busy loops")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-env", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.jobs < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--jobs, --steps and --repeats must be at least 1")
    specs = candidates(args.jobs, args.threads, args.spins)
    if args.only is not None:
        unknown = set(args.only) - set(specs)
        if unknown:
            parser.error(f"--only: no candidate {sorted(unknown)}; there are {list(specs)}")
        specs = {name: specs[name] for name in specs if name in args.only}
    rounds: dict[str, list[Round]] = {name: [] for name in specs}
    started = time.perf_counter()
    for index in range(args.repeats):
        for name, spec in specs.items():  # candidates take turns: drifts of the machine hit all alike
            rounds[name].append(round_of(spec, args, together_first=index % 2 == 1))
    results = summarise(rounds, specs)
    report = {
        "config": {
            "backbone": "params.yaml train.backbone",
            "variant": args.variant,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "jobs": args.jobs,
            "threads": args.threads,
            "timed_steps": args.steps,
            "max_seconds": args.max_seconds,
            "warmup_steps": args.warmup,
            "median_of_repeats": args.repeats,
        },
        "machine": {"cpu_name": cpu_name(), "cores": cores(), "platform": sys.platform},
        "shared_cores_wait_policy": SHARED_CORES_WAIT_POLICY,
        "seconds": round(time.perf_counter() - started, 1),
        "candidates": results,
    }
    merge_into(args.out, "concurrency", report)
    print(
        f"CAL training step, {args.image_size} px, batch {args.batch_size}: 1 job alone vs {args.jobs} at once, "
        f"{cores()} cores, {cpu_name()}, median of {args.repeats} x {args.steps} steps"
    )
    busy = args.busy
    print(
        f"  {'candidate':<30}{'thr':>4}{'alone ms':>10}{'together ms':>13}{'slowdown':>10}{'vs serial':>11}"
        f"{'alone vs today':>16}" + (f"{'busy ms':>9}{'busy x':>8}" if busy else "")
    )
    for name, row in results.items():
        mark = " *" if row["env"] == SHARED_CORES_WAIT_POLICY and row["threads"] == args.threads else ""
        today = f"{row['alone_vs_today']:16.2f}" if "alone_vs_today" in row else f"{'-':>16}"
        print(
            f"  {name + mark:<30}{row['threads']:>4}{row['alone_ms_per_step']:>10.1f}"
            f"{row['together_ms_per_step']:>13.1f}{row['slowdown']:>10.2f}{row['vs_serial']:>11.2f}{today}"
            + (f"{row['busy_ms_per_step']:>9.1f}{row['busy_slowdown']:>8.2f}" if busy else "")
        )
    print("  * = what owdfa.core.numerics.pin() sets; vs serial >= 1: together is no slower than one after another")
    if busy:
        print(f"  busy: one job next to {args.jobs - 1} busy loop(s); busy x = its ms per step / alone")


if __name__ == "__main__":
    main()
