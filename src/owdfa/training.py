"""The one training loop shared by every method (pretrain, baselines, CAL, CPL).

Each step draws a batch by the method's sampler (`Method.sampler`: CAL's, with replacement and each
draw labelled with probability `labelled_share`; or CPL's class-balanced one), makes a weak and a
strong view and runs them through the network in two passes (so BatchNorm sees per-view batches, as
in CAL), or CPL's single view for a single-view method; the method turns the outputs into a loss.
A method variant may override the optimiser settings (`with_method_optimizer`).
After each epoch the method's hook runs, the labelled validation split is scored, dvclive logs
the curves and a checkpoint is written. Model selection uses validation only; the test split is
never touched here. It runs channels_last on every device (on the CPU, oneDNN's NHWC convolutions
make CAL's step about a fifth faster: `bench/train.py`). On CUDA it uses bf16 autocast (unless
`precision: fp32`); on the CPU it is bit-for-bit deterministic, also across a kill and a resume.

Input pipeline: the face cache is an uint8 array (memory-mapped) indexed directly by row, so a
batch costs one gather and one host-to-device copy, with no decoding per epoch; the views are
batched tensor ops on the device. Data-loader workers would only add inter-process copies, so there
are none (`bench/train.py` measures the pipeline against the training step).

N processes (`owdfa.distributed`) run this same loop: every rank draws the same global batch and
views, keeps its shard, and the method sees the all-gathered outputs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from owdfa.checkpoints import load_checkpoint, restore, run_fingerprint, save_checkpoint
from owdfa.config import Param, Section, load_section, param, read_params
from owdfa.data.views import AugmentConfig, single_view, strong_view, weak_view
from owdfa.distributed import World, device_for, prepare_model, process_group, world_from_env
from owdfa.errors import ConfigError
from owdfa.inference import autocast, batch_images, describe_device, effective_precision, pick_device, predict
from owdfa.live_log import log_record, open_live
from owdfa.methods.base import Method, StepInput
from owdfa.models import AttributionModel
from owdfa.numerics import configure_torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("bf16", "fp32")
# AugmentConfig (owdfa.data.views) is declared without params bounds; these are its section's.
AUGMENT_PARAMS = {
    "flip_prob": Param(min=0.0, max=1.0),
    "crop_prob": Param(min=0.0, max=1.0),
    "crop_scale": Param(min=0.05, max=1.0),
    "jitter_prob": Param(min=0.0, max=1.0),
    "jitter": Param(min=0.0, max=0.95),
}


@dataclass(frozen=True)
class TrainConfig:
    """The training loop's settings (params sections `train` and `pretrain`; nproc, precision, compile optional)."""

    backbone: str = param("test_resnet")
    pretrained: bool = param(False)
    dropout: float = param(0.2, min=0.0, max=0.95)
    epochs: int = param(10, min=1)
    batch_size: int = param(64, min=2)
    lr: float = param(2e-3, min=0.0)
    weight_decay: float = param(1e-4, min=0.0)
    lr_step: int = param(10, min=1)
    lr_gamma: float = param(0.1, min=0.0, max=1.0)
    labelled_share: float = param(0.5, min=0.0, max=1.0)
    augment: AugmentConfig = param(default_factory=AugmentConfig, nested=AUGMENT_PARAMS)
    eval_batch_size: int = param(256, min=1)
    device: str = param("auto", choices=DEVICES)
    nproc: int = param(1, min=1, optional=True)
    precision: str = param("bf16", choices=PRECISIONS, optional=True)
    compile: bool = param(False, optional=True)

    def validate(self, section: Section) -> None:
        _check_divisible(self.batch_size, self.nproc, section.name, f"{section.key('nproc')} = {self.nproc}")


OPTIMIZER_KEYS = ("lr", "weight_decay", "lr_step", "lr_gamma")  # what a method variant may override


def train_config(section: Section, extra_keys: tuple[str, ...] = ()) -> TrainConfig:
    return load_section(TrainConfig, section, extra_keys=extra_keys)


def with_method_optimizer(config: TrainConfig, variant: Section) -> TrainConfig:
    """`config` with the variant's `optimizer:` overrides (any of lr, weight_decay, lr_step, lr_gamma).

    The methods' official optimiser settings differ (CAL: weight decay 1e-3, StepLR gamma 0.05;
    CPL: 1e-5, 0.2), so a variant (`methods.<variant>`) may replace the train section's values
    for its own runs; keys it leaves out keep the train section's. Unknown keys are typos.
    """
    if not variant.has("optimizer"):
        return config
    overrides = variant.section("optimizer")
    overrides.check_unknown(OPTIMIZER_KEYS)
    return replace(config, **read_params(TrainConfig, overrides, [k for k in OPTIMIZER_KEYS if overrides.has(k)]))


