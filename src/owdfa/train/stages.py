"""What the pretrain and train stages do, as library functions of their params section."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from owdfa.core.config import Section
from owdfa.core.distributed import world_from_env
from owdfa.core.errors import DataError
from owdfa.core.io import atomic_write_json
from owdfa.core.numerics import describe as describe_numerics
from owdfa.data.face_cache import read_faces
from owdfa.data.face_preprocessing import read_preprocessing
from owdfa.data.split import read_split
from owdfa.methods import method_from_variant
from owdfa.methods.base import Supervised
from owdfa.methods.simclr import SimCLR
from owdfa.modeldir.card import CardClass, ModelCard, PretrainCard, SkippedPretraining, TrainCard, read_card
from owdfa.modeldir.io import load_state, params_hash, save_model_dir
from owdfa.train.checkpoints import close_checkpoints
from owdfa.train.config import (
    PretrainPlan,
    TrainConfig,
    TrainData,
    pretrain_plan,
    self_supervised_run,
    train_config,
    with_method_optimizer,
)
from owdfa.train.feature_probe import feature_probe
from owdfa.train.loop import TrainResult, run_training
from owdfa.train.state import RunOptions

CardT = TypeVar("CardT", bound=ModelCard)


@dataclass(frozen=True)
class RunPaths:
    """Where a pretrain or train run reads and writes: the stage's command-line paths."""

    split: Path
    faces: Path
    out: Path  # the model directory
    init: Path | None = None  # train: the pretrain model directory it starts from
    live: Path | None = None  # train: the dvclive curves
    checkpoints: Path | None = None  # the resume state of an interrupted run
    metrics: Path | None = None  # pretrain: the starting features' known-class accuracy (JSON)


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
        identity=_data_identity(classes, faces_dir),
    )
    return data, classes


