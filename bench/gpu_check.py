"""The GPU check: one command that proves or disproves the CUDA path inside a short device lease.

    python bench/gpu_check.py          # on a machine with CUDA: about 6-8 min on one H100
    python bench/gpu_check.py --dry    # the same code paths on the CPU at tiny sizes (the suite runs it)

Four parts, each recorded in reports/bench-gpu.json (--out); the exit status is 1 if any failed:
1. tests: every test marked `cuda` (`pytest -m cuda` on the files that mark one), which the CPU-only
   suite skips.
2. model: the OWDFA-40 preset's network and step (ResNet-50, 256 px, FFE, CAL's loss, Adam) on
   generated images, in bf16 and fp32, eager and under torch.compile: images/s, peak GPU memory,
   and the first step's loss of each against eager fp32's (same weights, same batch): bf16 within
   LOSS_RTOL_BF16, fp32 compiled within LOSS_RTOL_FP32.
3. pipeline: a one-epoch `dvc exp run` of CAL on the synthetic source at 256 px with
   `train.device: cuda`, in a temporary copy of the pipeline (the repository is not touched).
4. ddp: a 1-process `torchrun` that joins an NCCL group and runs the collectives the loop uses
   (all-reduce of gradients, the autograd all-gather of outputs) with a backward through them.

--dry: device cpu, test_resnet at 32 px, a few steps, torch.compile with the eager backend (no
code generation), gloo instead of NCCL, tiny data; the same functions run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOSS_RTOL_BF16 = 0.02  # bf16 autocast of the backbone against fp32, first step, same weights and batch
LOSS_RTOL_FP32 = 1e-3  # torch.compile against eager, both fp32 (kernel fusion reorders sums)
DVC = [sys.executable, "-m", "dvc"]  # this interpreter's dvc, whatever PATH holds


@dataclass(frozen=True)
class Sizes:
    """How big each part runs: the preset's sizes on a GPU, tiny ones for --dry."""

    device: str
    backbone: str
    image_size: int
    batch_size: int
    steps: int
    compile_backend: str
    dist_backend: str
    pipeline: dict[str, Any]


GPU = Sizes(
    device="cuda",
    backbone="resnet50",  # the preset's resnet50.ram_in1k architecture; no download (random weights)
    image_size=256,
    batch_size=128,
    steps=10,
    compile_backend="inductor",
    dist_backend="nccl",
    pipeline={
        "data.synthetic.image_size": 256,
        "align.image_size": 256,
        "train.backbone": "resnet50",
        "train.batch_size": 128,
        "train.device": "cuda",
        "evaluate.device": "cuda",
    },
)
DRY = Sizes(
    device="cpu",
    backbone="test_resnet",
    image_size=32,
    batch_size=8,
    steps=2,
    compile_backend="eager",
    dist_backend="gloo",
    pipeline={
        "data.synthetic.image_size": 32,
        "data.synthetic.identities": 10,
        "data.synthetic.real_images": 40,
        "data.synthetic.images_per_method": 12,
        "align.image_size": 32,
        "split.budgets.real": 40,
        "split.budgets.known": 12,
        "split.budgets.novel": 10,
        "train.batch_size": 16,
        "train.device": "cpu",
        "evaluate.device": "cpu",
        "evaluate.mc_dropout_passes": 2,
        "evaluate.tsne_max_points": 0,
    },
)
# Shared by both: one epoch of CAL on p1, seed 0, from a random initialisation (the preset has no
# pretraining stage).
PIPELINE_COMMON = {
    "train.augment.view": "official",
    "train.epochs": 1,
    "train.lr_step": 1,
    "pretrain.mode": "none",
    "run.protocols": ["p1"],
    "run.methods": ["cal"],
    "run.seeds": [0],
}


CUDA_MARKS = ("requires_cuda", "mark.cuda")  # how a test is marked `cuda` (tests/helpers/markers.py)


def cuda_test_files(tests: Path = ROOT / "tests") -> list[str]:
    """The test files that mark a test `cuda`: a mark is used by its name, so a file without it has none.

    Collecting only these, not the whole suite, saves the imports of every other test module.
    """
    files = sorted(tests.rglob("test_*.py"))  # tests/ and its folders, one per part of the library
    return [f.relative_to(tests.parent).as_posix() for f in files if any(mark in f.read_text() for mark in CUDA_MARKS)]


