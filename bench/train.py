"""Training throughput: how close the full CAL step comes to the bare backbone, and input-pipeline headroom.

(a) step efficiency = images/s of the training loop's own step (`owdfa.train.loop.TrainStep` with the
    params' CAL variant: sampler, uint8 batch, both views, FFE, loss, backward, Adam step) / images/s
    of the bare timm backbone's forward+backward on the same two views (precomputed, per-view
    passes, same autocast and memory format). Target >= 0.90. Also shown: the whole attribution
    network's forward+backward (FFE, BNNeck, prototypes) to split the gap into "the method's
    modules" and "loss, optimizer, input and loop".
(b) input headroom = images/s of the input pipeline alone (sampler draws, batch assembly from the
    uint8 cache, weak and strong views on the device) / the step's images/s. Target >= 3.

An image is one drawn row (both its views). Each rate is the best of 3 timed rounds (after two
warm-up calls each) in which the four set-ups take turns, the least disturbed by other work on
the machine. Merges {"train": ...} into
reports/bench.json.
Usage: python bench/train.py                      # CPU-sized: test_resnet, 64 px (about a minute)
       python bench/train.py --backbone resnet50 --image-size 256 --batch-size 128 --steps 20   # a GPU
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from common import cpu_name, merge_into

from owdfa.core.config import Section
from owdfa.core.devices import autocast, pick_device
from owdfa.core.numerics import configure_torch
from owdfa.methods import Method, build_method
from owdfa.models import AttributionModel
from owdfa.train.config import TrainConfig, TrainData
from owdfa.train.loop import HostBatches, TrainStep, seed_everything
from owdfa.train.samplers import build_sampler
from owdfa.train.views import strong_view, weak_view

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 3


def synthetic_data(images: int, size: int, num_known: int = 7, num_classes: int = 15) -> TrainData:
    """Random uint8 faces: throughput does not depend on content."""
    rng = np.random.default_rng(0)
    cache = rng.integers(0, 256, size=(images, size, size, 3), dtype=np.uint8)
    rows = np.arange(images)
    labelled = rows[: images // 2]
    return TrainData(
        images=cache,
        labelled_rows=labelled,
        labelled_targets=labelled % num_known,
        unlabelled_rows=rows[images // 2 :],
        val_rows=np.zeros(0, dtype=np.int64),
        val_targets=np.zeros(0, dtype=np.int64),
        num_known=num_known,
        num_classes=num_classes,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_rates(
    calls: dict[str, Callable[[], object]], device: torch.device, steps: dict[str, int], batch_size: int
) -> dict[str, float]:
    """Best images/s of each call over REPEATS rounds, the calls taking turns within each round.

    Taking turns keeps slow drifts of the machine (other load, clock, allocator) from favouring
    whichever set-up happened to be timed first; two warm-up calls each come before any timing.
    """
    for call in calls.values():
        for _ in range(2):
            call()
    sync(device)
    best = dict.fromkeys(calls, 0.0)
    for _ in range(REPEATS):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(steps[name]):
                call()
            sync(device)
            best[name] = max(best[name], steps[name] * batch_size / (time.perf_counter() - start))
    return best


def memory_format(device: torch.device) -> torch.memory_format:
    return torch.channels_last  # as the training loop, on every device


def training_step(
    config: TrainConfig, data: TrainData, device: torch.device, method: Method, compile_backend: str = "inductor"
) -> Callable[[], object]:
    """The loop's step, set up as `run_training` sets it up (one process).

    `compile_backend` (with `config.compile`): torch.compile's backend; "eager" traces without
    generating code (bench/gpu_check.py --dry).
    """
    model = AttributionModel(config.backbone, data.num_classes, dropout=config.dropout, **method.model_options())
    model.to(device).to(memory_format=memory_format(device))
    params = [p for p in model.parameters() if p.requires_grad]
    step = TrainStep(
        forward=torch.compile(model, backend=compile_backend) if config.compile else model,
        method=method,
        optimizer=torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay),
        params=params,
        sampler=build_sampler(data, config, method),
        host=HostBatches(data.images, device),
        gen=torch.Generator().manual_seed(0),
        config=config,
        num_known=data.num_known,
        device=device,
    )
    model.train()
    epoch = getattr(method, "acr_start_epoch", 0)  # an epoch with every loss term on (CAL's ACR)
    method.on_epoch_start(epoch)
    return lambda: step(epoch)


def forward_backward(
    config: TrainConfig, data: TrainData, device: torch.device, options: dict[str, bool] | None
) -> Callable[[], object]:
    """Forward + backward of both views (precomputed); no loss terms, no optimizer.

    `options=None`: the bare timm backbone; else the attribution network with the method's options.
    """
    import timm

    if options is None:
        model = timm.create_model(config.backbone, pretrained=False, num_classes=0)
    else:
        model = AttributionModel(config.backbone, data.num_classes, dropout=config.dropout, **options)

    def out(images: torch.Tensor) -> torch.Tensor:
        result = model(images)
        return result if options is None else result["logits"]

    model.to(device).to(memory_format=memory_format(device)).train()
    gen = torch.Generator().manual_seed(0)
    x = HostBatches(data.images, device)(np.arange(config.batch_size))
    weak = weak_view(x, config.augment, gen).contiguous(memory_format=memory_format(device))
    strong = strong_view(x, config.augment, gen).contiguous(memory_format=memory_format(device))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast(device, config.precision):
            loss = out(weak).float().mean() + out(strong).float().mean()
        loss.backward()

    return step


def input_pipeline(config: TrainConfig, data: TrainData, device: torch.device, method: Method) -> Callable[[], object]:
    """Sampling, batch assembly and both views on the device, as the step does them."""
    sampler = build_sampler(data, config, method)
    host = HostBatches(data.images, device)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        rows, targets = sampler.draw(gen)
        targets.to(device)
        x = host(rows)
        weak_view(x, config.augment, gen)
        strong_view(x, config.augment, gen)

    return step


def device_info(device: torch.device, config: TrainConfig) -> dict[str, object]:
    info: dict[str, object] = {
        "device": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "precision": config.precision if device.type == "cuda" else "fp32",
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per repeat (best of 3 repeats)")
    parser.add_argument("--variant", default="cal", help="methods variant in params.yaml")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench.json")
    parser.add_argument("--key", default="train", help="key in bench.json, e.g. train_resnet50")
    args = parser.parse_args()

    section = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    config = TrainConfig(
        backbone=args.backbone,
        dropout=section["dropout"],
        batch_size=args.batch_size,
        lr=section["lr"],
        weight_decay=section["weight_decay"],
        labelled_share=section["labelled_share"],
        device=args.device,
        precision=args.precision,
        compile=args.compile,
    )
    seed_everything(0)
    configure_torch()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    data = synthetic_data(max(1024, 2 * args.batch_size), args.image_size)
    method = build_method(args.variant, Section.from_file("methods", ROOT / "params.yaml"))

    calls = {
        "step": training_step(config, data, device, method),
        "bare": forward_backward(config, data, device, None),
        "network": forward_backward(config, data, device, method.model_options()),
        "pipeline": input_pipeline(config, data, device, method),
    }
    steps = {name: 4 * args.steps if name == "pipeline" else args.steps for name in calls}
    rates = interleaved_rates(calls, device, steps, config.batch_size)
    step, bare, network, pipeline = (rates[name] for name in ("step", "bare", "network", "pipeline"))
    report = {
        "config": {
            "backbone": args.backbone,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "variant": args.variant,
            "compile": args.compile,
            "timed_steps": args.steps,
            "best_of_repeats": REPEATS,
        },
        "machine": device_info(device, config),
        "step_images_per_s": round(step, 1),
        "backbone_images_per_s": round(bare, 1),
        "network_images_per_s": round(network, 1),
        "input_images_per_s": round(pipeline, 1),
        "step_efficiency": round(step / bare, 3),
        "network_over_backbone": round(network / bare, 3),
        "step_over_network": round(step / network, 3),
        "input_headroom": round(pipeline / step, 2),
        "targets": {"step_efficiency": 0.9, "input_headroom": 3.0},
    }
    merge_into(args.out, args.key, report)
    rows = [
        ("full CAL training step", f"{step:9.1f} img/s", ""),
        ("bare backbone fwd+bwd, 2 views", f"{bare:9.1f} img/s", ""),
        ("(a) step efficiency", f"{step / bare:9.3f}", "target >= 0.90"),
        ("  network fwd+bwd (FFE, neck, head)", f"{network:9.1f} img/s", ""),
        ("  network / backbone", f"{network / bare:9.3f}", "cost of the method's modules"),
        ("  step / network", f"{step / network:9.3f}", "loss, optimizer, input, loop"),
        ("input pipeline", f"{pipeline:9.1f} img/s", ""),
        ("(b) input headroom", f"{pipeline / step:9.2f}", "target >= 3"),
    ]
    info = report["machine"]
    where = info.get("gpu", f"{info['cpu']}, {info['threads']} threads")
    print(f"{args.backbone} at {args.image_size} px, batch {args.batch_size}, {where}, {info['precision']}")
    for name, value, target in rows:
        print(f"  {name:<36}{value:>16}   {target}")


if __name__ == "__main__":
    main()