def _check_divisible(batch_size: int, processes: int, section_name: str, what: str) -> None:
    if batch_size % processes:
        raise ConfigError(
            f"{section_name}.batch_size",
            f"{batch_size} is not divisible by {what}: each process takes batch_size / processes rows",
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
    precision: str = "fp32"  # what the arithmetic actually was (the CPU always runs fp32)
    is_main: bool = True  # False on every process but rank 0 of a multi-process run: write nothing


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    configure_torch()


class HostBatches:
    """Training batches from the uint8 cache; on CUDA through reused pinned buffers.

    Rows are gathered straight into page-locked memory and copied asynchronously, so the copy
    overlaps the GPU's work; an event per buffer keeps a buffer from being refilled before its
    copy has finished. NHWC uint8 permuted to NCHW is already channels_last. On the CPU this is
    `batch_images`.
    """

    def __init__(self, images: np.ndarray, device: torch.device, slots: int = 2) -> None:
        self.images, self.device = images, device
        self._slots: list[tuple[torch.Tensor, torch.cuda.Event] | None] = [None] * slots
        self._next = 0

    def __call__(self, rows: np.ndarray) -> torch.Tensor:
        if self.device.type != "cuda":
            return batch_images(self.images, rows, self.device)
        shape = (len(rows), *self.images.shape[1:])
        slot = self._slots[self._next]
        if slot is None or tuple(slot[0].shape) != shape:
            slot = (torch.empty(shape, dtype=torch.uint8, pin_memory=True), torch.cuda.Event())
            self._slots[self._next] = slot
        self._next = (self._next + 1) % len(self._slots)
        buffer, copied = slot
        copied.synchronize()
        np.take(self.images, rows, axis=0, out=buffer.numpy(), mode="clip")  # "raise" would buffer a copy
        on_device = buffer.to(self.device, non_blocking=True)
        copied.record()
        return on_device.permute(0, 3, 1, 2)


@dataclass(frozen=True, eq=False)
class Sampler:
    """CAL's sampler: each draw labelled with probability `share`, rows drawn with replacement."""

    data: TrainData
    batch_size: int
    use_unlabelled: bool
    share: float
    labelled_targets: torch.Tensor

    @classmethod
    def build(cls, data: TrainData, config: TrainConfig, method: Method) -> Sampler:
        use_unl = method.uses_unlabelled and len(data.unlabelled_rows) > 0
        return cls(
            data=data,
            batch_size=config.batch_size,
            use_unlabelled=use_unl,
            share=config.labelled_share if use_unl else 1.0,
            labelled_targets=torch.tensor(np.asarray(data.labelled_targets), dtype=torch.long),
        )

    @property
    def steps(self) -> int:
        draws = len(self.data.labelled_rows) + (len(self.data.unlabelled_rows) if self.use_unlabelled else 0)
        return max(1, draws // self.batch_size)

    def draw(self, gen: torch.Generator) -> tuple[np.ndarray, torch.Tensor]:
        """Cache rows and targets (-1 for unlabelled draws) of one global batch."""
        n_lab, n_unl = len(self.data.labelled_rows), len(self.data.unlabelled_rows)
        is_lab = torch.rand(self.batch_size, generator=gen) < self.share
        lab_pick = torch.randint(n_lab, (self.batch_size,), generator=gen)
        unl_pick = torch.randint(max(n_unl, 1), (self.batch_size,), generator=gen)
        rows = np.where(
            is_lab.numpy(),
            self.data.labelled_rows[lab_pick.numpy()],
            self.data.unlabelled_rows[unl_pick.numpy()] if self.use_unlabelled else 0,
        )
        targets = torch.where(is_lab, self.labelled_targets[lab_pick], torch.full_like(lab_pick, -1))
        return rows, targets

    def state_dict(self) -> dict[str, Any]:
        """Nothing carries between steps: every draw depends on the generator alone."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"Sampler keeps no state; got {sorted(state)}")


def least_drawn_class(counts: list[int], u: float) -> int:
    """The labelled class a balanced draw takes: one drawn least so far, picked by `u` in [0, 1).

    The official search (owdfa/datasets/utils/sampler.py, `get_class`) lists the tied classes in
    ascending order but lists the first of them twice unless it is class 0 (a new minimum is
    appended once more on the same pass; spec §8.19), then picks uniformly from that list.
    """
    low = min(counts)
    tied = [c for c, n in enumerate(counts) if n == low]
    candidates = tied if tied[0] == 0 else [tied[0], *tied]
    return candidates[int(u * len(candidates))]


class BalancedSampler:
    """CPL's sampler: the official MultilabelBalancedRandomSampler in "balance" mode (spec §2.2).

    Draws alternate, the very first being unlabelled: an unlabelled draw takes the next row of the
    unlabelled pool, a labelled draw the next row of a least-drawn labelled class
    (`least_drawn_class`). Each pool is walked cyclically in a random order fixed once (at the first
    draw), and the per-pool counts and the alternation carry on across epochs, as in the official
    sampler, whose counters are never reset. An epoch is len(labelled) + len(unlabelled) draws. The
    loop trains on whole batches only, so the last (draws mod batch_size) draws of each epoch, the
    official short last batch, are drawn and dropped, keeping the stream aligned with the official
    one. Without unlabelled rows, or for a method not using them, every draw is labelled.

    All randomness (orders, tie-breaks) comes from the loop's generator, so every rank draws the
    same global batch; `state_dict` holds what carries between epochs, for resuming.
    """

    def __init__(self, data: TrainData, batch_size: int, use_unlabelled: bool) -> None:
        if len(data.labelled_rows) == 0:
            raise ValueError("the class-balanced sampler needs labelled rows")
        self.data, self.batch_size, self.use_unlabelled = data, batch_size, use_unlabelled
        targets = np.asarray(data.labelled_targets)
        # Positions into data.labelled_rows per labelled class (ascending class id), then the unlabelled pool.
        self._members = [np.flatnonzero(targets == c) for c in np.unique(targets)]
        self._members.append(np.arange(len(data.unlabelled_rows) if use_unlabelled else 0))
        self._orders: list[np.ndarray] | None = None
        self._counts = [0] * len(self._members)
        self._unlabelled_next = True
        self._step_in_epoch = 0

    @classmethod
    def build(cls, data: TrainData, config: TrainConfig, method: Method) -> BalancedSampler:
        return cls(data, config.batch_size, method.uses_unlabelled and len(data.unlabelled_rows) > 0)

    @property
    def draws_per_epoch(self) -> int:
        return sum(len(m) for m in self._members)

    @property
    def steps(self) -> int:
        return max(1, self.draws_per_epoch // self.batch_size)

    def draw(self, gen: torch.Generator) -> tuple[np.ndarray, torch.Tensor]:
        """Cache rows and targets (-1 for unlabelled draws) of one global batch."""
        if self._orders is None:
            self._orders = [m[torch.randperm(len(m), generator=gen).numpy()] for m in self._members]
        count = self.batch_size
        self._step_in_epoch += 1
        if self._step_in_epoch == self.steps:  # the epoch's last batch: also use up the short one
            count += max(0, self.draws_per_epoch - self.steps * self.batch_size)
            self._step_in_epoch = 0
        ties = torch.rand(count, generator=gen, dtype=torch.float64).tolist()
        unlabelled = len(self._members) - 1
        rows = np.empty(count, dtype=np.int64)
        targets = np.empty(count, dtype=np.int64)
        for i, u in enumerate(ties):
            take_unlabelled = self.use_unlabelled and self._unlabelled_next
            pool = unlabelled if take_unlabelled else least_drawn_class(self._counts[:-1], u)
            if self.use_unlabelled:
                self._unlabelled_next = not self._unlabelled_next
            order = self._orders[pool]
            position = int(order[self._counts[pool] % len(order)])
            self._counts[pool] += 1
            if pool == unlabelled:
                rows[i], targets[i] = self.data.unlabelled_rows[position], -1
            else:
                rows[i], targets[i] = self.data.labelled_rows[position], self.data.labelled_targets[position]
        keep = self.batch_size
        return rows[:keep], torch.from_numpy(targets[:keep])

    def state_dict(self) -> dict[str, Any]:
        """The pools' fixed orders (once drawn), the draw counts, the alternation and the step in the epoch."""
        state: dict[str, Any] = {
            "counts": list(self._counts),
            "unlabelled_next": self._unlabelled_next,
            "step_in_epoch": self._step_in_epoch,
        }
        if self._orders is not None:
            state["orders"] = torch.from_numpy(np.concatenate(self._orders).astype(np.int64))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["counts"]) != len(self._members):
            raise ValueError(f"sampler state for {len(state['counts'])} pools, this data has {len(self._members)}")
        self._counts = [int(n) for n in state["counts"]]
        self._unlabelled_next = bool(state["unlabelled_next"])
        self._step_in_epoch = int(state["step_in_epoch"])
        self._orders = None
        if "orders" in state:
            flat = state["orders"].numpy()
            bounds = np.cumsum([0, *(len(m) for m in self._members)])
            if len(flat) != bounds[-1]:
                raise ValueError(f"sampler orders hold {len(flat)} positions, this data has {bounds[-1]}")
            self._orders = [flat[a:b].copy() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


SAMPLERS: dict[str, type[Sampler] | type[BalancedSampler]] = {
    "labelled_share": Sampler,
    "class_balanced": BalancedSampler,
}


def build_sampler(data: TrainData, config: TrainConfig, method: Method) -> Sampler | BalancedSampler:
    """The sampler the method's recipe names (`Method.sampler`)."""
    if method.sampler not in SAMPLERS:
        raise ValueError(f"{type(method).__name__}.sampler = {method.sampler!r}; known: {', '.join(SAMPLERS)}")
    return SAMPLERS[method.sampler].build(data, config, method)


def forward_loss(
    forward: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    method: Method,
    weak: torch.Tensor,
    strong: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    epoch: int,
    num_epochs: int,
    num_known: int,
    device: torch.device,
    precision: str = "bf16",
    world: World | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Both views through the network (this rank's rows), outputs gathered, the method's loss.

    `targets` are the global batch's; with one process the gathers are identities.
    """
    world = world or World()
    with autocast(device, precision):
        out_w = forward(weak)
        out_s = forward(strong) if strong is not None else None
    step = StepInput(
        logits_weak=world.gather(out_w["logits"].float()),
        logits_strong=world.gather(out_s["logits"].float()) if out_s is not None else None,
        features_weak=world.gather(out_w["features"].float()),
        features_strong=world.gather(out_s["features"].float()) if out_s is not None else None,
        patches_weak=world.gather(out_w["patch_features"].float()) if "patch_features" in out_w else None,
        targets=targets,
        epoch=epoch,
        num_epochs=num_epochs,
        num_known=num_known,
    )
    return method.step_loss(step)


@dataclass
class TrainStep:
    """One step of the loop (also what bench/train.py times); returns the loss terms.

    Draw the global batch, make its views (weak and strong; or, for a single-view method, CPL's
    `single_view` in the weak slot), forward this rank's rows, the method's loss on the gathered
    outputs, backward, mean gradient over ranks, Adam update.
    """

    forward: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    method: Method
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    sampler: Sampler | BalancedSampler
    host: HostBatches
    gen: torch.Generator
    config: TrainConfig
    num_known: int
    device: torch.device
    world: World = field(default_factory=World)

    def __call__(self, epoch: int) -> dict[str, float]:
        config, gen, world = self.config, self.gen, self.world
        rows, targets = self.sampler.draw(gen)
        targets = targets.to(self.device)
        x = self.host(rows)
        if self.method.uses_strong_view:
            weak, strong = weak_view(x, config.augment, gen), strong_view(x, config.augment, gen)
        else:
            weak, strong = single_view(x, config.augment, gen), None
        if world.active:  # every rank made the global batch's views (same generator draws); keep our rows
            mine = world.part(config.batch_size)
            weak, strong = weak[mine], strong[mine] if strong is not None else None
        loss, terms = forward_loss(
            self.forward,
            self.method,
            weak,
            strong,
            targets,
            epoch=epoch,
            num_epochs=config.epochs,
            num_known=self.num_known,
            device=self.device,
            precision=config.precision,
            world=world,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        world.average_gradients(self.params)
        self.optimizer.step()
        terms["loss"] = float(loss.detach())
        return terms


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
    checkpoint_dir: Path | None = None,
    fingerprint_extra: dict[str, Any] | None = None,
    section_name: str = "train",
) -> TrainResult:
    """Train; with `checkpoint_dir`, resume from the newest checkpoint of this very run, if any.

    Under a launcher (WORLD_SIZE > 1) this process is one rank of a data-parallel run.
    """
    world = world_from_env()
    _check_divisible(config.batch_size, world.size, section_name, f"the {world.size} training processes")
    seed_everything(seed)  # compute threads and kernels: owdfa.numerics, pinned before torch loaded
    device = device_for(world, pick_device(config.device), section_name)
    with process_group(world, device):
        if num_prototypes is None:
            num_prototypes = method.num_prototypes(data.num_known, data.num_classes)
        model = _build_model(config, method, num_prototypes, init_state, world, device, section_name)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
        gen = torch.Generator().manual_seed(seed)
        sampler = build_sampler(data, config, method)
        step = TrainStep(
            forward=torch.compile(model) if config.compile else model,
            method=method,
            optimizer=optimizer,
            params=params,
            sampler=sampler,
            host=HostBatches(data.images, device),
            gen=gen,
            config=config,
            num_known=data.num_known,
            device=device,
            world=world,
        )

        history: list[dict[str, Any]] = []
        best_acc, best_state, best_epoch = -1.0, None, None
        fingerprint = None
        if checkpoint_dir is not None:
            fingerprint = run_fingerprint(
                config, data, method, seed, num_prototypes, init_state, world, device, fingerprint_extra
            )
            found = load_checkpoint(checkpoint_dir, fingerprint, note=desc if world.is_main else None)
            if found is not None:
                history, best_acc, best_state, best_epoch = restore(
                    found, model, optimizer, scheduler, gen, method, sampler, device
                )
        world.check_same(model)
        start_epoch = len(history)
        if world.is_main:
            tqdm.write(f"{desc}: {describe_device(device, config.precision, world)}")
            if start_epoch:
                tqdm.write(f"{desc}: resuming after epoch {start_epoch}/{config.epochs} from {checkpoint_dir}")
        live = open_live(live_dir, history) if world.is_main else None
        for epoch in range(start_epoch, config.epochs):
            label = f"{desc} epoch {epoch + 1}/{config.epochs}"
            record = _train_epoch(step, sampler.steps, model, method, optimizer, epoch, label, world)
            scheduler.step()
            if len(data.val_rows):
                val_acc = _val_accuracy(model, data, config, device, world)
                record["val/acc"] = val_acc
                if val_acc > best_acc:
                    best_acc, best_epoch = val_acc, epoch
                    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            record["epoch"] = epoch
            history.append(record)
            if live is not None:
                log_record(live, record)
            if checkpoint_dir is not None and world.is_main:
                save_checkpoint(
                    checkpoint_dir,
                    fingerprint,
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    gen=gen,
                    method=method,
                    sampler=sampler,
                    history=history,
                    best=(best_acc, best_state, best_epoch),
                    device=device,
                )
            if world.is_main:
                tqdm.write(
                    f"{desc} epoch {epoch + 1}/{config.epochs}: "
                    + ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch")
                )
        if live is not None:
            live.end()
        world.barrier()
    return TrainResult(
        model=model.cpu(),
        history=history,
        best_val_state=best_state,
        best_val_epoch=best_epoch,
        device=str(device) if not world.active else f"{device.type} x{world.size}",
        precision=effective_precision(device, config.precision),
        is_main=world.is_main,
    )


def _build_model(
    config: TrainConfig,
    method: Method,
    num_prototypes: int,
    init_state: dict[str, torch.Tensor] | None,
    world: World,
    device: torch.device,
    section_name: str,
) -> AttributionModel:
    model = AttributionModel(
        config.backbone, num_prototypes, pretrained=config.pretrained, dropout=config.dropout, **method.model_options()
    )
    if init_state is not None:
        model.load_state_dict(init_state, strict=False)
    model.to(device).to(memory_format=torch.channels_last)  # NHWC: faster on CUDA and on the CPU (oneDNN)
    prepare_model(model, world, device, section_name)
    return model


def _train_epoch(
    step: TrainStep,
    steps: int,
    model: AttributionModel,
    method: Method,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    label: str,
    world: World,
) -> dict[str, Any]:
    """One epoch of steps; the record of its mean loss terms, learning rate and method statistics."""
    model.train()
    method.on_epoch_start(epoch)
    sums: dict[str, float] = {}
    bar = tqdm(
        range(steps),
        desc=label,
        unit="step",
        leave=False,
        disable=None if world.is_main else True,
    )
    for _ in bar:
        terms = step(epoch)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v
        bar.set_postfix(loss=f"{terms['loss']:.3f}")
    record: dict[str, Any] = {f"train/{k}": v / steps for k, v in sorted(sums.items())}
    record["lr"] = optimizer.param_groups[0]["lr"]
    for k, v in method.on_epoch_end(model, optimizer, epoch).items():
        record[f"method/{k}"] = v
    return record


def _val_accuracy(
    model: AttributionModel, data: TrainData, config: TrainConfig, device: torch.device, world: World
) -> float:
    """Accuracy on the labelled validation rows; each rank scores its share and the counts are summed."""
    mine = world.part(len(data.val_rows))
    _, _, pred = predict(model, data.images, data.val_rows[mine], config.eval_batch_size, device, config.precision)
    correct, total = world.sum_counts([int((pred == data.val_targets[mine]).sum()), len(pred)], device)
    return correct / total
