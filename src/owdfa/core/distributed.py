"""Data-parallel training over N processes that computes what one process computes.

Launch: a stage with `nproc > 1` re-executes itself under `torchrun --standalone` (one node). For
several nodes run torchrun yourself, e.g. on every node
`torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 stages/train.py ARGS`;
the stage sees WORLD_SIZE and does not re-launch. Checkpoints are written by rank 0 and read by every
rank, so with several nodes the checkpoint folder must be on a shared file system.

Semantics (N processes == 1 process with the same global batch):
* every rank draws the same global batch and augmentations from the same seeded generator and runs
  the network on its contiguous shard of batch_size / N rows;
* the outputs are all-gathered with autograd, so every rank computes the method's loss on the whole
  global batch: batch-level terms, ACR statistics and DPP usage counts equal one process's and each
  rank's method state stays identical (DPP's pruning then happens identically everywhere);
* BatchNorm normalises with global-batch statistics (SyncBatchNorm on CUDA, `GlobalBatchNorm` on the
  CPU) and dropout uses the mask rows one process would draw for the same rows (`GlobalBatchDropout`);
* gradients: a gather's backward sums the incoming gradients over ranks, so each rank holds N times
  the one-process gradient of the paths through its own rows; averaging over ranks (one flat
  all-reduce after backward) gives exactly the one-process gradient. Terms computed from the
  parameters directly (not through a collective) are the same on every rank and survive averaging.

Why not DistributedDataParallel: its reducer needs every trainable parameter to get a gradient each
step. CPL's patch-feature necks reach the loss only detached, which DDP rejects (also with
`static_graph`, and `find_unused_parameters` counts the detached output as a use); one process
leaves their gradient None and Adam skips them. The flat all-reduce keeps None as None; it costs one
pass over the gradients (about 100 MB for ResNet-50) without DDP's overlap with the backward.

The one-process path never touches torch.distributed: every helper is a no-op for `World()`.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from owdfa.core.errors import ConfigError

LAUNCHER_ENV = ("WORLD_SIZE", "LOCAL_RANK")


@contextmanager
def _autograd_collectives() -> Iterator[ModuleType]:
    """torch.distributed.nn.functional, without its deprecation warning on every call.

    torch 2.14 points to the private `_functional_collectives` instead; these are still the
    documented autograd-aware collectives, and their gather's backward works on gloo and nccl.
    """
    import torch.distributed.nn.functional as collectives

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional", category=FutureWarning)
        yield collectives


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (size 1: a plain single process)."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def part(self, rows: int) -> slice:
        """This rank's contiguous share of `rows` items, in rank order (equal shares when size divides rows)."""
        return slice(rows * self.rank // self.size, rows * (self.rank + 1) // self.size)

    def sum_counts(self, counts: list[int], device: torch.device) -> list[int]:
        """Element-wise sum of integer counts over ranks (identity for one process)."""
        if not self.active:
            return list(counts)
        import torch.distributed as dist

        totals = torch.tensor(counts, dtype=torch.int64, device=device)
        dist.all_reduce(totals)
        return [int(v) for v in totals.tolist()]

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's rows in rank order, with autograd (identity for one process)."""
        if not self.active:
            return tensor
        with _autograd_collectives() as collectives:
            return torch.cat(collectives.all_gather(tensor.contiguous()), dim=0)

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        """Mean of each gradient over ranks, in one flat all-reduce per dtype; None stays None.

        The set of parameters with a gradient is the same on every rank (the same graph runs on the
        same global batch), so the flat buffers line up.
        """
        if not self.active:
            return
        import torch.distributed as dist

        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in params:
            if p.grad is not None:
                by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat.div_(self.size)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def check_same(self, model: nn.Module) -> None:
        """Fail fast if the ranks did not start from the same weights (a different seed or checkpoint)."""
        if not self.active:
            return
        import torch.distributed as dist

        with torch.no_grad():
            local = torch.stack(
                [t.detach().double().sum() for t in model.state_dict().values() if t.is_floating_point()]
            )
            local = local.sum().reshape(1).to(next(model.parameters()).device)
            everyone = [torch.zeros_like(local) for _ in range(self.size)]
            dist.all_gather(everyone, local)
        if any(not torch.equal(everyone[0], other) for other in everyone[1:]):
            raise RuntimeError("training processes hold different weights at the start (not the same seed/checkpoint?)")


def world_from_env() -> World:
    """The world torchrun (or any launcher setting WORLD_SIZE/RANK/LOCAL_RANK) put this process in."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return World(size=size, rank=rank, local_rank=local)


def under_launcher() -> bool:
    return any(name in os.environ for name in LAUNCHER_ENV)


def relaunch(nproc: int) -> None:
    """Replace this process by `torchrun --standalone --nproc_per_node nproc <this script> <same args>`.

    No-op for one process or when a launcher already started us (multi-node: WORLD_SIZE is set).
    """
    if nproc <= 1 or under_launcher():
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *sys.argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Inside: this process is a member of the run's group (nccl on CUDA, gloo on the CPU).

    A single-process run has no group. A group that already exists (a caller's, e.g. a test that
    spawns the ranks itself) is joined as it is and left standing; one made here is destroyed on exit.
    """
    import torch.distributed as dist

    created = world.active and not dist.is_initialized()
    if created:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size)
    try:
        yield
    finally:
        if created:
            dist.destroy_process_group()


