"""dvc.lock is current with the code and params it records.

`dvc status` in the project checkout may report missing or different *data* (a fresh clone has no
data/ at all), but never a changed stage script, library file, command or params section: that
would mean someone changed code or params.yaml and committed without `dvc repro` (or `dvc commit`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("stages/", "src/")
PARAMS_FILES = ("params.yaml",)


def stale_entries(status: dict[str, Any]) -> list[str]:
    """`dvc status --json` entries that mean the lock does not match code, params or dvc.yaml."""
    problems = []
    for stage, changes in sorted(status.items()):
        for change in changes:
            if isinstance(change, str):  # "changed command", "changed checksum", "always changed"
                if change != "always changed":
                    problems.append(f"{stage}: {change}")
                continue
            for kind, entries in change.items():
                if kind != "changed deps":
                    continue  # changed outs: missing/different data is fine
                for path, state in entries.items():
                    if isinstance(state, dict):  # params: {"train": "modified"}
                        problems += [f"{stage}: {path}: {key} {s}" for key, s in sorted(state.items())]
                    elif path in PARAMS_FILES or path.startswith(CODE_DIRS):
                        problems.append(f"{stage}: {path} {state}")
    return problems


def test_stale_entries_classifier() -> None:
    status = {
        "fetch": [{"changed deps": {"src/owdfa/data/fetch.py": "modified", "data/raw": "deleted"}}],
        "train@p1": [{"changed deps": {"params.yaml": {"train": "modified"}}}, {"changed outs": {"data/x": "deleted"}}],
        "pretrain@p2": [{"changed deps": {"params.yaml": "new", "data/faces": "modified"}}],
        "evaluate@p1": [{"changed deps": {"data/runs/p1": "deleted"}}, {"changed outs": {"reports/m.json": "deleted"}}],
        "report": ["changed command"],
    }
    assert stale_entries(status) == [
        "fetch: src/owdfa/data/fetch.py modified",
        "pretrain@p2: params.yaml new",
        "report: changed command",
        "train@p1: params.yaml: train modified",
    ]


@pytest.mark.slow
def test_dvc_lock_matches_code_and_params(run_dvc) -> None:
    if not (ROOT / ".git").exists() or not (ROOT / ".dvc").is_dir():
        pytest.skip(f"{ROOT} is not a git checkout with a .dvc folder")
    if not (ROOT / "dvc.lock").is_file():
        pytest.skip(f"{ROOT} has no dvc.lock yet (run `dvc repro` and commit it)")
    proc = run_dvc(ROOT, "status", "--json", check=False, timeout=300)
    if "Unable to acquire lock" in proc.stdout or "it is being blocked by" in proc.stdout:
        pytest.skip("another dvc command (e.g. a running `dvc repro`) holds the repository lock")
    assert proc.returncode == 0, proc.stdout[-3000:]
    json_lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert json_lines, proc.stdout[-3000:]
    status = json.loads(json_lines[-1])
    problems = stale_entries(status)
    assert not problems, "dvc.lock is stale (run `dvc repro` and commit dvc.lock):\n" + "\n".join(problems)
