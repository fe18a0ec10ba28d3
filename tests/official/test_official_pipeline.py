"""The CAL authors' released models in the pipeline: `import_official@<name>`, `evaluate_official@<name>`, the report.

The official converter builds OWDFA-40's 41 classes and 256 px crops into every card, and evaluate
scores a model only on a split of its own classes and face size, so these tests run on a tiny folder
with OWDFA-40's 42 class folders at 256 px (`helpers.tiny_owdfa40`), not on the embedded 15-class
benchmark. The checkpoints have the official layout on timm's small `test_resnet` (the optional
`backbone` key of a model entry; the released ones are resnet50) with random weights: the tests
check the wiring (stages, params, outputs, the report's marked rows), not the scores. One model
comes from a local file, the other from a local server speaking the Hub's API at a pinned commit.
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.dvc_repo import copy_pipeline, dump_params, set_keys
from helpers.fake_hub import COMMIT, hub_env, serve_repo
from helpers.official_ckpt import BACKBONE, lightning_checkpoint, official_state, save_checkpoint
from helpers.paths import ROOT
from helpers.tiny_owdfa40 import SPLIT_PARAMS, build_owdfa40_split, write_owdfa40_folders
from helpers.tiny_pipeline import ran_stages
from helpers.tiny_run import build_tiny_split

from owdfa.core.config import Section
from owdfa.core.errors import DataError
from owdfa.evaluate.evaluation import evaluate
from owdfa.evaluate.report import IMPORTED_SPLIT_CAVEAT
from owdfa.modeldir.card import ModelCard
from owdfa.official.checkpoint import OFFICIAL_REPO_ID

KNOWN_K_FILE = "protocol1_seed2025.ckpt"  # a local file named as released: protocol and seed from its name
HUB_FILE = "wok_protocol1/wok_protocol1_seed2026.ckpt"  # unknown K (DPP): 10 x 19 known rows on p1
EVALUATE_PARAMS = {"mc_dropout_passes": 2, "tsne_max_points": 0, "uncertainty_maps": {"per_class": 0}}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("official-ckpt")
    return {
        "known": save_checkpoint(folder / KNOWN_K_FILE, lightning_checkpoint(official_state(41, seed=1))),
        "dpp": save_checkpoint(folder / "wok.ckpt", lightning_checkpoint(official_state(190, seed=2))),
    }


def model_entry(file: str | Path, **extra: Any) -> dict[str, Any]:
    return {"file": str(file), "protocol": "p1", "backbone": BACKBONE, **extra}


def write_params(path: Path, models: dict[str, Any], **official: Any) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["official"].update(official, models=models)
    for key, value in EVALUATE_PARAMS.items():
        params["evaluate"][key] = {**params["evaluate"][key], **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def import_stage(params: Path, name: str, out: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The stage script as dvc runs it (from the repository root)."""
    command = [sys.executable, "stages/import_official.py", "--name", name, "--out", str(out), "--params", str(params)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def import_stage_here(params: Path, name: str, out: Path, capsys, monkeypatch) -> subprocess.CompletedProcess:
    """`import_stage` in this process (the script's `__main__`, its exit status and output captured)."""
    script = ROOT / "stages" / "import_official.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--name", name, "--out", str(out), "--params", str(params)])
    try:
        runpy.run_path(str(script), run_name="__main__")
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(sys.argv, status, captured.out, captured.err)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def evaluate_section(checkpoint: str) -> Section:
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["evaluate"]
    section.update(checkpoint=checkpoint, device="cpu", k_estimators=[], mc_dropout_passes=2, tsne_max_points=0)
    section["uncertainty_maps"]["per_class"] = 0
    return Section(section, "evaluate")


