"""The evaluate stage: test-split metrics of both checkpoints, calibration, uncertainty and figures.

Metrics are computed for the last epoch and for the epoch selected on the labelled validation
split, side by side, so nobody has to pick one on the test split. The analysis (predictions,
calibration, MC-dropout uncertainty, the `evaluate.k_estimators` K estimates, figures) uses
`evaluate.checkpoint`. An imported model (the CAL authors' weights, `owdfa.official.checkpoint`) has
one checkpoint and no validation-selected epoch: that one is scored, as `last`. A model is scored
only on a split of its own classes and a face cache of its own face size (`check_model_fits`).
Outputs, all under the run's folder:
  metrics.json  {last: {...}, val_best: {...}, [last_all_prototypes, val_best_all_prototypes: faithful DPP],
                k_hat (of the analysed checkpoint), k_true, k_error, k_hat_<estimator>, k_error_<estimator>,
                calibration: {...}}  (<estimator>: gcd | ss_kmeans_folds, see owdfa.evaluate.estimate_k)
  run.json      what was evaluated (protocol, method, seed, checkpoint, K̂ per epoch, method settings) and
                the numerics that training and evaluation computed under (owdfa.core.numerics); for an imported
                model (a card with `source`) also `imported`: where its weights came from
  confusion.csv, reliability.csv, k_trajectory.csv   data plots for `dvc plots`
  plots/*.png   confusion matrix, reliability diagram, confidence histograms, t-SNE, uncertainty maps,
                training curves, K̂ per epoch
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from owdfa.core.config import Section, load_section, param
from owdfa.core.devices import describe_device, effective_precision, pick_device
from owdfa.core.errors import ConfigError, DataError
from owdfa.core.io import atomic_directory, atomic_write_json, atomic_write_text
from owdfa.core.numerics import configure_torch
from owdfa.core.numerics import describe as describe_numerics
from owdfa.data.face_cache import read_faces
from owdfa.data.face_preprocessing import read_preprocessing
from owdfa.data.split import read_split
from owdfa.evaluate import plots
from owdfa.evaluate.calibration import expected_calibration_error, matched_correct, reliability_table
from owdfa.evaluate.metrics import evaluate_predictions, k_error
from owdfa.evaluate.uncertainty import (
    McDropout,
    Occlusion,
    mc_dropout_predict,
    occlusion_uncertainty_maps,
    uncertainty_summary,
)
from owdfa.modeldir.card import ImportedCard, MethodCard, ModelCard
from owdfa.modeldir.io import WEIGHTS, load_model
from owdfa.models.inference import max_softmax, predict

METRIC_CONVENTION = "owdfa (All: joint Hungarian; Known: direct; Novel: separate Hungarian) plus gcd_v1/gcd_v2"


def _k_estimators(section: Section, key: str) -> tuple[str, ...]:
    """`k_estimators`: a list of distinct estimator names, possibly empty (no K estimate at all)."""
    from owdfa.evaluate.estimate_k import K_ESTIMATORS

    names = section.str_list(key)
    for name in names:
        if name not in K_ESTIMATORS:
            raise ConfigError(section.key(key), f"unknown estimator {name!r}; choose from {list(K_ESTIMATORS)}")
    if len(set(names)) != len(names):
        raise ConfigError(section.key(key), f"an estimator is listed twice: {names}")
    return tuple(names)


@dataclass(frozen=True)
class EvaluateConfig:
    """The evaluate stage's settings (params section `evaluate`, every key required)."""

    checkpoint: str = param(choices=("last", "val_best"))
    batch_size: int = param(min=1)
    device: str = param(choices=("auto", "cpu", "cuda"))
    # names from owdfa.evaluate.estimate_k.K_ESTIMATORS, in the order given
    k_estimators: tuple[str, ...] = param(read=_k_estimators)
    kmeans_max_factor: float = param(min=1.0)
    seed: int = param(min=0)
    ece_bins: int = param(min=1, max=100)
    mc_dropout_passes: int = param(min=1, max=1000)
    maps_per_class: int = param(min=0, max=20, key="uncertainty_maps.per_class")
    maps_classes: int = param(min=1, key="uncertainty_maps.classes")
    map_window: int = param(min=1, key="uncertainty_maps.window")
    map_stride: int = param(min=1, key="uncertainty_maps.stride")
    tsne_max_points: int = param(min=0)
    precision: str = param(choices=("bf16", "fp32"))


