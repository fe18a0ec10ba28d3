"""Data-parallel training: 2 CPU processes (gloo) compute what 1 process computes with the same global batch.

Gradients are compared directly (Adam's update hides a wrong gradient scale), then whole runs
(weights, curves, validation predictions), and the stage's torchrun re-launch runs once end to end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from helpers.paths import ROOT
from helpers.tiny_run import CONFIG, build_tiny_split, stage_command, stage_env, tiny_data, write_tiny_params
from safetensors.torch import load_file, save_file

from owdfa.core.config import Section
from owdfa.core.distributed import World, prepare_model, process_group
from owdfa.core.errors import ConfigError
from owdfa.core.numerics import configure_torch
from owdfa.methods.base import Baseline
from owdfa.methods.cal import CAL
from owdfa.methods.cpl import CPL
from owdfa.models import AttributionModel
from owdfa.models.inference import predict
from owdfa.train.config import TrainConfig, train_config
from owdfa.train.loop import Placement, StepPosition, forward_loss, run_training, seed_everything

METHODS = {"baseline": Baseline, "cal": lambda: CAL(acr_start_epoch=0), "cpl": CPL}
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_world(rank: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)


# --- gradients --------------------------------------------------------------------------------------


def one_step_gradients(method_name: str, world: World) -> dict[str, torch.Tensor]:
    """Gradients of one step on a fixed global batch of 8, this process holding its shard."""
    seed_everything(0)
    configure_torch()
    method = METHODS[method_name]()
    model = AttributionModel("test_resnet", 5, dropout=0.2, **method.model_options())
    device = torch.device("cpu")
    prepare_model(model, world, device)
    model.train()
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(8, 3, 32, 32, generator=gen)
    strong = images.flip(-1)
    targets = torch.tensor([0, -1, 1, -1, 2, -1, -1, 0])
    mine = world.part(8)
    loss, _ = forward_loss(
        model,
        method,
        images[mine],
        strong[mine] if method.uses_strong_view else None,
        targets,
        StepPosition(epoch=0, num_epochs=2, num_known=3),
        Placement(device, world=world),
    )
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    world.average_gradients(params)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, port: int, out: str) -> None:
    """Everything the 2-process tests need, in one spawn (starting processes is the slow part)."""
    join_world(rank, port)
    world = World(size=WORLD, rank=rank, local_rank=rank)
    with process_group(world, torch.device("cpu")):  # run_training below joins this group
        for name in sorted(METHODS):
            save_file(one_step_gradients(name, world), f"{out}/{name}-{rank}.safetensors")
        _train_runs(rank, out)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.mark.slow
def test_gradients_equal_one_process(two_processes):
    """Sum over ranks in the gathers' backward, mean over ranks after: the one-process gradient."""
    tmp_path = two_processes
    for method_name in sorted(METHODS):
        reference = one_step_gradients(method_name, World())
        ranks = [load_file(str(tmp_path / f"{method_name}-{r}.safetensors")) for r in range(WORLD)]
        assert ranks[0].keys() == ranks[1].keys() == reference.keys(), method_name  # None stays None (CPL)
        # Relative to each tensor's largest gradient, floored at 1e-4 of the model's (cancelling sums
        # of ~1e-8 leave float noise of ~1e-10 that says nothing about the scale).
        floor = 1e-4 * max(g.abs().max().item() for g in reference.values())
        worst = 0.0
        for name, ref in reference.items():
            assert torch.equal(ranks[0][name], ranks[1][name]), f"{method_name} {name}: ranks disagree"
            error = (ranks[0][name] - ref).abs().max().item() / max(ref.abs().max().item(), floor)
            worst = max(worst, error)
        print(f"{method_name}: worst relative gradient error {worst:.1e}")
        assert worst < 1e-3, method_name  # float noise; a wrong scale would be >= 0.5


# --- whole runs -------------------------------------------------------------------------------------

RUN = TrainConfig(**{**CONFIG.__dict__, "epochs": 1})
DPP_RUN = TrainConfig(**{**CONFIG.__dict__, "epochs": 3})
# Whole runs: cal = CCR, ACR statistics and FFE over the gathered batch. Its ACR loss starts at epoch 1
# here: in epoch 0 the threshold is 0 and the untrained prototypes' logits are near-ties, so float noise of
# any origin (two processes, or the 1e-7 perturbation below) flips pseudo-labels and grows past 1e-4
# within the epoch. The gradient test above covers ACR's loss over the gathered batch.
RUN_METHODS = {"baseline": Baseline, "cal": lambda: CAL(acr_start_epoch=1)}


def cal_dpp() -> CAL:
    return CAL(acr_start_epoch=0, dpp=True, dpp_initial_factor=4)


