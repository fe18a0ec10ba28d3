"""The one training loop shared by every method (pretrain, baselines, CAL, CPL).

Each step draws a batch by the method's sampler (`Method.sampler`: CAL's, with replacement and each
draw labelled with probability `labelled_share`; CPL's class-balanced one; or SimCLR's pass over
every row), makes a weak and a strong view (two strong ones for SimCLR) and runs them through the
network in two passes (so BatchNorm sees per-view batches, as in CAL), or CPL's single view for a
single-view method; the method turns the outputs into a loss (a loss owning trainable parts, SimCLR's
projection head, has them optimised with the model's).
A method variant may override the optimiser settings (`owdfa.train.config.with_method_optimizer`).
After each epoch the method's hook runs, the labelled validation split is scored, dvclive logs
the curves and a checkpoint is written. Model selection uses validation only; the test split is
never touched here. It runs channels_last on every device (on the CPU, oneDNN's NHWC convolutions
make CAL's step about a fifth faster: `bench/train.py`). On CUDA it uses bf16 autocast (unless
`precision: fp32`); on the CPU it is bit-for-bit deterministic, also across a kill and a resume.

Input pipeline: the face cache is an uint8 array (memory-mapped) indexed directly by row, so a
batch costs one gather and one host-to-device copy, with no decoding per epoch; the views are
batched tensor ops on the device. Data-loader workers would only add inter-process copies, so there
are none (`bench/train.py` measures the pipeline against the training step).

N processes (`owdfa.core.distributed`) run this same loop: every rank draws the same global batch and
views, keeps its shard, and the method sees the all-gathered outputs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from owdfa.core.devices import autocast, batch_images, describe_device, effective_precision, pick_device
from owdfa.core.distributed import World, device_for, prepare_model, process_group, world_from_env
from owdfa.core.numerics import configure_torch
from owdfa.methods.base import Method, StepInput
from owdfa.models import AttributionModel
from owdfa.models.inference import predict
from owdfa.train.checkpoints import Checkpointer
from owdfa.train.config import TrainConfig, TrainData, check_divisible
from owdfa.train.live_log import close_live, log_record, open_live
from owdfa.train.samplers import Sampler, build_sampler
from owdfa.train.state import Best, RunOptions, RunSpec, TrainState
from owdfa.train.views import single_view, strong_view, weak_view


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
    """Python's, NumPy's and torch's global generators (the compute set-up is `numerics.configure_torch`)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


@dataclass(frozen=True)
class StepPosition:
    """Where in training a step is, as a method's loss reads it (CCR's ramp, ACR's schedule, known rows)."""

    epoch: int
    num_epochs: int
    num_known: int


@dataclass(frozen=True)
class Placement:
    """Where a step computes: the device, its autocast precision, and this process's place among the ranks."""

    device: torch.device
    precision: str = "bf16"
    world: World = field(default_factory=World)


def forward_loss(
    forward: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    method: Method,
    weak: torch.Tensor,
    strong: torch.Tensor | None,
    targets: torch.Tensor,
    position: StepPosition,
    placement: Placement,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Both views through the network (this rank's rows), outputs gathered, the method's loss.

    `targets` are the global batch's; with one process the gathers are identities.
    """
    world = placement.world
    with autocast(placement.device, placement.precision):
        out_w = forward(weak)
        out_s = forward(strong) if strong is not None else None
    step = StepInput(
        logits_weak=world.gather(out_w["logits"].float()),
        logits_strong=world.gather(out_s["logits"].float()) if out_s is not None else None,
        features_weak=world.gather(out_w["features"].float()),
        features_strong=world.gather(out_s["features"].float()) if out_s is not None else None,
        patches_weak=world.gather(out_w["patch_features"].float()) if "patch_features" in out_w else None,
        targets=targets,
        epoch=position.epoch,
        num_epochs=position.num_epochs,
        num_known=position.num_known,
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
    sampler: Sampler
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
        if self.method.two_strong_views:
            weak, strong = strong_view(x, config.augment, gen), strong_view(x, config.augment, gen)
        elif self.method.uses_strong_view:
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
            StepPosition(epoch, config.epochs, self.num_known),
            Placement(self.device, config.precision, world),
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
    seed: int,
    num_prototypes: int | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    options: RunOptions | None = None,
) -> TrainResult:
    """Train; with `options.checkpoint_dir`, resume from the newest checkpoint of this very run, if any.

    Under a launcher (WORLD_SIZE > 1) this process is one rank of a data-parallel run.
    """
    options = options or RunOptions()
    world = world_from_env()
    section_name, desc = options.section_name, options.desc
    check_divisible(config.batch_size, world.size, section_name, f"the {world.size} training processes")
    seed_everything(seed)
    configure_torch()  # compute threads, deterministic kernels, subnormals: owdfa.core.numerics
    device = device_for(world, pick_device(config.device), section_name)
    with process_group(world, device):
        if num_prototypes is None:
            num_prototypes = method.num_prototypes(data.num_known, data.num_classes)
        model = _build_model(config, method, num_prototypes, init_state, world, device, section_name)
        params = [p for p in model.parameters() if p.requires_grad] + method.make_head(model.feature_dim, device)
        optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        state = TrainState(
            model=model,
            optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma),
            generator=torch.Generator().manual_seed(seed),
            method=method,
            sampler=build_sampler(data, config, method),
        )
        step = TrainStep(
            forward=torch.compile(model) if config.compile else model,
            method=method,
            optimizer=optimizer,
            params=params,
            sampler=state.sampler,
            host=HostBatches(data.images, device),
            gen=state.generator,
            config=config,
            num_known=data.num_known,
            device=device,
            world=world,
        )
        checkpointer = None
        if options.checkpoint_dir is not None:
            spec = RunSpec(config, data, method, seed, num_prototypes, init_state)
            checkpointer = Checkpointer.for_run(options.checkpoint_dir, spec, world, device)
            checkpointer.resume(state, note=desc if world.is_main else None)
        world.check_same(model)
        start_epoch = len(state.history)
        if world.is_main:
            tqdm.write(f"{desc}: {describe_device(device, config.precision, world)}")
            if start_epoch:
                tqdm.write(f"{desc}: resuming after epoch {start_epoch}/{config.epochs} from {options.checkpoint_dir}")
        live = open_live(options.live_dir, state.history) if world.is_main else None
        for epoch in range(start_epoch, config.epochs):
            label = f"{desc} epoch {epoch + 1}/{config.epochs}"
            record = _train_epoch(step, state, epoch, label, world)
            state.scheduler.step()
            if len(data.val_rows):
                val_acc = _val_accuracy(model, data, config, device, world)
                record["val/acc"] = val_acc
                if val_acc > state.best.acc:
                    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                    state.best = Best(val_acc, best_state, epoch)
            record["epoch"] = epoch
            state.history.append(record)
            if live is not None:
                log_record(live, record)
            if checkpointer is not None and world.is_main:
                checkpointer.save(state)
            if world.is_main:
                tqdm.write(
                    f"{desc} epoch {epoch + 1}/{config.epochs}: "
                    + ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch")
                )
        if live is not None:
            close_live(live)
        world.barrier()
    return TrainResult(
        model=model.cpu(),
        history=state.history,
        best_val_state=state.best.state,
        best_val_epoch=state.best.epoch,
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


def _train_epoch(step: TrainStep, state: TrainState, epoch: int, label: str, world: World) -> dict[str, Any]:
    """One epoch of steps; the record of its mean loss terms, learning rate and method statistics."""
    model, method, optimizer, steps = state.model, state.method, state.optimizer, state.sampler.steps
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
