"""Measure how hard the benchmark is, on the test split of each protocol.

* upper bound: a fully supervised model trained with the labels of *every* class (known and
  novel) on all training images, with the `train` section's backbone and schedule;
* lower bound: k-means (K = true number of classes) on the BNNeck features of the pretrain
  model, which saw the labelled known classes only (GCD's k-means baseline).

Needs the pipeline's data (run `dvc repro` first). Writes reports/difficulty.json and prints a
table. Usage: python bench/difficulty.py [--protocols p1 p2 p3]
Computes under params.yaml's `numerics` (exact mode by default), pinned before torch and NumPy load.
"""

# ruff: noqa: E402  (the numerics pin has to come before the numeric libraries' imports)
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from owdfa.core.numerics import pin_from_params

pin_from_params(Path("params.yaml"))

import numpy as np
from sklearn.cluster import KMeans

from owdfa.core.config import Section, load_params
from owdfa.core.devices import pick_device
from owdfa.core.io import atomic_write_json
from owdfa.data.face_cache import read_faces
from owdfa.data.split import read_split
from owdfa.evaluate.metrics import evaluate_predictions, per_class_acc
from owdfa.methods.base import Supervised
from owdfa.modeldir.io import load_model
from owdfa.models.inference import predict
from owdfa.train.config import TrainData, train_config
from owdfa.train.loop import run_training
from owdfa.train.stages import load_train_data
from owdfa.train.state import RunOptions


def upper_bound(train_section: Section, split_dir: Path, faces_dir: Path, seed: int) -> dict[str, float]:
    config = train_config(train_section)
    data, classes = load_train_data(split_dir, faces_dir)
    manifest, _ = read_split(split_dir)
    train_rows = manifest[manifest["split"].isin(["labelled", "unlabelled"])]
    oracle = TrainData(
        images=data.images,
        labelled_rows=train_rows["row"].to_numpy(np.int64),
        labelled_targets=train_rows["target"].to_numpy(np.int64),
        unlabelled_rows=np.zeros(0, dtype=np.int64),
        val_rows=data.val_rows,
        val_targets=data.val_targets,
        num_known=data.num_known,
        num_classes=data.num_classes,
    )
    result = run_training(
        config,
        oracle,
        Supervised(),
        num_prototypes=data.num_classes,
        seed=seed,
        options=RunOptions(desc=f"oracle {classes['protocol']}"),
    )
    test = manifest[manifest["split"] == "test"]
    _, _, pred = predict(result.model, data.images, test["row"].to_numpy(np.int64), 256, pick_device("auto"))
    targets = test["target"].to_numpy(np.int64)
    metrics = evaluate_predictions(targets, pred, data.num_known)
    names = {c["target"]: c["folder"] for c in classes["classes"]}
    metrics["per_class"] = {names[t]: round(a, 4) for t, a in per_class_acc(targets, pred).items()}
    return metrics


def lower_bound(pretrain_dir: Path, split_dir: Path, faces_dir: Path, seed: int) -> dict[str, float]:
    manifest, classes = read_split(split_dir)
    _, images = read_faces(faces_dir)
    model, _ = load_model(pretrain_dir)
    test = manifest[manifest["split"] == "test"]
    _, feats, _ = predict(model, images, test["row"].to_numpy(np.int64), 256, pick_device("auto"))
    clusters = KMeans(n_clusters=int(classes["num_classes"]), n_init=10, random_state=seed).fit_predict(feats)
    return evaluate_predictions(test["target"].to_numpy(np.int64), clusters.astype(np.int64), int(classes["num_known"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", nargs="+", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reports/difficulty.json"))
    args = parser.parse_args()
    params = load_params()
    protocols = args.protocols or params["run"]["protocols"]
    train_section = Section(params["train"], "train")
    results: dict[str, dict] = {}
    for protocol in protocols:
        split_dir, faces_dir = Path("data/splits") / protocol, Path("data/faces")
        start = time.perf_counter()
        upper = upper_bound(train_section, split_dir, faces_dir, args.seed)
        lower = lower_bound(Path("data/pretrain") / protocol, split_dir, faces_dir, args.seed)
        results[protocol] = {
            "upper_supervised_all_acc": round(upper["all_acc"], 4),
            "upper_supervised_novel_acc": round(upper["novel_acc"], 4),
            "lower_kmeans_all_acc": round(lower["all_acc"], 4),
            "lower_kmeans_novel_acc": round(lower["novel_acc"], 4),
            "lower_kmeans_known_acc_gcd_v2": round(lower["gcd_v2_old_acc"], 4),
            "upper_supervised_per_class_acc": upper["per_class"],
            "seconds": round(time.perf_counter() - start, 1),
        }
    atomic_write_json(args.out, {"train_params": params["train"], "results": results})
    print("| protocol | supervised upper bound All / Novel ACC | k-means lower bound All / Novel ACC |")
    print("|---|---|---|")
    for protocol, r in results.items():
        print(
            f"| {protocol} | {r['upper_supervised_all_acc'] * 100:.1f} / {r['upper_supervised_novel_acc'] * 100:.1f} | "
            f"{r['lower_kmeans_all_acc'] * 100:.1f} / {r['lower_kmeans_novel_acc'] * 100:.1f} |"
        )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
