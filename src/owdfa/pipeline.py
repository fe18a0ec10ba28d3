"""What the pretrain, train and evaluate stages do, as library functions of their params section."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from owdfa.config import Section
from owdfa.data.align import read_faces
from owdfa.data.split import read_split
from owdfa.errors import DataError
from owdfa.io import atomic_write_json, atomic_write_text
from owdfa.methods import build_method
from owdfa.methods.base import Supervised
from owdfa.metrics import evaluate_predictions, k_error
from owdfa.model_io import load_model, load_state, params_hash, read_card, save_model_dir
from owdfa.training import TrainData, TrainResult, pick_device, predict, run_training, train_config

PRETRAIN_EXTRA = ("enabled", "seed")


def load_train_data(split_dir: Path, faces_dir: Path) -> tuple[TrainData, dict[str, Any]]:
    manifest, classes = read_split(split_dir)
    _, images = read_faces(faces_dir)
    if len(manifest) and int(manifest["row"].max()) >= len(images):
        raise DataError(f"{split_dir}: manifest refers to cache rows beyond {faces_dir} (re-run the split stage)")

    def rows(split: str) -> pd.DataFrame:
        return manifest[manifest["split"] == split]

    lab, unl, val = rows("labelled"), rows("unlabelled"), rows("val")
    data = TrainData(
        images=images,
        labelled_rows=lab["row"].to_numpy(np.int64),
        labelled_targets=lab["target"].to_numpy(np.int64),
        unlabelled_rows=unl["row"].to_numpy(np.int64),
        val_rows=val["row"].to_numpy(np.int64),
        val_targets=val["target"].to_numpy(np.int64),
        num_known=int(classes["num_known"]),
        num_classes=int(classes["num_classes"]),
    )
    return data, classes


def _card(result: TrainResult, classes: dict[str, Any], config_params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    model = result.model
    return {
        "backbone": model.backbone_name,
        "num_prototypes": int(model.prototypes.shape[0]),
        "num_active": int(model.num_active),
        "dropout": float(model.dropout.p),
        "num_known": int(classes["num_known"]),
        "num_classes_true": int(classes["num_classes"]),
        "classes": classes["classes"],
        "benchmark": classes["benchmark"],
        "protocol": classes["protocol"],
        "normalisation": {"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()},
        "val_best_epoch": result.best_val_epoch,
        "history": result.history,
        "trained_on": result.device,
        "params_hash": params_hash(config_params),
        **extra,
    }


def pretrain(section: Section, split_dir: Path, faces_dir: Path, out: Path) -> dict[str, Any]:
    """Supervised training on the labelled known classes (skipped when `enabled: false`)."""
    config = train_config(section, extra_keys=PRETRAIN_EXTRA)
    enabled = section.bool("enabled")
    seed = section.int("seed", min=0)
    data, classes = load_train_data(split_dir, faces_dir)
    if not enabled:
        save_model_dir(out, None, {"enabled": False})
        return {"enabled": False}
    result = run_training(
        config, data, Supervised(), num_prototypes=data.num_known, seed=seed, desc=f"pretrain {classes['protocol']}"
    )
    card = _card(
        result, classes, section.as_dict(), enabled=True, method="supervised", seed=seed, image_size=_size(data)
    )
    save_model_dir(out, result.model.state_dict(), card, result.best_val_state)
    return card


def _size(data: TrainData) -> int:
    return int(data.images.shape[1])


def initial_state(init_dir: Path | None) -> dict | None:
    """Backbone and neck weights of the pretrained model; the prototypes are always new."""
    if init_dir is None:
        return None
    card = read_card(init_dir)
    if not card.get("enabled", True):
        return None
    state = load_state(init_dir, "last")
    return {k: v for k, v in state.items() if k.startswith(("backbone.", "neck."))}


def train(
    section: Section,
    method_name: str,
    seed: int,
    split_dir: Path,
    faces_dir: Path,
    init_dir: Path | None,
    out: Path,
    live_dir: Path | None,
) -> dict[str, Any]:
    config = train_config(section, extra_keys=("methods",))
    methods = section.section("methods")
    method = build_method(method_name, methods)
    data, classes = load_train_data(split_dir, faces_dir)
    result = run_training(
        config,
        data,
        method,
        seed=seed,
        init_state=initial_state(init_dir),
        live_dir=live_dir,
        desc=f"train {classes['protocol']}-{method_name}-{seed}",
    )
    card = _card(
        result,
        classes,
        section.as_dict(),
        method=method_name,
        loss=method.name,
        method_params=methods.raw(method_name),
        model_options=result.model.options,
        method_state=method.state(),
        seed=seed,
        image_size=_size(data),
        pretrained_from=str(init_dir) if init_dir else None,
    )
    save_model_dir(out, result.model.state_dict(), card, result.best_val_state)
    return card


def kmeans_k_estimate(
    model,
    manifest: pd.DataFrame,
    images: np.ndarray,
    num_known: int,
    max_factor: float,
    batch_size: int,
    device,
    seed: int,
) -> int:
    """GCD's SS-k-means K estimate on the model's features of the *training* images.

    Labelled and validation images carry their (known) labels; unlabelled ones carry -1. The test
    split is not used, so the estimate cannot see held-out labels.
    """
    from owdfa.methods.kmeans_k import estimate_k

    train = manifest[manifest["split"].isin(["labelled", "val", "unlabelled"])]
    _, feats, _ = predict(model, images, train["row"].to_numpy(np.int64), batch_size, device)
    labels = np.where(train["split"].to_numpy() == "unlabelled", -1, train["target"].to_numpy(np.int64))
    k_max = max(num_known + 1, int(round(max_factor * num_known)))
    return int(estimate_k(feats, labels, num_known, k_max, seed=seed)["k_hat"])


def _clean(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 6)


def evaluate(
    section: Section, model_dir: Path, split_dir: Path, faces_dir: Path, out_dir: Path, predictions_path: Path
) -> dict[str, Any]:
    """Score the model on the held-out test split; writes metrics.json, run.json and predictions."""
    section.check_unknown(("checkpoint", "batch_size", "device", "kmeans_k", "kmeans_max_factor", "seed"))
    checkpoint = section.str("checkpoint", choices=("last", "val_best"))
    batch_size = section.int("batch_size", min=1)
    run_kmeans_k = section.bool("kmeans_k")
    max_factor = section.float("kmeans_max_factor", min=1.0)
    seed = section.int("seed", min=0)
    device = pick_device(section.str("device", choices=("auto", "cpu", "cuda")))
    manifest, classes = read_split(split_dir)
    _, images = read_faces(faces_dir)
    model, card = load_model(model_dir, checkpoint)
    model.to(device)
    test = manifest[manifest["split"] == "test"]
    logits, _, pred = predict(model, images, test["row"].to_numpy(np.int64), batch_size, device)
    targets = test["target"].to_numpy(np.int64)
    num_known = int(classes["num_known"])
    metrics: dict[str, Any] = evaluate_predictions(targets, pred, num_known)
    # K-hat: DPP's last pruned count when the method estimates K, else the classifier's active rows.
    trajectory = (card.get("method_state") or {}).get("k_trajectory") or [card["num_active"]]
    k_hat, k_true = int(trajectory[-1]), int(classes["num_classes"])
    metrics.update(k_hat=k_hat, k_true=k_true, k_error=k_error(k_hat, k_true))
    if run_kmeans_k:
        k_est = kmeans_k_estimate(model, manifest, images, num_known, max_factor, batch_size, device, seed)
        metrics.update(k_hat_sskmeans=k_est, k_error_sskmeans=k_error(k_est, k_true))
    metrics = {k: _clean(v) for k, v in sorted(metrics.items())}
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    confidence = (shifted / shifted.sum(axis=1, keepdims=True)).max(axis=1)
    predictions = pd.DataFrame(
        {
            "path": test["path"].to_numpy(),
            "target": targets,
            "known": test["known"].to_numpy(),
            "pred": pred,
            "confidence": np.round(confidence, 6),
        }
    )
    run = {
        "protocol": classes["protocol"],
        "method": card.get("method"),
        "seed": card.get("seed"),
        "checkpoint": checkpoint,
        "val_best_epoch": card.get("val_best_epoch"),
        "epochs": len(card.get("history", [])),
        "num_known": num_known,
        "num_classes": k_true,
        "test_images": int(len(test)),
        "metric_convention": "owdfa (All: joint Hungarian; Known: direct; "
        "Novel: separate Hungarian) plus gcd_v1/gcd_v2",
    }
    atomic_write_json(out_dir / "metrics.json", metrics)
    atomic_write_json(out_dir / "run.json", run)
    predictions_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(predictions_path, predictions.to_csv(index=False, lineterminator="\n"))
    return metrics
