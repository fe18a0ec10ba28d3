"""`dvc repro` on a user's own OWDFA-40-style folder, as docs/owdfa40.md ("A copy you already have") says.

Real components end to end: the folder source, the index's video groups, dlib's `crop` mode on a
real face photo (scikit-image's astronaut) across worker processes, a custom protocol, the
leakage-free `group_by_video` split, then the usual pretrain/train/evaluate/report on a tiny
schedule. The folder holds a blank image (no face) and a corrupt one (unreadable), whose fates
must show in reports/align.json, and must be left exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.dvc_repo import copy_pipeline
from PIL import Image, ImageEnhance, ImageFilter

pytestmark = pytest.mark.slow

skimage_data = pytest.importorskip("skimage.data")

# class folder -> how its "forgery" alters the photo (a crude, visible fingerprint per class)
CLASSES = {
    "0_Real_FF++": None,
    "0_Real_CelebDF": None,
    "1_Swap_Blurry": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
    "2_Edit_Warm": lambda im: Image.merge("RGB", [b.point(f) for b, f in zip(im.split(), WARM, strict=True)]),
    "3_Generate_Flat": lambda im: ImageEnhance.Contrast(im).enhance(0.4),
}
WARM = (lambda v: min(255, v + 40), lambda v: v, lambda v: max(0, v - 40))


def make_frame(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A frame of a 'video' of the astronaut: jittered framing and brightness, 384 px."""
    dx, dy = rng.integers(-30, 31, size=2)
    frame = photo.crop((40 + dx, 20 + dy, 472 + dx, 452 + dy)).resize((384, 384))
    return ImageEnhance.Brightness(frame).enhance(float(rng.uniform(0.8, 1.2)))


def build_folder(root: Path) -> None:
    photo = Image.fromarray(skimage_data.astronaut())
    rng = np.random.default_rng(0)
    for folder, alter in CLASSES.items():
        for i in range(12):
            frame = make_frame(photo, rng)
            frame = alter(frame) if alter else frame
            if folder.startswith("3_"):  # generated images: flat, one per "seed"
                path = root / folder / f"{i:05d}.png"
            else:  # video frames: three videos per class
                path = root / folder / f"video{i % 3}" / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.save(path)
    Image.new("RGB", (384, 384), (90, 90, 90)).save(root / "1_Swap_Blurry" / "video0" / "blank.png")
    (root / "2_Edit_Warm" / "video1" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "2_Edit_Warm" / ".DS_Store").write_bytes(b"litter")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._x.png").write_bytes(b"litter")


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


FOLDER_PARAMS = {
    "data.source": "folder",
    "align.mode": "crop",
    "align.image_size": 32,
    "align.workers": 2,
    "split.budgets.real": 20,
    "split.budgets.known": 10,
    "split.budgets.novel": 10,
    "split.test_fraction": 0.3,
    "split.labelled_fraction": 0.75,
    "split.val_fraction": 0.0,
    "split.group_by_video": True,
    "split.custom_protocols": {"mine": [1]},
    "pretrain.epochs": 1,
    "pretrain.batch_size": 8,
    "train.epochs": 1,
    "train.batch_size": 8,
    "run.protocols": ["mine"],
    "run.methods": ["baseline"],
    "run.seeds": [0],
}


def test_repro_on_own_class_folders(tmp_path, dvc_env, run_dvc, run_git):
    source = tmp_path / "my-dataset"
    build_folder(source)
    before = tree_digest(source)

    repo = tmp_path / "repo"
    env = copy_pipeline(repo, {**FOLDER_PARAMS, "data.folder.path": str(source)}, dvc_env)
    run_git(repo, "init", "-q", env=env)
    run_dvc(repo, "init", "-q", env=env)
    run_git(repo, "add", "-A", env=env)
    run_git(repo, "commit", "-q", "-m", "own folders", env=env)

    out = run_dvc(repo, "repro", env=env).stdout
    assert "error" not in out.lower().replace("_error", ""), out[-3000:]

    # The source folder is untouched; litter is not copied.
    assert tree_digest(source) == before
    assert not list((repo / "data" / "raw").rglob(".DS_Store"))
    # Alignment: the blank frame has no face, the corrupt file is skipped, every other frame has one.
    align = json.loads((repo / "reports" / "align.json").read_text())
    assert align["mode"] == "crop" and align["skipped"] == 1
    assert align["skipped_per_class"] == {"2_Edit_Warm": 1}
    assert align["no_face"] == 1
    assert align["no_face_rate_per_class"]["1_Swap_Blurry"] == pytest.approx(1 / 13, abs=1e-4)
    assert align["no_face_rate_per_class"]["0_Real_FF++"] == 0.0
    faces = pd.read_csv(repo / "data" / "faces" / "faces.csv", keep_default_na=False)
    assert set(faces["face_status"]) == {"found", "no_face"}
    # The split: both real folders are one class drawn in equal shares; no video crosses splits.
    manifest = pd.read_csv(repo / "data" / "splits" / "mine" / "manifest.csv", keep_default_na=False)
    real = manifest[manifest["label"] == 0]
    assert real["class_name"].value_counts().to_dict() == {"0_Real_CelebDF": 10, "0_Real_FF++": 10}
    assert (manifest.groupby("group")["split"].nunique() == 1).all()
    assert manifest.loc[manifest["label"] == 3, "group"].nunique() == 10  # flat files: one group each
    classes = json.loads((repo / "data" / "splits" / "mine" / "classes.json").read_text())
    assert classes["benchmark"] == "custom" and classes["num_known"] == 2 and classes["num_classes"] == 4
    # The report has the custom protocol's row.
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert 0.0 <= metrics["mine"]["baseline"]["all_acc"] <= 1.0
    assert "mine" in (repo / "reports" / "results.md").read_text()