def check_tests(sizes: Sizes) -> dict[str, Any]:
    """pytest -m cuda: on a GPU they run; on the CPU they are collected and skip (exit 0).

    In one process and without pyproject's addopts (`-n auto`): a lent machine may lack pytest-xdist.
    """
    files = cuda_test_files()
    if not files:
        return {"ok": False, "summary": "no test file marks a test `cuda`", "counts": {}, "files": files}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-m", "cuda", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", summary)}
    ok = done.returncode == 0 and counts.get("failed", 0) == 0 and sum(counts.values()) > 0
    if sizes.device == "cuda":
        ok = ok and counts.get("skipped", 0) == 0  # on a GPU, nothing may be skipped for want of CUDA
    tail = done.stdout[-2000:] + done.stderr[-1000:]
    return {"ok": ok, "summary": summary, "counts": counts, "files": files, "output_tail": tail}


def check_model(sizes: Sizes) -> dict[str, Any]:
    """The preset's step in bf16/fp32 x eager/compiled: rate, peak memory, first-step loss agreement."""
    import torch
    from train import sync, synthetic_data, training_step

    from owdfa.core.config import Section
    from owdfa.core.numerics import configure_torch
    from owdfa.methods import build_method
    from owdfa.train.config import TrainConfig
    from owdfa.train.loop import seed_everything
    from owdfa.train.views import AugmentConfig

    device = torch.device(sizes.device)
    data = synthetic_data(4 * sizes.batch_size, sizes.image_size)
    methods = Section.from_file("methods", ROOT / "params.yaml")
    runs: dict[str, Any] = {}
    for precision in ("fp32", "bf16"):
        for compiled in (False, True):
            name = f"{precision}-{'compiled' if compiled else 'eager'}"
            config = TrainConfig(
                backbone=sizes.backbone,
                batch_size=sizes.batch_size,
                precision=precision,
                compile=compiled,
                augment=AugmentConfig(view="official"),  # the preset's views
            )
            seed_everything(0)  # the same initial weights and batches for every combination
            configure_torch()
            method = build_method("cal", methods)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            step = training_step(config, data, device, method, compile_backend=sizes.compile_backend)
            start = time.perf_counter()
            first = step()
            sync(device)
            first_s = time.perf_counter() - start  # includes compilation when compiled
            start = time.perf_counter()
            for _ in range(sizes.steps):
                step()
            sync(device)
            elapsed = time.perf_counter() - start
            runs[name] = {
                "first_loss": float(first["loss"]),
                "first_step_s": round(first_s, 2),
                "images_per_s": round(sizes.steps * sizes.batch_size / elapsed, 1),
                "peak_memory_gib": (
                    round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None
                ),
            }
    reference = runs["fp32-eager"]["first_loss"]
    for name, run in runs.items():
        rtol = LOSS_RTOL_BF16 if name.startswith("bf16") else LOSS_RTOL_FP32
        run["loss_rel_diff"] = abs(run["first_loss"] - reference) / max(abs(reference), 1e-12)
        run["loss_rtol"] = rtol
        run["loss_ok"] = run["loss_rel_diff"] <= rtol and bool(torch.isfinite(torch.tensor(run["first_loss"])))
    return {
        "ok": all(run["loss_ok"] for run in runs.values()),
        "backbone": sizes.backbone,
        "image_size": sizes.image_size,
        "batch_size": sizes.batch_size,
        "timed_steps": sizes.steps,
        "runs": runs,
    }


def check_pipeline(sizes: Sizes) -> dict[str, Any]:
    """A one-epoch `dvc exp run` of CAL in a temporary copy of the pipeline; its metrics must exist."""
    changes = {**PIPELINE_COMMON, **sizes.pipeline}
    with tempfile.TemporaryDirectory(prefix="owdfa-gpu-check-") as tmp:
        repo = Path(tmp)
        env = copy_pipeline(repo)
        steps = [
            ["git", "init", "-q"],
            [*DVC, "init", "-q"],
            [*DVC, "config", "core.analytics", "false"],
            ["git", "add", "-A"],
            ["git", "commit", "-q", "-m", "gpu check"],
            [*DVC, "exp", "run", "-n", "gpu-check", *(a for k, v in changes.items() for a in ("-S", f"{k}={v}"))],
        ]
        start = time.perf_counter()
        for command in steps:
            done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                tail = (done.stdout + done.stderr)[-3000:]
                return {"ok": False, "failed": " ".join(command[:3]), "output_tail": tail}
        metrics_path = repo / "reports" / "runs" / "p1-cal-0" / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
        card = repo / "data" / "runs" / "p1-cal-0" / "card.json"
        trained_on = json.loads(card.read_text()).get("trained_on") if card.is_file() else None
    ok = metrics is not None and (trained_on or "").startswith(sizes.device)
    return {"ok": ok, "seconds": round(time.perf_counter() - start, 1), "trained_on": trained_on, "metrics": metrics}