# --------------------------------------------------------------------------------------------
# the stages' pieces, in process


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, checkpoints) -> dict[str, Path]:
    """A tiny OWDFA-40 p1 split at 256 px, and the known-K checkpoint imported by the stage script."""
    base = tmp_path_factory.mktemp("official-eval")
    faces, split = build_owdfa40_split(base)
    models = {"p1-cal": model_entry(checkpoints["known"])}
    params = write_params(base / "params.yaml", models, download_dir=str(base / "downloads"))
    proc = import_stage(params, "p1-cal", base / "model")
    assert proc.returncode == 0, proc.stderr
    assert "import_official: p1, known K, seed 2025" in proc.stdout
    return {"base": base, "faces": faces, "split": split, "model": base / "model"}


@pytest.mark.slow
def test_an_imported_model_is_scored_on_its_one_checkpoint(imported, tmp_path, capsys):
    card = ModelCard.read(imported["model"])
    assert card.history is None and card.val_best_epoch is None and card.source is not None
    assert not (imported["model"] / "val_best.safetensors").exists()
    # evaluate.checkpoint val_best applies to our runs; an imported model is scored on its one checkpoint
    args = (imported["model"], imported["split"], imported["faces"])
    metrics = evaluate(evaluate_section("val_best"), *args, tmp_path / "a", tmp_path / "a.csv")
    assert "scored as `last` only" in capsys.readouterr().out
    assert "last" in metrics and "val_best" not in metrics
    assert metrics["k_hat"] == 41 and metrics["k_true"] == 41
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert (run["checkpoint"], run["method"], run["seed"], run["epochs"]) == ("last", "cal_official", 2025, 0)
    assert run["val_best_epoch"] is None and run["imported"]["source"]["sha256"] == card.source["sha256"]
    assert run["imported"]["num_active"] == 41
    assert len((tmp_path / "a.csv").read_text().splitlines()) == 1 + run["test_images"]
    # the same numbers as with evaluate.checkpoint last
    again = evaluate(evaluate_section("last"), *args, tmp_path / "b", tmp_path / "b.csv")
    assert again == metrics
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


