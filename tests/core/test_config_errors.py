"""Bad params end in one line that names the dotted key: Section getters and every stage's reader."""

from __future__ import annotations

import re
from typing import Any

import pytest
from helpers.params_edit import DELETE, changed
from helpers.paths import ROOT as REPO_ROOT

from owdfa.core.config import Section, load_params
from owdfa.core.errors import ConfigError, OwdfaError
from owdfa.data.fetch import fetch, synthetic_config
from owdfa.data.split import split_config
from owdfa.methods import build_method
from owdfa.methods.base import Baseline
from owdfa.train.config import train_config

SYNTHETIC = {
    "seed": 2025,
    "image_size": 32,
    "identities": 10,
    "real_images": 4,
    "images_per_method": 2,
    "fingerprint_strength": 1.0,
    "jpeg_quality": [80, 95],
    "sensor_noise": [0.004, 0.012],
}
SPLIT = {
    "seed": 1,
    "budgets": {"real": 10, "known": 5, "novel": 4},
    "test_fraction": 0.2,
    "labelled_fraction": 0.75,
    "val_fraction": 0.1,
    "allow_short_classes": False,
    "group_by_video": False,
    "custom_protocols": {},
}
TRAIN = {
    "backbone": "test_resnet",
    "pretrained": False,
    "dropout": 0.2,
    "epochs": 2,
    "batch_size": 8,
    "lr": 0.002,
    "weight_decay": 0.0001,
    "lr_step": 6,
    "lr_gamma": 0.1,
    "labelled_share": 0.5,
    "augment": {"flip_prob": 0.5, "crop_prob": 0.2, "crop_scale": [0.5, 1.0], "jitter_prob": 0.2, "jitter": 0.4},
    "eval_batch_size": 16,
    "device": "cpu",
}
BASELINE = {"entropy_weight": 1.0, "distill_weight": 0.2, "teacher_temp": 0.1, "student_temp": 1.0}


def expect_error(key: str, func, *args, **kwargs) -> ConfigError:
    """Call func, expecting a one-line ConfigError that names `key`."""
    with pytest.raises(ConfigError, match=re.escape(key)) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert key in message
    assert "\n" not in message
    assert info.value.key == key
    assert isinstance(info.value, OwdfaError)
    return info.value


# --------------------------------------------------------------------------------------------
# Section


def test_section_missing_key():
    err = expect_error("data.synthetic.seed", Section({}, "data.synthetic").int, "seed")
    assert "missing key" in str(err)
    assert Section({}, "data").int("seed", default=3) == 3


@pytest.mark.parametrize(
    ("getter", "value", "problem"),
    [
        ("int", "12", "expected an integer"),
        ("int", 1.5, "expected an integer"),
        ("int", True, "expected an integer"),
        ("float", "0.1", "expected a number"),
        ("float", False, "expected a number"),
        ("bool", 1, "expected true or false"),
        ("bool", "yes", "expected true or false"),
        ("str", 3, "expected a string"),
        ("optional_str", 3, "expected a string or null"),
        ("str_list", "a", "expected a list of strings"),
        ("str_list", ["a", 1], "expected a list of strings"),
        ("int_pair", [1], "expected a list of two integers"),
        ("int_pair", [1, 2.5], "expected a list of two integers"),
        ("float_pair", [1.0, "x"], "expected a list of two numbers"),
    ],
)
def test_section_wrong_type(getter, value, problem):
    section = Section({"k": value}, "stage.sub")
    err = expect_error("stage.sub.k", getattr(section, getter), "k")
    assert problem in str(err)


def test_section_ranges_and_choices():
    section = Section({"n": -1, "x": 2.5, "mode": "fast", "pair": [5, 1], "fpair": [0.0, 9.0]}, "s")
    assert "must be >= 0" in str(expect_error("s.n", section.int, "n", min=0))
    assert "must be <= 1" in str(expect_error("s.x", section.float, "x", max=1))
    assert "choose one of slow, exact" in str(expect_error("s.mode", section.str, "mode", choices=("slow", "exact")))
    assert "larger than high" in str(expect_error("s.pair", section.int_pair, "pair"))
    expect_error("s.fpair", section.float_pair, "fpair", max=1.0)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_section_rejects_non_finite_numbers(value):
    section = Section({"x": value, "pair": [0.0, value]}, "s")
    assert "must be a finite number" in str(expect_error("s.x", section.float, "x"))
    expect_error("s.x", section.float, "x", min=0.0, max=1.0)  # NaN passes every bound: checked first
    assert "must be a finite number" in str(expect_error("s.pair", section.float_pair, "pair"))


