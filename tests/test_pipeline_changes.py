"""What a change re-runs in the tiny DVC pipeline: exactly the stages that read it.

Works on its own copy of the session's tiny pipeline (`helpers.tiny_pipeline`), reset after each test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import yaml
from helpers.tiny_pipeline import (
    EVALUATE_STAGES,
    PRETRAIN_STAGES,
    PROTOCOLS,
    TRAIN_STAGES,
    TinyRepo,
    ran_stages,
)

pytestmark = pytest.mark.slow


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


def rerun_variants(tiny_repo: TinyRepo) -> set[str]:
    """`dvc repro variants` (params.yaml's methods, resolved): then the stages left to run."""
    tiny_repo.dvc("repro", "variants")
    return changed_stages(tiny_repo)


def test_a_method_variant_key_reruns_only_that_variants_runs(tiny_repo: TinyRepo) -> None:
    cal_runs = {f"train@{p}-cal-0" for p in PROTOCOLS}
    with tiny_repo.params({"methods.cal.ccr_weight": 0.3}):
        assert changed_stages(tiny_repo) == {"variants"}  # it reads params.yaml's methods; the runs, its files
        # One chain re-run (each protocol's re-runs alike): the variants, the variant's training and
        # its evaluation, not the pretrain before it; what is left is the other protocol's run and the report.
        out = tiny_repo.dvc("repro", "evaluate@p1-cal-0")
        assert ran_stages(out) == {"variants", "train@p1-cal-0", "evaluate@p1-cal-0"}, out[-3000:]
        assert changed_stages(tiny_repo) - {"report"} == cal_runs - {"train@p1-cal-0"}
    with tiny_repo.params({"methods.baseline.distill_weight": 0.3}):
        assert rerun_variants(tiny_repo) == {f"train@{p}-baseline-0" for p in PROTOCOLS}
    with tiny_repo.params({"methods.cpl.glv_weight": 0.3}):  # a variant no run uses
        assert rerun_variants(tiny_repo) == set()


def test_editing_a_base_reruns_the_variants_built_on_it_and_no_other(tiny_repo: TinyRepo) -> None:
    # `cal_abl3` written out in full (cal's settings without ACR) and `cal` rewritten as a difference
    # from it resolve to the same settings, so no run re-runs; an edit of the base then reaches `cal`'s
    # runs, not `baseline`'s.
    cal = yaml.safe_load(tiny_repo.baseline_params)["methods"]["cal"]
    assert "base" not in cal
    as_difference = {"methods.cal_abl3": {**cal, "acr": False}, "methods.cal": {"base": "cal_abl3", "acr": True}}
    with tiny_repo.params(as_difference):
        assert rerun_variants(tiny_repo) == set()
    with tiny_repo.params({**as_difference, "methods.cal_abl3.ccr_weight": 0.3}):
        assert rerun_variants(tiny_repo) == {f"train@{p}-cal-0" for p in PROTOCOLS}
    # and an edit of `cal` itself reaches the variants built on it even where no run uses them
    with tiny_repo.params({"methods.cal.ccr_weight": 0.3}):
        tiny_repo.dvc("repro", "variants")
        resolved = json.loads(tiny_repo.read("data/variants/cal_abl1.json"))
        assert resolved["ccr_weight"] == 0.3 and resolved["ccr"] is False and "base" not in resolved


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
    with edited(tiny_repo, "src/owdfa/evaluate/estimate_k.py"):
        assert changed_stages(tiny_repo) == EVALUATE_STAGES
        # One of them re-run (with what it needs; each evaluate stage re-runs alike): its metrics are
        # written anew, identical (a comment changed), so dvc rightly keeps `report` downstream.
        out = tiny_repo.dvc("repro", "evaluate@p1-cal-0")
        assert ran_stages(out) == {"evaluate@p1-cal-0"}, out[-3000:]
        assert metrics.stat().st_mtime_ns > before
        assert set(tiny_repo.status()) == EVALUATE_STAGES - {"evaluate@p1-cal-0"}


def test_a_training_source_file_reruns_training_not_evaluation(tiny_repo: TinyRepo) -> None:
    with edited(tiny_repo, "src/owdfa/train/loop.py"):
        assert changed_stages(tiny_repo) == PRETRAIN_STAGES | TRAIN_STAGES
        # One chain re-run, CAL's (the method with the most state): the pretrain and the training run
        # give the same weights, bit for bit, so its evaluation does not have to run again.
        out = tiny_repo.dvc("repro", "evaluate@p1-cal-0")
        assert ran_stages(out) == {"pretrain@p1", "train@p1-cal-0"}, out[-3000:]
        assert set(tiny_repo.status()) == (PRETRAIN_STAGES | TRAIN_STAGES) - {"pretrain@p1", "train@p1-cal-0"}
