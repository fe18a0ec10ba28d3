"""`owdfa import`: a released CAL checkpoint (here one with the official ResNet-50 layout and random
weights) becomes a model directory that `owdfa info` and `owdfa attribute` use as they use ours; a
hostile one runs nothing; and no code path of the package unpickles with the default unpickler."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.official_ckpt import Hostile, lightning_checkpoint, official_state, save_checkpoint
from helpers.paths import ROOT as REPO_ROOT
from PIL import Image
from skimage import data

from owdfa.official.checkpoint import OFFICIAL_RUNS

ROOT = REPO_ROOT


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "owdfa.cli", *map(str, args)], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def resnet50_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Unknown-K P1 (10 x 19 known = 190 prototype rows) with the released file name, official layout."""
    folder = tmp_path_factory.mktemp("released") / "wok_protocol1"
    state = official_state(190, seed=3, backbone="resnet50")
    return save_checkpoint(folder / "wok_protocol1_seed2026.ckpt", lightning_checkpoint(state))


@pytest.mark.slow
def test_list_names_every_released_file() -> None:
    proc = run_cli("import", "--list")
    assert proc.returncode == 0, proc.stderr
    names = [line.split("\t")[0] for line in proc.stdout.splitlines()]
    assert names == [run.filename for run in OFFICIAL_RUNS] and len(names) == 18
    assert "protocol3/protocol_seed2025.ckpt" in names  # as released (sic)


@pytest.mark.slow
def test_imported_checkpoint_is_a_model_directory_for_info_and_attribute(tmp_path, resnet50_checkpoint) -> None:
    out = tmp_path / "cal-p1"
    proc = run_cli("import", resnet50_checkpoint, "--out", out, "--num-active", "30")
    assert proc.returncode == 0, proc.stderr
    assert "CAL p1, unknown K, 30 active prototypes, seed 2026" in proc.stderr
    card = json.loads((out / "card.json").read_text())
    assert card["backbone"] == "resnet50.ram_in1k" and card["num_prototypes"] == 190 and card["num_active"] == 30
    assert card["preprocessing"]["mode"] == "crop" and card["image_size"] == 256
    assert card["source"]["filename"] == "wok_protocol1_seed2026.ckpt" and len(card["source"]["sha256"]) == 64
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "model.safetensors"]  # nothing pickled

    info = run_cli("info", out)
    assert info.returncode == 0, info.stderr
    assert "resnet50.ram_in1k" in info.stdout

    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(data.astronaut()).save(photo, quality=95)
    attributed = run_cli("attribute", photo, "--model", out, "--format", "json", "--no-progress")
    assert attributed.returncode == 0, attributed.stderr
    result = json.loads(attributed.stdout)
    assert result["align"] == "crop"  # dlib crop, as the official pipeline crops
    (row,) = result["results"]
    assert row["face_found"] is True and 0 <= row["cluster"] < 30 and "error" not in row


@pytest.mark.slow
def test_a_hostile_checkpoint_runs_nothing_and_is_one_line(tmp_path) -> None:
    target = tmp_path / "pwned"
    checkpoint = lightning_checkpoint(official_state(41))
    checkpoint["callbacks"]["Hostile"] = Hostile(os.system, f"touch {target}")
    path = save_checkpoint(tmp_path / "protocol1_seed2025.ckpt", checkpoint)
    proc = run_cli("import", path, "--out", tmp_path / "model")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}: refused to unpickle posix.system (only tensors and plain data are read)"
    ]
    assert not target.exists() and not (tmp_path / "model").exists()


@pytest.mark.slow
def test_import_never_replaces_what_is_not_its_own(tmp_path, resnet50_checkpoint) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    proc = run_cli("import", resnet50_checkpoint, "--out", notes)
    assert proc.returncode == 2 and "is not a model directory" in proc.stderr
    assert (notes / "todo.txt").read_text() == "keep me"

    out = tmp_path / "model"
    assert run_cli("import", resnet50_checkpoint, "--out", out).returncode == 0
    again = run_cli("import", resnet50_checkpoint, "--out", out)
    assert again.returncode == 2 and "--force replaces it" in again.stderr
    assert run_cli("import", resnet50_checkpoint, "--out", out, "--force").returncode == 0
    missing = run_cli("import", "protocol9/nothing.ckpt", "--out", tmp_path / "x")
    assert missing.returncode == 2 and "owdfa import --list" in missing.stderr


# Ways to unpickle with the default (code-running) unpickler; torch.load is allowed only as weights_only=True.
DEFAULT_UNPICKLING = re.compile(
    r"\bpickle\.loads?\(|\bpickle\.Unpickler\(|\bcPickle\b|\bdill\b|\bjoblib\.load\(|\ballow_pickle\s*=\s*True"
)


def test_no_code_path_unpickles_with_the_default_unpickler() -> None:
    found = []
    for path in sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "stages").glob("*.py")):
        text = path.read_text()
        for number, line in enumerate(text.splitlines(), 1):
            if DEFAULT_UNPICKLING.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
        for call in re.finditer(r"torch\.load\(", text):
            args = text[call.end() : call.end() + 400].split(")\n")[0]
            if "weights_only=True" not in args:
                found.append(f"{path.relative_to(ROOT)}: torch.load without weights_only=True")
    assert found == []