@pytest.mark.parametrize("text", [".nan", ".NaN", ".inf", "-.inf", "+.inf", ".Inf"])
def test_yaml_non_finite_forms_are_rejected(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(f"train:\n  lr: {text}\n")
    section = Section.from_file("train", path)
    assert "must be a finite number" in str(expect_error("train.lr", section.float, "lr", min=0.0))


def test_section_unknown_key_and_nesting():
    section = Section({"seed": 1, "budgets": {"real": 1, "knwon": 2}}, "split")
    expect_error("split.budgets.knwon", section.section("budgets").check_unknown, ("real", "known", "novel"))
    expect_error("split.seed", Section({"seed": [1]}, "split").section, "seed")  # not a mapping
    expect_error("data", Section, ["a"], "data")


def test_load_params_errors(tmp_path):
    expect_error(str(tmp_path / "none.yaml"), load_params, tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: 3\n")
    assert "not valid YAML" in str(expect_error(str(bad), load_params, bad))
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    expect_error(str(listed), load_params, listed)
    good = tmp_path / "params.yaml"
    good.write_text("split:\n  seed: 3\n")
    assert Section.from_file("split", good).int("seed") == 3
    expect_error("train", Section.from_file, "train", good)


# --------------------------------------------------------------------------------------------
# data.synthetic


def synthetic(data: dict[str, Any]):
    return synthetic_config(Section(data, "data.synthetic"))


def test_synthetic_config_valid():
    config = synthetic(SYNTHETIC)
    assert config.image_size == 32 and config.jpeg_quality == (80, 95) and config.sensor_noise == (0.004, 0.012)


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        ("seed", DELETE, "data.synthetic.seed"),
        ("image_size", "32", "data.synthetic.image_size"),
        ("image_size", -32, "data.synthetic.image_size"),
        ("image_size", 36, "data.synthetic.image_size"),  # not a multiple of 8
        ("identities", 1, "data.synthetic.identities"),
        ("images_per_method", -5, "data.synthetic.images_per_method"),
        ("real_images", 0, "data.synthetic.real_images"),
        ("fingerprint_strength", -0.5, "data.synthetic.fingerprint_strength"),
        ("fingerprint_strength", float("nan"), "data.synthetic.fingerprint_strength"),
        ("sensor_noise", [0.0, float("inf")], "data.synthetic.sensor_noise"),
        ("jpeg_quality", [95, 80], "data.synthetic.jpeg_quality"),
        ("jpeg_quality", [80, 101], "data.synthetic.jpeg_quality"),
        ("sensor_noise", 0.01, "data.synthetic.sensor_noise"),
        ("imge_size", 32, "data.synthetic.imge_size"),  # typo
    ],
)
def test_synthetic_config_errors(path, value, key):
    expect_error(key, synthetic, changed(SYNTHETIC, path, value))


# --------------------------------------------------------------------------------------------
# split


def split(data: dict[str, Any]):
    return split_config(Section(data, "split"))


def test_split_config_valid():
    config = split(SPLIT)
    assert (config.real_budget, config.known_budget, config.novel_budget) == (10, 5, 4)


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        ("budgets.known", DELETE, "split.budgets.known"),
        ("budgets.novel", 0, "split.budgets.novel"),
        ("budgets.real", -10, "split.budgets.real"),
        ("budgets.knwon", 3, "split.budgets.knwon"),
        ("budgets", [10, 5, 4], "split.budgets"),
        ("test_fraction", 0.95, "split.test_fraction"),
        ("test_fraction", float("nan"), "split.test_fraction"),
        ("labelled_fraction", 0, "split.labelled_fraction"),
        ("val_fraction", "0.1", "split.val_fraction"),
        ("allow_short_classes", "no", "split.allow_short_classes"),
        ("group_by_video", "yes", "split.group_by_video"),
        ("group_by_video", DELETE, "split.group_by_video"),
        ("custom_protocols", {"p1": [0, 1]}, "split.custom_protocols.p1"),
        ("custom_protocols", {"mine": []}, "split.custom_protocols.mine"),
        ("custom_protocols", {"mine": ["a"]}, "split.custom_protocols.mine"),
        ("custom_protocols", [1, 2], "split.custom_protocols"),
        ("seed", -1, "split.seed"),
        ("sed", 1, "split.sed"),
    ],
)
def test_split_config_errors(path, value, key):
    expect_error(key, split, changed(SPLIT, path, value))


