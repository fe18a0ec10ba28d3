"""pretrain.mode: SimCLR that reads no label, chained with the supervised warm-up, deterministic and resumable.

The hidden-label tests shuffle labels in the split manifest: SimCLR's weights must not move when
*every* label is shuffled (it reads none), and `both` must not move when the unlabelled and test
labels are shuffled (its supervised phase reads the labelled rows only, as the methods do).
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers.paths import ROOT
from helpers.tiny_run import build_tiny_split, kill_once_checkpointed, shuffled_split, stage_env, tiny_data
from safetensors.torch import load_file

from owdfa.core.config import Section
from owdfa.core.errors import ConfigError
from owdfa.methods.simclr import SimCLR, nt_xent
from owdfa.train.config import pretrain_plan
from owdfa.train.feature_probe import nearest_mean_accuracy
from owdfa.train.samplers import EveryRowSampler
from owdfa.train.stages import RunPaths, label_free, pretrain


def pretrain_section(mode: str, **changes: object) -> Section:
    """The params' pretrain section, seconds long on the tiny split."""
    section = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text())["pretrain"])
    section.update(mode=mode, epochs=2, batch_size=8, device="cpu")
    section["self_supervised"].update(epochs=2)
    section.update(changes)
    return Section(section, "pretrain")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("pretrain")
    faces, split = build_tiny_split(base)
    return {
        "faces": faces,
        "split": split,
        "hidden_shuffled": shuffled_split(base, "hidden", ("unlabelled", "test"), seed=1),
        "all_shuffled": shuffled_split(base, "all", ("labelled", "unlabelled", "val", "test"), seed=1),
    }


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


# --- the objective and the sampler, against formulas written out here --------------------------------


def test_nt_xent_matches_the_formula_written_out():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    temperature = 0.5
    z = [v / v.norm() for v in torch.cat([a, b]).double()]
    n = 3
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        logits = {j: float(z[i] @ z[j]) / temperature for j in range(2 * n) if j != i}
        total += -(logits[positive] - math.log(sum(math.exp(v) for v in logits.values())))
    assert float(nt_xent(a, b, temperature)) == pytest.approx(total / (2 * n), rel=1e-6)


def test_every_row_sampler_draws_each_row_once_per_epoch_and_no_label():
    data = label_free(tiny_data(40))
    sampler = EveryRowSampler(data, batch_size=8)
    gen = torch.Generator().manual_seed(0)
    assert sampler.steps == 5
    for _ in range(2):  # two epochs, each a fresh permutation
        drawn = []
        for _ in range(sampler.steps):
            rows, targets = sampler.draw(gen)
            assert (targets == -1).all()
            drawn.extend(rows.tolist())
        assert sorted(drawn) == sorted(data.unlabelled_rows.tolist())


def test_label_free_data_holds_every_training_row_and_nothing_else():
    data = tiny_data(40)
    free = label_free(data)
    assert len(free.labelled_rows) == len(free.labelled_targets) == len(free.val_rows) == len(free.val_targets) == 0
    assert free.unlabelled_rows.tolist() == sorted([*data.labelled_rows, *data.unlabelled_rows])


def test_nearest_mean_accuracy_by_hand():
    train = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0]])
    targets = np.array([0, 0, 1, 1])
    val = np.array([[5.0, 1.0], [1.0, 5.0], [1.0, 0.9]])  # nearest (cosine): 0, 1, 0
    assert nearest_mean_accuracy(train, targets, val, np.array([0, 1, 1])) == pytest.approx(2 / 3)


# --- the stage's library function ----------------------------------------------------------------------


@pytest.mark.slow
def test_self_supervised_reads_no_label_and_reruns_bit_identically(tiny, tmp_path):
    outs = {}
    for name, split in (("a", tiny["split"]), ("again", tiny["split"]), ("shuffled", tiny["all_shuffled"])):
        outs[name] = tmp_path / name
        card = pretrain(pretrain_section("self_supervised"), RunPaths(split, tiny["faces"], outs[name]))
        assert card.pretrain_mode == "self_supervised" and card.method == "self_supervised"
        assert card.val_best_epoch is None and [e["epoch"] for e in card.history] == [0, 1]
    assert_same_weights(outs["a"], outs["again"])
    assert_same_weights(outs["a"], outs["shuffled"])  # every label permuted: SimCLR saw none of them
    histories = [json.loads((o / "card.json").read_text())["history"] for o in outs.values()]
    assert histories[0] == histories[1] == histories[2]


