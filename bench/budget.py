"""Memory and compute of one CAL training step, measured on the CPU: the basis of the GPU numbers in docs/owdfa40.md.

Peak memory of a training process ~ model state + activations + workspace:
* model state: weights, gradients and Adam's two moments, 4 x 4 bytes per trainable parameter (fp32
  master weights; autocast keeps them fp32);
* activations: every tensor autograd keeps for the backward of both views' forward passes. Measured
  here by adding up the bytes of each distinct storage passed to `saved_tensors_hooks` (parameters
  excluded) during the training forward of the attribution network (backbone, FFE, BNNeck,
  prototypes) at two batch sizes; the difference gives bytes per image-view. Under bf16 autocast
  (CPU autocast casts the same op families as CUDA's: convolutions and matrix products) and fp32;
* not counted: the CUDA context, cuDNN workspace and allocator slack (docs/owdfa40.md adds 20 % + 1 GiB).

Compute: `torch.utils.flop_counter.FlopCounterMode` counts the forward+backward FLOPs per image-view
of the same network (convolutions and matrix products; FFE's element-wise work is not counted).

Merges {"budget": ...} into reports/bench.json and prints per-process memory for a global batch
split over 1, 2, 4, 8 processes. Usage:
    python bench/budget.py [--backbone resnet50 --image-size 256 --global-batch 128 --variant cal]
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch
import yaml
from common import merge_into
from torch.utils.flop_counter import FlopCounterMode

from owdfa.core.config import Section
from owdfa.methods import build_method
from owdfa.models import AttributionModel

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3


def saved_bytes(model: torch.nn.Module, batch: int, size: int, bf16: bool) -> int:
    """Bytes autograd keeps for backward after the forward of two views of `batch` images."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    gen = torch.Generator().manual_seed(0)
    views = [torch.rand(batch, 3, size, size, generator=gen) for _ in range(2)]
    outputs = []
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for view in views:  # both views' graphs are alive together, as in the step
            outputs.append(model(view)["logits"])
    total = sum(storages.values())
    del outputs
    return total


def step_flops(model: torch.nn.Module, size: int) -> float:
    """Forward+backward FLOPs of one image-view."""
    x = torch.rand(2, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        model(x)["logits"].float().sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--classes", type=int, default=41)
    parser.add_argument("--variant", default="cal", help="methods variant in params.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    method = build_method(args.variant, Section.from_file("methods", ROOT / "params.yaml"))
    model = AttributionModel(args.backbone, args.classes, dropout=section["dropout"], **method.model_options())
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state_bytes = 16 * trainable
    per_view: dict[str, float] = {}
    for name, bf16 in (("bf16", True), ("fp32", False)):
        small, large = saved_bytes(model, 2, args.image_size, bf16), saved_bytes(model, 4, args.image_size, bf16)
        per_view[name] = (large - small) / (2 * 2)  # 2 more images, 2 views each
    flops = step_flops(model, args.image_size)
    projection = {}
    for nproc in (1, 2, 4, 8):
        per_process = args.global_batch // nproc
        projection[str(nproc)] = {
            precision: round((state_bytes + 2 * per_process * per_view[precision]) / GIB, 3) for precision in per_view
        }
    report = {
        "config": {
            "backbone": args.backbone,
            "image_size": args.image_size,
            "global_batch": args.global_batch,
            "classes": args.classes,
            "variant": args.variant,
        },
        "trainable_parameters": trainable,
        "model_state_gib": round(state_bytes / GIB, 3),
        "activation_mib_per_image_view": {k: round(v / 2**20, 2) for k, v in per_view.items()},
        "gflop_per_image_view_fwd_bwd": round(flops / 1e9, 2),
        "gib_per_process_before_workspace": projection,
        "measured_on": {"device": "cpu", "platform": platform.platform(), "torch": torch.__version__},
    }
    merge_into(args.out, "budget", report)
    print(f"{args.backbone} + {args.variant} modules at {args.image_size} px, {args.classes} classes:")
    print(f"  trainable parameters {trainable:,}; weights+grads+Adam {state_bytes / GIB:.2f} GiB")
    for name, value in per_view.items():
        print(f"  activations kept for backward, {name}: {value / 2**20:.1f} MiB per image-view")
    print(f"  forward+backward: {flops / 1e9:.1f} GFLOP per image-view")
    print(f"  per process at global batch {args.global_batch} (2 views), before workspace, GiB:")
    for nproc, row in projection.items():
        print(f"    {nproc} process(es): bf16 {row['bf16']:.1f}, fp32 {row['fp32']:.1f}")


if __name__ == "__main__":
    main()
