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
from helpers.paths import ROOT as REPO_ROOT

ROOT = REPO_ROOT
PRESETS = sorted(p for p in (ROOT / "params").glob("*.yaml") if p.name != "grids.yaml")  # grids: owdfa grid
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
    """The -S flags of the header's `dvc exp run` command (its line and the continued lines after it)."""
    command: list[str] = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if command or "dvc exp run" in line:
            command.append(line)
            if not line.rstrip().endswith("\\"):
                break
    return {key: yaml.safe_load(value) for key, value in FLAG.findall("\n".join(command))}


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


def test_cal_preset_is_the_official_arithmetic_and_weights() -> None:
    # timm 0.4.12's `resnet50` weights are timm >= 1.0's `resnet50.ram_in1k`; the official code runs fp32.
    flags = header_flags(ROOT / "params" / "owdfa40-cal.yaml")
    assert flags["train.backbone"] == "resnet50.ram_in1k"
    assert flags["train.precision"] == flags["pretrain.precision"] == flags["evaluate.precision"] == "fp32"


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_every_flag_a_preset_mentions_exists_in_params(preset: Path) -> None:
    # the strict-parity line and other optional flags in the header's prose must be valid -S keys too
    header = "\n".join(line for line in preset.read_text().splitlines() if line.startswith("#"))
    params = flatten(yaml.safe_load((ROOT / "params.yaml").read_text()))
    mentioned = {key for key, _ in FLAG.findall(header)}
    assert mentioned - set(params) == set()


def test_cpl_preset_trains_with_cpls_official_optimiser() -> None:
    # CPL's official config: Adam lr 2e-4, weight decay 1e-5, StepLR(10, 0.2), 50 epochs, batch 128, fp32.
    from owdfa.core.config import Section
    from owdfa.train.config import train_config, with_method_optimizer

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    train = params["train"]
    for key, value in flatten(yaml.safe_load((ROOT / "params" / "owdfa40-cpl.yaml").read_text())).items():
        if key.startswith("train."):
            *parents, last = key.removeprefix("train.").split(".")
            holder = train
            for part in parents:
                holder = holder[part]
            holder[last] = value
    section = Section(train, "train")
    config = with_method_optimizer(train_config(section), Section(params["methods"]["cpl"], "methods.cpl"))
    assert (config.lr, config.weight_decay, config.lr_step, config.lr_gamma) == (2e-4, 1e-5, 10, 0.2)
    assert (config.epochs, config.batch_size, config.precision, config.backbone) == (
        50,
        128,
        "fp32",
        "resnet50.ram_in1k",
    )
    # the authors' pixels (docs/methods.md, 'Departures from the official code')
    assert config.augment.view == "official"


def test_cal_preset_reaches_every_cal_variant_through_its_base() -> None:
    # The paper's ACR start (epoch 5 of 50) is set on `cal` alone; the DPP variants are built on it.
    from owdfa.core.config import Section
    from owdfa.methods import resolve_variant

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    preset = yaml.safe_load((ROOT / "params" / "owdfa40-cal.yaml").read_text())
    methods = params["methods"]
    for name, keys in preset["methods"].items():
        methods[name] = {**methods[name], **keys}
    for name in preset["run"]["methods"]:
        assert resolve_variant(Section(methods, "methods"), name).int("acr_start_epoch") == 5, name