def _train_runs(rank: int, out: str) -> None:
    for name in RUN_METHODS:
        result = run_training(RUN, tiny_data(), RUN_METHODS[name](), seed=0)
        if result.is_main:
            state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
            save_file(state, f"{out}/{name}-model.safetensors")
            Path(out, f"{name}-history.json").write_text(json.dumps(result.history))
            _, _, pred = predict(result.model, tiny_data().images, np.arange(40), 8, torch.device("cpu"))
            np.save(f"{out}/{name}-pred.npy", pred)
    # Every rank ends with the same weights and method state, DPP's pruning included.
    method = cal_dpp()
    result = run_training(DPP_RUN, tiny_data(), method, seed=0)
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, f"{out}/dpp-{rank}.safetensors")
    Path(out, f"dpp-{rank}.json").write_text(json.dumps(method.state()))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())


def perturbed_run(method_name: str) -> dict[str, torch.Tensor]:
    """One process from initial weights perturbed by 1e-7 (relative): the float noise floor, for the log.

    Adam divides each gradient element by its own running magnitude, so float noise in a near-zero
    gradient becomes an update of order lr, and ACR's thresholds turn it into different pseudo-labels:
    after a few epochs rounding-level differences grow to ~1e-3 however they arise (two processes and
    this perturbation alike). Hence whole runs are compared after one epoch (scale: the gradient test).
    """
    seed_everything(0)
    configure_torch()
    method = RUN_METHODS[method_name]()
    model = AttributionModel("test_resnet", 5, dropout=RUN.dropout, **method.model_options())
    noise = torch.Generator().manual_seed(7)
    init = {
        k: v * (1 + 1e-7 * torch.randn(v.shape, generator=noise)) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    return run_training(RUN, tiny_data(), method, seed=0, init_state=init).model.state_dict()


@pytest.mark.slow
def test_two_processes_train_like_one(two_processes):
    tmp_path = two_processes
    data = tiny_data()
    for method_name in RUN_METHODS:
        one = run_training(RUN, data, RUN_METHODS[method_name](), seed=0)
        reference = one.model.state_dict()
        two = load_file(str(tmp_path / f"{method_name}-model.safetensors"))
        assert two.keys() == reference.keys()
        for name, ref in reference.items():
            if not ref.is_floating_point():
                assert torch.equal(two[name], ref), f"{method_name} {name}"  # num_active, BN batch counts
        difference, floor = max_difference(two, reference), max_difference(perturbed_run(method_name), reference)
        print(f"{method_name}: max weight difference {difference:.1e} (1e-7 perturbation: {floor:.1e})")
        # Two processes sum each gradient in another order at every step, so their rounding noise is
        # larger than one 1e-7 nudge at the start: allow 10x that floor, never more than lr / 4. A run
        # whose ranks did not share gradients or statistics is off by about lr per step (~1e-2 here).
        assert difference <= min(10 * floor, RUN.lr / 4), method_name
        history = json.loads((tmp_path / f"{method_name}-history.json").read_text())
        for got, want in zip(history, one.history, strict=True):
            assert got.keys() == want.keys()
            for key in want:
                assert got[key] == pytest.approx(want[key], rel=2e-2, abs=1e-3), f"{method_name} {key}"
        _, _, pred = predict(one.model, data.images, np.arange(40), 8, torch.device("cpu"))
        assert np.array_equal(np.load(tmp_path / f"{method_name}-pred.npy"), pred), method_name
    ranks = [load_file(str(tmp_path / f"dpp-{r}.safetensors")) for r in range(WORLD)]
    states = [json.loads((tmp_path / f"dpp-{r}.json").read_text()) for r in range(WORLD)]
    assert states[0] == states[1]
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), f"cal_dpp {name}: ranks disagree"
    reference = cal_dpp()
    run_training(DPP_RUN, data, reference, seed=0)
    print(f"cal_dpp K: 2 processes {states[0]['k_trajectory']}, 1 process {reference.state()['k_trajectory']}")
    assert states[0]["k_trajectory"] == reference.state()["k_trajectory"]


def test_one_process_never_touches_torch_distributed(monkeypatch):
    import torch.distributed as dist

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.distributed used by a single process")

    for name in ("init_process_group", "is_initialized", "all_reduce", "all_gather", "barrier", "get_world_size"):
        monkeypatch.setattr(dist, name, forbidden)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    run_training(TrainConfig(**{**CONFIG.__dict__, "epochs": 1}), tiny_data(), CAL(acr_start_epoch=0), seed=0)


def test_batch_must_divide_among_processes():
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    section.update(batch_size=10, nproc=4)
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        train_config(Section(section, "train"))


# --- the stage's re-launch --------------------------------------------------------------------------


@pytest.mark.slow
def test_stage_relaunches_under_torchrun(tmp_path):
    faces, split = build_tiny_split(tmp_path)
    params = write_tiny_params(tmp_path / "params.yaml", epochs=2, nproc=2)
    proc = subprocess.run(
        stage_command(params, faces, split, tmp_path / "run", method="cal"),
        cwd=ROOT,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "world size 2" in proc.stdout
    card = json.loads((tmp_path / "run" / "model" / "card.json").read_text())
    assert card["trained_on"] == "cpu x2" and len(card["history"]) == 2
    # written, then cleared at the end but for the finished note
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["FINISHED.txt"]
    assert (tmp_path / "run" / "live" / "metrics.json").is_file()
