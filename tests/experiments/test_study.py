"""The regime study's tables and figures come from the committed grid files alone (`owdfa study`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from owdfa.cli import main
from owdfa.core.errors import DataError
from owdfa.experiments.study import write_study


def method(all_acc: float, novel: float, new: float, std: float = 0.01) -> dict[str, float]:
    return {
        "all_acc": all_acc,
        "all_acc_std": std,
        "novel_acc": novel,
        "novel_acc_std": std,
        "gcd_v2_new_acc": new,
        "gcd_v2_new_acc_std": std,
    }


def write_grid(repo: Path, name: str, probe: float, methods: dict[str, dict], trajectories: dict) -> None:
    folder = repo / "reports" / "grid"
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {"p1": methods, "starting_features": {"p1": {"probe_known_acc": probe, "val_acc": None}}}
    (folder / f"metrics-{name}.json").write_text(json.dumps(metrics))
    (folder / f"trajectories-{name}.json").write_text(json.dumps({"p1": trajectories}))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    grids = {
        "3seeds": {"description": "not a regime", "set": {"run.seeds": [0, 1, 2]}},
        "regime-none-p1": {"description": "random init", "set": {"pretrain.mode": "none"}},
        "regime-warmup-p1": {"description": "4 epochs", "set": {"run.protocols": ["p1"]}},
        "regime-ssl-p1": {"description": "SimCLR", "set": {"pretrain.mode": "both"}},
        "regime-none-p2": {"description": "other protocol", "set": {"pretrain.mode": "none"}},
    }
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "grids.yaml").write_text(yaml.safe_dump(grids, sort_keys=False))
    write_grid(
        tmp_path,
        "regime-none-p1",
        0.30,
        {"baseline": method(0.40, 0.20, 0.10), "cpl": method(0.45, 0.25, 0.12), "cal": method(0.42, 0.22, 0.11)},
        {
            "cal": {
                "seeds": [0, 1],
                "tau_novel": [[0.5, 1.1, 1.2], [0.4, 0.9, 1.0]],
                "acr_kept_fraction": [[0, 0.2, 0.1], [0, 0.1, 0.3]],
            }
        },
    )
    write_grid(
        tmp_path,
        "regime-warmup-p1",
        0.60,
        {"baseline": method(0.50, 0.30, 0.20), "cpl": method(0.55, 0.35, 0.25), "cal": method(0.60, 0.40, 0.30)},
        {"cal": {"seeds": [0, 1], "tau_novel": [[0.2, 0.3, 0.4], [0.2, 0.3, 0.5]]}},
    )
    return tmp_path


def test_study_tables_follow_the_grid_files(repo: Path):
    paths = write_study("p1", repo)
    assert [p.name for p in paths] == ["regimes-p1.md", "regimes-p1.png", "acr-p1.png"]
    text = paths[0].read_text()
    assert "Not run yet: regime-ssl-p1." in text
    assert "regime-none-p2" not in text and "3seeds" not in text
    assert "| regime-none-p1 | random init | 30.0 | n/a | does not hold (cpl > cal > baseline) |" in text
    assert "| regime-warmup-p1 | 4 epochs | 60.0 | n/a | holds (cal > cpl > baseline) |" in text
    assert "| regime-warmup-p1 | 50.0 ± 1.0 | 55.0 ± 1.0 | 60.0 ± 1.0 |" in text  # All ACC row
    # tau: last values 1.2 and 1.0 -> mean 1.100; first epoch >= 1 per seed: 2 and 3; kept last: (0.1 + 0.3) / 2
    assert "| regime-none-p1 | cal | 1.100 | 2, 3 | 20.0 |" in text
    assert "| regime-warmup-p1 | cal | 0.450 | never, never | n/a |" in text
    for png in paths[1:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_study_is_byte_identical_on_a_rerun(repo: Path):
    first = [p.read_bytes() for p in write_study("p1", repo)]
    assert [p.read_bytes() for p in write_study("p1", repo)] == first


def test_study_without_any_run_grid_is_one_line(repo: Path, capsys):
    with pytest.raises(DataError, match="none of regime-none-p2 has been run"):
        write_study("p2", repo)
    with pytest.raises(DataError, match="no grid named regime-<start>-p9"):
        write_study("p9", repo)


def test_owdfa_study_command(repo: Path, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    assert main(["study", "p1"]) == 0
    assert (repo / "reports" / "study" / "regimes-p1.md").is_file()
    assert main(["study", "p2"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("owdfa: ") or "none of regime-none-p2" in err


def add_grid(repo: Path, name: str, body: dict) -> None:
    path = repo / "params" / "grids.yaml"
    grids = yaml.safe_load(path.read_text())
    grids[name] = body
    path.write_text(yaml.safe_dump(grids, sort_keys=False))


def test_a_companion_grid_adds_its_methods_to_the_regime_with_its_settings(repo: Path):
    # same settings as regime-warmup-p1 apart from run.methods -> its companion; regime-none-p1 sets pretrain.mode
    add_grid(repo, "ablation-p1", {"set": {"run.protocols": ["p1"], "run.methods": ["cal_abl1", "cal_abl2"]}})
    add_grid(repo, "other-p1", {"set": {"run.protocols": ["p1"], "train.epochs": 20}})  # other settings: not one
    write_grid(
        repo,
        "ablation-p1",
        0.60,
        {
            "cal_abl1": method(0.50, 0.10, 0.10),
            "cal_abl2": method(0.55, 0.20, 0.20),
            "cal": method(0.60, 0.40, 0.30),  # the regime's own cal: the same runs, the same numbers
        },
        {},
    )
    write_grid(repo, "other-p1", 0.60, {"cal_abl4": method(0.10, 0.10, 0.10)}, {})
    text = write_study("p1", repo)[0].read_text()
    # I (50.0) < II (55.0) < V (60.0); IV did not run, so it is left out of the ordering
    assert "| regime-warmup-p1 + ablation-p1 | 4 epochs | 60.0 | n/a | holds (cal > cpl > baseline) " in text
    assert "| holds (cal > cal_abl2 > cal_abl1) |" in text
    assert "| All ACC | cal_abl1 | cal_abl2 | cal |" in text
    assert "| regime-warmup-p1 | 50.0 ± 1.0 | 55.0 ± 1.0 | 60.0 ± 1.0 |" in text
    assert "cal_abl4" not in text and "other-p1" not in text
    assert "started from other features" not in text  # the same probe as its regime: nothing to say
    # the main tables keep the regime grids' own methods
    assert "| Regime | baseline | cpl | cal |" in text


def test_a_companion_that_disagrees_on_a_shared_method_is_named_as_stale(repo: Path):
    add_grid(repo, "ablation-p1", {"set": {"run.protocols": ["p1"], "run.methods": ["cal_abl1", "cal"]}})
    write_grid(repo, "ablation-p1", 0.60, {"cal_abl1": method(0.5, 0.1, 0.1), "cal": method(0.59, 0.4, 0.3)}, {})
    with pytest.raises(DataError, match="cal differs between grids regime-warmup-p1 and ablation-p1"):
        write_study("p1", repo)


def test_a_companion_with_other_starting_features_is_kept_and_said(repo: Path):
    # same settings, other pretrained start (made on another CPU): its rows stay, with one sentence naming both
    add_grid(repo, "ablation-p1", {"set": {"run.protocols": ["p1"], "run.methods": ["cal_abl1"]}})
    write_grid(repo, "ablation-p1", 0.655, {"cal_abl1": method(0.5, 0.1, 0.1)}, {})
    text = write_study("p1", repo)[0].read_text()
    assert "**ablation-p1 started from other features than regime-warmup-p1** (probe 65.5 against 60.0)" in text
    assert "| regime-warmup-p1 | 50.0 ± 1.0 | 60.0 ± 1.0 |" in text


def test_a_companion_that_recorded_no_starting_features_is_not_said_to_differ(repo: Path):
    # grids made before the probe was recorded have no starting_features: nothing to compare, no sentence
    add_grid(repo, "ablation-p1", {"set": {"run.protocols": ["p1"], "run.methods": ["cal_abl1"]}})
    write_grid(repo, "ablation-p1", 0.60, {"cal_abl1": method(0.5, 0.1, 0.1)}, {})
    path = repo / "reports" / "grid" / "metrics-ablation-p1.json"
    metrics = json.loads(path.read_text())
    del metrics["starting_features"]
    path.write_text(json.dumps(metrics))
    text = write_study("p1", repo)[0].read_text()
    assert "started from other features" not in text
    assert "| regime-warmup-p1 | 50.0 ± 1.0 | 60.0 ± 1.0 |" in text


def test_a_regime_that_changes_the_training_is_named_by_its_change():
    from owdfa.experiments.grid import Grid
    from owdfa.experiments.study import Regime, training_change

    def regime(sets: dict) -> Regime:
        return Regime(grid=Grid("regime-x-p1", sets, "x"), probe=0.5, pretrain_val=None, methods={}, trajectories={})

    assert training_change(regime({"pretrain.epochs": 20})) is None  # a starting point, not a training change
    assert training_change(regime({"train.epochs": 20, "train.lr_step": 16})) == "longer schedule"
    assert training_change(regime({"train.augment.view": "official"})) == "official view"
    assert training_change(regime({"train.lr": 0.01, "train.batch_size": 32})) == "train.batch_size=32, train.lr=0.01"


def test_a_companion_of_another_numerics_version_is_not_combined_and_said(repo: Path):
    # regime-warmup-p1 is a version-1 grid (its report names MKL AVX2,STRICT), ablation-p1 a version-2
    # one (made-ablation-p1.json): the same settings computed other bits, so its rows are not merged
    # (its `cal` would otherwise be a "stale" disagreement), and the study says why and how to fix it
    folder = repo / "reports" / "grid"
    (folder / "results-regime-warmup-p1.md").write_text("| exact mode: AVX2 kernels (MKL AVX2,STRICT) | 3 |\n")
    add_grid(repo, "ablation-p1", {"set": {"run.protocols": ["p1"], "run.methods": ["cal_abl1", "cal"]}})
    write_grid(repo, "ablation-p1", 0.655, {"cal_abl1": method(0.5, 0.1, 0.1), "cal": method(0.59, 0.4, 0.3)}, {})
    cpu = {"name": "Intel(R) Xeon(R) Processor", "vendor": "intel", "family": "6", "model": "167", "isa": "avx512"}
    made = {"cpu": cpu, "numerics": {"version": 2, "mode": "exact"}}
    (folder / "made-ablation-p1.json").write_text(json.dumps(made))
    text = write_study("p1", repo)[0].read_text()
    assert "**ablation-p1 is not combined with regime-warmup-p1**: it was made under numerics version 2" in text
    assert "| regime-warmup-p1 | 4 epochs |" in text and "cal_abl1" not in text.split("**All ACC**")[1]
    assert "* regime-warmup-p1: numerics version 1 (MKL's pin held on Intel CPUs only), CPU not recorded" in text
    assert "* regime-none-p1: numerics and CPU not recorded" in text
