"""A tiny training run: a synthetic split, short-run params and sections, the train stage's command, in-memory data."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import numpy as np
import yaml

from helpers.paths import ROOT
from owdfa.core.config import Section
from owdfa.methods import resolve_variant
from owdfa.methods.registry import write_variants
from owdfa.train.config import TrainConfig, TrainData


def build_tiny_split(base: Path) -> tuple[Path, Path]:
    """A tiny synthetic benchmark, face cache and p1 split under `base`; returns (faces, split)."""
    from owdfa.data.align import align
    from owdfa.data.face_cache import read_faces
    from owdfa.data.index import build_index, write_index
    from owdfa.data.split import write_split
    from owdfa.data.synthetic import SyntheticConfig, write_benchmark

    write_benchmark(SyntheticConfig(image_size=32, identities=8, real_images=24, images_per_method=8), base / "raw", 1)
    rows, _ = build_index(base / "raw")
    write_index(rows, base / "index.csv")
    align_section = Section({"mode": "resize", "image_size": 32, "workers": 1}, "align")
    align(align_section, base / "raw", base / "index.csv", base / "faces")
    faces, _ = read_faces(base / "faces")
    split = {
        "seed": 1,
        "budgets": {"real": 24, "known": 8, "novel": 8},
        "test_fraction": 0.25,
        "labelled_fraction": 0.75,
        "val_fraction": 0.2,
        "allow_short_classes": False,
        "group_by_video": False,
        "custom_protocols": {},
    }
    write_split(Section(split, "split"), faces, "p1", base / "split")
    return base / "faces", base / "split"


def write_tiny_params(path: Path, **train: object) -> Path:
    """params.yaml with a seconds-long train section (CPU, ACR from epoch 0)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    section = copy.deepcopy(params["train"])
    section.update(epochs=5, batch_size=8, lr_step=2, device="cpu")
    section.update(train)
    for method in params["methods"].values():
        if "acr_start_epoch" in method:
            method["acr_start_epoch"] = 0
    params["train"] = section
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def variant_file(params: Path, method: str, folder: Path) -> Path:
    """What the `variants` stage gives the train stage: `params`' variants resolved, `method`'s file."""
    write_variants(Section.from_file("methods", params), folder)
    return folder / f"{method}.json"


def stage_command(params: Path, faces: Path, split: Path, out: Path, method: str = "cal_dpp") -> list[str]:
    """The train stage's command line (run from ROOT) writing model/, live/ and checkpoints/ under `out`."""
    return [
        sys.executable,
        "stages/train.py",
        "--variant",
        str(variant_file(params, method, out / "variants")),
        "--seed",
        "0",
        "--split",
        str(split),
        "--faces",
        str(faces),
        "--out",
        str(out / "model"),
        "--live",
        str(out / "live"),
        "--checkpoints",
        str(out / "checkpoints"),
        "--params",
        str(params),
    ]


def stage_env() -> dict[str, str]:
    """This environment for a single-process stage: no torchrun variables, one thread, no analytics."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "LOCAL_RANK", "RANK")}
    env.update(OMP_NUM_THREADS="1", DVC_NO_ANALYTICS="1")
    return env


def train_sections(variant: str) -> tuple[Section, Section]:
    """The train section (a short run) and the variant, resolved (ACR from epoch 0)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    section = copy.deepcopy(params["train"])
    section.update(epochs=3, batch_size=8, lr_step=2, device="cpu")
    method = resolve_variant(Section(params["methods"], "methods"), variant).as_dict()
    if "acr_start_epoch" in method:
        method["acr_start_epoch"] = 0  # exercise ACR's pseudo-labels within the short run
    return Section(section, "train"), Section(method, f"methods.{variant}")


def tiny_data(size: int = 40) -> TrainData:
    """`size` random 32 px images in 5 classes (the first 3 known; every other image of those labelled)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(size, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(size) % 5
    rows = np.arange(size)
    lab = rows[labels < 3][::2]
    return TrainData(
        images=images,
        labelled_rows=lab,
        labelled_targets=labels[lab],
        unlabelled_rows=np.setdiff1d(rows, lab),
        val_rows=rows[:8],
        val_targets=labels[:8],
        num_known=3,
        num_classes=5,
    )


CONFIG = TrainConfig(backbone="test_resnet", epochs=4, batch_size=8, lr_step=2, eval_batch_size=8, device="cpu")


def shuffled_split(base: Path, name: str, splits: tuple[str, ...], seed: int = 0) -> Path:
    """A copy of base/split as base/<name> with the labels of the rows in `splits` permuted among themselves."""
    import pandas as pd

    from owdfa.data.split import CLASSES_FILE, MANIFEST_FILE

    out = base / name
    out.mkdir()
    manifest = pd.read_csv(base / "split" / MANIFEST_FILE, keep_default_na=False)
    chosen = manifest["split"].isin(list(splits)).to_numpy()
    rng = np.random.default_rng(seed)
    for column in ("target", "label", "class_name", "known"):
        values = manifest.loc[chosen, column].to_numpy()
        manifest.loc[chosen, column] = values[rng.permutation(len(values))]
    assert not manifest.equals(pd.read_csv(base / "split" / MANIFEST_FILE, keep_default_na=False))
    manifest.to_csv(out / MANIFEST_FILE, index=False, lineterminator="\n")
    (out / CLASSES_FILE).write_text((base / "split" / CLASSES_FILE).read_text())
    return out


def kill_once_checkpointed(
    proc, folder: Path, pattern: str = "epoch-000[2-4].safetensors", timeout_s: float = 120
) -> None:
    """SIGKILL `proc` as soon as a checkpoint matching `pattern` appears in `folder` (mid-run, not at its end)."""
    import signal
    import time

    deadline = time.monotonic() + timeout_s
    while not any(folder.glob(pattern)):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
