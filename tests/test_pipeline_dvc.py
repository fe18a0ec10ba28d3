"""End-to-end tests of the DVC pipeline (dvc.yaml + stages/) on a tiny synthetic config.

One module-scoped repro in a temporary git+dvc repo serves every test. The baseline (code, params,
dvc.lock and the git-tracked reports) is committed after that repro; each test that changes the
workspace puts it back with `git reset --hard` + `dvc checkout --force`, which is cheap because
every cached output is in the local dvc cache and every uncached one is in git.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.dvc_repo import copy_pipeline, dump_params, set_keys

from owdfa.machine import cpu_identity
from owdfa.numerics import NUMERICS_VERSION

pytestmark = pytest.mark.slow

RUNNING = re.compile(r"Running stage '([^']+)'")

PROTOCOLS = ["p1", "p2"]
METHODS = ["baseline", "cal"]
RUNS = [f"{p}-{m}-0" for p in PROTOCOLS for m in METHODS]
STAGES = [
    "fetch",
    "index",
    "align",
    *(f"split@{p}" for p in PROTOCOLS),
    *(f"pretrain@{p}" for p in PROTOCOLS),
    *(f"train@{r}" for r in RUNS),
    *(f"evaluate@{r}" for r in RUNS),
    "report",
]
EVALUATE_STAGES = {f"evaluate@{r}" for r in RUNS}
TRAIN_STAGES = {f"train@{r}" for r in RUNS}
PRETRAIN_STAGES = {f"pretrain@{p}" for p in PROTOCOLS}

# Dotted params key -> value: the tiny config (seconds per stage, mostly interpreter start-up).
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


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory, dvc_env, run_dvc, run_git) -> TinyRepo:
    path = tmp_path_factory.mktemp("tiny-pipeline")
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


def test_exp_run_of_an_evaluate_key_reruns_only_evaluate_and_report_and_records_metrics(tiny_repo: TinyRepo) -> None:
    # One `dvc exp run -S` serves two checks (formerly two tests, each re-running stages): an evaluate key
    # re-runs `evaluate@*` and `report` only, and the experiment records its params and metrics.
    # `checkpoint` rather than `batch_size`: a batch size change leaves the metrics identical, so dvc
    # (rightly) skips `report` too, since its dependency reports/runs did not change.
    try:
        out = tiny_repo.dvc("exp", "run", "-S", "evaluate.checkpoint=val_best")
        assert "Ran experiment" in out, out[-3000:]
        assert ran_stages(out) == EVALUATE_STAGES | {"report"}, out[-3000:]
        assert yaml.safe_load(tiny_repo.read("params.yaml"))["evaluate"]["checkpoint"] == "val_best"
        run = json.loads(tiny_repo.read("reports/runs/p1-baseline-0/run.json"))
        assert run["checkpoint"] == "val_best"
        assert tiny_repo.status() == {}

        diff = json.loads(tiny_repo.dvc("metrics", "diff", "--all", "--json"))
        summary = diff["reports/metrics.json"]
        for key in ("p1.baseline.all_acc", "p2.baseline.novel_acc", "p2.baseline.known_acc"):
            assert 0.0 <= summary[key]["old"] <= 1.0 and 0.0 <= summary[key]["new"] <= 1.0, summary.get(key)

        show = json.loads(tiny_repo.dvc("exp", "show", "--json"))
        exps = [r for row in show for e in (row.get("experiments") or []) for r in e["revs"]]
        assert exps, show
        data = exps[0]["data"]
        assert data["params"]["params.yaml"]["data"]["evaluate"]["checkpoint"] == "val_best"
        assert "all_acc" in data["metrics"]["reports/metrics.json"]["data"]["p1"]["baseline"]
    finally:
        tiny_repo.reset()


@pytest.mark.parametrize(
    ("changes", "target", "expected"),
    [
        ({"split.budgets.known": 100000}, "split@p1", "split.budgets.known"),
        ({"run.protocols": ["p9"]}, "split@p9", "'p9'"),
        ({"train.epochs": -1}, "train@p1-baseline-0", "train.epochs"),
        ({"data.source": "hub"}, "fetch", "data.source"),
    ],
    ids=["split-budget", "unknown-protocol", "negative-epochs", "hub-source"],
)
def test_bad_params_give_one_line_error(tiny_repo: TinyRepo, changes: dict[str, Any], target: str, expected: str):
    with tiny_repo.params(changes):
        out = tiny_repo.dvc_fails("repro", target)
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out[-3000:]
    assert expected in errors[0], errors[0]
    assert "Traceback" not in out, out[-3000:]
    assert f"failed to reproduce '{target}'" in out


# --- what a change re-runs: exactly the stages that read it -------------------------------------


def changed_stages(tiny_repo: TinyRepo) -> set[str]:
    return set(tiny_repo.status())


@contextmanager
def edited(tiny_repo: TinyRepo, rel: str) -> Iterator[None]:
    """Append a comment line to a source file of the tiny repo; the workspace is reset afterwards."""
    path = tiny_repo.path / rel
    path.write_text(path.read_text() + "# edited by a test\n")
    try:
        yield
    finally:
        tiny_repo.reset()


def test_a_method_variant_key_reruns_only_that_variants_runs(tiny_repo: TinyRepo) -> None:
    cal_runs = {f"train@{p}-cal-0" for p in PROTOCOLS}
    with tiny_repo.params({"methods.cal.ccr_weight": 0.3}):
        assert changed_stages(tiny_repo) == cal_runs
        out = tiny_repo.dvc("repro")
        assert ran_stages(out) == cal_runs | {f"evaluate@{p}-cal-0" for p in PROTOCOLS} | {"report"}, out[-3000:]
    with tiny_repo.params({"methods.baseline.distill_weight": 0.3}):
        assert changed_stages(tiny_repo) == {f"train@{p}-baseline-0" for p in PROTOCOLS}
    with tiny_repo.params({"methods.cpl.glv_weight": 0.3}):  # a variant no run uses
        assert changed_stages(tiny_repo) == set()


def test_the_view_param_changes_only_the_training_runs(tiny_repo: TinyRepo) -> None:
    # `dvc exp run -S train.augment.view=official`: the train stages read it, evaluate and report follow
    # their new models; pretrain keeps its own augment section, so the starting weights are reused.
    with tiny_repo.params({"train.augment.view": "official"}):
        assert changed_stages(tiny_repo) == TRAIN_STAGES


def test_an_evaluate_key_changes_only_the_evaluate_stages(tiny_repo: TinyRepo) -> None:
    with tiny_repo.params({"evaluate.ece_bins": 10}):
        assert changed_stages(tiny_repo) == EVALUATE_STAGES


def test_an_evaluate_only_source_file_reruns_evaluate_and_recomputes_the_metrics(tiny_repo: TinyRepo) -> None:
    metrics = tiny_repo.path / "reports" / "runs" / "p1-cal-0" / "metrics.json"
    before = metrics.stat().st_mtime_ns
    with edited(tiny_repo, "src/owdfa/estimate_k.py"):
        assert changed_stages(tiny_repo) == EVALUATE_STAGES
        # One of them re-run (with what it needs; each evaluate stage re-runs alike): its metrics are
        # written anew, identical (a comment changed), so dvc rightly keeps `report` downstream.
        out = tiny_repo.dvc("repro", "evaluate@p1-cal-0")
        assert ran_stages(out) == {"evaluate@p1-cal-0"}, out[-3000:]
        assert metrics.stat().st_mtime_ns > before
        assert set(tiny_repo.status()) == EVALUATE_STAGES - {"evaluate@p1-cal-0"}


def test_a_training_source_file_reruns_training_not_evaluation(tiny_repo: TinyRepo) -> None:
    with edited(tiny_repo, "src/owdfa/training.py"):
        assert changed_stages(tiny_repo) == PRETRAIN_STAGES | TRAIN_STAGES
        # One chain re-run, CAL's (the method with the most state): the pretrain and the training run
        # give the same weights, bit for bit, so its evaluation does not have to run again.
        out = tiny_repo.dvc("repro", "evaluate@p1-cal-0")
        assert ran_stages(out) == {"pretrain@p1", "train@p1-cal-0"}, out[-3000:]
        assert set(tiny_repo.status()) == (PRETRAIN_STAGES | TRAIN_STAGES) - {"pretrain@p1", "train@p1-cal-0"}


def test_grid_runs_as_a_queued_experiment_and_writes_its_table(tiny_repo: TinyRepo) -> None:
    """`owdfa grid` queues `dvc exp run --queue`, runs `dvc queue start` and writes the experiment's report."""
    grids = tiny_repo.path / "grids.yaml"
    grids.write_text(
        "two-seeds:\n  description: p1 baseline, seeds 0 and 1\n"
        "  set: {run.protocols: [p1], run.methods: [baseline], run.seeds: [0, 1]}\n"
    )
    tiny_repo.git("add", "grids.yaml")
    tiny_repo.git("commit", "-q", "-m", "a grid")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "from owdfa.cli import main; raise SystemExit(main())"]
            + ["grid", "two-seeds", "--grids", "grids.yaml"],
            cwd=tiny_repo.path,
            env=tiny_repo.env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = tiny_repo.read("reports/grid/results-two-seeds.md").decode()
        assert "Generated by `owdfa grid two-seeds`" in results and "seeds 0, 1" in results, results[:600]
        assert "| baseline |" in results and "Protocol p2" not in results
        metrics = json.loads(tiny_repo.read("reports/grid/metrics-two-seeds.json"))
        assert 0.0 <= metrics["p1"]["baseline"]["all_acc"] <= 1.0
        # where it was made: the commit queued on, exact mode's version, this CPU
        made = json.loads(tiny_repo.read("reports/grid/made-two-seeds.json"))
        assert made["commit"] == tiny_repo.git("rev-parse", "HEAD").strip()
        assert made["numerics"] == {"version": NUMERICS_VERSION, "mode": "exact"}
        assert made["cpu"] == cpu_identity() and made["command"].startswith("dvc exp run")
        log = tiny_repo.dvc("queue", "logs", "grid-two-seeds")
        # seed 0's runs are the committed ones: only the new seed and the report run
        assert ran_stages(log) == {"train@p1-baseline-1", "evaluate@p1-baseline-1", "report"}, log[-3000:]
        # the workspace is untouched but for the grid files
        assert tiny_repo.git("status", "--porcelain").split() == ["??", "reports/grid/"]
    finally:
        tiny_repo.git("reset", "-q", "--hard", "HEAD~1")
        tiny_repo.reset()
