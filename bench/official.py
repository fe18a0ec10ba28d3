"""CPU cost of using the CAL authors' released models: import one, attribute one image, evaluate a split.

A checkpoint with the official layout and size (ResNet-50, unknown-K P1: 190 prototype rows, random
weights, saved as Lightning saves one; `tests/helpers/official_ckpt.py`) stands in for a released
file, which this machine cannot download. Measured, each as a whole `owdfa` process in exact mode
(2 threads): `owdfa import` of the local file; `owdfa attribute` of one real photo (dlib crop at
256 px, as the official pipeline crops); and, in process, the forward passes the evaluate stage makes
(`owdfa.models.inference.predict`, batches of 64 at 256 px) as images per second. From that rate, estimated:
the forward time of OWDFA-40's P1 test split (17,800 images) and of the evaluate stage's whole
forward work (the test split plus the 71,200 training images GCD's K estimator clusters). The best
of `--repeats` runs each. Merges {"official": ...} into reports/bench.json.
Usage: python bench/official.py            # about two minutes on 2 cores
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_name, merge_into

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the official-layout checkpoint builder the tests use

P1_TEST_IMAGES = 17_800  # shared/spec/data.md: CAL's P1 test reads per epoch
P1_TRAIN_IMAGES = 71_200  # the sampler's draws per epoch ~ the training split GCD's estimator embeds
BATCH = 64
SIZE = 256


def timed_process(args: list[str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "owdfa.cli", *args], check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return round(best, 2)


def forward_rate(model_dir: Path, batches: int, repeats: int) -> float:
    """Images per second of `predict` on uint8 256 px faces (eval mode, exact numerics, 2 threads)."""
    import numpy as np
    import torch

    from owdfa.core.numerics import configure_torch
    from owdfa.modeldir.io import load_model
    from owdfa.models.inference import predict

    configure_torch()
    model, _ = load_model(model_dir)
    images = np.random.default_rng(0).integers(0, 256, (BATCH * batches, SIZE, SIZE, 3), dtype=np.uint8)
    rows = np.arange(len(images))
    predict(model, images, rows[:BATCH], BATCH, torch.device("cpu"), "fp32")  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        predict(model, images, rows, BATCH, torch.device("cpu"), "fp32")
        best = max(best, len(rows) / (time.perf_counter() - start))
    return round(best, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=3, help="batches of 64 per forward-rate round")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench.json")
    args = parser.parse_args()
    from owdfa.core.numerics import Numerics, pin

    pin(Numerics())  # before the checkpoint builder loads torch: the forward rate is exact mode's
    from helpers.official_ckpt import lightning_checkpoint, official_state, save_checkpoint
    from PIL import Image
    from skimage import data

    with tempfile.TemporaryDirectory(prefix="owdfa-bench-official-") as tmp:
        base = Path(tmp)
        checkpoint = save_checkpoint(
            base / "wok_protocol1" / "wok_protocol1_seed2025.ckpt",
            lightning_checkpoint(official_state(190, backbone="resnet50")),
        )
        photo = base / "astronaut.jpg"
        Image.fromarray(data.astronaut()).save(photo, quality=95)
        model = base / "model"
        import_s = timed_process(["import", str(checkpoint), "--out", str(model), "--force"], args.repeats)
        attribute_s = timed_process(
            ["attribute", str(photo), "--model", str(model), "--format", "json", "--no-progress"], args.repeats
        )
        rate = forward_rate(model, args.batches, args.repeats)
        size_mb = round(checkpoint.stat().st_size / 2**20, 1)
    report = {
        "machine": {"cpu": cpu_name(), "threads": 2, "mode": "exact"},
        "checkpoint": {"backbone": "resnet50.ram_in1k", "rows": 190, "image_size": SIZE, "megabytes": size_mb},
        "measured": {
            "import_s": import_s,
            "attribute_one_image_s": attribute_s,
            "forward_images_per_s": rate,
        },
        "estimated": {
            "p1_test_split_forward_min": round(P1_TEST_IMAGES / rate / 60, 1),
            "p1_evaluate_forward_min": round((P1_TEST_IMAGES + P1_TRAIN_IMAGES) / rate / 60, 1),
        },
    }
    print(report)
    merge_into(args.out, "official", report)


if __name__ == "__main__":
    main()
