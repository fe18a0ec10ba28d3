"""The evaluate stage on a real tiny model: faithful DPP's two classifiers and the analysed checkpoint's K̂."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.paths import ROOT as REPO_ROOT
from helpers.tiny_run import build_tiny_split, train_sections

from owdfa.core.config import Section
from owdfa.core.devices import pick_device
from owdfa.data.face_cache import read_faces
from owdfa.data.split import read_split
from owdfa.evaluate.evaluation import evaluate, map_classes
from owdfa.evaluate.metrics import evaluate_predictions
from owdfa.modeldir.card import ModelCard
from owdfa.modeldir.io import load_model, load_state, save_model_dir
from owdfa.models.inference import predict
from owdfa.train.stages import RunPaths, train

ROOT = REPO_ROOT


@pytest.fixture(scope="module")
def faithful_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("faithful")
    faces, split = build_tiny_split(base)
    model_dir = base / "model"
    train(*train_sections("cal_dpp_faithful"), "cal_dpp_faithful", 0, RunPaths(split, faces, model_dir))
    return faces, split, model_dir


def _evaluate_section(checkpoint: str) -> Section:
    section = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text())["evaluate"])
    section.update(
        checkpoint=checkpoint, device="cpu", k_estimators=[], mc_dropout_passes=2, tsne_max_points=0,
        uncertainty_maps={"per_class": 0, "classes": 8, "window": 16, "stride": 8},
    )  # fmt: skip
    return Section(section, "evaluate")


def _test_rows(split: Path, faces: Path):
    manifest, classes = read_split(split)
    test = manifest[manifest["split"] == "test"]
    _, images = read_faces(faces)
    return images, test["row"].to_numpy(np.int64), test["target"].to_numpy(np.int64), int(classes["num_known"])


@pytest.mark.slow
def test_faithful_dpp_reports_the_pruned_and_the_all_rows_classifier(faithful_run, tmp_path):
    faces, split, model_dir = faithful_run
    metrics = evaluate(_evaluate_section("last"), model_dir, split, faces, tmp_path / "out", tmp_path / "p.csv")
    card = ModelCard.read(model_dir)
    rows_total = card.num_prototypes
    pruned = card.k_hat
    assert card.estimates_k and card.dpp_faithful
    assert pruned < rows_total  # DPP pruned, so the two classifiers can differ
    assert card.num_active == pruned  # the saved count is the pruned one, also in faithful mode
    # Independently: predict with the pruned rows, then with every row active.
    images, rows, targets, num_known = _test_rows(split, faces)
    model, _ = load_model(model_dir)
    expected = {}
    for name, active in (("last", pruned), ("last_all_prototypes", rows_total)):
        model.num_active.fill_(active)
        _, _, pred = predict(model, images, rows, 64, pick_device("cpu"), "fp32")
        expected[name] = evaluate_predictions(targets, pred, num_known)
    for name in ("last", "last_all_prototypes"):
        assert metrics[name]["all_acc"] == pytest.approx(expected[name]["all_acc"], abs=1e-6), name
        assert metrics[name]["known_acc"] == pytest.approx(expected[name]["known_acc"], abs=1e-6), name
    assert "val_best_all_prototypes" in metrics and metrics["k_hat"] == pruned


@pytest.mark.slow
def test_k_hat_is_the_analysed_checkpoints(faithful_run, tmp_path):
    # A val_best snapshot taken at an epoch with another active count: K̂ must be that epoch's.
    faces, split, model_dir = faithful_run
    copied = tmp_path / "model"
    last, best = load_state(model_dir, "last"), load_state(model_dir, "val_best")
    best["num_active"] = best["num_active"].clone().fill_(int(last["num_active"]) + 3)
    save_model_dir(copied, last, ModelCard.read(model_dir), best)
    by_val = evaluate(_evaluate_section("val_best"), copied, split, faces, tmp_path / "a", tmp_path / "a.csv")
    by_last = evaluate(_evaluate_section("last"), copied, split, faces, tmp_path / "b", tmp_path / "b.csv")
    assert by_val["k_hat"] == int(last["num_active"]) + 3
    assert by_last["k_hat"] == int(last["num_active"])
    assert json.loads((tmp_path / "a" / "run.json").read_text())["checkpoint"] == "val_best"


def test_method_trajectories_pick_the_methods_own_series():
    from owdfa.evaluate.evaluation import method_trajectories

    history = [
        {"epoch": 0, "train/loss": 2.0, "method/tau_novel": 0.1234567, "train/acr_kept_fraction": 0.0},
        {"epoch": 1, "train/loss": 1.0, "method/tau_novel": 1.5, "method/k_hat": 9, "train/acr_kept_fraction": 0.25},
    ]
    assert method_trajectories(history) == {
        "acr_kept_fraction": [0.0, 0.25],
        "k_hat": [9.0],
        "tau_novel": [0.123457, 1.5],
    }
    assert method_trajectories([{"epoch": 0, "train/loss": 1.0, "val/acc": 0.5}]) == {}


def test_uncertainty_maps_show_classes_spread_from_first_known_to_last_novel():
    # 15 classes, 8 shown: positions round(linspace(0, 14, 8)) = 0, 2, 4, 6, 8, 10, 12, 14
    assert map_classes(np.arange(15), 8).tolist() == [0, 2, 4, 6, 8, 10, 12, 14]
    # 41 classes (OWDFA-40): round(k * 40 / 7) = 0, 6, 11, 17, 23, 29, 34, 40
    assert map_classes(np.arange(41), 8).tolist() == [0, 6, 11, 17, 23, 29, 34, 40]
    assert map_classes(np.array([9, 3, 5]), 8).tolist() == [3, 5, 9]  # fewer classes than asked: all
    assert map_classes(np.arange(5), 1).tolist() == [0]