def _card(
    kind: type[CardT],
    result: TrainResult,
    classes: dict[str, Any],
    config_params: dict[str, Any],
    faces_dir: Path,
    **extra: Any,
) -> CardT:
    """What every trained model's card records, as the card `kind`; `extra`: the stage's own fields
    (image_size among them)."""
    model = result.model
    return kind(
        backbone=model.backbone_name,
        num_prototypes=int(model.prototypes.shape[0]),
        num_active=int(model.num_active),
        dropout=float(model.dropout.p),
        num_known=int(classes["num_known"]),
        num_classes_true=int(classes["num_classes"]),
        classes=tuple(CardClass(**entry) for entry in classes["classes"]),
        benchmark=classes["benchmark"],
        protocol=classes["protocol"],
        normalisation={"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()},
        val_best_epoch=result.best_val_epoch,
        history=result.history,
        trained_on=result.device,
        numerics=describe_numerics(result.device, result.precision),
        params_hash=params_hash(config_params),
        preprocessing=read_preprocessing(faces_dir),
        **extra,
    )


def pretrain(section: Section, paths: RunPaths) -> PretrainCard | SkippedPretraining:
    """The starting weights of every train run of a protocol, by `pretrain.mode` (`PretrainPlan`).

    With `paths.checkpoints`, an interrupted run resumes from its last epoch (SimCLR's phase keeps its
    own in `self_supervised/` below it until the whole stage has finished). `paths.metrics` receives
    the starting features' known-class accuracy (`feature_probe`) in every mode, none included. In a
    multi-process run only rank 0 writes.
    """
    split_dir, faces_dir, out, checkpoints, metrics = (
        paths.split,
        paths.faces,
        paths.out,
        paths.checkpoints,
        paths.metrics,
    )
    plan = pretrain_plan(section)
    data, classes = load_train_data(split_dir, faces_dir)
    is_main = world_from_env().is_main
    if plan.mode == "none":
        if is_main:
            model = _random_model(plan, data)
            _write_metrics(metrics, plan.mode, feature_probe(model, data, plan.config), None)
            save_model_dir(out, None, SkippedPretraining())
            _finish(checkpoints)
        return SkippedPretraining()
    ssl_result = init_state = None
    if plan.self_supervised is not None:
        ssl_result = run_training(
            self_supervised_run(plan.config, plan.self_supervised),
            label_free(data),
            SimCLR(temperature=plan.self_supervised.temperature, projection_dim=plan.self_supervised.projection_dim),
            num_prototypes=data.num_known,
            seed=plan.seed,
            options=RunOptions(
                desc=f"pretrain {classes['protocol']} (self-supervised)",
                section_name=section.name,
                checkpoint_dir=None if checkpoints is None else checkpoints / SELF_SUPERVISED_DIR,
            ),
        )
        init_state = starting_weights(ssl_result.model.state_dict())
    result = ssl_result
    if plan.supervised:
        result = run_training(
            plan.config,
            data,
            Supervised(),
            num_prototypes=data.num_known,
            seed=plan.seed,
            init_state=init_state,
            options=RunOptions(
                desc=f"pretrain {classes['protocol']}",
                section_name=section.name,
                checkpoint_dir=checkpoints,
            ),
        )
    card = _card(
        PretrainCard,
        result,
        classes,
        section.as_dict(),
        faces_dir,
        pretrain_mode=plan.mode,
        self_supervised_history=None if ssl_result is None or plan.mode == "self_supervised" else ssl_result.history,
        method="supervised" if plan.supervised else SimCLR.name,
        seed=plan.seed,
        image_size=_size(data),
    )
    if result.is_main:
        val_acc = result.history[result.best_val_epoch]["val/acc"] if result.best_val_epoch is not None else None
        _write_metrics(metrics, plan.mode, feature_probe(result.model, data, plan.config), val_acc)
        save_model_dir(out, result.model.state_dict(), card, result.best_val_state)
        _finish(checkpoints)
    return card


SELF_SUPERVISED_DIR = "self_supervised"


def label_free(data: TrainData) -> TrainData:
    """Every training row (labelled and unlabelled, sorted) and no label, no validation: what SimCLR is given."""
    no_rows = np.zeros(0, dtype=np.int64)
    return TrainData(
        images=data.images,
        labelled_rows=no_rows,
        labelled_targets=no_rows,
        unlabelled_rows=np.sort(np.concatenate([data.labelled_rows, data.unlabelled_rows])),
        val_rows=no_rows,
        val_targets=no_rows,
        num_known=data.num_known,
        num_classes=data.num_classes,
        identity=data.identity,
    )


def starting_weights(state: dict[str, Any]) -> dict[str, Any]:
    """What a later run takes from a pretrained model: the backbone and the neck; prototypes are always new."""
    return {k: v for k, v in state.items() if k.startswith(("backbone.", "neck."))}


def _random_model(plan: PretrainPlan, data: TrainData):
    """The untrained network a `mode: none` run would start from (seeded by pretrain.seed), for the probe."""
    from owdfa.core.numerics import configure_torch
    from owdfa.models import AttributionModel
    from owdfa.train.loop import seed_everything

    seed_everything(plan.seed)
    configure_torch()
    config = plan.config
    return AttributionModel(config.backbone, data.num_known, pretrained=config.pretrained, dropout=config.dropout)


def _write_metrics(path: Path | None, mode: str, probe: float | None, val_acc: float | None) -> None:
    if path is not None:
        atomic_write_json(path, {"mode": mode, "probe_known_acc": probe, "val_acc": val_acc})


def _finish(checkpoints: Path | None) -> None:
    """The model directory is safe on disk: the checkpoints have served (a kill before this resumes)."""
    if checkpoints is not None:
        close_checkpoints(checkpoints)
        if (checkpoints / SELF_SUPERVISED_DIR).is_dir():
            close_checkpoints(checkpoints / SELF_SUPERVISED_DIR)


def _data_identity(classes: dict[str, Any], faces_dir: Path) -> dict[str, Any]:
    """What names the split and the cache, for the checkpoint fingerprint."""
    preprocessing = read_preprocessing(faces_dir)
    return {"classes": classes, "preprocessing": None if preprocessing is None else preprocessing.to_dict()}


def _size(data: TrainData) -> int:
    return int(data.images.shape[1])


def initial_state(init_dir: Path | None) -> dict | None:
    """Backbone and neck weights of the pretrained model (`starting_weights`); None when pretraining was skipped."""
    if init_dir is None:
        return None
    if isinstance(read_card(init_dir), SkippedPretraining):
        return None
    return starting_weights(load_state(init_dir, "last"))


def train(
    section: Section, variant: Section, method_name: str, seed: int, paths: RunPaths, config: TrainConfig | None = None
) -> TrainCard:
    """One training run; with `paths.checkpoints`, an interrupted run resumes from its last epoch.

    `section` is the train section (`config` its parsed form, if the caller has it already);
    `variant` the run variant `method_name`, resolved (`owdfa.methods.resolve_variant`). Its
    `optimizer:` overrides, if any, replace the train section's optimiser settings.
    In a multi-process run only rank 0 writes the model directory (and the curves, checkpoints).
    """
    split_dir, faces_dir, init_dir, checkpoints = paths.split, paths.faces, paths.init, paths.checkpoints
    method = method_from_variant(variant)
    config = with_method_optimizer(config or train_config(section), variant)
    data, classes = load_train_data(split_dir, faces_dir)
    result = run_training(
        config,
        data,
        method,
        seed=seed,
        init_state=initial_state(init_dir),
        options=RunOptions(
            desc=f"train {classes['protocol']}-{method_name}-{seed}",
            section_name=section.name,
            live_dir=paths.live,
            checkpoint_dir=checkpoints,
        ),
    )
    card = _card(
        TrainCard,
        result,
        classes,
        {"train": section.as_dict(), "method": variant.as_dict()},
        faces_dir,
        method=method_name,
        loss=method.name,
        method_params=variant.as_dict(),
        model_options=result.model.options,
        method_state=method.state(),
        seed=seed,
        image_size=_size(data),
        pretrained_from=str(init_dir) if init_dir else None,
    )
    if result.is_main:
        save_model_dir(paths.out, result.model.state_dict(), card, result.best_val_state)
        _finish(checkpoints)
    return card
