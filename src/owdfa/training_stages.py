"""What the pretrain and train stages do, as library functions of their params section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from owdfa.checkpoints import close_checkpoints
from owdfa.config import Section
from owdfa.data.face_cache import read_faces
from owdfa.data.face_preprocessing import read_preprocessing
from owdfa.data.split import read_split
from owdfa.distributed import world_from_env
from owdfa.errors import DataError
from owdfa.methods import build_method
from owdfa.methods.base import Supervised
from owdfa.model_card import CardClass, ModelCard, SkippedPretraining, read_card
from owdfa.model_io import load_state, params_hash, save_model_dir
from owdfa.numerics import describe as describe_numerics
from owdfa.train_config import TrainData, train_config, with_method_optimizer
from owdfa.training import TrainResult, run_training

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


def _card(
    result: TrainResult, classes: dict[str, Any], config_params: dict[str, Any], faces_dir: Path, **extra: Any
) -> ModelCard:
    """What every trained model's card records; `extra`: the stage's own fields (image_size among them)."""
    model = result.model
    return ModelCard(
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


def pretrain(
    section: Section, split_dir: Path, faces_dir: Path, out: Path, checkpoints: Path | None = None
) -> ModelCard | SkippedPretraining:
    """Supervised training on the labelled known classes (skipped when `enabled: false`).

    With `checkpoints`, an interrupted run resumes from its last epoch. In a multi-process run only
    rank 0 writes.
    """
    config = train_config(section, extra_keys=PRETRAIN_EXTRA)
    enabled = section.bool("enabled")
    seed = section.int("seed", min=0)
    data, classes = load_train_data(split_dir, faces_dir)
    if not enabled:
        if world_from_env().is_main:
            save_model_dir(out, None, SkippedPretraining())
            _finish(checkpoints)
        return SkippedPretraining()
    result = run_training(
        config,
        data,
        Supervised(),
        num_prototypes=data.num_known,
        seed=seed,
        desc=f"pretrain {classes['protocol']}",
        checkpoint_dir=checkpoints,
        fingerprint_extra=_data_identity(classes, faces_dir),
        section_name=section.name,
    )
    card = _card(
        result,
        classes,
        section.as_dict(),
        faces_dir,
        enabled=True,
        method="supervised",
        seed=seed,
        image_size=_size(data),
    )
    if result.is_main:
        save_model_dir(out, result.model.state_dict(), card, result.best_val_state)
        _finish(checkpoints)
    return card


def _finish(checkpoints: Path | None) -> None:
    """The model directory is safe on disk: the checkpoints have served (a kill before this resumes)."""
    if checkpoints is not None:
        close_checkpoints(checkpoints)


def _data_identity(classes: dict[str, Any], faces_dir: Path) -> dict[str, Any]:
    """What names the split and the cache, for the checkpoint fingerprint."""
    preprocessing = read_preprocessing(faces_dir)
    return {"classes": classes, "preprocessing": None if preprocessing is None else preprocessing.to_dict()}


def _size(data: TrainData) -> int:
    return int(data.images.shape[1])


def initial_state(init_dir: Path | None) -> dict | None:
    """Backbone and neck weights of the pretrained model; the prototypes are always new."""
    if init_dir is None:
        return None
    if isinstance(read_card(init_dir), SkippedPretraining):
        return None
    state = load_state(init_dir, "last")
    return {k: v for k, v in state.items() if k.startswith(("backbone.", "neck."))}


def train(
    section: Section,
    methods: Section,
    method_name: str,
    seed: int,
    split_dir: Path,
    faces_dir: Path,
    init_dir: Path | None,
    out: Path,
    live_dir: Path | None,
    checkpoints: Path | None = None,
) -> ModelCard:
    """One training run; with `checkpoints`, an interrupted run resumes from its last epoch.

    `section` is the train section; of `methods` (the variants) only `method_name` is read. The
    variant's `optimizer:` overrides, if any, replace the train section's optimiser settings.
    In a multi-process run only rank 0 writes the model directory (and the curves, checkpoints).
    """
    method = build_method(method_name, methods)
    variant = methods.section(method_name)
    config = with_method_optimizer(train_config(section), variant)
    data, classes = load_train_data(split_dir, faces_dir)
    result = run_training(
        config,
        data,
        method,
        seed=seed,
        init_state=initial_state(init_dir),
        live_dir=live_dir,
        desc=f"train {classes['protocol']}-{method_name}-{seed}",
        checkpoint_dir=checkpoints,
        fingerprint_extra=_data_identity(classes, faces_dir),
        section_name=section.name,
    )
    card = _card(
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
        save_model_dir(out, result.model.state_dict(), card, result.best_val_state)
        _finish(checkpoints)
    return card