def evaluate_config(section: Section) -> EvaluateConfig:
    return load_section(EvaluateConfig, section)


def training_features(
    model, manifest: pd.DataFrame, images: np.ndarray, batch_size: int, device, precision: str = "bf16"
) -> tuple[np.ndarray, np.ndarray]:
    """The model's features of the *training* images and their labels, what the K estimators see.

    Labelled and validation images carry their (known) labels; unlabelled ones carry -1. The test
    split is not used, so no estimate can see held-out labels.
    """
    train = manifest[manifest["split"].isin(["labelled", "val", "unlabelled"])]
    _, feats, _ = predict(model, images, train["row"].to_numpy(np.int64), batch_size, device, precision)
    labels = np.where(train["split"].to_numpy() == "unlabelled", -1, train["target"].to_numpy(np.int64))
    return feats, labels


def kmeans_k_estimate(
    feats: np.ndarray,
    labels: np.ndarray,
    num_known: int,
    max_factor: float,
    seed: int,
    estimators: tuple[str, ...] | None = None,
) -> dict[str, int]:
    """K-hat per estimator (default: all of K_ESTIMATORS) on `training_features`.

    Both estimators search K in ``[num_known, max(num_known + 1, round(max_factor * num_known))]``
    (GCD's ``max_classes``); ``seed`` feeds only ``ss_kmeans_folds``: GCD's k-means is always seeded
    with ``random_state=0``.
    """
    from owdfa.evaluate.estimate_k import K_ESTIMATORS, run_k_estimator

    k_max = max(num_known + 1, int(round(max_factor * num_known)))
    names = K_ESTIMATORS if estimators is None else estimators
    return {name: run_k_estimator(name, feats, labels, num_known, k_max, seed=seed) for name in names}


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in sorted(value.items())}
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return round(float(value), 6)


@dataclass(frozen=True)
class ScoredCheckpoint:
    """One checkpoint of a model directory on the test images: the model, its card, outputs and metrics."""

    model: Any  # AttributionModel, on the device
    card: ModelCard
    logits: np.ndarray
    features: np.ndarray
    pred: np.ndarray
    metrics: dict[str, Any]


def _score_checkpoint(
    model_dir: Path, checkpoint: str, images: np.ndarray, test: TestSet, config: EvaluateConfig, device
) -> ScoredCheckpoint:
    model, card = load_model(model_dir, checkpoint)
    model.to(device)
    logits, features, pred = predict(model, images, test.rows, config.batch_size, device, config.precision)
    return ScoredCheckpoint(
        model, card, logits, features, pred, evaluate_predictions(test.targets, pred, test.num_known)
    )


def _all_prototype_metrics(model, images, rows, targets, num_known, config, device) -> dict[str, Any]:
    """Faithful DPP's second classifier: every one of the 10 x |known| rows active, the pruned (zeroed,
    possibly drifted) ones included, as the official offline evaluation rebuilds a saved checkpoint."""
    pruned = int(model.num_active)
    model.num_active.fill_(int(model.prototypes.shape[0]))
    try:
        _, _, pred = predict(model, images, rows, config.batch_size, device, config.precision)
    finally:
        model.num_active.fill_(pruned)
    return evaluate_predictions(targets, pred, num_known)


