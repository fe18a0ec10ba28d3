"""The one training loop shared by every method (pretrain, baselines, CAL, CPL).

Each step draws a batch by CAL's sampler (with replacement; each draw labelled with probability
`labelled_share`), makes a weak and a strong view and runs them through the network in two passes
(so BatchNorm sees per-view batches, as in CAL); the method turns the outputs into a loss.
After each epoch the method's hook runs, the labelled validation split is scored and dvclive logs
the curves. Model selection uses validation only; the test split is never touched here.
On CUDA it uses bf16 autocast and channels_last; on the CPU it is bit-for-bit deterministic.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from owdfa.config import Section
from owdfa.data.views import AugmentConfig, strong_view, weak_view
from owdfa.methods.base import Method, StepInput
from owdfa.models import AttributionModel


@dataclass(frozen=True)
class TrainConfig:
    backbone: str = "test_resnet"
    pretrained: bool = False
    dropout: float = 0.2
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    lr_step: int = 10
    lr_gamma: float = 0.1
    labelled_share: float = 0.5
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval_batch_size: int = 256
    threads: int = 0
    device: str = "auto"


TRAIN_KEYS = tuple(TrainConfig.__dataclass_fields__)


def train_config(section: Section, extra_keys: tuple[str, ...] = ()) -> TrainConfig:
    section.check_unknown(TRAIN_KEYS + extra_keys)
    aug = section.section("augment")
    aug.check_unknown(AugmentConfig.__dataclass_fields__)
    return TrainConfig(
        backbone=section.str("backbone"),
        pretrained=section.bool("pretrained"),
        dropout=section.float("dropout", min=0.0, max=0.95),
        epochs=section.int("epochs", min=1),
        batch_size=section.int("batch_size", min=2),
        lr=section.float("lr", min=0.0),
        weight_decay=section.float("weight_decay", min=0.0),
        lr_step=section.int("lr_step", min=1),
        lr_gamma=section.float("lr_gamma", min=0.0, max=1.0),
        labelled_share=section.float("labelled_share", min=0.0, max=1.0),
        augment=AugmentConfig(
            flip_prob=aug.float("flip_prob", min=0.0, max=1.0),
            crop_prob=aug.float("crop_prob", min=0.0, max=1.0),
            crop_scale=aug.float_pair("crop_scale", min=0.05, max=1.0),
            jitter_prob=aug.float("jitter_prob", min=0.0, max=1.0),
            jitter=aug.float("jitter", min=0.0, max=0.95),
        ),
        eval_batch_size=section.int("eval_batch_size", min=1),
        threads=section.int("threads", min=0),
        device=section.str("device", choices=("auto", "cpu", "cuda")),
    )


@dataclass
class TrainData:
    """Cache rows and targets of each split a training run may see (no test rows)."""

    images: np.ndarray
    labelled_rows: np.ndarray
    labelled_targets: np.ndarray
    unlabelled_rows: np.ndarray
    val_rows: np.ndarray
    val_targets: np.ndarray
    num_known: int
    num_classes: int


@dataclass
class TrainResult:
    model: AttributionModel
    history: list[dict[str, float]]
    best_val_state: dict[str, torch.Tensor] | None
    best_val_epoch: int | None
    device: str


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def batch_images(images: np.ndarray, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC cache rows -> uint8 NCHW tensor on device (normalisation happens in the model)."""
    batch = torch.from_numpy(np.ascontiguousarray(images[rows])).permute(0, 3, 1, 2)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return batch.to(device, non_blocking=True).contiguous(memory_format=memory_format)


