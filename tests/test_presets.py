"""Param presets (params/*.yaml): the documented `dvc exp run -S` line must say what the preset says.

A preset is applied with `-S key=value` flags, which DVC rejects for keys params.yaml lacks, so a
preset that drifts from params.yaml (or from its own command line) would fail only on a GPU
machine hours into a user's set-up.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "params").glob("*.yaml"))
FLAG = re.compile(r"-S\s+'?([\w.]+)=([^'\s]+)'?")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def header_flags(path: Path) -> dict[str, Any]:
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    return {key: yaml.safe_load(value) for key, value in FLAG.findall(header)}


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_preset_command_line_matches_its_mapping(preset: Path) -> None:
    flags = header_flags(preset)
    mapping = flatten(yaml.safe_load(preset.read_text()))
    assert flags, f"{preset.name}: no `dvc exp run -S` line in its header"
    assert flags == mapping


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_preset_keys_exist_in_params(preset: Path) -> None:
    params = flatten(yaml.safe_load((ROOT / "params.yaml").read_text()))
    missing = [key for key in flatten(yaml.safe_load(preset.read_text())) if key not in params]
    assert not missing, f"{preset.name}: keys not in params.yaml: {missing}"
