"""The tiny DVC pipeline that the pipeline tests share: built once per test session, copied per module.

`dvc repro` of the tiny config (20 stages) is the most expensive thing the suite does, and every
pipeline test starts from the same reproduced, committed state. So one session builds it
(`build_once`: the first process of a pytest-xdist run to ask builds it, under a file lock, and
the others wait for it), and each test module works on its own copy (`TinyRepo.copy_of`): git
history, dvc cache and outputs included, so `dvc repro` in a copy re-runs only what a test changed.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock

from helpers.dvc_repo import copy_pipeline, dump_params, pipeline_env, set_keys

RUNNING = re.compile(r"Running stage '([^']+)'")

PROTOCOLS = ["p1", "p2"]
METHODS = ["baseline", "cal"]
RUNS = [f"{p}-{m}-0" for p in PROTOCOLS for m in METHODS]
STAGES = [
    "fetch",
    "index",
    "align",
    *(f"split@{p}" for p in PROTOCOLS),
    "variants",
    *(f"pretrain@{p}" for p in PROTOCOLS),
    *(f"train@{r}" for r in RUNS),
    *(f"evaluate@{r}" for r in RUNS),
    "report",
]
EVALUATE_STAGES = {f"evaluate@{r}" for r in RUNS}
TRAIN_STAGES = {f"train@{r}" for r in RUNS}
PRETRAIN_STAGES = {f"pretrain@{p}" for p in PROTOCOLS}

# Dotted params key -> value: the tiny config (seconds per stage, mostly interpreter start-up). The
# evaluate extras are small but all there: every figure is drawn (t-SNE of 40 points, the maps of 2
# classes), MC dropout has 2 passes.
TINY_PARAMS: dict[str, Any] = {
    "data.synthetic.image_size": 32,
    "data.synthetic.identities": 10,
    "data.synthetic.real_images": 40,
    "data.synthetic.images_per_method": 12,
    "align.image_size": 32,
    "split.budgets.real": 40,
    "split.budgets.known": 12,
    "split.budgets.novel": 10,
    "pretrain.epochs": 1,
    "pretrain.batch_size": 16,
    "train.epochs": 2,
    "train.lr_step": 1,
    "train.batch_size": 16,
    "evaluate.mc_dropout_passes": 2,
    "evaluate.tsne_max_points": 40,
    "evaluate.uncertainty_maps.classes": 2,
    "run.protocols": PROTOCOLS,
    "run.methods": METHODS,
    "run.seeds": [0],
}


def ran_stages(output: str) -> set[str]:
    return set(RUNNING.findall(output))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@dataclass
class TinyRepo:
    path: Path
    env: dict[str, str]
    run_dvc: Any
    run_git: Any
    first_repro: str = ""
    baseline_params: str = field(default="")

    @classmethod
    def copy_of(cls, built: TinyRepo, path: Path, dvc_env: dict[str, str]) -> TinyRepo:
        """A working copy of the built repository (git, dvc cache, outputs) whose stages import its own src/."""
        shutil.copytree(built.path, path, symlinks=True)
        env = pipeline_env(path, dvc_env)
        return cls(path, env, built.run_dvc, built.run_git, built.first_repro, built.baseline_params)

    def dvc(self, *args: str, check: bool = True) -> str:
        return self.run_dvc(self.path, *args, check=check, env=self.env).stdout

    def dvc_fails(self, *args: str) -> str:
        proc = self.run_dvc(self.path, *args, check=False, env=self.env)
        assert proc.returncode != 0, f"dvc {' '.join(args)} should have failed:\n{proc.stdout[-3000:]}"
        return proc.stdout

    def git(self, *args: str) -> str:
        return self.run_git(self.path, *args, env=self.env).stdout

    def read(self, rel: str) -> bytes:
        return (self.path / rel).read_bytes()

    def status(self) -> dict[str, Any]:
        lines = [line for line in self.dvc("status", "--json").splitlines() if line.startswith("{")]
        assert lines, "dvc status --json printed no JSON"
        return json.loads(lines[-1])

    def reset(self) -> None:
        """Back to the committed baseline: params, dvc.lock, reports from git; data from the dvc cache."""
        self.git("reset", "-q", "--hard", "HEAD")
        self.git("clean", "-fdq")
        self.dvc("checkout", "--force", "-q")

    @contextmanager
    def params(self, changes: dict[str, Any]) -> Iterator[None]:
        """Workspace params.yaml with dotted keys changed; the whole workspace is reset afterwards."""
        params = set_keys(yaml.safe_load(self.baseline_params), changes)
        dump_params(self.path / "params.yaml", params)
        try:
            yield
        finally:
            self.reset()


def build(path: Path, dvc_env: dict[str, str], run_dvc: Callable, run_git: Callable) -> TinyRepo:
    """Copy the pipeline with TINY_PARAMS into `path`, `dvc repro` it and commit the result."""
    env = copy_pipeline(path, TINY_PARAMS, dvc_env)
    repo = TinyRepo(path=path, env=env, run_dvc=run_dvc, run_git=run_git)
    repo.git("init", "-q")
    repo.dvc("init", "-q")
    repo.dvc("config", "core.analytics", "false")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "tiny pipeline")
    repo.first_repro = repo.dvc("repro")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "dvc repro")
    repo.baseline_params = (path / "params.yaml").read_text()
    return repo


def build_once(shared: Path, dvc_env: dict[str, str], run_dvc: Callable, run_git: Callable) -> TinyRepo:
    """The tiny pipeline under `shared` (a folder every process of this session sees), built by whoever comes first.

    The first repro's output is kept beside it, for the test that checks which stages it ran.
    """
    path, log = shared / "tiny-pipeline", shared / "tiny-pipeline-first-repro.txt"
    with FileLock(str(shared / "tiny-pipeline.lock")):
        if not log.is_file():
            if path.exists():  # a build that failed half-way in another process: start again
                shutil.rmtree(path)
            repo = build(path, dvc_env, run_dvc, run_git)
            log.write_text(repo.first_repro)
            return repo
    env = pipeline_env(path, dvc_env)
    return TinyRepo(path, env, run_dvc, run_git, log.read_text(), (path / "params.yaml").read_text())