def evaluate(
    section: Section, model_dir: Path, split_dir: Path, faces_dir: Path, out_dir: Path, predictions_path: Path
) -> dict[str, Any]:
    """Score the model on the held-out test split and write the run's metrics, predictions and figures."""
    config = evaluate_config(section)
    configure_torch()
    device = pick_device(config.device)
    print(f"evaluate {out_dir.name}: {describe_device(device, config.precision)}", flush=True)
    manifest, classes = read_split(split_dir)
    _, images = read_faces(faces_dir)
    card = ModelCard.read(model_dir)
    check_model_fits(card, classes, images.shape[1], model_dir, split_dir, faces_dir)
    if isinstance(card, ImportedCard):
        print(
            f"evaluate {out_dir.name}: an imported model, one checkpoint and no validation-selected epoch: "
            "scored as `last` only",
            flush=True,
        )
    test = TestSet.of(manifest, classes)
    metrics, scored = _score_checkpoints(model_dir, card, images, test, config, device)
    model, card, pred = scored.model, scored.card, scored.pred
    trajectory = card.k_trajectory
    metrics.update(_k_metrics(model, manifest, images, test, config, device))
    confidence = max_softmax(scored.logits)  # of the deterministic prediction, the one every metric above scores
    mc = mc_dropout_predict(model, images, test.rows, config.mc_dropout_passes, config.batch_size, device, config.seed)
    reliability, calibration = _calibration(confidence, mc, pred, test, config)
    metrics["calibration"] = calibration
    analysis = Analysis(test, scored, confidence, mc, reliability, calibration["ece"], _clean(metrics))
    _write_tables(out_dir, predictions_path, analysis)
    run = {
        "protocol": classes["protocol"],
        "method": card.method,
        "loss": card.loss if isinstance(card, MethodCard) else None,
        "method_params": card.method_params if isinstance(card, MethodCard) else None,
        "seed": card.seed,
        "checkpoint": analysed_checkpoint(card, config),
        "val_best_epoch": card.val_best_epoch,
        "epochs": len(card.history or []),
        "num_known": test.num_known,
        "num_classes": test.k_true,
        "test_images": int(len(test.frame)),
        "k_trajectory": trajectory,
        "mc_dropout_passes": config.mc_dropout_passes,
        "metric_convention": METRIC_CONVENTION,
        "trained_under": card.numerics,
        "evaluated_under": describe_numerics(str(device), effective_precision(device, config.precision)),
    }
    trajectories = method_trajectories(card.history or [])
    if trajectories:  # methods that adapt something per epoch (CAL's ACR threshold)
        run["method_trajectories"] = trajectories
    if isinstance(card, ImportedCard):  # only imported models: a trained run's run.json stays as it was
        run["imported"] = {"source": card.source, "trained_on": card.trained_on, "num_active": card.num_active}
    atomic_write_json(out_dir / "run.json", run)
    _write_figures(out_dir, analysis, images, config, device)
    return analysis.metrics


# Per-epoch statistics worth following across epochs (besides K-hat): each method's own logged
# values (`method/...`, e.g. CAL's adaptive novel threshold) and the share of ACR's kept pseudo-labels.
TRAJECTORY_KEYS = {"train/acr_kept_fraction": "acr_kept_fraction"}