# --------------------------------------------------------------------------------------------
# train


def train(data: dict[str, Any], extra: tuple[str, ...] = ()):
    return train_config(Section(data, "train"), extra)


def test_train_config_valid():
    config = train(TRAIN)
    assert config.epochs == 2 and config.augment.crop_scale == (0.5, 1.0)
    assert (config.nproc, config.precision, config.compile) == (1, "bf16", False)  # optional keys left out
    assert train({**TRAIN, "nproc": 2, "compile": True}).nproc == 2
    assert config.augment.view == "direct"  # optional: the pretrain sections leave it out
    assert train(changed(TRAIN, "augment.view", "official")).augment.view == "official"


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        ("epochs", DELETE, "train.epochs"),
        ("epochs", 0, "train.epochs"),
        ("epochs", 2.5, "train.epochs"),
        ("batch_size", "64", "train.batch_size"),
        ("batch_size", 1, "train.batch_size"),
        ("lr", -0.1, "train.lr"),
        ("lr", float("inf"), "train.lr"),
        ("augment.jitter", float("nan"), "train.augment.jitter"),
        ("nproc", 0, "train.nproc"),
        ("nproc", 3, "train.batch_size"),  # 8 rows do not split over 3 processes
        ("precision", "fp16", "train.precision"),
        ("pretrained", "false", "train.pretrained"),
        ("device", "tpu", "train.device"),
        ("epoch", 3, "train.epoch"),
        ("methods", {}, "train.methods"),  # the variants are their own top-level section
        ("augment.flip_prob", 1.5, "train.augment.flip_prob"),
        ("augment.crop_scale", [0.0, 1.0], "train.augment.crop_scale"),
        ("augment.jiter", 0.4, "train.augment.jiter"),
        ("augment", None, "train.augment"),
        ("augment.view", "torchvision", "train.augment.view"),  # official | direct
        ("augment.view", 1, "train.augment.view"),
    ],
)
def test_train_config_errors(path, value, key):
    expect_error(key, train, changed(TRAIN, path, value))


# --------------------------------------------------------------------------------------------
# methods


def baseline(data: dict[str, Any]):
    return build_method("baseline", Section({"baseline": {"method": "baseline", **data}}, "methods"))


def test_build_method_valid():
    method = baseline(BASELINE)
    assert isinstance(method, Baseline)
    assert (method.entropy_weight, method.distill_weight, method.teacher_temp, method.student_temp) == (
        1.0,
        0.2,
        0.1,
        1.0,
    )


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        ("teacher_temp", 0, "methods.baseline.teacher_temp"),
        ("teacher_temp", 0.0, "methods.baseline.teacher_temp"),
        ("teacher_temp", float("nan"), "methods.baseline.teacher_temp"),
        ("distill_weight", float("inf"), "methods.baseline.distill_weight"),
        ("student_temp", -1.0, "methods.baseline.student_temp"),
        ("entropy_weight", -1.0, "methods.baseline.entropy_weight"),
        ("distill_weight", DELETE, "methods.baseline.distill_weight"),
        ("distill_weight", "0.2", "methods.baseline.distill_weight"),
        ("teacher_tmp", 0.1, "methods.baseline.teacher_tmp"),
    ],
)
def test_build_method_errors(path, value, key):
    expect_error(key, baseline, changed(BASELINE, path, value))


