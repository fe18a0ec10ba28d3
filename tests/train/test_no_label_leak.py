"""No ground-truth label of an unlabelled or test image may reach a loss, a threshold, a K
estimate or model selection: shuffling those labels must leave training bit-for-bit unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers.tiny_run import build_tiny_split, shuffled_split, train_sections
from safetensors.torch import load_file

from owdfa.core.devices import pick_device
from owdfa.data.face_cache import read_faces
from owdfa.data.split import MANIFEST_FILE
from owdfa.evaluate.evaluation import kmeans_k_estimate, training_features
from owdfa.train.stages import RunPaths, train

VARIANTS = ["baseline", "cpl", "cal", "cal_dpp"]


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("leak")
    build_tiny_split(base)
    shuffled = shuffled_split(base, "split_shuffled", ("unlabelled", "test"))  # their labels permuted
    return base / "faces", base / "split", shuffled


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_training_ignores_hidden_labels(tiny_split, tmp_path, variant):
    faces, split, shuffled = tiny_split
    outs = []
    for name, split_dir in (("a", split), ("b", shuffled)):
        out = tmp_path / name
        train(*train_sections(variant), variant, 0, RunPaths(split_dir, faces, out))
        outs.append(out)
    a, b = (load_file(str(o / "model.safetensors")) for o in outs)
    assert a.keys() == b.keys()
    for key in a:
        assert bool((a[key] == b[key]).all()), f"{variant}: weights {key} differ"
    card_a, card_b = (json.loads((o / "card.json").read_text()) for o in outs)
    for key in ("history", "val_best_epoch", "method_state", "num_active"):
        assert card_a[key] == card_b[key], f"{variant}: card {key} differs"


@pytest.mark.slow
def test_estimate_k_estimate_ignores_hidden_labels(tiny_split, tmp_path):
    from owdfa.modeldir.io import load_model

    faces, split, shuffled = tiny_split
    train(*train_sections("baseline"), "baseline", 0, RunPaths(split, faces, tmp_path / "m"))
    model, _ = load_model(tmp_path / "m")
    _, images = read_faces(faces)
    estimates = []
    for split_dir in (split, shuffled):
        manifest = pd.read_csv(split_dir / MANIFEST_FILE, keep_default_na=False)
        feats, labels = training_features(model, manifest, images, 64, pick_device("cpu"))
        estimates.append(kmeans_k_estimate(feats, labels, 7, 2.0, 0))
    assert estimates[0] == estimates[1]
