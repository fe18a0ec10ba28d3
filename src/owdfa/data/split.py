"""Split manifests for one protocol, by CAL's rules, on sorted lists.

Per class: draw a budget (real / known / novel) without replacement, hold out `test_fraction`
for test; then a `labelled_fraction` share of the *pooled* known-class training images is
labelled (one draw, not per class, as CAL does) and everything else is unlabelled. A labelled-only
validation split is carved out of the labelled images, per known class, for model selection: the
test split is never used to choose anything.

Targets are remapped so known classes are 0..K_L-1 (in label order) and novel ones follow; a
prediction id < K_L therefore means "known". Everything is drawn from one seeded generator over
sorted lists, so the manifest is identical on every machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from owdfa.config import Section
from owdfa.data.protocols import Protocol, detect_benchmark, get_protocol
from owdfa.errors import ConfigError, DataError
from owdfa.io import atomic_directory

MANIFEST_FILE = "manifest.csv"
CLASSES_FILE = "classes.json"
SPLITS = ("labelled", "val", "unlabelled", "test")


@dataclass(frozen=True)
class SplitConfig:
    seed: int
    real_budget: int
    known_budget: int
    novel_budget: int
    test_fraction: float
    labelled_fraction: float
    val_fraction: float
    allow_short_classes: bool


def split_config(section: Section) -> SplitConfig:
    section.check_unknown(
        ("seed", "budgets", "test_fraction", "labelled_fraction", "val_fraction", "allow_short_classes")
    )
    budgets = section.section("budgets")
    budgets.check_unknown(("real", "known", "novel"))
    return SplitConfig(
        seed=section.int("seed", min=0),
        real_budget=budgets.int("real", min=1),
        known_budget=budgets.int("known", min=1),
        novel_budget=budgets.int("novel", min=1),
        test_fraction=section.float("test_fraction", min=0.01, max=0.9),
        labelled_fraction=section.float("labelled_fraction", min=0.01, max=1.0),
        val_fraction=section.float("val_fraction", min=0.0, max=0.5),
        allow_short_classes=section.bool("allow_short_classes"),
    )


def make_split(faces: pd.DataFrame, protocol: Protocol, config: SplitConfig) -> pd.DataFrame:
    """Return the manifest: one row per sampled image with its target, split and known flag."""
    labels = sorted(set(faces["label"]))
    missing = [c for c in protocol.known if c not in labels]
    if missing:
        raise ConfigError("split", f"protocol {protocol.name!r} names known class {missing[0]} that the data lacks")
    known = [c for c in labels if protocol.is_known(c)]
    novel = [c for c in labels if not protocol.is_known(c)]
    if not novel:
        raise ConfigError("split", f"protocol {protocol.name!r} leaves no novel class in this data")
    target_of = {c: t for t, c in enumerate(known + novel)}
    rng = np.random.default_rng(config.seed)
    faces = faces.sort_values("path", kind="stable").reset_index(drop=True)

    parts: list[pd.DataFrame] = []
    for label in labels:
        members = faces[faces["label"] == label]
        is_known = label in known
        budget, key = (
            (config.real_budget, "split.budgets.real") if label == 0
            else (config.known_budget, "split.budgets.known") if is_known
            else (config.novel_budget, "split.budgets.novel")
        )
        if budget > len(members):
            if not config.allow_short_classes:
                name = members["class_name"].iloc[0]
                raise ConfigError(key, f"budget {budget} is larger than the {len(members)} images of class {name}")
            budget = len(members)
        chosen = members.iloc[np.sort(rng.choice(len(members), size=budget, replace=False))]
        order = rng.permutation(budget)
        n_test = max(1, int(round(config.test_fraction * budget)))
        split = np.where(np.isin(np.arange(budget), order[:n_test]), "test", "train")
        parts.append(chosen.assign(split=split, known=is_known, target=target_of[label]))
    manifest = pd.concat(parts, ignore_index=True)

    train_known = np.flatnonzero((manifest["split"] == "train") & manifest["known"])
    n_labelled = int(round(config.labelled_fraction * len(train_known)))
    labelled = np.sort(rng.permutation(train_known)[:n_labelled])
    manifest.loc[manifest["split"] == "train", "split"] = "unlabelled"
    manifest.loc[labelled, "split"] = "labelled"
    if config.val_fraction > 0:
        for target in range(len(known)):
            rows = np.flatnonzero((manifest["split"] == "labelled") & (manifest["target"] == target))
            n_val = int(round(config.val_fraction * len(rows)))
            if len(rows) >= 2:
                n_val = max(1, min(n_val, len(rows) - 1))
                manifest.loc[np.sort(rng.permutation(rows)[:n_val]), "split"] = "val"
    for target in range(len(known)):
        if not ((manifest["split"] == "labelled") & (manifest["target"] == target)).any():
            raise ConfigError("split.labelled_fraction", f"known class {known[target]} gets no labelled image")
    columns = ["row", "path", "label", "class_name", "group", "target", "known", "split"]
    return manifest[columns].sort_values("path", kind="stable").reset_index(drop=True)


def class_table(faces: pd.DataFrame, protocol: Protocol, benchmark: str) -> dict:
    labels = sorted(set(faces["label"]))
    known = [c for c in labels if protocol.is_known(c)]
    novel = [c for c in labels if not protocol.is_known(c)]
    names = faces.drop_duplicates("label").set_index("label")["class_name"].to_dict()
    classes = [
        {"target": t, "label": c, "name": _method_name(names[c]), "folder": names[c], "known": c in known}
        for t, c in enumerate(known + novel)
    ]
    return {
        "benchmark": benchmark,
        "protocol": protocol.name,
        "num_known": len(known),
        "num_classes": len(classes),
        "classes": classes,
    }


def _method_name(folder: str) -> str:
    """'3_Swap_Shifter' -> 'Swap_Shifter' (a readable class name without the numeric prefix)."""
    return folder.split("_", 1)[1] if "_" in folder else folder


def write_split(section: Section, faces: pd.DataFrame, protocol_name: str, out: Path) -> dict:
    config = split_config(section)
    benchmark = detect_benchmark(set(faces["label"]))
    protocol = get_protocol(benchmark, protocol_name, key="run.protocols")
    manifest = make_split(faces, protocol, config)
    table = class_table(faces, protocol, benchmark)
    counts = {s: int((manifest["split"] == s).sum()) for s in SPLITS}
    table["counts"] = counts
    with atomic_directory(out) as tmp:
        manifest.to_csv(tmp / MANIFEST_FILE, index=False, lineterminator="\n")
        (tmp / CLASSES_FILE).write_text(json.dumps(table, indent=2) + "\n")
    return table


def read_split(split_dir: Path) -> tuple[pd.DataFrame, dict]:
    manifest_path, classes_path = split_dir / MANIFEST_FILE, split_dir / CLASSES_FILE
    if not manifest_path.is_file() or not classes_path.is_file():
        raise DataError(f"{split_dir}: split manifest not found (run the split stage first)")
    return pd.read_csv(manifest_path, keep_default_na=False), json.loads(classes_path.read_text())
