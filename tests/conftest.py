"""Shared fixtures: a hermetic environment for running dvc/git as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from owdfa.numerics import Numerics, pin

# Before anything imports torch or NumPy: tests compute under the same pinned kernels and thread count
# as the stages (params.yaml's numerics defaults), so in-process results equal the stages' exactly.
pin(Numerics())

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
