"""Split manifests for one protocol, by CAL's rules, on sorted lists.

Per class: draw a budget (real / known / novel) without replacement, hold out `test_fraction`
for test; then a `labelled_fraction` share of the *pooled* known-class training images is
labelled (one draw, not per class, as CAL does) and everything else is unlabelled. A labelled-only
validation split is carved out of the labelled images, per known class, for model selection: the
test split is never used to choose anything.

A label made of several folders (OWDFA-40's real class: Celeb-DF + FF++) draws its budget in equal
shares from each folder, as CAL draws 10,000 from each real folder. With `group_by_video` every
draw is made over groups (the source video / identity folder from the index) instead of images, so
all frames of a video land in one split (the labelled share is then drawn per class, so that no
known class is left without labelled videos): CAL's per-image split puts frames of one video in the
labelled, unlabelled and test sets at once (a near-duplicate leak).

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

from owdfa.core.config import Section, load_section, param
from owdfa.core.errors import ConfigError, DataError
from owdfa.core.io import atomic_directory
from owdfa.data.protocols import BUILT_IN_PROTOCOL_NAMES, Protocol, detect_benchmark, get_protocol

MANIFEST_FILE = "manifest.csv"
CLASSES_FILE = "classes.json"
SPLITS = ("labelled", "val", "unlabelled", "test")


def _custom_protocols(section: Section, key: str) -> tuple[Protocol, ...]:
    """Protocols for a user's own class folders: `name: [known labels]` (real, 0, is always known)."""
    mapping = section.section(key)
    protocols = []
    for name in sorted(mapping.keys()):
        known = mapping.raw(name)
        name_key = mapping.key(name)
        if isinstance(name, str) and name in BUILT_IN_PROTOCOL_NAMES:
            raise ConfigError(name_key, f"{name!r} is a built-in protocol name; choose another")
        if not isinstance(known, list) or not known or not all(isinstance(c, int) and c >= 0 for c in known):
            raise ConfigError(name_key, f"expected a non-empty list of known class labels (integers), got {known!r}")
        protocols.append(Protocol(str(name), tuple(sorted(set(known) | {0})), "custom (params)"))
    return tuple(protocols)


@dataclass(frozen=True)
class SplitConfig:
    """How each protocol's manifest is drawn (params section `split`, every key required)."""

    seed: int = param(min=0)
    real_budget: int = param(min=1, key="budgets.real")
    known_budget: int = param(min=1, key="budgets.known")
    novel_budget: int = param(min=1, key="budgets.novel")
    test_fraction: float = param(min=0.01, max=0.9)
    labelled_fraction: float = param(min=0.01, max=1.0)
    val_fraction: float = param(min=0.0, max=0.5)
    allow_short_classes: bool = param()
    group_by_video: bool = param(False)
    custom_protocols: tuple[Protocol, ...] = param((), read=_custom_protocols)


def split_config(section: Section) -> SplitConfig:
    return load_section(SplitConfig, section)


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
            (config.real_budget, "split.budgets.real")
            if label == 0
            else (config.known_budget, "split.budgets.known")
            if is_known
            else (config.novel_budget, "split.budgets.novel")
        )
        chosen = _draw_budget(members, budget, key, config, rng)
        n_test = max(1, int(round(config.test_fraction * len(chosen))))
        is_test = _pick(chosen, n_test, rng, config.group_by_video)
        split = np.where(is_test, "test", "train")
        parts.append(chosen.assign(split=split, known=is_known, target=target_of[label]))
    manifest = pd.concat(parts, ignore_index=True)

    train_known = manifest[(manifest["split"] == "train") & manifest["known"]]
    if config.group_by_video:  # per class: a pooled draw of a few big groups can miss a class entirely
        labelled = []
        for _, rows in train_known.groupby("target", sort=True):
            n_labelled = max(1, int(round(config.labelled_fraction * len(rows))))
            labelled.extend(rows.index[_pick(rows, n_labelled, rng, by_group=True)])
    else:
        n_labelled = int(round(config.labelled_fraction * len(train_known)))
        labelled = train_known.index[_pick(train_known, n_labelled, rng, by_group=False)]
    manifest.loc[manifest["split"] == "train", "split"] = "unlabelled"
    manifest.loc[labelled, "split"] = "labelled"
    if config.val_fraction > 0:
        for target in range(len(known)):
            rows = manifest[(manifest["split"] == "labelled") & (manifest["target"] == target)]
            n_units = rows["group"].nunique() if config.group_by_video else len(rows)
            if n_units < 2:
                continue
            n_val = max(1, min(int(round(config.val_fraction * len(rows))), len(rows) - 1))
            picked = _pick(rows, n_val, rng, config.group_by_video)
            if picked.all():  # a group bigger than the rest: keep one labelled group
                continue
            manifest.loc[rows.index[picked], "split"] = "val"
    for target in range(len(known)):
        if not ((manifest["split"] == "labelled") & (manifest["target"] == target)).any():
            raise ConfigError("split.labelled_fraction", f"known class {known[target]} gets no labelled image")
    columns = ["row", "path", "label", "class_name", "group", "target", "known", "split"]
    return manifest[columns].sort_values("path", kind="stable").reset_index(drop=True)


def _draw_budget(members: pd.DataFrame, budget: int, key: str, config: SplitConfig, rng) -> pd.DataFrame:
    """The class's sampled images: `budget` in equal shares from each of its folders, sorted by path."""
    folders = sorted(set(members["class_name"]))
    shares = [budget // len(folders) + (i < budget % len(folders)) for i in range(len(folders))]
    chosen = []
    for folder, share in zip(folders, shares, strict=True):
        pool = members[members["class_name"] == folder]
        if share > len(pool):
            if not config.allow_short_classes:
                what = f"its share {share} of the budget {budget}" if len(folders) > 1 else f"budget {budget}"
                raise ConfigError(key, f"{what} is larger than the {len(pool)} images of class {folder}")
            share = len(pool)
        if config.group_by_video:
            chosen.append(pool[_pick(pool, share, rng, by_group=True, exact=True)])
        else:
            chosen.append(pool.iloc[np.sort(rng.choice(len(pool), size=share, replace=False))])
    return pd.concat(chosen)


def _pick(rows: pd.DataFrame, count: int, rng, by_group: bool, exact: bool = False) -> np.ndarray:
    """A boolean mask choosing `count` of `rows` at random: single images, or whole groups.

    By group: groups are taken in a random order until `count` images are reached, so the count is
    met or slightly exceeded by the last group. `exact` (budget draws) instead cuts the last group
    short, which keeps the budget exact and still never splits a group across two sets.
    """
    if not by_group:
        mask = np.zeros(len(rows), dtype=bool)
        mask[rng.permutation(len(rows))[:count]] = True
        return mask
    groups = rows["group"].to_numpy()
    names = np.array(sorted(set(groups)), dtype=object)
    mask = np.zeros(len(rows), dtype=bool)
    taken = 0
    for name in names[rng.permutation(len(names))]:
        if taken >= count:
            break
        members = np.flatnonzero(groups == name)
        if exact:
            members = members[: count - taken]
        mask[members] = True
        taken += len(members)
    return mask


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
    custom = {p.name: p for p in config.custom_protocols}
    if protocol_name in custom:
        protocol = custom[protocol_name]
    else:
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
