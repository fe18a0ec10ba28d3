"""CPL's training recipe around its loss: the class-balanced sampler, its own view, its optimiser settings.

Expected values follow the official code's rules (TencentYoutuResearch/OpenWorld-DeepFakeAttribution:
owdfa/datasets/utils/sampler.py "balance" mode, owdfa/datasets/utils/transforms.py, configs/train.yaml),
worked out by hand in the comments.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter

import numpy as np
import pytest
import torch
import yaml
from helpers.paths import ROOT as REPO_ROOT

import owdfa.train.checkpoints as checkpoints
import owdfa.train.config as train_config_module
import owdfa.train.loop as training
import owdfa.train.stages as training_stages
from owdfa.core.config import Section
from owdfa.core.errors import ConfigError
from owdfa.methods import resolve_variant
from owdfa.methods.base import Baseline, Method, Supervised
from owdfa.methods.cal import CAL
from owdfa.methods.cpl import CPL
from owdfa.train.config import TrainConfig, TrainData, with_method_optimizer
from owdfa.train.loop import run_training
from owdfa.train.samplers import BalancedSampler, LabelledShareSampler, build_sampler, least_drawn_class
from owdfa.train.state import RunOptions

ROOT = REPO_ROOT


def data_of(labelled: dict[int, list[int]], unlabelled: list[int], size: int = 64) -> TrainData:
    """TrainData over a blank cache: labelled rows per class, unlabelled rows (no validation rows)."""
    lab_rows = [r for rows in labelled.values() for r in rows]
    lab_targets = [c for c, rows in labelled.items() for _ in rows]
    return TrainData(
        images=np.zeros((size, 4, 4, 3), dtype=np.uint8),
        labelled_rows=np.array(lab_rows, dtype=np.int64),
        labelled_targets=np.array(lab_targets, dtype=np.int64),
        unlabelled_rows=np.array(unlabelled, dtype=np.int64),
        val_rows=np.zeros(0, dtype=np.int64),
        val_targets=np.zeros(0, dtype=np.int64),
        num_known=len(labelled),
        num_classes=len(labelled) + 1,
    )


def draws(sampler: BalancedSampler, gen: torch.Generator, batches: int) -> list[tuple[list[int], list[int]]]:
    return [(rows.tolist(), targets.tolist()) for rows, targets in (sampler.draw(gen) for _ in range(batches))]


# --- which sampler -------------------------------------------------------------------------------


def test_cpl_chooses_the_class_balanced_sampler_the_others_cals():
    data = data_of({0: [0, 1], 1: [2]}, [3, 4, 5])
    config = TrainConfig(batch_size=4)
    assert CPL.sampler == "class_balanced" and Method.sampler == "labelled_share"
    assert isinstance(build_sampler(data, config, CPL()), BalancedSampler)
    for method in (Baseline(), CAL()):
        assert type(build_sampler(data, config, method)) is LabelledShareSampler


# --- the official "balance" rule -------------------------------------------------------------------


def official_candidates(counts: list[int]) -> list[int]:
    """The official tie list, by its scan: start from class 0; a strictly smaller count restarts the
    list with that class, and on the same pass an equal count appends it (so a new minimum goes in twice)."""
    low, listed = counts[0], [0]
    for c in range(1, len(counts)):
        if counts[c] < low:
            low, listed = counts[c], [c]
        if counts[c] == low:
            listed.append(c)
    return listed


@pytest.mark.parametrize(
    ("counts", "u", "expected"),
    [
        ([0, 0, 0], 0.0, 0),  # list [0, 1, 2]
        ([0, 0, 0], 0.34, 1),
        ([0, 0, 0], 0.99, 2),
        ([1, 0, 0], 0.2, 1),  # list [1, 1, 2]: class 1 twice (it set the new minimum, then tied itself)
        ([1, 0, 0], 0.6, 1),
        ([1, 0, 0], 0.7, 2),
        ([0, 1, 0], 0.49, 0),  # list [0, 2]: class 0 is the initial entry, listed once
        ([0, 1, 0], 0.5, 2),
        ([1, 1, 0], 0.0, 2),  # list [2, 2]
        ([2, 1, 1, 1], 0.45, 1),  # list [1, 1, 2, 3]
        ([2, 1, 1, 1], 0.5, 2),
        ([2, 1, 1, 1], 0.99, 3),
        ([3], 0.5, 0),
    ],
)
def test_least_drawn_class_by_hand(counts, u, expected):
    assert least_drawn_class(counts, u) == expected


def test_least_drawn_class_matches_the_official_scan_everywhere():
    for counts in itertools.product(range(3), repeat=4):
        listed = official_candidates(list(counts))
        for k in range(len(listed)):
            u = (k + 0.5) / len(listed)
            assert least_drawn_class(list(counts), u) == listed[k], (counts, u)


def test_alternation_cycling_and_epoch_boundaries_by_hand():
    # One labelled class (rows 5, 6) and three unlabelled rows (20, 21, 22); batch 4. An epoch is
    # 2 + 3 = 5 draws: one batch of 4 is trained on and the fifth draw (the official short last batch)
    # is drawn and dropped. Draws alternate U, L, U, L, ... from the very first, across epochs;
    # each pool is walked cyclically in one fixed order: unlabelled (p0, p1, p2), labelled (q0, q1).
    #   draws  1-5 : U p0, L q0, U p1, L q1 | U p2 dropped
    #   draws 6-10 : L q0, U p0, L q1, U p1 | L q0 dropped
    #   draws 11-15: U p2, L q1, U p0, L q0 | U p1 dropped
    #   draws 16-20: L q1, U p2, L q0, U p0 | L q1 dropped
    #   draws 21-25: U p1, L q0, U p2, L q1 | U p0 dropped
    data = data_of({0: [5, 6]}, [20, 21, 22])
    sampler = BalancedSampler.build(data, TrainConfig(batch_size=4), CPL())
    assert sampler.steps == 1
    batches = draws(sampler, torch.Generator().manual_seed(0), 5)
    (p0, q0, p1, q1), targets = batches[0]
    assert targets == [-1, 0, -1, 0]
    assert {q0, q1} == {5, 6} and {p0, p1} < {20, 21, 22} and p0 != p1
    (p2,) = {20, 21, 22} - {p0, p1}
    assert batches[1] == ([q0, p0, q1, p1], [0, -1, 0, -1])
    assert batches[2] == ([p2, q1, p0, q0], [-1, 0, -1, 0])
    assert batches[3] == ([q1, p2, q0, p0], [0, -1, 0, -1])
    assert batches[4] == ([p1, q0, p2, q1], [-1, 0, -1, 0])


def test_labelled_half_is_class_balanced_and_each_class_cycles():
    # Classes of 1, 2 and 5 labelled rows, 4 unlabelled rows; 12 draws per epoch = 3 batches of 4, none
    # dropped. Every other draw is unlabelled; after every batch (2 labelled draws) the per-class
    # labelled counts differ by at most 1 (the least-drawn rule); a class's rows recur in a fixed cycle.
    labelled = {0: [0], 1: [1, 2], 2: [3, 4, 5, 6, 7]}
    data = data_of(labelled, [10, 11, 12, 13])
    sampler = BalancedSampler.build(data, TrainConfig(batch_size=4), CPL())
    assert sampler.steps == 3
    counts = Counter()
    per_class: dict[int, list[int]] = {c: [] for c in labelled}
    for rows, targets in draws(sampler, torch.Generator().manual_seed(1), 60):
        assert [t == -1 for t in targets] == [True, False, True, False]
        for row, target in zip(rows, targets, strict=True):
            if target >= 0:
                assert row in labelled[target]
                counts[target] += 1
                per_class[target].append(row)
        assert max(counts.values()) - min(counts[c] for c in labelled) <= 1
    for c, rows in per_class.items():
        size = len(labelled[c])
        assert sorted(rows[:size]) == labelled[c]
        assert all(rows[i] == rows[i % size] for i in range(len(rows)))  # one fixed order, repeated


def test_tie_break_probabilities_follow_the_official_duplicates():
    # Three labelled classes of one row each, no unlabelled draws, batch 3 = one round of the rule.
    # First pick: uniform over [0, 1, 2]. After 0: counts [1, 0, 0] -> list [1, 1, 2] -> 1 w.p. 2/3;
    # after 1: [0, 1, 0] -> [0, 2] -> 1/2 each; after 2: [0, 0, 1] -> [0, 1] -> 1/2 each. Third: forced.
    # So P(0,1,2) = 1/3 * 2/3 = 2/9, P(0,2,1) = 1/9, and 1/6 for each of the four others.
    data = data_of({0: [0], 1: [1], 2: [2]}, [])
    sampler = BalancedSampler(data, batch_size=3, use_unlabelled=False)
    rounds = 6000
    seen = Counter(tuple(t) for _, t in draws(sampler, torch.Generator().manual_seed(2), rounds))
    expected = {
        (0, 1, 2): 2 / 9,
        (0, 2, 1): 1 / 9,
        (1, 0, 2): 1 / 6,
        (1, 2, 0): 1 / 6,
        (2, 0, 1): 1 / 6,
        (2, 1, 0): 1 / 6,
    }
    assert set(seen) == set(expected)
    for order, p in expected.items():
        assert seen[order] / rounds == pytest.approx(p, abs=0.02), order


def test_without_unlabelled_rows_every_draw_is_labelled():
    # No unlabelled pool (or a method not using it): no alternation, only least-drawn-class draws.
    # Classes 0 (rows 0, 1) and 1 (row 2), batch 4: two rounds, each class twice; class 1 repeats row 2.
    config = TrainConfig(batch_size=4)
    for data, method in (
        (data_of({0: [0, 1], 1: [2]}, []), CPL()),
        (data_of({0: [0, 1], 1: [2]}, [7, 8]), Supervised()),
    ):
        sampler = BalancedSampler.build(data, config, method)
        assert not sampler.use_unlabelled and sampler.steps == 1
        rows, targets = sampler.draw(torch.Generator().manual_seed(0))
        assert sorted(targets.tolist()) == [0, 0, 1, 1]
        assert sorted(rows.tolist()) == [0, 1, 2, 2]


# --- determinism and resuming ------------------------------------------------------------------------


def test_same_generator_same_batches_on_every_rank():
    data = data_of({0: [0, 1, 2], 1: [3], 2: [4, 5]}, list(range(10, 17)))
    config = TrainConfig(batch_size=4)
    ranks = [draws(BalancedSampler.build(data, config, CPL()), torch.Generator().manual_seed(3), 12) for _ in range(2)]
    assert ranks[0] == ranks[1]
    other = draws(BalancedSampler.build(data, config, CPL()), torch.Generator().manual_seed(4), 12)
    assert other != ranks[0]


def test_state_round_trip_continues_the_stream_exactly():
    # 13 draws per epoch, batch 4: 3 batches and 1 dropped draw. Stop after 2 epochs (an epoch end, as
    # checkpoints are), put the state and the generator into a fresh sampler: the next epochs match.
    data = data_of({0: [0, 1, 2], 1: [3], 2: [4, 5]}, list(range(10, 17)))
    config = TrainConfig(batch_size=4)
    whole_gen = torch.Generator().manual_seed(5)
    whole = draws(BalancedSampler.build(data, config, CPL()), whole_gen, 12)
    gen = torch.Generator().manual_seed(5)
    first = BalancedSampler.build(data, config, CPL())
    assert draws(first, gen, 6) == whole[:6]
    tensors, rest = checkpoints._split("sampler", first.state_dict())  # as save_checkpoint stores it
    assert set(tensors) == {"sampler/orders"}
    saved_gen = gen.get_state()
    resumed = BalancedSampler.build(data, config, CPL())
    resumed.load_state_dict(checkpoints._join("sampler", tensors, rest))
    gen = torch.Generator()
    gen.set_state(saved_gen)
    assert draws(resumed, gen, 6) == whole[6:]


def test_cpl_run_resumes_bit_for_bit_with_the_balanced_sampler(tmp_path):
    # A 3-epoch CPL run interrupted after epoch 1's checkpoint and resumed ends like the uninterrupted one.
    data = data_of({0: [0, 1, 2], 1: [3, 4], 2: [5]}, list(range(6, 19)), size=20)
    data.images = np.random.default_rng(0).integers(0, 256, size=(20, 16, 16, 3), dtype=np.uint8)
    data.val_rows, data.val_targets = np.array([0, 3, 5]), np.array([0, 1, 2])
    config = TrainConfig(backbone="test_resnet", epochs=3, batch_size=4, eval_batch_size=8, device="cpu")
    whole = run_training(config, data, CPL(), seed=0)

    class Stop(Exception):
        pass

    method = CPL()
    hook = method.on_epoch_end

    def stop_at_second(model, optimizer, epoch):
        if epoch == 1:
            raise Stop
        return hook(model, optimizer, epoch)

    method.on_epoch_end = stop_at_second
    with pytest.raises(Stop):
        run_training(config, data, method, seed=0, options=RunOptions(checkpoint_dir=tmp_path))
    found = checkpoints.read_checkpoint(tmp_path / "epoch-0001.safetensors")
    assert "sampler/orders" in found.tensors and found.meta["sampler"]["counts"]
    resumed = run_training(config, data, CPL(), seed=0, options=RunOptions(checkpoint_dir=tmp_path))
    assert resumed.history == whole.history
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


# --- the view the loop feeds CPL ------------------------------------------------------------------------


def test_single_view_methods_get_cpls_view(monkeypatch):
    calls: Counter[str] = Counter()

    def recording(name, view):
        def wrapped(images, config, gen):
            calls[name] += 1
            return view(images, config, gen)

        return wrapped

    for name in ("weak_view", "strong_view", "single_view"):
        monkeypatch.setattr(training, name, recording(name, getattr(training, name)))
    data = data_of({0: [0, 1], 1: [2, 3]}, list(range(4, 12)), size=12)
    data.images = np.random.default_rng(0).integers(0, 256, size=(12, 16, 16, 3), dtype=np.uint8)
    config = TrainConfig(backbone="test_resnet", epochs=1, batch_size=4, eval_batch_size=8, device="cpu")
    run_training(config, data, CPL(), seed=0)
    assert calls == {"single_view": 3}  # 12 draws / 4 = 3 steps, never the weak (flip-only) view
    calls.clear()
    run_training(config, data, Baseline(), seed=0)
    assert calls["single_view"] == 0 and calls["weak_view"] == calls["strong_view"] > 0


# --- optimiser overrides -------------------------------------------------------------------------------


def params_train() -> dict:
    return copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text())["train"])


def test_cpl_variant_carries_the_official_weight_decay_and_gamma():
    # Official configs/train.yaml (CPL block): Adam lr 2e-4, weight_decay 1e-5, StepLR step 10, gamma 0.2.
    train = params_train()
    base = train_config_module.train_config(Section(train, "train"))
    methods = Section.from_file("methods", ROOT / "params.yaml")
    cpl = with_method_optimizer(base, methods.section("cpl"))
    assert cpl.weight_decay == 1e-5 and cpl.lr_gamma == 0.2
    assert (cpl.lr, cpl.lr_step) == (base.lr, base.lr_step)  # shared schedule: official lr/step equal CAL's
    assert with_method_optimizer(base, methods.section("cal")) == base  # no overrides: unchanged


def test_optimizer_override_keys_are_checked():
    base = TrainConfig()

    def variant(optimizer):
        return Section({"method": "cpl", "optimizer": optimizer}, "methods.cpl")

    assert with_method_optimizer(base, variant({"lr": 1e-3, "lr_step": 3})) == TrainConfig(lr=1e-3, lr_step=3)
    for bad, key in (
        ({"momentum": 0.9}, "methods.cpl.optimizer.momentum"),
        ({"lr_gamma": 1.5}, "methods.cpl.optimizer.lr_gamma"),
        ({"lr_step": 0}, "methods.cpl.optimizer.lr_step"),
        ({"weight_decay": "small"}, "methods.cpl.optimizer.weight_decay"),
    ):
        with pytest.raises(ConfigError) as err:
            with_method_optimizer(base, variant(bad))
        assert key in str(err.value)
    with pytest.raises(ConfigError, match="methods.cpl.optimizer"):
        with_method_optimizer(base, variant([0.2]))
    # The loss object accepts the key beside its fields (it is the training config's).
    params = {**yaml.safe_load((ROOT / "params.yaml").read_text())["methods"]["cpl"]}
    assert CPL.from_section(Section(params, "methods.cpl")) == CPL()


def test_pipeline_train_hands_the_overridden_config_to_training(monkeypatch, tmp_path):
    seen: list[TrainConfig] = []

    class Captured(Exception):
        pass

    def capture(config, *args, **kwargs):
        seen.append(config)
        raise Captured

    monkeypatch.setattr(training_stages, "load_train_data", lambda *a: (data_of({0: [0]}, [1]), {"protocol": "p1"}))
    monkeypatch.setattr(training_stages, "run_training", capture)
    section = Section(params_train(), "train")
    methods = Section.from_file("methods", ROOT / "params.yaml")
    for name in ("cpl", "cal"):
        variant = resolve_variant(methods, name)
        with pytest.raises(Captured):
            paths = training_stages.RunPaths(tmp_path, tmp_path, tmp_path / "out")
            training_stages.train(section, variant, name, 0, paths)
    cpl, cal = seen
    assert (cpl.weight_decay, cpl.lr_gamma) == (1e-5, 0.2)
    assert (cal.weight_decay, cal.lr_gamma) == (section.float("weight_decay"), section.float("lr_gamma"))


def test_overrides_reach_adam_and_steplr(monkeypatch):
    adams: list[torch.optim.Adam] = []

    class RecordingAdam(torch.optim.Adam):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            adams.append(self)

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    data = data_of({0: [0, 1], 1: [2, 3]}, list(range(4, 8)), size=8)
    data.images = np.random.default_rng(0).integers(0, 256, size=(8, 16, 16, 3), dtype=np.uint8)
    base = TrainConfig(backbone="test_resnet", epochs=3, batch_size=4, lr=1e-3, lr_step=1, device="cpu")
    variant = Section({"method": "cpl", "optimizer": {"weight_decay": 1.0e-5, "lr_gamma": 0.2}}, "methods.cpl")
    result = run_training(with_method_optimizer(base, variant), data, CPL(), seed=0)
    assert [g["weight_decay"] for g in adams[0].param_groups] == [1e-5]
    # StepLR(step 1, gamma .2), logged before each epoch's scheduler step: 1e-3, 2e-4, 4e-5.
    assert [r["lr"] for r in result.history] == pytest.approx([1e-3, 2e-4, 4e-5], rel=1e-12)
