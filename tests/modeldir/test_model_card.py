"""The typed model card and face-preprocessing record: exact bytes, every check, and `attribute()` from Python."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.tiny_model import NAMES, NUM_KNOWN, save_tiny_model_dir
from PIL import Image

from owdfa import cli
from owdfa.attribution import Attributor, attribute
from owdfa.core.errors import DataError
from owdfa.data.face_preprocessing import FacePreprocessing, read_preprocessing
from owdfa.modeldir.card import (
    CardClass,
    ImportedCard,
    MethodCard,
    ModelCard,
    PretrainCard,
    SkippedPretraining,
    TrainCard,
    card_kind,
    inspect_card,
    read_card,
)
from owdfa.modeldir.io import save_model_dir

# What the train stage writes, by hand: sorted keys, 2-space indent, `pretrained_from` and
# `val_best_epoch` written as null, the preprocessing record nested as in preprocessing.json.
TRAIN_CARD = """\
{
  "backbone": "test_resnet",
  "benchmark": "synthetic",
  "classes": [
    {
      "folder": "0_Real",
      "known": true,
      "label": 0,
      "name": "Real",
      "target": 0
    },
    {
      "folder": "3_Swap",
      "known": false,
      "label": 3,
      "name": "Swap",
      "target": 1
    }
  ],
  "dropout": 0.2,
  "format": 1,
  "history": [
    {
      "epoch": 0,
      "lr": 0.002,
      "train/loss": 1.5,
      "val/acc": 0.25
    }
  ],
  "image_size": 32,
  "loss": "cal",
  "method": "cal_dpp",
  "method_params": {
    "dpp": true,
    "loss": "cal"
  },
  "method_state": {
    "k_trajectory": [
      20,
      2
    ],
    "tau_novel": 0.9224006295204162
  },
  "model_options": {
    "ffe": true,
    "patch_features": false
  },
  "normalisation": {
    "mean": [
      0.48500001430511475,
      0.4560000002384186,
      0.4059999883174896
    ],
    "std": [
      0.2290000021457672,
      0.2240000069141388,
      0.22499999403953552
    ]
  },
  "num_active": 2,
  "num_classes_true": 2,
  "num_known": 1,
  "num_prototypes": 20,
  "numerics": {
    "mode": "exact",
    "threads": 2
  },
  "params_hash": "0a2bdb56479dbcb7",
  "preprocessing": {
    "detector": {
      "threshold": 0.0,
      "upsample": 0
    },
    "image_size": 32,
    "margin": 1.2,
    "mode": "resize",
    "padding": 0.25,
    "predictor": null
  },
  "pretrained_from": null,
  "protocol": "p1",
  "seed": 0,
  "trained_on": "cpu",
  "val_best_epoch": null
}
"""

# data/faces/preprocessing.json of the committed pipeline, and an aligned record
RESIZE_RECORD = """\
{
  "detector": {
    "threshold": 0.0,
    "upsample": 0
  },
  "image_size": 64,
  "margin": 1.2,
  "mode": "resize",
  "padding": 0.25,
  "predictor": null
}
"""
ALIGNED_RECORD = (
    RESIZE_RECORD.replace('"threshold": 0.0', '"threshold": -0.5')
    .replace('"upsample": 0', '"upsample": 1')
    .replace('"mode": "resize"', '"mode": "aligned"')
    .replace('"predictor": null', '"predictor": "auto"')
)


def train_card() -> TrainCard:
    """TRAIN_CARD built as the train stage builds it (`owdfa.train.stages._card`)."""
    return TrainCard(
        backbone="test_resnet",
        num_prototypes=20,
        num_active=2,
        num_known=1,
        dropout=0.2,
        image_size=32,
        classes=(
            CardClass(target=0, label=0, name="Real", folder="0_Real", known=True),
            CardClass(target=1, label=3, name="Swap", folder="3_Swap", known=False),
        ),
        num_classes_true=2,
        benchmark="synthetic",
        protocol="p1",
        normalisation={
            "mean": [0.48500001430511475, 0.4560000002384186, 0.4059999883174896],
            "std": [0.2290000021457672, 0.2240000069141388, 0.22499999403953552],
        },
        val_best_epoch=None,
        history=[{"epoch": 0, "lr": 0.002, "train/loss": 1.5, "val/acc": 0.25}],
        trained_on="cpu",
        numerics={"mode": "exact", "threads": 2},
        params_hash="0a2bdb56479dbcb7",
        preprocessing=FacePreprocessing("resize", 32, upsample=0, threshold=0.0, margin=1.2, padding=0.25),
        method="cal_dpp",
        loss="cal",
        method_params={"dpp": True, "loss": "cal"},
        model_options={"ffe": True, "patch_features": False},
        method_state={"k_trajectory": [20, 2], "tau_novel": 0.9224006295204162},
        seed=0,
        pretrained_from=None,
    )


def write_raw(out: Path, raw: dict[str, Any]) -> Path:
    save_model_dir(out, None, {k: v for k, v in raw.items() if k != "format"})
    return out


# --------------------------------------------------------------------------------------------
# exact bytes


def test_the_train_stages_card_is_written_as_by_hand(tmp_path: Path) -> None:
    card = train_card()
    assert card.to_json() == TRAIN_CARD
    save_model_dir(tmp_path / "m", None, card)
    assert (tmp_path / "m" / "card.json").read_text() == TRAIN_CARD
    again = ModelCard.read(tmp_path / "m")
    assert again == card and again.to_json() == TRAIN_CARD  # read and written again: the same bytes
    assert again.k_trajectory == [20, 2] and again.k_hat == 2 and again.estimates_k and not again.dpp_faithful


def common_fields(card: ModelCard) -> dict[str, Any]:
    """The fields every kind of card has, as `card` holds them."""
    return {field.name: getattr(card, field.name) for field in fields(ModelCard)}


def test_a_pretrain_card_records_enabled_and_no_train_fields(tmp_path: Path) -> None:
    card = PretrainCard(**{**common_fields(train_card()), "method": "supervised", "num_prototypes": 1, "num_active": 1})
    written = json.loads(card.to_json())
    assert written["enabled"] is True and "pretrained_from" not in written and "loss" not in written
    assert written["val_best_epoch"] is None and "preprocessing" in written  # recorded even when null
    assert not {"method_params", "method_state", "model_options"} & set(written)
    save_model_dir(tmp_path / "m", None, card)
    again = ModelCard.read(tmp_path / "m")  # class 1 targets a class without a prototype: allowed
    assert again == card and again.k_trajectory == [1] and not again.estimates_k
    assert replace(card, preprocessing=None).to_dict()["preprocessing"] is None


def test_an_imported_card_records_no_pretrained_from(tmp_path: Path) -> None:
    # `pretrained_from: null` means "trained from scratch" on a train stage's card only; an imported
    # model's card (one with `source`, no `enabled`) leaves it out as any other None field
    method_fields = {field.name: getattr(train_card(), field.name) for field in fields(MethodCard)}
    card = ImportedCard(**method_fields, source={"filename": "protocol1_seed2025.ckpt", "sha256": "0" * 64})
    card = replace(card, seed=None)
    written = json.loads(card.to_json())
    assert "pretrained_from" not in written and "seed" not in written and written["source"] == card.source
    assert written["val_best_epoch"] is None and "preprocessing" in written  # recorded even when null
    assert "pretrained_from" in json.loads(train_card().to_json())
    save_model_dir(tmp_path / "m", None, card)
    again = ModelCard.read(tmp_path / "m")
    assert again == card and again.to_json() == (tmp_path / "m" / "card.json").read_text()


def test_a_skipped_pretraining_card(tmp_path: Path) -> None:
    save_model_dir(tmp_path / "m", None, SkippedPretraining())
    assert (tmp_path / "m" / "card.json").read_text() == '{\n  "enabled": false,\n  "format": 1\n}\n'
    assert read_card(tmp_path / "m") == SkippedPretraining()
    with pytest.raises(DataError, match="pretraining was skipped") as refused:
        ModelCard.read(tmp_path / "m")
    inspection = inspect_card(tmp_path / "m")
    assert inspection.card == SkippedPretraining() and inspection.problem == str(refused.value)
    write_raw(tmp_path / "odd", {"enabled": False, "backbone": "test_resnet"})
    with pytest.raises(DataError, match=r"card\.backbone: unexpected in a skipped pretraining's card"):
        read_card(tmp_path / "odd")


def test_a_tagged_timm_name_is_an_architecture_built_offline(tmp_path: Path) -> None:
    raw = {**json.loads(TRAIN_CARD), "backbone": "resnet18.a1_in1k"}
    assert ModelCard.read(write_raw(tmp_path / "m", raw)).backbone == "resnet18.a1_in1k"


# --------------------------------------------------------------------------------------------
# every check: one line naming the file and the key

PREP = json.loads(TRAIN_CARD)["preprocessing"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"backbone": "hf-hub:someone/model"}, "card.backbone: 'hf-hub:someone/model' is fetched from the network"),
        ({"backbone": "no_such_net"}, "card.backbone: 'no_such_net' is not a timm architecture"),
        ({"backbone": None}, "card.backbone: expected a string"),
        ({"num_prototypes": 0}, "card.num_prototypes: must be >= 1"),
        ({"num_prototypes": 2.0}, "card.num_prototypes: expected an integer"),
        ({"num_active": 21}, "card.num_active: must be <= 20"),
        ({"num_known": "1"}, "card.num_known: expected an integer"),
        ({"image_size": 2048}, "card.image_size: must be <= 1024"),
        ({"dropout": 1.0}, "card.dropout: must be < 1"),
        ({"dropout": float("inf")}, "card.dropout: must be"),
        ({"model_options": {"ffe": 1}}, "card.model_options.ffe: expected true or false"),
        ({"model_options": {"warp": True}}, "card.model_options.warp: unknown key"),
        ({"num_classes_true": 0}, "card.num_classes_true: must be >= 1"),
        ({"classes": {"0": "Real"}}, "card.classes: expected a list"),
        ({"classes": [{"target": 2, "name": "x"}]}, "card.classes[0].target: must be <= 1"),
        ({"classes": [{"target": 0}]}, "card.classes[0].name: missing key"),
        ({"classes": [{"target": 0, "name": "x", "known": "yes"}]}, "card.classes[0].known: expected true or false"),
        ({"classes": [{"target": 0, "name": "x", "colour": "red"}]}, "card.classes[0].colour: unknown key"),
        ({"method_state": [20, 2]}, "card.method_state: expected a mapping"),
        ({"method_state": {"k_trajectory": [20, 21]}}, "card.method_state.k_trajectory: expected a list of counts"),
        ({"preprocessing": {**PREP, "mode": "squash"}}, "card.preprocessing.mode: unknown value 'squash'"),
        ({"preprocessing": {**PREP, "image_size": 64}}, "card.preprocessing.image_size: 64 differs from the model's"),
        ({"preprocessing": {**PREP, "detector": {"upsample": 12}}}, "card.preprocessing.detector.upsample: must be"),
        ({"preprocessing": {**PREP, "margin": float("nan")}}, "card.preprocessing.margin: must be a finite number"),
        ({"preprocessing": {**PREP, "scale": 2}}, "card.preprocessing.scale: unknown key"),
        ({"benchmark": 7}, "card.benchmark: expected a string or null"),
        ({"method": ["cal"]}, "card.method: expected a string or null"),
        ({"seed": -1}, "card.seed: must be >= 0"),
        ({"enabled": "yes"}, "card.enabled: expected true or false"),
        ({"method_params": [1]}, "card.method_params: expected a mapping"),
        ({"numerics": "exact"}, "card.numerics: expected a mapping"),
        ({"normalisation": {"mean": "x", "std": []}}, "card.normalisation.mean: expected a list of numbers"),
        ({"history": [1, 2]}, "card.history: expected a list of mappings"),
        ({"val_best_epoch": -1}, "card.val_best_epoch: must be >= 0"),
        ({"pretrained_from": 3}, "card.pretrained_from: expected a string or null"),
        ({"colour": "red"}, "card.colour: unknown key"),
    ],
)
def test_each_bad_field_is_one_line_naming_the_key(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    target = write_raw(tmp_path / "m", {**json.loads(TRAIN_CARD), **change})
    with pytest.raises(DataError) as refused:
        ModelCard.read(target)
    text = str(refused.value)
    assert text.startswith(f"{target}/card.json: card.") and "\n" not in text and message in text, text
    assert "params.yaml" not in text
    inspection = inspect_card(target)  # `owdfa info`: the card as far as it goes, and the same problem
    assert inspection.problem == text and inspection.card.protocol == "p1"


# --------------------------------------------------------------------------------------------
# the kinds: told apart by their tag keys, each with only its own fields


def test_the_kind_is_read_from_the_tag_keys() -> None:
    train = json.loads(TRAIN_CARD)
    assert card_kind(train) is TrainCard
    assert card_kind({**train, "enabled": True}) is PretrainCard
    assert card_kind({**train, "source": {"sha256": "0" * 64}}) is ImportedCard
    assert card_kind({**train, "source": None}) is TrainCard  # a null tag is no tag


def pretrain_raw() -> dict[str, Any]:
    common = json.loads(TRAIN_CARD)
    for key in ("loss", "method_params", "method_state", "model_options", "pretrained_from"):
        del common[key]
    return {**common, "enabled": True, "pretrain_mode": "both", "self_supervised_history": [{"epoch": 0}]}


@pytest.mark.parametrize(
    "raw, message",
    [
        ({**pretrain_raw(), "loss": "cal"}, "card.loss: unexpected in a pretrain stage's card (enabled: true)"),
        ({**pretrain_raw(), "pretrained_from": None}, "card.pretrained_from: unexpected in a pretrain stage's card"),
        ({**pretrain_raw(), "pretrain_mode": "none"}, "card.pretrain_mode: unknown value 'none'"),
        ({**pretrain_raw(), "self_supervised_history": {}}, "card.self_supervised_history: expected a list"),
        ({**json.loads(TRAIN_CARD), "pretrain_mode": "both"}, "card.pretrain_mode: unexpected in a train stage's card"),
        ({**json.loads(TRAIN_CARD), "source": "hub"}, "card.source: expected a mapping"),
        (
            {**json.loads(TRAIN_CARD), "source": {"sha256": "0" * 64}},
            "card.pretrained_from: unexpected in an imported model's card (source)",
        ),
    ],
)
def test_each_kind_has_only_its_own_fields(tmp_path: Path, raw: dict[str, Any], message: str) -> None:
    target = write_raw(tmp_path / "m", raw)
    with pytest.raises(DataError) as refused:
        ModelCard.read(target)
    assert str(refused.value).startswith(f"{target}/card.json: {message}"), str(refused.value)
    assert "\n" not in str(refused.value)
    assert inspect_card(target).problem == str(refused.value)


def test_a_pretrain_card_read_back(tmp_path: Path) -> None:
    card = ModelCard.read(write_raw(tmp_path / "m", pretrain_raw()))
    assert isinstance(card, PretrainCard) and card.enabled is True and card.pretrain_mode == "both"
    assert card.self_supervised_history == [{"epoch": 0}] and card.options == {} and card.k_trajectory == [2]
    assert card.to_json() == card_json_of(pretrain_raw())


def card_json_of(raw: dict[str, Any]) -> str:
    return json.dumps({"format": 1, **raw}, indent=2, sort_keys=True) + "\n"


def test_reading_as_a_kind_refuses_another_kind() -> None:
    assert isinstance(TrainCard.from_dict(json.loads(TRAIN_CARD), "here"), TrainCard)
    assert isinstance(MethodCard.from_dict(json.loads(TRAIN_CARD), "here"), TrainCard)
    with pytest.raises(DataError, match=r"^here: a pretrain stage's card \(enabled: true\), not a train stage's card$"):
        TrainCard.from_dict(pretrain_raw(), "here")
    with pytest.raises(DataError, match=r"^here: a pretrain stage's card \(enabled: true\), not MethodCard$"):
        MethodCard.from_dict(pretrain_raw(), "here")


def test_only_the_kinds_are_cards() -> None:
    common = common_fields(train_card())
    for abstract in (ModelCard, MethodCard):
        with pytest.raises(TypeError, match="not a kind of card; build one of TrainCard, PretrainCard, ImportedCard"):
            abstract(**common)


def test_from_dict_refuses_enabled_false_beside_a_model() -> None:
    with pytest.raises(DataError, match=r"^here: card\.enabled: false marks a skipped pretraining"):
        ModelCard.from_dict({**json.loads(TRAIN_CARD), "enabled": False}, "here")


def test_a_broken_card_is_shown_with_its_good_fields(tmp_path: Path) -> None:
    target = write_raw(tmp_path / "m", {**json.loads(TRAIN_CARD), "dropout": "lots", "history": "x"})
    inspection = inspect_card(target)
    assert inspection.problem == f"{target}/card.json: card.dropout: expected a number, got 'lots'"
    assert inspection.card.dropout is None and inspection.card.history is None
    assert inspection.card.backbone == "test_resnet" and inspection.card.k_hat == 2
    assert inspection.raw["dropout"] == "lots"  # `owdfa info --format json` shows the file as it is


def test_files_that_are_no_card(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a model directory"):
        ModelCard.read(tmp_path)
    (tmp_path / "card.json").write_text('{"format": 2}')
    with pytest.raises(DataError, match="unsupported model card format 2"):
        inspect_card(tmp_path)
    (tmp_path / "card.json").write_text("[1, 2")
    with pytest.raises(DataError, match="malformed model card"):
        ModelCard.read(tmp_path)


# --------------------------------------------------------------------------------------------
# the face preprocessing record


@pytest.mark.parametrize("text", [RESIZE_RECORD, ALIGNED_RECORD])
def test_the_preprocessing_record_round_trip(tmp_path: Path, text: str) -> None:
    record = FacePreprocessing.from_dict(json.loads(text), "preprocessing.json")
    assert record.to_json() == text
    record.write(tmp_path)
    assert (tmp_path / "preprocessing.json").read_text() == text
    assert read_preprocessing(tmp_path) == record


def test_a_record_without_the_optional_keys_takes_the_align_stages_defaults() -> None:
    from owdfa.data.align import DEFAULTS

    record = FacePreprocessing.from_dict({"mode": "crop", "image_size": 32}, "x")
    assert (record.upsample, record.threshold, record.margin, record.padding, record.predictor) == (
        DEFAULTS["upsample"],
        DEFAULTS["threshold"],
        DEFAULTS["margin"],
        DEFAULTS["padding"],
        None,
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mode": "squash"}, "preprocessing.mode: unknown value 'squash'; choose one of resize, crop, aligned"),
        ({"image_size": 8}, "preprocessing.image_size: must be >= 16"),
        ({"detector": {"upsample": 9}}, "preprocessing.detector.upsample: must be <= 4"),
        ({"detector": {"threshold": float("nan")}}, "preprocessing.detector.threshold: must be a finite number"),
        ({"detector": {"scale": 1}}, "preprocessing.detector.scale: unknown key"),
        ({"detector": [0, 0.0]}, "preprocessing.detector: expected a mapping"),
        ({"margin": 0.5}, "preprocessing.margin: must be >= 1.0"),
        ({"padding": "x"}, "preprocessing.padding: expected a number"),
        ({"predictor": 5}, "preprocessing.predictor: expected a string or null"),
        ({"colour": "red"}, "preprocessing.colour: unknown key"),
    ],
)
def test_a_bad_record_is_one_line_naming_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError) as refused:
        FacePreprocessing.from_dict({**json.loads(RESIZE_RECORD), **change}, "faces/preprocessing.json")
    text = str(refused.value)
    assert text.startswith(f"faces/preprocessing.json: {message}") and "\n" not in text, text


def test_reading_the_record_of_a_cache(tmp_path: Path) -> None:
    assert read_preprocessing(tmp_path) is None  # a cache from before the record was written
    (tmp_path / "preprocessing.json").write_text("{mode: resize")
    with pytest.raises(DataError, match=r"preprocessing\.json: not JSON"):
        read_preprocessing(tmp_path)
    with pytest.raises(DataError, match="preprocessing: expected a mapping"):
        FacePreprocessing.from_dict(["resize", 64], "x")


# --------------------------------------------------------------------------------------------
# attribute() from Python


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model_dir(tmp_path_factory.mktemp("card") / "model")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def test_attribute_from_python_equals_the_command_line(
    capsys: pytest.CaptureFixture, model_dir: Path, photos: Path, tmp_path: Path
) -> None:
    from owdfa.core.numerics import configure_torch

    configure_torch()  # as the command line does: the evaluate stage's numerics
    missing = tmp_path / "missing.png"
    rows = attribute([photos, str(missing)], model_dir, device="cpu", batch_size=2)
    assert "records no face preprocessing" in capsys.readouterr().err
    assert [Path(r.path).name for r in rows] == ["broken.png", *(f"img{i}.png" for i in range(5)), "missing.png"]
    good = [r for r in rows if r.error is None]
    assert len(good) == 5 and all(r.known == (r.cluster < NUM_KNOWN) for r in good)
    assert all(r.attribution == (NAMES[r.cluster] if r.known else f"novel-{r.cluster}") for r in good)
    assert all(0.2 <= r.confidence <= 1.0 and r.face_found is None and r.epistemic is None for r in good)
    assert "unreadable image" in rows[0].error and "no such file" in rows[6].error
    rc = cli.main(["attribute", str(photos), str(missing), "--model", str(model_dir), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["align"] == "resize"
    assert doc["results"] == [r.as_dict(mc=False) for r in rows]


def test_attributor_reports_its_face_mode_and_mc_dropout(
    capsys: pytest.CaptureFixture, model_dir: Path, photos: Path
) -> None:
    attributor = Attributor.load(model_dir, align="crop", device="cpu")
    assert attributor.settings.mode == "crop" and attributor.card.num_known == NUM_KNOWN
    rows = attributor.run([photos / "img0.png"], mc_dropout=3, seed=1)
    assert rows[0].face_found is False and rows[0].epistemic >= 0 and rows[0].aleatoric > 0
    assert "using --align crop at 32 px" in capsys.readouterr().err


def test_attribute_refuses_a_broken_model_in_one_line(model_dir: Path, photos: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a model directory"):
        attribute([photos], tmp_path)
    broken = write_raw(tmp_path / "m", {**json.loads((model_dir / "card.json").read_text()), "num_known": 9})
    with pytest.raises(DataError, match=r"card\.json: card\.num_known: must be <= 5"):
        attribute([photos], broken)