@pytest.mark.slow
def test_both_reads_no_unlabelled_or_test_label(tiny, tmp_path):
    outs = []
    for name, split in (("a", tiny["split"]), ("hidden", tiny["hidden_shuffled"])):
        out = tmp_path / name
        card = pretrain(
            pretrain_section("both"), RunPaths(split, tiny["faces"], out, metrics=tmp_path / f"{name}.json")
        )
        assert card.pretrain_mode == "both" and card.method == "supervised"
        assert len(card.self_supervised_history) == 2 and len(card.history) == 2
        outs.append(out)
    assert_same_weights(*outs)
    metrics = [json.loads((tmp_path / f"{name}.json").read_text()) for name in ("a", "hidden")]
    assert metrics[0] == metrics[1]
    assert metrics[0]["mode"] == "both" and 0.0 <= metrics[0]["probe_known_acc"] <= 1.0
    assert metrics[0]["val_acc"] is not None


def test_mode_none_skips_but_still_probes_the_random_start(tiny, tmp_path):
    paths = RunPaths(tiny["split"], tiny["faces"], tmp_path / "m", metrics=tmp_path / "m.json")
    card = pretrain(pretrain_section("none"), paths)
    assert json.loads((tmp_path / "m" / "card.json").read_text()) == {"enabled": False, "format": 1}
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["mode"] == "none" and metrics["val_acc"] is None and 0.0 <= metrics["probe_known_acc"] <= 1.0
    assert type(card).__name__ == "SkippedPretraining"


def test_supervised_mode_writes_no_self_supervised_field(tiny, tmp_path):
    card = pretrain(pretrain_section("supervised"), RunPaths(tiny["split"], tiny["faces"], tmp_path / "m"))
    raw = json.loads((tmp_path / "m" / "card.json").read_text())
    assert raw["pretrain_mode"] == "supervised" and "self_supervised_history" not in raw
    assert card.method == "supervised"


# --- params ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "ssl_changes", "key"),
    [
        ({"mode": "simclr"}, {}, "pretrain.mode"),
        ({"mode": "both"}, {"temperature": 0.0}, "pretrain.self_supervised.temperature"),
        ({"mode": "self_supervised"}, {"epochs": 0}, "pretrain.self_supervised.epochs"),
        ({"mode": "both"}, {"tau": 0.1}, "pretrain.self_supervised.tau"),
        (
            {"mode": "self_supervised"},
            {"augment": {"crop_prob": 2.0}},
            "pretrain.self_supervised.augment.crop_prob",
        ),
    ],
)
def test_bad_pretrain_params_name_the_key(changes, ssl_changes, key):
    section = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text())["pretrain"])
    section.update(changes)
    for key_, value in ssl_changes.items():
        target = section["self_supervised"]
        if isinstance(value, dict):
            target[key_].update(value)
        else:
            target[key_] = value
    with pytest.raises(ConfigError) as raised:
        pretrain_plan(Section(section, "pretrain"))
    assert raised.value.key == key


def test_self_supervised_keys_are_not_read_in_supervised_mode():
    section = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text())["pretrain"])
    section["self_supervised"]["temperature"] = 0.0  # wrong, but unused by this mode
    assert pretrain_plan(Section(section, "pretrain")).self_supervised is None


def test_simclr_head_state_round_trips():
    torch.manual_seed(0)
    a = SimCLR(temperature=0.2, projection_dim=4)
    a.make_head(6, torch.device("cpu"))
    b = SimCLR(temperature=0.2, projection_dim=4)
    b.make_head(6, torch.device("cpu"))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 6)
    assert torch.equal(a.head(x), b.head(x))


# --- the stage, killed mid-way --------------------------------------------------------------------------


def stage(params: Path, tiny: dict[str, Path], out: Path) -> list[str]:
    return [
        sys.executable,
        "stages/pretrain.py",
        "--split",
        str(tiny["split"]),
        "--faces",
        str(tiny["faces"]),
        "--out",
        str(out / "model"),
        "--checkpoints",
        str(out / "checkpoints"),
        "--metrics",
        str(out / "metrics.json"),
        "--params",
        str(params),
    ]


@pytest.mark.slow
def test_sigkill_in_the_self_supervised_phase_then_rerun_equals_uninterrupted(tiny, tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["pretrain"].update(mode="both", epochs=2, batch_size=8, device="cpu")
    params["pretrain"]["self_supervised"].update(epochs=6)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(stage(path, tiny, whole), cwd=ROOT, env=stage_env(), check=True)

    proc = subprocess.Popen(stage(path, tiny, killed), cwd=ROOT, env=stage_env(), stdout=subprocess.DEVNULL)
    kill_once_checkpointed(proc, killed / "checkpoints" / "self_supervised")
    assert not (killed / "model").exists(), "killed too late: the run had finished"

    rerun = subprocess.run(stage(path, tiny, killed), cwd=ROOT, env=stage_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "(self-supervised): resuming after epoch" in rerun.stdout + rerun.stderr
    for name in ("model.safetensors", "card.json"):
        assert (killed / "model" / name).read_bytes() == (whole / "model" / name).read_bytes(), name
    assert (killed / "metrics.json").read_bytes() == (whole / "metrics.json").read_bytes()
    for folder in (killed / "checkpoints", killed / "checkpoints" / "self_supervised"):
        assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["FINISHED.txt"]
