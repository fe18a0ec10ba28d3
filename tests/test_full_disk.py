"""A full disk and a read-only tree, simulated without root, on a copy of the tiny pipeline.

* Full: the stage scripts run as dvc runs them, under a file-size limit (`ulimit -f`, RLIMIT_FSIZE:
  a write past it fails with EFBIG, as a full disk fails with ENOSPC) during fetch, align, a
  checkpoint save and the report.
* Read-only: `data/`, `reports/` or DVC's cache made read-only (`chmod a-w`). Root ignores file modes,
  so a root test process runs the command without its capabilities (`setpriv`).

Each must fail with one line, leave the previous outputs and the cache as they were (no half-written
file where a good one was), and a re-run once the space is back must give the uninterrupted run's
bytes: `dvc repro` then records exactly the committed dvc.lock.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from helpers.tiny_pipeline import TinyRepo

pytestmark = pytest.mark.slow


def tree(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder` (hidden ones too: a leftover shows)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def stage_command(repo: TinyRepo, stage: str) -> list[str]:
    lock = yaml.safe_load(repo.read("dvc.lock"))
    return [sys.executable if word == "python" else word for word in shlex.split(lock["stages"][stage]["cmd"])]


def run(repo: TinyRepo, command: list[str], *, max_file_bytes: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        if max_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, resource.RLIM_INFINITY))

    return subprocess.run(
        command, cwd=repo.path, env=repo.env, capture_output=True, text=True, timeout=300, preexec_fn=limit
    )


def one_error_line(proc: subprocess.CompletedProcess, output: str) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors == proc.stderr.strip().splitlines()[-1:], proc.stderr[-3000:]
    assert f"cannot write {output}" in errors[0], errors[0]
    return errors[0]


def unprivileged() -> list[str]:
    """A command prefix under which file modes hold: nothing for a user, root without its capabilities."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without util-linux's setpriv: a read-only folder cannot be simulated")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--"]


@contextmanager
def read_only(*folders: Path) -> Iterator[None]:
    modes = {p: p.stat().st_mode for f in folders for p in [f, *f.rglob("*")] if not p.is_symlink()}
    try:
        for path, mode in modes.items():
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        yield
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


@pytest.fixture
def repo(tiny_repo: TinyRepo) -> Iterator[TinyRepo]:
    yield tiny_repo
    tiny_repo.reset()


def test_a_full_disk_in_each_writing_stage_keeps_the_old_outputs_and_a_rerun_restores_the_run(repo: TinyRepo) -> None:
    before = {name: tree(repo.path / name) for name in ("data", "reports")}
    cases = [  # (stage, its output that must stay as it was, the largest file it may write)
        ("fetch", "data/raw", 1024),  # the first generated image is larger
        ("align", "data/faces", 64 * 1024),  # the face array is ~600 kB
        ("report", "reports/figures", 4 * 1024),  # the first figure
    ]
    for stage, output, limit in cases:
        proc = run(repo, stage_command(repo, stage), max_file_bytes=limit)
        one_error_line(proc, output)
        assert tree(repo.path / "data") == before["data"], stage
        assert tree(repo.path / "reports") == before["reports"], stage
    # a checkpoint save: the run starts afresh (no checkpoint), trains an epoch, and its checkpoint
    # (~4.5 MB with Adam's state) is refused; the finished model directory stays as it was
    checkpoints = repo.path / "data" / "checkpoints" / "train" / "p1-cal-0"
    shutil.rmtree(checkpoints)
    proc = run(repo, stage_command(repo, "train@p1-cal-0"), max_file_bytes=1024 * 1024)
    one_error_line(proc, "data/checkpoints/train/p1-cal-0/epoch-0001.safetensors")
    assert list(checkpoints.iterdir()) == []  # no partial checkpoint
    assert tree(repo.path / "data" / "runs") == {
        k.removeprefix("runs/"): v for k, v in before["data"].items() if k.startswith("runs/")
    }
    # the space is back: dvc re-runs what changed and records the uninterrupted run's bytes
    committed_lock = repo.read("dvc.lock")
    repo.dvc("repro")
    assert repo.read("dvc.lock") == committed_lock
    assert repo.status() == {}
    assert tree(repo.path / "data") == before["data"] and tree(repo.path / "reports") == before["reports"]


def test_read_only_data_and_reports_fail_with_one_line_and_change_nothing(repo: TinyRepo) -> None:
    prefix = unprivileged()
    for stage, folder, output in [("align", "data", "data/faces"), ("report", "reports", "reports/figures")]:
        before = tree(repo.path / folder)
        with read_only(repo.path / folder):
            proc = run(repo, [*prefix, *stage_command(repo, stage)])
        assert "Permission denied" in one_error_line(proc, output)
        assert tree(repo.path / folder) == before, stage
    assert repo.status() == {}


def test_a_read_only_dvc_cache_fails_the_cache_write_and_keeps_the_cache(repo: TinyRepo) -> None:
    prefix = unprivileged()
    params = yaml.safe_load(repo.path.joinpath("params.yaml").read_text())
    params["methods"]["cal"]["ccr_weight"] = 0.25  # the variants stage writes a new cal.json
    repo.path.joinpath("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cache = repo.path / ".dvc" / "cache"
    before = tree(cache)
    with read_only(cache):
        proc = run(repo, [*prefix, sys.executable, "-m", "dvc", "repro", "variants"])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "Permission denied" in errors[0], out[-3000:]
    assert tree(cache) == before
    assert "variants" in repo.status()  # not recorded as done
    # the cache writable again: the re-run completes, with the bytes of the stage run by itself
    repo.dvc("repro", "variants")
    assert repo.status().keys() <= {f"train@{p}-cal-0" for p in ("p1", "p2")}
    uninterrupted = run(repo, [*stage_command(repo, "variants")[:-1], str(repo.path / "variants-alone")])
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    assert tree(repo.path / "data" / "variants") == tree(repo.path / "variants-alone")
