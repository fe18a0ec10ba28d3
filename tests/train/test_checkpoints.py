"""Resumable training: a run killed at any moment and re-run ends exactly like an uninterrupted one (CPU).

The end-to-end test kills the real train stage with SIGKILL once a checkpoint has appeared; the
in-process ones interrupt `run_training` at an epoch end (fast, every method's state) and check
that a checkpoint of another run, a half-written file or a damaged one is never resumed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.paths import ROOT
from helpers.tiny_run import (
    CONFIG,
    build_tiny_split,
    kill_once_checkpointed,
    stage_command,
    stage_env,
    tiny_data,
    write_tiny_params,
)

from owdfa.methods.base import Baseline, Method
from owdfa.methods.cal import CAL
from owdfa.methods.cpl import CPL
from owdfa.train.config import TrainConfig
from owdfa.train.loop import TrainResult, run_training
from owdfa.train.state import RunOptions


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("resume")
    faces, split = build_tiny_split(base)
    return faces, split, write_tiny_params(base / "params.yaml")


@pytest.mark.slow
def test_sigkill_and_rerun_equals_uninterrupted(tiny, tmp_path):
    faces, split, params = tiny
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(stage_command(params, faces, split, whole), cwd=ROOT, env=stage_env(), check=True)

    proc = subprocess.Popen(
        stage_command(params, faces, split, killed), cwd=ROOT, env=stage_env(), stdout=subprocess.DEVNULL
    )
    kill_once_checkpointed(proc, killed / "checkpoints")
    assert not (killed / "model").exists(), "killed too late: the run had finished"

    rerun = subprocess.run(
        stage_command(params, faces, split, killed), cwd=ROOT, env=stage_env(), capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming after epoch" in rerun.stdout + rerun.stderr
    for part in ("model", "live"):  # weights, card (history, method state), dvclive curves and summary
        assert files_of(killed / part) == files_of(whole / part), part
    # a finished run keeps no checkpoint, only the note that keeps DVC's output folder from being empty
    assert [p.name for p in (killed / "checkpoints").iterdir()] == ["FINISHED.txt"]


# --- in process -----------------------------------------------------------------------------------


def cal_dpp() -> CAL:
    return CAL(acr_start_epoch=0, dpp=True, dpp_initial_factor=4, dpp_faithful=False)


METHODS = {"baseline": Baseline, "cpl": CPL, "cal_dpp": cal_dpp}


class Interrupted(Exception):
    pass


def interrupt_at(method: Method, epoch: int) -> Method:
    """Raise in the hook of `epoch`, before its checkpoint: the run dies mid-way."""
    hook = method.on_epoch_end

    def on_epoch_end(model, optimizer, e):
        if e == epoch:
            raise Interrupted
        return hook(model, optimizer, e)

    method.on_epoch_end = on_epoch_end
    return method


def assert_same(a: TrainResult, b: TrainResult) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert a.history == b.history
    assert a.best_val_epoch == b.best_val_epoch
    assert a.best_val_state.keys() == b.best_val_state.keys()
    for key in a.best_val_state:
        assert torch.equal(a.best_val_state[key], b.best_val_state[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHODS))
def test_interrupted_run_resumes_bit_for_bit(name, tmp_path):
    data = tiny_data()
    whole = run_training(CONFIG, data, METHODS[name](), seed=0)
    with pytest.raises(Interrupted):
        run_training(
            CONFIG, data, interrupt_at(METHODS[name](), 2), seed=0, options=RunOptions(checkpoint_dir=tmp_path)
        )
    assert [p.name for p in tmp_path.iterdir()] == ["epoch-0002.safetensors"]
    method = METHODS[name]()
    resumed = run_training(CONFIG, data, method, seed=0, options=RunOptions(checkpoint_dir=tmp_path))
    assert_same(resumed, whole)
    if name == "cal_dpp":
        reference = METHODS[name]()
        run_training(CONFIG, data, reference, seed=0)
        assert method.state() == reference.state()  # K trajectory, threshold


@pytest.mark.slow
def test_checkpoint_of_other_params_is_not_resumed(tmp_path, capsys):
    data = tiny_data()
    run_training(CONFIG, data, Baseline(), seed=0, options=RunOptions(checkpoint_dir=tmp_path))
    other = TrainConfig(**{**CONFIG.__dict__, "lr": 1e-3})
    fresh = run_training(other, data, Baseline(), seed=0)
    capsys.readouterr()
    result = run_training(other, data, Baseline(), seed=0, options=RunOptions(checkpoint_dir=tmp_path))
    assert "is from a different run" in capsys.readouterr().out
    assert_same(result, fresh)
    # Same params, other method hyper-parameter or seed: also another run.
    capsys.readouterr()
    run_training(other, data, Baseline(distill_weight=0.3), seed=0, options=RunOptions(checkpoint_dir=tmp_path))
    run_training(other, data, Baseline(distill_weight=0.3), seed=1, options=RunOptions(checkpoint_dir=tmp_path))
    assert capsys.readouterr().out.count("is from a different run") == 2


def test_half_written_or_damaged_files_are_skipped(tmp_path):
    data = tiny_data()
    whole = run_training(CONFIG, data, CPL(), seed=0)
    with pytest.raises(Interrupted):
        run_training(CONFIG, data, interrupt_at(CPL(), 3), seed=0, options=RunOptions(checkpoint_dir=tmp_path))
    # half-written: as atomic_write_bytes names its temporary file, and as an earlier version did
    (tmp_path / ".epoch-0004.safetensors.x81kq2.tmp").write_bytes(b"killed while writing")
    (tmp_path / ".epoch-0005.safetensors.tmp").write_bytes(b"killed while writing")
    (tmp_path / "epoch-0009.safetensors").write_bytes(b"\x00" * 100)  # not a checkpoint of ours
    resumed = run_training(CONFIG, data, CPL(), seed=0, options=RunOptions(checkpoint_dir=tmp_path))
    assert_same(resumed, whole)
    assert [p.name for p in tmp_path.iterdir()] == ["epoch-0004.safetensors"]


def test_checkpoint_is_safetensors_with_json(tmp_path):
    from owdfa.train.checkpoints import read_checkpoint

    run_training(
        TrainConfig(**{**CONFIG.__dict__, "epochs": 1}),
        tiny_data(),
        cal_dpp(),
        seed=0,
        options=RunOptions(checkpoint_dir=tmp_path),
    )
    found = read_checkpoint(tmp_path / "epoch-0001.safetensors")
    assert found.meta["epochs_done"] == 1 and len(found.meta["history"]) == 1
    assert json.loads(json.dumps(found.meta)) == found.meta
    assert {"rng/generator", "rng/torch", "rng/numpy", "method/usage"} <= found.tensors.keys()
    assert any(k.startswith("optim/") for k in found.tensors) and any(k.startswith("model/") for k in found.tensors)


@pytest.mark.slow
@pytest.mark.parametrize("lose_live_dir", [False, True])
def test_curves_continue_exactly(tmp_path, monkeypatch, lose_live_dir):
    """Killed after logging epoch 3 but before its checkpoint: the resumed curves drop that row and go on.

    With the curve folder gone (DVC removes non-persistent outputs), it is rewritten from the history.
    """
    import owdfa.train.live_log as live_log
    from owdfa.train.checkpoints import Checkpointer

    monkeypatch.chdir(tmp_path)
    data = tiny_data()
    run_training(CONFIG, data, Baseline(), seed=0, options=RunOptions(live_dir=tmp_path / "whole"))
    save = Checkpointer.save

    def killed_at_third(checkpointer, state):
        if len(state.history) == 3:
            raise Interrupted
        return save(checkpointer, state)

    monkeypatch.setattr(Checkpointer, "save", killed_at_third)
    with pytest.raises(Interrupted):
        run_training(
            CONFIG,
            data,
            Baseline(),
            seed=0,
            options=RunOptions(live_dir=tmp_path / "live", checkpoint_dir=tmp_path / "ck"),
        )
    monkeypatch.setattr(Checkpointer, "save", save)
    assert (tmp_path / "live" / "plots" / "metrics" / "lr.tsv").read_text().count("\n") == 4  # header + 3 epochs
    if lose_live_dir:
        shutil.rmtree(tmp_path / "live")
    trims = []
    trim = live_log.trim_live
    monkeypatch.setattr(live_log, "trim_live", lambda *args: trims.append(trim(*args)) or trims[-1])
    run_training(
        CONFIG, data, Baseline(), seed=0, options=RunOptions(live_dir=tmp_path / "live", checkpoint_dir=tmp_path / "ck")
    )
    assert trims == ([False] if lose_live_dir else [True])  # dvclive resume=True / rewritten from history
    assert files_of(tmp_path / "live") == files_of(tmp_path / "whole")