def test_build_method_unknown_variant_and_method():
    methods = Section({"baseline": {"method": "baseline", **BASELINE}}, "methods")
    assert "unknown method 'cal2'" in str(expect_error("run.methods", build_method, "cal2", methods))
    bad_method = Section({"mine": {"method": "nope", **BASELINE}}, "methods")
    assert "baseline, cal, cpl" in str(expect_error("methods.mine.method", build_method, "mine", bad_method))
    no_method = Section({"mine": dict(BASELINE)}, "methods")
    expect_error("methods.mine.method", build_method, "mine", no_method)
    # params written before the key was renamed: the error says what it is called now
    old_key = Section({"mine": {"loss": "baseline", **BASELINE}}, "methods")
    assert "method:" in str(expect_error("methods.mine.loss", build_method, "mine", old_key))


def test_variant_bases_that_cannot_resolve():
    def variants(**extra: dict) -> Section:
        return Section({"baseline": {"method": "baseline", **BASELINE}, **extra}, "methods")

    expect_error("methods.mine.base", build_method, "mine", variants(mine={"base": "nothing"}))
    cycle = variants(a={"base": "b"}, b={"base": "a"})
    assert "a -> b -> a" in str(expect_error("methods.b.base", build_method, "a", cycle))
    expect_error("methods.mine.base", build_method, "mine", variants(mine={"base": 3}))
    # a key the base's method does not have is a typo in the variant that adds it
    expect_error("methods.mine.ccr", build_method, "mine", variants(mine={"base": "baseline", "ccr": True}))
    deep = variants(**{f"v{i}": {"base": f"v{i + 1}"} for i in range(40)}, v40={"base": "baseline"})
    assert "deep" in str(expect_error("methods.v32.base", build_method, "v0", deep))


# --------------------------------------------------------------------------------------------
# fetch


def test_fetch_hub_without_its_section_names_the_key(tmp_path):
    section = Section({"source": "hub", "synthetic": SYNTHETIC}, "data")
    expect_error("data.hub", fetch, section, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"source": "folder", "synthetic": SYNTHETIC}, "data.folder"),
        ({"source": "folder", "synthetic": SYNTHETIC, "folder": {"path": None}}, "data.folder.path"),
        ({"source": "ftp", "synthetic": SYNTHETIC}, "data.source"),
        ({"synthetic": SYNTHETIC}, "data.source"),
        ({"source": "synthetic", "synthetic": SYNTHETIC, "sorce": "hub"}, "data.sorce"),
        ({"source": "synthetic"}, "data.synthetic"),
        ({"source": "synthetic", "synthetic": {**SYNTHETIC, "image_size": 12}}, "data.synthetic.image_size"),
    ],
)
def test_fetch_errors(tmp_path, data, key):
    expect_error(key, fetch, Section(data, "data"), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


# --------------------------------------------------------------------------------------------
# evaluate

EVALUATE = load_params(REPO_ROOT / "params.yaml")["evaluate"]


def evaluate_section(data: dict[str, Any]):
    from owdfa.evaluate.evaluation import evaluate_config

    return evaluate_config(Section(data, "evaluate"))


def test_evaluate_config_valid():
    config = evaluate_section(EVALUATE)
    assert config.checkpoint in ("last", "val_best") and config.mc_dropout_passes >= 1


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        ("checkpoint", "best_on_test", "evaluate.checkpoint"),
        ("ece_bins", 0, "evaluate.ece_bins"),
        ("kmeans_max_factor", float("inf"), "evaluate.kmeans_max_factor"),
        ("uncertainty_maps", DELETE, "evaluate.uncertainty_maps"),
        ("uncertainty_maps.per_class", 21, "evaluate.uncertainty_maps.per_class"),
        ("uncertainty_maps.classes", 0, "evaluate.uncertainty_maps.classes"),
        ("k_estimators", ["gcd", "gcd"], "evaluate.k_estimators"),
        ("mc_dropout_passes", DELETE, "evaluate.mc_dropout_passes"),
        ("uncertainty_maps.window", 0, "evaluate.uncertainty_maps.window"),
        ("uncertainty_maps.strid", 4, "evaluate.uncertainty_maps.strid"),
        ("tsne_max_points", -1, "evaluate.tsne_max_points"),
        ("precision", "fp16", "evaluate.precision"),
        ("kmeans", True, "evaluate.kmeans"),
    ],
)
def test_evaluate_config_errors(path, value, key):
    expect_error(key, evaluate_section, changed(EVALUATE, path, value))