def device_for(world: World, device: torch.device, section_name: str) -> torch.device:
    """One GPU per local rank; the CPU stays the CPU."""
    if device.type != "cuda" or not world.active:
        return device
    if world.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"{section_name}.nproc",
            f"local rank {world.local_rank} has no GPU: this node has {torch.cuda.device_count()}",
        )
    return torch.device("cuda", world.local_rank)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch on the CPU, where SyncBatchNorm refuses CPU tensors.

    Training: per-channel sum and sum of squares (float64, so the variance does not cancel) are
    all-reduced with autograd, the rows normalised with the global mean and biased variance, and the
    running statistics updated with the unbiased variance exactly as BatchNorm does. Evaluation and
    single-process use fall back to plain BatchNorm; the state dict is BatchNorm's.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        wide = input.double()
        with _autograd_collectives() as collectives:
            totals = collectives.all_reduce(torch.cat([wide.sum(dims), (wide * wide).sum(dims)]))
        count = input.numel() // channels * dist.get_world_size()
        mean = totals[:channels] / count
        var = (totals[channels:] / count - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (count / (count - 1)) if count > 1 else var
                self.running_mean.mul_(1.0 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1.0 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        shape = [1, channels] + [1] * (input.dim() - 2)
        out = ((wide - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)).to(input.dtype)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


class GlobalBatchDropout(nn.Dropout):
    """Dropout whose mask is this rank's rows of the mask one process draws for the global batch.

    Every rank draws the full-size mask from its (identically seeded and advanced) generator and
    keeps its rows, so the masks, and the generator stream, equal one process's. Exact on the CPU;
    on CUDA only when the fused kernel picks the same vectorisation for both shapes.
    """

    def __init__(self, p: float, world: World) -> None:
        super().__init__(p)
        self.world = world

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return input
        rows = input.shape[0]
        mask = F.dropout(input.new_ones((rows * self.world.size, *input.shape[1:])), self.p, True)
        return input * mask[self.world.part(rows * self.world.size)]


def _global_batchnorm(bn: nn.modules.batchnorm._BatchNorm) -> GlobalBatchNorm:
    """The same parameters and buffers (shared, not copied) behind a GlobalBatchNorm."""
    new = GlobalBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias  # a frozen bias (BNNeck) stays frozen
    if bn.track_running_stats:
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    return new


def _convert_cpu(module: nn.Module, section_name: str) -> None:
    for name, child in module.named_children():
        if type(child) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            setattr(module, name, _global_batchnorm(child))
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            raise ConfigError(
                f"{section_name}.backbone",
                f"{type(child).__name__} cannot be synchronised across CPU processes; use nproc 1 on the CPU",
            )
        else:
            _convert_cpu(child, section_name)


def prepare_model(model: nn.Module, world: World, device: torch.device, section_name: str = "train") -> None:
    """Global-batch BatchNorm and dropout, in place; nothing for one process.

    Parameters and buffers are moved, not copied, so an optimizer built before or after sees the
    same tensors in the same order.
    """
    if not world.active:
        return
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm  # keeps timm's BatchNormAct2d activations

        convert_sync_batchnorm(model)  # converts the children in place (the root is no BatchNorm)
    else:
        _convert_cpu(model, section_name)
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, GlobalBatchDropout(child.p, world))
