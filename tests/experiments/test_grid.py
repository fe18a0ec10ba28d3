"""`owdfa grid` finds each experiment's results under the commit it was queued on."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from owdfa.experiments.grid import GridError, experiment_ref, head_commit


def git(repo: Path, env: dict[str, str], *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout


def test_a_commit_made_while_the_grid_runs_does_not_hide_its_experiment(tmp_path: Path, dvc_env) -> None:
    # DVC files a queued experiment under the commit it was queued on; the user committing meanwhile
    # (a README edit, say) must not make `owdfa grid` report that the experiment left no result.
    git(tmp_path, dvc_env, "init", "-q")
    (tmp_path / "a.txt").write_text("a\n")
    git(tmp_path, dvc_env, "add", "a.txt")
    git(tmp_path, dvc_env, "commit", "-q", "-m", "queued here")
    queued_on = head_commit(tmp_path)
    ref = f"refs/exps/{queued_on[:2]}/{queued_on[2:]}/grid-x"
    git(tmp_path, dvc_env, "update-ref", ref, queued_on)  # what `dvc exp run --queue` leaves
    (tmp_path / "a.txt").write_text("b\n")
    git(tmp_path, dvc_env, "commit", "-q", "-am", "committed while the grid ran")
    assert experiment_ref("grid-x", tmp_path, base=queued_on) == ref
    with pytest.raises(GridError, match="left no result"):
        experiment_ref("grid-x", tmp_path)  # looked up under the new HEAD: not there


def test_made_under_names_the_numerics_and_cpu_or_says_they_were_not_recorded(tmp_path: Path) -> None:
    from owdfa.experiments.grid import made_under

    (tmp_path / "results-old.md").write_text("| exact mode: AVX2 kernels (oneDNN AVX2, MKL AVX2,STRICT, ...) | 24 |\n")
    assert made_under("old", tmp_path) == "numerics version 1 (MKL's pin held on Intel CPUs only), CPU not recorded"
    assert made_under("never-run", tmp_path) == "numerics and CPU not recorded"
    cpu = {"name": "AMD EPYC 7551", "vendor": "amd", "family": "23", "model": "1", "isa": "avx2"}
    (tmp_path / "made-new.json").write_text(json.dumps({"cpu": cpu, "numerics": {"version": 2, "mode": "exact"}}))
    assert made_under("new", tmp_path) == "numerics version 2, AMD EPYC 7551 (amd, family 23 model 1, avx2)"
    (tmp_path / "made-broken.json").write_text("{")
    with pytest.raises(GridError, match="made-broken.json: not a grid provenance record"):
        made_under("broken", tmp_path)
