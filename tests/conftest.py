"""Shared fixtures: a hermetic environment for running dvc/git as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from helpers.tiny_pipeline import TinyRepo, build_once

from owdfa.core.numerics import Numerics, pin, shared_cores_environment

# pytest-xdist runs the suite in several processes side by side (pyproject's addopts): OpenMP's
# default spin at every barrier would burn the other worker's time slice (owdfa.core.numerics,
# SHARED_CORES_WAIT_POLICY), so the workers and every process they start wait the short way.
# Scheduling only: the numbers are the same. A wait policy of the user's own stands.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.update(shared_cores_environment(dict(os.environ)))

# Before anything imports torch or NumPy: tests compute under the same pinned kernels and thread count
# as the stages (params.yaml's numerics defaults), so in-process results equal the stages' exactly.
pin(Numerics())

# Files that take a minute or more (real DVC pipelines, the simulated other machine, the bench
# scripts), heaviest first: xdist hands out whole files in collection order, so a long file started
# last would keep one worker busy after the other has finished. Order only, never what runs.
HEAVIEST_FIRST = (
    "test_pipeline_dvc.py",
    "test_official_pipeline.py",
    "test_pipeline_experiments.py",
    "test_bench.py",
    "test_pipeline_changes.py",
    "test_numerics.py",
    "test_official_cli.py",
    "test_pipeline_folder.py",
    "test_full_disk.py",
    "test_checkpoints.py",
    "test_ddp.py",
    "test_cli.py",
    "test_pretrain_modes.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "owdfa tests",
    "GIT_AUTHOR_EMAIL": "tests@owdfa.invalid",
    "GIT_COMMITTER_NAME": "owdfa tests",
    "GIT_COMMITTER_EMAIL": "tests@owdfa.invalid",
}


@pytest.fixture(scope="session")
def dvc_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for dvc/git subprocesses: no analytics, no network, private dvc config and site cache.

    The current interpreter's folder goes first on PATH so that `python` in dvc.yaml commands is
    the same Python (and the same installed packages) as the one running the tests.
    """
    base = tmp_path_factory.mktemp("dvc-env")
    env = dict(os.environ)
    env.update(GIT_IDENTITY)
    env.update(
        DVC_NO_ANALYTICS="1",
        HF_HUB_OFFLINE="1",
        DVC_SITE_CACHE_DIR=str(base / "site-cache"),
        DVC_GLOBAL_CONFIG_DIR=str(base / "global-config"),
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
    )
    return env


RunCmd = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="session")
def run_dvc(dvc_env: dict[str, str]) -> RunCmd:
    """`run_dvc(cwd, *args, check=True, env=None, timeout=600)`: `python -m dvc ARGS` with stdout+stderr merged."""

    def run(
        cwd: Path,
        *args: str,
        check: bool = True,
        env: dict[str, str] | None = None,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess:
        return _run([sys.executable, "-m", "dvc", *args], cwd, check, env or dvc_env, timeout)

    return run


@pytest.fixture(scope="session")
def run_git(dvc_env: dict[str, str]) -> RunCmd:
    """`run_git(cwd, *args, check=True)`: git with the test identity and commit signing off."""

    def run(
        cwd: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return _run(["git", "-c", "commit.gpgsign=false", *args], cwd, check, env or dvc_env, 120)

    return run


def _run(
    cmd: Sequence[str], cwd: Path, check: bool, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        list(cmd),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        tail = proc.stdout[-4000:]
        pytest.fail(f"{' '.join(cmd[:6])} ... exited with {proc.returncode} in {cwd}:\n{tail}", pytrace=False)
    return proc


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory, dvc_env, run_dvc, run_git) -> TinyRepo:
    """The tiny pipeline reproduced and committed, once for the whole run (all xdist workers); never modify it."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's folder, above the workers'
    return build_once(shared, dvc_env, run_dvc, run_git)


@pytest.fixture(scope="module")
def tiny_repo(tiny_pipeline: TinyRepo, tmp_path_factory: pytest.TempPathFactory, dvc_env) -> TinyRepo:
    """This module's own working copy of the tiny pipeline (`helpers.tiny_pipeline`)."""
    return TinyRepo.copy_of(tiny_pipeline, tmp_path_factory.mktemp("tiny-pipeline") / "repo", dvc_env)