def method_trajectories(history: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Name -> per-epoch values of what the method logged under `method/` and TRAJECTORY_KEYS."""
    names = sorted({k for record in history for k in record if k.startswith("method/") or k in TRAJECTORY_KEYS})
    return {
        TRAJECTORY_KEYS.get(k, k.removeprefix("method/")): [round(float(r[k]), 6) for r in history if k in r]
        for k in names
    }


@dataclass(frozen=True)
class TestSet:
    """The split's test images: manifest rows, cache rows, targets, which are known, and the class counts."""

    frame: pd.DataFrame
    rows: np.ndarray
    targets: np.ndarray
    known_mask: np.ndarray
    num_known: int
    k_true: int
    class_names: list[str]

    @classmethod
    def of(cls, manifest: pd.DataFrame, classes: dict[str, Any]) -> TestSet:
        test = manifest[manifest["split"] == "test"]
        return cls(
            frame=test,
            rows=test["row"].to_numpy(np.int64),
            targets=test["target"].to_numpy(np.int64),
            known_mask=test["known"].to_numpy(bool),
            num_known=int(classes["num_known"]),
            k_true=int(classes["num_classes"]),
            class_names=[c["name"] for c in classes["classes"]],
        )


@dataclass(frozen=True)
class Analysis:
    """What evaluate computed on the analysed checkpoint, for its tables and figures."""

    test: TestSet
    scored: ScoredCheckpoint
    confidence: np.ndarray  # max softmax of each deterministic prediction
    mc: McDropout
    reliability: pd.DataFrame
    ece: float
    metrics: dict[str, Any]  # both checkpoints', cleaned for JSON

    @property
    def trajectory(self) -> list[int]:
        return self.scored.card.k_trajectory


def analysed_checkpoint(card: ModelCard, config: EvaluateConfig) -> str:
    """`evaluate.checkpoint`, except for an imported model: its one checkpoint, scored as `last`."""
    return "last" if isinstance(card, ImportedCard) else config.checkpoint


def check_model_fits(
    card: ModelCard, classes: dict[str, Any], image_size: int, model_dir: Path, split_dir: Path, faces_dir: Path
) -> None:
    """The model must know the split's classes and the cache's face size; else its scores mean nothing.

    Same benchmark, the same class labels, the same known classes at the same targets (known
    accuracy compares prediction ids with targets directly). Novel targets may come in another order
    (an official P3 model's do): every novel score is a Hungarian matching, blind to that order.
    """
    split_known = {int(c["target"]): int(c["label"]) for c in classes["classes"] if c["known"]}
    split_labels = {int(c["label"]) for c in classes["classes"]}
    if card.classes is not None:
        card_known = {c.target: c.label for c in card.classes if c.known}
        card_labels = {c.label for c in card.classes}
    else:  # a card from before classes were recorded: the counts are all there is to compare
        card_known, card_labels = split_known, split_labels
    if (
        (card.benchmark is not None and card.benchmark != classes.get("benchmark"))
        or card_labels != split_labels
        or card.num_known != int(classes["num_known"])
        or card_known != split_known
    ):
        model = f"{card.benchmark} {card.protocol}: {card.num_known} known of {len(card_labels)} classes"
        split = f"{classes.get('benchmark')} {classes.get('protocol')}: {classes['num_known']} known of "
        split += f"{classes['num_classes']} classes"
        raise DataError(
            f"{model_dir}: the model ({model}) does not fit {split_dir} ({split}); "
            "score it on the split of its own benchmark and protocol"
        )
    if card.image_size != image_size:
        raise DataError(
            f"{model_dir}: the model takes {card.image_size} px faces but {faces_dir} holds {image_size} px "
            f"(align.image_size); re-run the align stage at {card.image_size} px"
        )
    made = read_preprocessing(faces_dir)
    if card.preprocessing is not None and made is not None and card.preprocessing.mode != made.mode:
        print(
            f"warning: {model_dir} was trained on '{card.preprocessing.mode}' faces, {faces_dir} holds "
            f"'{made.mode}' faces (align.mode): its scores may be lower than on its own preprocessing",
            file=sys.stderr,
        )


def _score_checkpoints(
    model_dir: Path, card: ModelCard, images, test: TestSet, config: EvaluateConfig, device
) -> tuple[dict[str, Any], ScoredCheckpoint]:
    """Metrics of the last and (when there is one) the val_best checkpoint; the analysed one's outputs."""
    has_val_best = (model_dir / WEIGHTS["val_best"]).is_file()
    chosen = analysed_checkpoint(card, config)
    if chosen == "val_best" and not has_val_best:
        raise DataError(f"{model_dir}: no val_best checkpoint (the split has no validation images)")
    metrics: dict[str, Any] = {}
    analysed = None
    for checkpoint in ("last", "val_best") if has_val_best else ("last",):
        scored = _score_checkpoint(model_dir, checkpoint, images, test, config, device)
        metrics[checkpoint] = scored.metrics
        if scored.card.dpp_faithful:
            metrics[f"{checkpoint}_all_prototypes"] = _all_prototype_metrics(
                scored.model, images, test.rows, test.targets, test.num_known, config, device
            )
        if checkpoint == chosen:
            analysed = scored
    assert analysed is not None  # `chosen` is last, or val_best which exists
    return metrics, analysed


def _k_metrics(model, manifest: pd.DataFrame, images, test: TestSet, config: EvaluateConfig, device) -> dict:
    """K-hat: the analysed checkpoint's active prototypes (DPP's pruned count; K when known) and the estimators'."""
    k_hat = int(model.num_active)
    out: dict[str, Any] = {"k_hat": k_hat, "k_true": test.k_true, "k_error": k_error(k_hat, test.k_true)}
    if config.k_estimators:
        feats, labels = training_features(model, manifest, images, config.batch_size, device, config.precision)
        estimates = kmeans_k_estimate(
            feats, labels, test.num_known, config.kmeans_max_factor, config.seed, config.k_estimators
        )
        for name, k_est in estimates.items():
            out[f"k_hat_{name}"], out[f"k_error_{name}"] = k_est, k_error(k_est, test.k_true)
    return out


def _calibration(confidence, mc, pred, test: TestSet, config: EvaluateConfig) -> tuple[pd.DataFrame, dict]:
    """Reliability table and the calibration/uncertainty summary (MC dropout over the head, its only dropout)."""
    correct = matched_correct(test.targets, pred)
    reliability = reliability_table(confidence, correct, config.ece_bins)
    ece = expected_calibration_error(confidence, correct, config.ece_bins)
    summary = uncertainty_summary(mc, test.known_mask)
    known = test.known_mask
    return reliability, {
        "ece": ece,
        "known_confidence": _group_mean(confidence, known),
        "novel_confidence": _group_mean(confidence, ~known),
        "known_epistemic": summary.get("known_epistemic"),
        "novel_epistemic": summary.get("novel_epistemic"),
        "known_aleatoric": summary.get("known_aleatoric"),
        "novel_aleatoric": summary.get("novel_aleatoric"),
    }


def _write_tables(out_dir: Path, predictions_path: Path, analysis: Analysis) -> None:
    test, pred, confidence, mc = analysis.test, analysis.scored.pred, analysis.confidence, analysis.mc
    trajectory = analysis.trajectory
    predictions = pd.DataFrame(
        {
            "path": test.frame["path"].to_numpy(),
            "target": test.targets,
            "known": test.known_mask,
            "pred": pred,
            "confidence": np.round(confidence, 6),
            "epistemic": np.round(mc.epistemic, 6),
            "aleatoric": np.round(mc.aleatoric, 6),
        }
    )
    atomic_write_json(out_dir / "metrics.json", analysis.metrics)
    atomic_write_text(
        out_dir / "confusion.csv",
        plots.confusion_pairs(test.targets, pred, test.class_names).to_csv(index=False, lineterminator="\n"),
    )
    atomic_write_text(out_dir / "reliability.csv", analysis.reliability.to_csv(index=False, lineterminator="\n"))
    k_table = pd.DataFrame({"epoch": range(1, len(trajectory) + 1), "k_hat": trajectory})
    atomic_write_text(out_dir / "k_trajectory.csv", k_table.to_csv(index=False, lineterminator="\n"))
    predictions_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(predictions_path, predictions.to_csv(index=False, lineterminator="\n"))


def _write_figures(out_dir: Path, analysis: Analysis, images: np.ndarray, config: EvaluateConfig, device) -> None:
    test, scored, confidence, trajectory = analysis.test, analysis.scored, analysis.confidence, analysis.trajectory
    card, pred, features = scored.card, scored.pred, scored.features
    reliability, ece = analysis.reliability, analysis.ece
    key = out_dir.name
    title = f"{key} ({'imported' if isinstance(card, ImportedCard) else config.checkpoint} checkpoint)"
    targets, known_mask, class_names, num_known = test.targets, test.known_mask, test.class_names, test.num_known
    method = str(card.method)
    with atomic_directory(out_dir / "plots") as folder:
        plots.save_figure(
            plots.make_confusion_matrix(
                targets, pred, class_names, num_known, f"{title}: true method vs matched predicted cluster"
            ),
            folder / "confusion.png",
        )
        plots.save_figure(
            plots.make_reliability(reliability, ece, f"{title}: reliability of max-softmax confidence"),
            folder / "reliability.png",
        )
        plots.save_figure(
            plots.make_confidence_histograms(
                {method: {"known": confidence[known_mask], "novel": confidence[~known_mask]}},
                f"{title}: confidence on test images of known vs novel classes",
            ),
            folder / "confidence.png",
        )
        plots.save_figure(
            plots.make_k_trajectory(
                {method: trajectory}, test.k_true, num_known, f"{title}: active prototypes K̂ per epoch"
            ),
            folder / "k_trajectory.png",
        )
        history = card.history or []
        if history:
            curve_keys = [k for k in ("train/loss", "val/acc") if k in history[0]]
            plots.save_figure(
                plots.make_training_curves(history, curve_keys, f"{key}: training loss and validation accuracy"),
                folder / "training.png",
            )
        if config.tsne_max_points > 1 and len(test.rows) > 5:
            plots.save_figure(
                plots.make_tsne(
                    features,
                    targets,
                    known_mask,
                    class_names,
                    config.seed,
                    f"{title}: t-SNE of test features (o known, ^ novel classes)",
                    max_points=config.tsne_max_points,
                ),
                folder / "tsne.png",
            )
        _uncertainty_maps(analysis, images, config, device, title, folder / "uncertainty_maps.png")


def _group_mean(values: np.ndarray, mask: np.ndarray) -> float | None:
    return float(values[mask].mean()) if mask.any() else None


def map_classes(targets: np.ndarray, count: int) -> np.ndarray:
    """`count` of the sorted `targets`, evenly spaced from the first to the last (all if there are fewer)."""
    targets = np.sort(np.asarray(targets))
    if len(targets) <= count:
        return targets
    return targets[np.unique(np.round(np.linspace(0, len(targets) - 1, count)).astype(np.int64))]


def _uncertainty_maps(analysis: Analysis, images, config: EvaluateConfig, device, title: str, path: Path) -> None:
    """Occlusion maps of MC-dropout uncertainty for the first `per_class` test images of `classes` classes.

    Each map costs a forward pass per patch position, and a figure of 41 classes is both the slowest
    part of an evaluation and too small to read, so at most `uncertainty_maps.classes` classes are
    shown, spread evenly over the targets (known ones first, so both kinds are shown).
    """
    if config.maps_per_class == 0:
        return
    model, test, class_names = analysis.scored.model, analysis.test.frame, analysis.test.class_names
    shown_targets = map_classes(np.unique(test["target"].to_numpy()), config.maps_classes)
    picked = test[test["target"].isin(shown_targets)]
    picked = picked.sort_values(["target", "path"], kind="stable").groupby("target").head(config.maps_per_class)
    size = images.shape[1]
    occlusion = Occlusion(window=min(config.map_window, size), stride=min(config.map_stride, size))
    shown, maps, captions = [], [], []
    for row, target in zip(picked["row"].to_numpy(), picked["target"].to_numpy(), strict=True):
        image = np.asarray(images[row])
        result = occlusion_uncertainty_maps(
            model, image, occlusion, config.mc_dropout_passes, device, config.seed, config.batch_size
        )
        shown.append(image)
        maps.append(result["entropy_delta"])
        captions.append(class_names[int(target)])
    plots.save_figure(
        plots.make_uncertainty_maps(
            shown,
            maps,
            captions,
            f"{title}: where occlusion changes MC-dropout predictive entropy",
            "Δ predictive entropy (nats) when occluded",
        ),
        path,
    )
