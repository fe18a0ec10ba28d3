"""The report stage on hand-made per-run files: tables, conventions, ablation, determinism, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from owdfa.core.errors import DataError
from owdfa.evaluate.report import ReportedRuns, build_report, run_key

METHODS = ["cal_abl1", "cal"]
SEEDS = [0, 1]


def write_run(runs: Path, predictions: Path, protocol: str, method: str, seed: int, all_acc: float) -> None:
    folder = runs / run_key(protocol, method, seed)
    folder.mkdir(parents=True)
    checkpoint = {
        "all_acc": all_acc, "all_nmi": 0.5, "all_ari": 0.4, "novel_acc": all_acc - 0.2, "novel_nmi": 0.3,
        "novel_ari": 0.2, "known_acc": 0.8, "gcd_v2_all_acc": all_acc, "gcd_v2_old_acc": 0.8, "gcd_v2_new_acc": 0.1,
    }  # fmt: skip
    metrics = {
        "last": checkpoint,
        "val_best": {k: v - 0.01 for k, v in checkpoint.items()},
        "k_hat": 15,
        "k_hat_gcd": 9 + seed,
        "calibration": {
            "ece": 0.1, "known_confidence": 0.8, "novel_confidence": 0.6, "known_epistemic": 0.01,
            "novel_epistemic": 0.02,
        },
    }  # fmt: skip
    run = {
        "protocol": protocol, "method": method, "loss": "cal", "method_params": {"method": "cal", "ccr": True},
        "seed": seed, "checkpoint": "last", "val_best_epoch": 7, "epochs": 10, "num_known": 7, "num_classes": 15,
        "test_images": 4, "k_trajectory": [40, 30, 15],
    }  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "run.json").write_text(json.dumps(run))
    predictions.mkdir(exist_ok=True)
    pd.DataFrame(
        {"path": list("abcd"), "target": [0, 1, 8, 9], "known": [True, True, False, False], "pred": [0, 1, 8, 8],
         "confidence": [0.9, 0.8, 0.5, 0.4]}
    ).to_csv(predictions / f"{run_key(protocol, method, seed)}.csv", index=False)  # fmt: skip


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    runs, predictions = tmp_path / "runs", tmp_path / "predictions"
    for seed in SEEDS:
        for i, method in enumerate(METHODS):
            write_run(runs, predictions, "p1", method, seed, 0.5 + 0.1 * i + 0.02 * seed)
    return runs, predictions


def test_report_tables_and_summary(tmp_path, runs):
    out = tmp_path / "out"
    summary = build_report(runs[0], ReportedRuns(["p1"], METHODS, SEEDS), out, runs[1])
    cal = summary["p1"]["cal"]
    assert cal["all_acc"] == pytest.approx(0.61) and cal["all_acc_std"] == round(np.std([0.6, 0.62], ddof=1), 6)
    assert cal["val_best_all_acc"] == pytest.approx(0.60)
    assert cal["k_hat_gcd"] == pytest.approx(9.5) and cal["ece"] == pytest.approx(0.1)
    assert cal["k_hat_ss_kmeans_folds"] is None and "k_hat_sskmeans" not in cal  # not run: null, old key gone
    assert json.loads((out / "metrics.json").read_text()) == summary
    text = (out / "results.md").read_text()
    assert "**Last epoch.** OW-DFA convention" in text
    assert "**Selected epoch** (best accuracy on the labelled validation split" in text
    assert "selected epochs, counted from 1 of 10: 8)" in text  # the cards count epochs from 0
    assert "| cal | 61.0 ± 1.4 | 50.0 ± 0.0 |" in text
    assert "GCD v2 convention" in text
    # only the estimators that ran get a column, each named for what it is
    assert "| Method | K̂ prototypes | error | K̂ GCD (k-means + Brent) | error | K |" in text
    assert "| cal | 15.0 ± 0.0 | 0.0 % | 9.5 ± 0.7 | 36.7 % | 15 |" in text
    assert "GCD: GCD's own K estimator as its official code runs it" in text and "SS-k-means folds" not in text
    assert "## Ablation (CAL's Table 4)" in text and "| I | cal_abl1 | CE + R, FFE |" in text
    assert "[confidence, known vs novel](figures/p1-confidence.png)" in text
    assert (out / "figures" / "p1-confidence.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "figures" / "p1-k_trajectory.png").is_file()


def test_k_table_names_both_estimators_when_both_ran(tmp_path, runs):
    for seed in SEEDS:
        for method in METHODS:
            path = runs[0] / run_key("p1", method, seed) / "metrics.json"
            metrics = json.loads(path.read_text())
            metrics["k_hat_ss_kmeans_folds"] = 12
            path.write_text(json.dumps(metrics))
    summary = build_report(runs[0], ReportedRuns(["p1"], METHODS, SEEDS), tmp_path / "out", runs[1])
    assert summary["p1"]["cal"]["k_hat_ss_kmeans_folds"] == 12 and summary["p1"]["cal"]["k_hat_gcd"] == 9.5
    text = (tmp_path / "out" / "results.md").read_text()
    header = (
        "| Method | K̂ prototypes | error | K̂ GCD (k-means + Brent) | error | K̂ SS-k-means folds (ours) | error | K |"
    )
    assert header in text and "| cal | 15.0 ± 0.0 | 0.0 % | 9.5 ± 0.7 | 36.7 % | 12.0 ± 0.0 | 20.0 % | 15 |" in text
    assert "SS-k-means folds: our variant, not GCD's" in text


def test_report_is_bit_identical_on_a_rerun(tmp_path, runs):
    first, second = tmp_path / "a", tmp_path / "b"
    build_report(runs[0], ReportedRuns(["p1"], METHODS, SEEDS), first, runs[1])
    build_report(runs[0], ReportedRuns(["p1"], METHODS, SEEDS), second, runs[1])
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 5  # results.md, metrics.json, trajectories.json, two figures
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel


def test_no_ablation_table_without_ablation_variants(tmp_path, runs):
    build_report(runs[0], ReportedRuns(["p1"], ["cal"], SEEDS), tmp_path / "out")
    assert "Ablation" not in (tmp_path / "out" / "results.md").read_text()


def test_missing_run_is_one_line(tmp_path, runs):
    with pytest.raises(DataError, match=r"p1-cal-7/metrics\.json: missing"):
        build_report(runs[0], ReportedRuns(["p1"], ["cal"], [7]), tmp_path / "out")
    old = runs[0] / "p1-cal-0" / "metrics.json"
    old.write_text(json.dumps({"all_acc": 0.5}))
    with pytest.raises(DataError, match="older evaluate stage"):
        build_report(runs[0], ReportedRuns(["p1"], ["cal"], [0]), tmp_path / "out")


def test_faithful_dpp_gets_both_classifiers_side_by_side(tmp_path, runs):
    for seed in SEEDS:
        path = runs[0] / run_key("p1", "cal", seed) / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["last_all_prototypes"] = {**metrics["last"], "all_acc": 0.3, "novel_acc": 0.1, "known_acc": 0.7}
        path.write_text(json.dumps(metrics))
    build_report(runs[0], ReportedRuns(["p1"], METHODS, SEEDS), tmp_path / "out", runs[1])
    text = (tmp_path / "out" / "results.md").read_text()
    assert "**Faithful DPP, both classifiers**" in text
    assert "| Method | All ACC, K̂ rows | Novel ACC, K̂ rows | Known ACC, K̂ rows | All ACC, all rows |" in text
    # cal: last all_acc 0.60 / 0.62 -> 61.0 ± 1.4, novel 41.0 ± 1.4, known 80.0; all rows 30.0, 10.0, 70.0
    assert "| cal | 61.0 ± 1.4 | 41.0 ± 1.4 | 80.0 ± 0.0 | 30.0 ± 0.0 | 10.0 ± 0.0 | 70.0 ± 0.0 |" in text
    assert "| cal_abl1 | " not in text.split("**Faithful DPP, both classifiers**")[1].split("\n\n")[1]


def test_starting_features_and_trajectories(tmp_path, runs):
    """The pretrain stage's probe joins the protocol's section and metrics.json; per-epoch series go to
    trajectories.json per seed (K-hat only where it changed, the method's own series as logged)."""
    runs_dir = runs[0]
    for seed in SEEDS:
        path = runs_dir / run_key("p1", "cal", seed) / "run.json"
        run = json.loads(path.read_text())
        run["method_trajectories"] = {"tau_novel": [0.2, 1.1 - seed / 10], "acr_kept_fraction": [0.0, 0.5]}
        path.write_text(json.dumps(run))
    pretrain = tmp_path / "pretrain"
    (pretrain / "p1").mkdir(parents=True)
    (pretrain / "p1" / "metrics.json").write_text(
        json.dumps({"mode": "both", "probe_known_acc": 0.625, "val_acc": None})
    )
    out = tmp_path / "out"
    summary = build_report(runs_dir, ReportedRuns(["p1"], METHODS, SEEDS), out, runs[1], pretrain_dir=pretrain)
    assert summary["starting_features"] == {"p1": {"probe_known_acc": 0.625, "val_acc": None}}
    text = (out / "results.md").read_text()
    assert (
        "**Starting features** (p1, `pretrain.mode: both`): known-class accuracy of a nearest-class-mean probe " in text
    )
    assert "validation split 62.5 %; the pretrain classifier's validation accuracy n/a." in text
    trajectories = json.loads((out / "trajectories.json").read_text())
    assert trajectories["p1"]["cal"] == {
        "seeds": [0, 1],
        "k_hat": [[40, 30, 15], [40, 30, 15]],
        "acr_kept_fraction": [[0.0, 0.5], [0.0, 0.5]],
        "tau_novel": [[0.2, 1.1], [0.2, 1.0]],
    }
    assert "tau_novel" not in trajectories["p1"]["cal_abl1"]  # its runs logged no threshold


def test_no_pretrain_metrics_no_starting_features(tmp_path, runs):
    summary = build_report(
        runs[0], ReportedRuns(["p1"], METHODS, SEEDS), tmp_path / "out", runs[1], pretrain_dir=tmp_path / "none"
    )
    assert "starting_features" not in summary
    assert "Starting features" not in (tmp_path / "out" / "results.md").read_text()
