"""End-to-end tests of the DVC pipeline (dvc.yaml + stages/) on a tiny synthetic config: the repro itself.

The tiny pipeline is reproduced once per session (`helpers.tiny_pipeline`) and this module works on
its own copy. The baseline (code, params, dvc.lock and the git-tracked reports) is committed after
that repro; each test that changes the workspace puts it back with `git reset --hard` +
`dvc checkout --force`, which is cheap because every cached output is in the local dvc cache and
every uncached one is in git. What a change re-runs: test_pipeline_changes.py; experiments and
grids: test_pipeline_experiments.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.tiny_pipeline import (
    PROTOCOLS,
    RUNS,
    STAGES,
    TINY_PARAMS,
    TinyRepo,
    flatten,
    ran_stages,
)

pytestmark = pytest.mark.slow


def test_stage_code_comes_from_the_copy(tiny_repo: TinyRepo) -> None:
    probe = "import owdfa; print(owdfa.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tiny_repo.path, env=tiny_repo.env, capture_output=True, text=True
    )
    assert Path(out.stdout.strip()).is_relative_to(tiny_repo.path / "src"), out.stdout + out.stderr


def test_repro_runs_every_stage_and_writes_reports(tiny_repo: TinyRepo) -> None:
    assert ran_stages(tiny_repo.first_repro) == set(STAGES)
    warnings = [line for line in tiny_repo.first_repro.splitlines() if "WARNING" in line]
    assert warnings == [], warnings  # a clean run warns of nothing (no empty output folders)

    metrics = flatten(json.loads(tiny_repo.read("reports/metrics.json")))
    for protocol in PROTOCOLS:
        for name in ("all_acc", "novel_acc", "known_acc"):
            key = f"{protocol}.baseline.{name}"
            assert key in metrics, f"{key} missing from reports/metrics.json: {sorted(metrics)[:20]}"
            assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])

    results = tiny_repo.read("reports/results.md").decode()
    for protocol in PROTOCOLS:
        assert f"Protocol {protocol}" in results

    for run in RUNS:
        per_run = json.loads(tiny_repo.read(f"reports/runs/{run}/metrics.json"))
        for checkpoint in ("last", "val_best"):
            assert 0.0 <= per_run[checkpoint]["all_acc"] <= 1.0
        assert 0.0 <= per_run["calibration"]["ece"] <= 1.0
        for figure in ("confusion", "reliability", "confidence", "tsne", "uncertainty_maps", "training"):
            assert tiny_repo.read(f"reports/runs/{run}/plots/{figure}.png").startswith(b"\x89PNG")
        curve = tiny_repo.read(f"reports/train/{run}/plots/metrics/val/acc.tsv").decode().splitlines()
        assert curve[0].split("\t") == ["step", "acc"]
        assert len(curve) == 1 + TINY_PARAMS["train.epochs"], curve

    lock = yaml.safe_load(tiny_repo.read("dvc.lock"))
    assert set(lock["stages"]) == set(STAGES)


def test_second_repro_is_a_no_op(tiny_repo: TinyRepo) -> None:
    out = tiny_repo.dvc("repro")
    assert ran_stages(out) == set(), out[-3000:]
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in out, out[-3000:]
    assert "is cached - skipping run" not in out
    assert tiny_repo.status() == {}


def test_forced_rerun_is_bit_identical(tiny_repo: TinyRepo) -> None:
    files = ["dvc.lock", "reports/metrics.json", "reports/results.md", "reports/runs/p1-baseline-0/metrics.json"]
    files += ["data/predictions/p1-baseline-0.csv", "reports/train/p1-baseline-0/metrics.json"]
    files += ["reports/figures/p1-confidence.png", "reports/runs/p1-baseline-0/plots/confusion.png"]
    files += ["reports/runs/p1-baseline-0/plots/tsne.png", "reports/runs/p1-baseline-0/plots/uncertainty_maps.png"]
    before = {f: tiny_repo.read(f) for f in files}
    forced = ["train@p1-baseline-0", "evaluate@p1-baseline-0", "report"]
    try:
        out = tiny_repo.dvc("repro", "--force", "--single-item", *forced)
        # --force skips the run cache: the commands really ran again.
        assert ran_stages(out) == set(forced), out[-3000:]
        for f in files:
            assert tiny_repo.read(f) == before[f], f"{f} differs after a forced re-run (dvc.lock: model weights)"
        assert tiny_repo.status() == {}
    finally:
        tiny_repo.reset()


def test_plots_show_lists_figures_and_data_plots(tiny_repo: TinyRepo) -> None:
    shown = json.loads(tiny_repo.dvc("plots", "show", "--json"))
    names = set(shown.get("data", shown))
    run = "reports/runs/p1-baseline-0"
    expected = {
        f"{run}/plots/confusion.png",
        f"{run}/plots/reliability.png",
        f"{run}/plots/tsne.png",
        f"{run}/plots/uncertainty_maps.png",
        f"{run}/confusion.csv",
        f"{run}/reliability.csv",
        f"{run}/k_trajectory.csv",
        "reports/figures/p1-confidence.png",
    }
    assert expected <= names, sorted(names)


def _out_md5(lock_text: str, stage: str, path: str) -> str:
    outs = yaml.safe_load(lock_text)["stages"][stage]["outs"]
    return next(o["md5"] for o in outs if o["path"] == path)


def test_killed_repro_resumes_training(tiny_repo: TinyRepo) -> None:
    """SIGKILL `dvc repro` (and its stage) mid-training, as a pre-empted node would; the next
    `dvc repro` resumes from the last epoch's checkpoint and records the same outputs as an
    uninterrupted run. A finished run leaves an empty checkpoint folder that checkout restores."""
    stage, run = "train@p1-baseline-0", "p1-baseline-0"
    checkpoints = tiny_repo.path / "data" / "checkpoints" / "train" / run
    with tiny_repo.params({"train.epochs": 6}):
        proc = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro", "--single-item", stage],
            cwd=tiny_repo.path,
            env=tiny_repo.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while not any(checkpoints.glob("epoch-000[2-5].safetensors")):
            assert proc.poll() is None, "dvc repro ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert stage in tiny_repo.status(), "killed too late: the stage had finished"

        resumed = tiny_repo.dvc("repro", "--single-item", stage)
        assert ran_stages(resumed) == {stage} and "resuming after epoch" in resumed, resumed[-3000:]
        assert stage not in tiny_repo.status()
        lock = tiny_repo.read("dvc.lock").decode()
        card = json.loads(tiny_repo.read(f"data/runs/{run}/card.json"))
        assert len(card["history"]) == 6
        assert [p.name for p in checkpoints.iterdir()] == ["FINISHED.txt"]

        whole = tiny_repo.dvc("repro", "--force", "--single-item", stage)
        assert "resuming" not in whole
        assert _out_md5(tiny_repo.read("dvc.lock").decode(), stage, f"data/runs/{run}") == _out_md5(
            lock, stage, f"data/runs/{run}"
        )

        shutil.rmtree(tiny_repo.path / "data" / "checkpoints")
        tiny_repo.dvc("checkout", "-q")
        assert checkpoints.is_dir() and stage not in tiny_repo.status()


@pytest.mark.parametrize(
    ("changes", "target", "expected"),
    [
        ({"split.budgets.known": 100000}, "split@p1", "split.budgets.known"),
        ({"run.protocols": ["p9"]}, "split@p9", "'p9'"),
        ({"train.epochs": -1}, "train@p1-baseline-0", "train.epochs"),
        ({"data.source": "hub"}, "fetch", "data.source"),
        ({"methods.cal_dpp.base": "cal_abl9"}, "variants", "methods.cal_dpp.base"),
    ],
    ids=["split-budget", "unknown-protocol", "negative-epochs", "hub-source", "unknown-base"],
)
def test_bad_params_give_one_line_error(tiny_repo: TinyRepo, changes: dict[str, Any], target: str, expected: str):
    with tiny_repo.params(changes):
        out = tiny_repo.dvc_fails("repro", target)
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out[-3000:]
    assert expected in errors[0], errors[0]
    assert "Traceback" not in out, out[-3000:]
    assert f"failed to reproduce '{target}'" in out