def copy_pipeline(repo: Path) -> dict[str, str]:
    """dvc.yaml, params.yaml, stages/ and src/ in `repo`; the environment runs the copied src/."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, repo / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for folder in ("stages", "src"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=ignore)
    (repo / ".gitignore").write_text("/data/\n__pycache__/\n")
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1")
    env.setdefault("GIT_AUTHOR_NAME", "owdfa gpu check")
    env.setdefault("GIT_AUTHOR_EMAIL", "gpu-check@owdfa.invalid")
    env.setdefault("GIT_COMMITTER_NAME", env["GIT_AUTHOR_NAME"])
    env.setdefault("GIT_COMMITTER_EMAIL", env["GIT_AUTHOR_EMAIL"])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo / "src"), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # dvc.yaml's `python`
    return env


def check_ddp(sizes: Sizes) -> dict[str, Any]:
    """torchrun with one process: the group's backend, an all-reduce and an autograd all-gather."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        str(Path(__file__).resolve()),
        "--ddp-worker",
        sizes.dist_backend,
        sizes.device,
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    ok = done.returncode == 0 and result.get("ok") is True
    return {"ok": ok, **result, "output_tail": "" if ok else (done.stdout + done.stderr)[-2000:]}


def ddp_worker(backend: str, device_name: str) -> None:
    """Run under torchrun: join the group and check the loop's collectives give the right numbers."""
    import torch
    import torch.distributed as dist
    import torch.distributed.nn.functional as collectives

    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    try:
        size = dist.get_world_size()
        grad = torch.full((1000,), 3.0, device=device)
        dist.all_reduce(grad)
        rows = torch.arange(6.0, device=device).view(3, 2).requires_grad_()
        gathered = torch.cat(collectives.all_gather(rows), dim=0)
        (gathered * 2).sum().backward()
        ok = bool(torch.all(grad == 3.0 * size)) and gathered.shape[0] == 3 * size
        ok = ok and bool(torch.all(rows.grad == 2.0 * size))
        print(json.dumps({"ok": ok, "backend": dist.get_backend(), "world_size": size, "device": device_name}))
    finally:
        dist.destroy_process_group()


def run_part(name: str, check: Callable[[Sizes], dict[str, Any]], sizes: Sizes) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        result = check(sizes)
    except Exception as error:  # a broken part is a result of the check, not a crash of it
        result = {"ok": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(f"{name:<9} {'ok' if result['ok'] else 'FAILED'}  ({result['seconds']} s)", flush=True)
    return result


PARTS: dict[str, Callable[[Sizes], dict[str, Any]]] = {
    "tests": check_tests,
    "model": check_model,
    "pipeline": check_pipeline,
    "ddp": check_ddp,
}


def machine(sizes: Sizes) -> dict[str, Any]:
    import platform

    import torch
    from common import cpu_name

    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_name()}
    if sizes.device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--ddp-worker":
        ddp_worker(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="the CPU, tiny sizes: checks the check itself")
    parser.add_argument("--only", nargs="+", choices=sorted(PARTS), help="run these parts only")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench-gpu.json")
    args = parser.parse_args()
    sizes = DRY if args.dry else GPU
    if not args.dry:
        import torch

        if not torch.cuda.is_available():
            sys.exit("error: no CUDA device here; run with --dry to check the script on the CPU")
    sys.path.insert(0, str(ROOT / "bench"))
    parts = {name: run_part(name, check, sizes) for name, check in PARTS.items() if not args.only or name in args.only}
    report = {"dry": args.dry, "machine": machine(sizes), "parts": parts, "ok": all(p["ok"] for p in parts.values())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'all parts passed' if report['ok'] else 'FAILED'}: {args.out}")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