def _autocast(device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def predict(
    model: AttributionModel, images: np.ndarray, rows: np.ndarray, batch_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eval-mode logits, features and argmax predictions over the active prototypes."""
    model.eval()
    logits, feats = [], []
    for start in range(0, len(rows), batch_size):
        x = batch_images(images, rows[start : start + batch_size], device)
        with _autocast(device):
            out = model(x)
        logits.append(out["logits"].float().cpu())
        feats.append(out["features"].float().cpu())
    if not logits:
        empty = np.zeros((0,), dtype=np.int64)
        return np.zeros((0, int(model.num_active))), np.zeros((0, model.feature_dim)), empty
    all_logits = torch.cat(logits).numpy()
    return all_logits, torch.cat(feats).numpy(), all_logits.argmax(axis=1)


def run_training(
    config: TrainConfig,
    data: TrainData,
    method: Method,
    *,
    num_prototypes: int | None = None,
    seed: int,
    init_state: dict[str, torch.Tensor] | None = None,
    live_dir: Path | None = None,
    desc: str = "train",
) -> TrainResult:
    seed_everything(seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    if num_prototypes is None:
        num_prototypes = method.num_prototypes(data.num_known, data.num_classes)
    model = AttributionModel(
        config.backbone, num_prototypes, pretrained=config.pretrained, dropout=config.dropout, **method.model_options()
    )
    if init_state is not None:
        model.load_state_dict(init_state, strict=False)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    gen = torch.Generator().manual_seed(seed)

    n_lab, n_unl = len(data.labelled_rows), len(data.unlabelled_rows)
    use_unl = method.uses_unlabelled and n_unl > 0
    draws = n_lab + (n_unl if use_unl else 0)
    steps = max(1, draws // config.batch_size)
    share = config.labelled_share if use_unl else 1.0
    labelled_targets = torch.tensor(np.asarray(data.labelled_targets), dtype=torch.long)

    live = _open_live(live_dir)
    history: list[dict[str, float]] = []
    best_acc, best_state, best_epoch = -1.0, None, None
    for epoch in range(config.epochs):
        model.train()
        method.on_epoch_start(epoch)
        sums: dict[str, float] = {}
        bar = tqdm(
            range(steps), desc=f"{desc} epoch {epoch + 1}/{config.epochs}", unit="step", leave=False, disable=None
        )
        for _ in bar:
            is_lab = torch.rand(config.batch_size, generator=gen) < share
            lab_pick = torch.randint(n_lab, (config.batch_size,), generator=gen)
            unl_pick = torch.randint(max(n_unl, 1), (config.batch_size,), generator=gen)
            rows = np.where(
                is_lab.numpy(),
                data.labelled_rows[lab_pick.numpy()],
                data.unlabelled_rows[unl_pick.numpy()] if use_unl else 0,
            )
            targets = torch.where(is_lab, labelled_targets[lab_pick], torch.full_like(lab_pick, -1)).to(device)
            x = batch_images(data.images, rows, device)
            weak = weak_view(x, config.augment, gen)
            strong = strong_view(x, config.augment, gen) if method.uses_strong_view else None
            with _autocast(device):
                out_w = model(weak)
                out_s = model(strong) if strong is not None else None
            step = StepInput(
                logits_weak=out_w["logits"].float(),
                logits_strong=out_s["logits"].float() if out_s is not None else None,
                features_weak=out_w["features"].float(),
                features_strong=out_s["features"].float() if out_s is not None else None,
                patches_weak=out_w["patch_features"].float() if "patch_features" in out_w else None,
                targets=targets,
                epoch=epoch,
                num_epochs=config.epochs,
                num_known=data.num_known,
            )
            loss, terms = method.step_loss(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            terms["loss"] = float(loss.detach())
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{terms['loss']:.3f}")
        record: dict[str, Any] = {f"train/{k}": v / steps for k, v in sorted(sums.items())}
        record["lr"] = optimizer.param_groups[0]["lr"]
        for k, v in method.on_epoch_end(model, optimizer, epoch).items():
            record[f"method/{k}"] = v
        scheduler.step()
        if len(data.val_rows):
            _, _, pred = predict(model, data.images, data.val_rows, config.eval_batch_size, device)
            val_acc = float((pred == data.val_targets).mean())
            record["val/acc"] = val_acc
            if val_acc > best_acc:
                best_acc, best_epoch = val_acc, epoch
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        record["epoch"] = epoch
        history.append(record)
        if live is not None:
            for k, v in record.items():
                if k != "epoch":
                    live.log_metric(k, round(float(v), 6))
            live.next_step()
        tqdm.write(
            f"{desc} epoch {epoch + 1}/{config.epochs}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch")
        )
    if live is not None:
        live.end()
    method.finalise(model)
    return TrainResult(
        model=model.cpu(), history=history, best_val_state=best_state, best_val_epoch=best_epoch, device=str(device)
    )


def _open_live(live_dir: Path | None):
    if live_dir is None:
        return None
    from dvclive import Live

    return Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