@pytest.mark.slow
def test_a_model_is_scored_only_on_its_own_classes_and_face_size(imported, tmp_path):
    section, model = evaluate_section("last"), imported["model"]

    def error(split: Path, faces: Path) -> str:
        with pytest.raises(DataError) as err:
            evaluate(section, model, split, faces, tmp_path / "out", tmp_path / "p.csv")
        assert "\n" not in str(err.value)
        return str(err.value)

    synthetic_faces, synthetic_split = build_tiny_split(tmp_path / "synthetic")
    assert error(synthetic_split, synthetic_faces) == (
        f"{model}: the model (owdfa40 p1: 19 known of 41 classes) does not fit {synthetic_split} "
        "(synthetic p1: 7 known of 15 classes); score it on the split of its own benchmark and protocol"
    )
    faces, p2_split = build_owdfa40_split(imported["base"], "p2")
    assert "(owdfa40 p2: 13 known of 41 classes)" in error(p2_split, faces)
    small_faces, small_split = build_owdfa40_split(imported["base"], "p1", size=64)
    assert error(small_split, small_faces) == (
        f"{model}: the model takes 256 px faces but {small_faces} holds 64 px (align.image_size); "
        "re-run the align stage at 256 px"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_import_stage_mistakes_are_one_line_each(tmp_path, checkpoints, dvc_env, capsys, monkeypatch):
    models = {
        "wrong-protocol": {**model_entry(checkpoints["known"]), "protocol": "p2"},
        "no-file": model_entry(tmp_path / "missing.ckpt"),
        "bad/name": model_entry(checkpoints["known"]),
        "typo": {**model_entry(checkpoints["known"]), "num_activ": 3},
        "too-few": model_entry(checkpoints["dpp"], num_active=5),
        "hub": model_entry(HUB_FILE),
    }
    params = write_params(tmp_path / "params.yaml", models, revision=COMMIT, download_dir=str(tmp_path / "dl"))
    out = tmp_path / "model"
    cases = {
        "wrong-protocol": f"official.models.wrong-protocol.protocol: p2, but {checkpoints['known']} is a p1 checkpoint",
        "no-file": f"official.models.no-file.file: {tmp_path / 'missing.ckpt'}: no such file",
        "bad/name": "official.models.bad/name: a model name is letters, digits, '.', '_' and '-'",
        "typo": "official.models.typo.num_activ: unknown key (typo?)",
        "too-few": "num_active 5 is outside [19, 190]",
        "absent": "official.models.absent: no such model",
        "hub": "HF_HUB_OFFLINE=1 is set",  # dvc_env is offline: the real client refuses to download
    }
    # The script as dvc runs it, in a process of its own, for the offline Hub and one mistake of the
    # params; the other mistakes take the same path (`run_stage`), here in this process.
    for name in ("hub", "wrong-protocol"):
        assert cases.pop(name) in one_line_error(import_stage(params, name, out, env=dvc_env)), name
    for name, expected in cases.items():
        assert expected in one_line_error(import_stage_here(params, name, out, capsys, monkeypatch)), name
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# real dvc


TINY_PARAMS: dict[str, Any] = {
    "data.source": "folder",
    "align.mode": "resize",
    "align.image_size": 256,
    "align.workers": 1,
    "split.budgets": SPLIT_PARAMS["budgets"],
    "split.test_fraction": SPLIT_PARAMS["test_fraction"],
    "split.labelled_fraction": SPLIT_PARAMS["labelled_fraction"],
    "split.val_fraction": SPLIT_PARAMS["val_fraction"],
    "pretrain.epochs": 1,
    "pretrain.batch_size": 16,
    "train.epochs": 1,
    "train.batch_size": 16,
    "evaluate.mc_dropout_passes": 2,
    "evaluate.tsne_max_points": 0,
    "evaluate.uncertainty_maps.per_class": 0,
    "evaluate.k_estimators": [],  # GCD's k-means over K in [19, 76]: the estimator has tests of its own
    "run.protocols": ["p1"],
    "run.methods": ["baseline"],
    "run.seeds": [0],
    "official.revision": COMMIT,
}
GRID_STAGES = {
    "fetch",
    "index",
    "align",
    "split@p1",
    "variants",
    "pretrain@p1",
    "train@p1-baseline-0",
    "evaluate@p1-baseline-0",
}


class Repo:
    def __init__(self, path: Path, env: dict[str, str], run_dvc: Any, run_git: Any) -> None:
        self.path, self.env, self.run_dvc, self.run_git = path, env, run_dvc, run_git

    def dvc(self, *args: str) -> str:
        return self.run_dvc(self.path, *args, env=self.env).stdout

    def repro(self) -> set[str]:
        out = self.dvc("repro")
        assert "error" not in out.lower().replace("_error", ""), out[-3000:]
        return ran_stages(out)

    def set_models(self, models: dict[str, Any]) -> None:
        params = yaml.safe_load((self.path / "params.yaml").read_text())
        dump_params(self.path / "params.yaml", set_keys(params, {"official.models": models}))

    def read(self, rel: str) -> bytes:
        return (self.path / rel).read_bytes()

    def stages(self) -> set[str]:
        return {line.split()[0] for line in self.dvc("stage", "list").splitlines() if line.strip()}

    def clean(self) -> bool:
        lines = [line for line in self.dvc("status", "--json").splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) == {}


@pytest.fixture(scope="module")
def official_repo(tmp_path_factory: pytest.TempPathFactory, dvc_env, run_dvc, run_git) -> tuple[Repo, bytes, bytes]:
    """The pipeline on the tiny OWDFA-40 folder, reproduced once with no imported models; its report."""
    base = tmp_path_factory.mktemp("official-pipeline")
    folder = write_owdfa40_folders(base / "my-owdfa40")
    path = base / "repo"
    env = copy_pipeline(path, {**TINY_PARAMS, "data.folder.path": str(folder)}, dvc_env)
    repo = Repo(path, env, run_dvc, run_git)
    run_git(path, "init", "-q", env=env)
    repo.dvc("init", "-q")
    run_git(path, "add", "-A", env=env)
    run_git(path, "commit", "-q", "-m", "tiny OWDFA-40 pipeline", env=env)
    assert repo.repro() == GRID_STAGES | {"report"}
    return repo, repo.read("reports/results.md"), repo.read("reports/metrics.json")


@pytest.mark.slow
def test_no_imported_models_add_no_stages(official_repo):
    repo, results, metrics = official_repo
    assert repo.stages() == GRID_STAGES | {"report"}
    assert repo.clean() and repo.repro() == set()
    lock = yaml.safe_load(repo.read("dvc.lock"))
    assert not any("official" in name for name in lock["stages"])
    assert b"(official checkpoint)" not in results and set(json.loads(metrics)["p1"]) == {"baseline"}


@pytest.mark.slow
def test_imported_models_are_imported_scored_and_marked_in_the_report(official_repo, checkpoints, tmp_path):
    repo, baseline_results, baseline_metrics = official_repo
    models = {
        "p1-cal-2025": model_entry(checkpoints["known"]),
        "p1-dpp-2026": model_entry(HUB_FILE, num_active=40),
    }
    files = {HUB_FILE: checkpoints["dpp"].read_bytes(), "README.md": b"# CAL\n"}
    offline_env = repo.env
    with serve_repo(OFFICIAL_REPO_ID, files) as hub:
        repo.env = hub_env(offline_env, hub.url, tmp_path / "hf-home")
        repo.set_models(models)
        assert repo.repro() == {
            *(f"{stage}@{name}" for stage in ("import_official", "evaluate_official") for name in models),
            "report",
        }
        assert repo.clean()
        dpp = ModelCard.read(repo.path / "data" / "official" / "p1-dpp-2026")
        assert (dpp.source["commit"], dpp.source["revision"], dpp.source["filename"]) == (COMMIT, COMMIT, HUB_FILE)
        assert (dpp.method, dpp.num_active, dpp.seed) == ("cal_dpp_official", 40, 2026)
        downloaded = repo.path / "data" / "downloads" / "hyzheng__OWDFA_CAL" / COMMIT / HUB_FILE
        assert downloaded.read_bytes() == files[HUB_FILE]
        assert not any("README" in path for path in hub.requested())

        text = repo.read("reports/results.md").decode()
        assert "| CAL (official checkpoint) |" in text and "| CAL-DPP (official checkpoint) |" in text
        assert IMPORTED_SPLIT_CAVEAT in text
        assert f"| p1-dpp-2026 | p1 | CAL-DPP (official checkpoint) | 2026 | 40 | `{HUB_FILE}` " in text
        assert "| p1-cal-2025 | p1 | CAL (official checkpoint) | 2025 | 41 | `protocol1_seed2025.ckpt` (a local" in text
        summary = json.loads(repo.read("reports/metrics.json"))["p1"]
        assert set(summary) == {"baseline", "cal_official", "cal_dpp_official"}
        assert summary["cal_dpp_official"]["k_hat"] == 40 and summary["cal_official"]["k_hat"] == 41
        assert summary["baseline"] == json.loads(baseline_metrics)["p1"]["baseline"]
        assert (repo.path / "data" / "predictions" / "official-p1-cal-2025.csv").is_file()

        # one model's own entry changed: its two stages and the report, nothing else
        repo.set_models({**models, "p1-dpp-2026": model_entry(HUB_FILE, num_active=41)})
        assert repo.repro() == {"import_official@p1-dpp-2026", "evaluate_official@p1-dpp-2026", "report"}
        assert json.loads(repo.read("reports/metrics.json"))["p1"]["cal_dpp_official"]["k_hat"] == 41

    # none again: only the report re-runs, and it is the one from before, byte for byte
    repo.env = offline_env
    repo.set_models({})
    assert repo.repro() == {"report"}
    assert repo.read("reports/results.md") == baseline_results
    assert repo.read("reports/metrics.json") == baseline_metrics
