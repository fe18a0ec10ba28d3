"""Importing the CAL authors' Lightning checkpoints: safe reading, the key mapping, the Hub download.

A checkpoint is built here with the official layout (`CAL/algorithm/sl.py` holds `CAL_Classifier` in
the LightningModule attribute `encoder`; `CAL/encoder/models.py` names its parts), saved the way
Lightning saves one (a dict of state_dict, epoch, global_step, loops, callbacks, optimizer and
scheduler states, via torch.save), with random weights on timm's `test_resnet` at 64 px. The imported
model's logits are compared with CAL's forward pass written out below from the spec
(shared/spec/method.md sections 1.1 and 10.8) on the raw official tensors, not with our modules.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import types
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.fft
import timm
import torch
import torch.nn.functional as F
from helpers.fake_hub import FakeHub, serve_repo
from helpers.official_ckpt import BACKBONE, Hostile, lightning_checkpoint, official_state, save_checkpoint  # noqa: E402

# Imported at collection (as tests/data/test_hub.py does): the client's log handler binds to the sys.stderr
# of its first import, and a capsys stream is closed after its test.
from huggingface_hub import constants, hf_hub_download  # noqa: F401

from owdfa.core.errors import DataError
from owdfa.data.protocols import OWDFA40_PROTOCOLS
from owdfa.modeldir.card import CardClass, ModelCard
from owdfa.official.checkpoint import (
    OFFICIAL_NOVEL_ORDER,
    OFFICIAL_REPO_ID,
    OFFICIAL_RUNS,
    fetch_official_checkpoint,
    import_official_checkpoint,
    local_checkpoint,
    official_class_order,
    official_run,
    pickle_globals,
    read_lightning_checkpoint,
    write_model_dir,
)

SIZE = 64
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
BN_EPS = 1e-5
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


# --------------------------------------------------------------------------------------------
# an official checkpoint, built from the official code's layout


@pytest.fixture(scope="module")
def p1_known(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, OrderedDict[str, torch.Tensor]]:
    state = official_state(41, seed=1)
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "protocol1_seed2026.ckpt", lightning_checkpoint(state))
    return path, state


def images(count: int = 3, seed: int = 5) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (count, 3, SIZE, SIZE), dtype=np.uint8))


# --------------------------------------------------------------------------------------------
# CAL's forward, from the spec, on the official tensors


def official_logits(
    official: dict[str, torch.Tensor], pixels: torch.Tensor, active: int, ffe: bool = True
) -> torch.Tensor:
    """timm forward_features -> FFE reweighting -> global average -> BNNeck (eval) -> x @ fc2[:active].T."""
    weights = {name: tensor.double() for name, tensor in official.items() if tensor.is_floating_point()}
    x = (pixels.double() / 255.0 - MEAN.double()) / STD.double()
    net = timm.create_model(BACKBONE, pretrained=False)
    prefix = "encoder.encoder."
    net.load_state_dict({k[len(prefix) :]: v for k, v in official.items() if k.startswith(prefix)})
    fmap = net.eval().double().forward_features(x)
    if ffe:
        # unnormalised DCT-II of the normalised image (scipy's norm=None), a 3x3 conv mask on the
        # coefficients, the inverse DCT of the masked coefficients, channel mean, sigmoid
        conv = "encoder.fft_attn_module.freq_attn_net"
        coeffs = torch.from_numpy(scipy.fft.dctn(x.numpy(), type=2, axes=(-2, -1)))
        hidden = F.relu(F.conv2d(coeffs, weights[f"{conv}.0.weight"], weights[f"{conv}.0.bias"], padding=1))
        mask = torch.sigmoid(F.conv2d(hidden, weights[f"{conv}.2.weight"], weights[f"{conv}.2.bias"], padding=1))
        spatial = torch.from_numpy(scipy.fft.idctn((coeffs * mask).numpy(), type=2, axes=(-2, -1)))
        attention = torch.sigmoid(spatial.mean(dim=1, keepdim=True))
        # the official pool to 8x8 (per axis stride size // 8, kernel size - 7 * stride), then bilinear
        stride = SIZE // 8
        attention = F.avg_pool2d(attention, kernel_size=SIZE - 7 * stride, stride=stride)
        fmap = fmap * F.interpolate(attention, size=fmap.shape[-2:], mode="bilinear", align_corners=False)
    pooled = fmap.mean(dim=(2, 3))
    mean, var = weights["encoder.bottleneck.running_mean"], weights["encoder.bottleneck.running_var"]
    scale, shift = weights["encoder.bottleneck.weight"], weights["encoder.bottleneck.bias"]
    feature = (pooled - mean) / torch.sqrt(var + BN_EPS) * scale + shift
    return (feature @ weights["encoder.fc2"][:active].t()).float()


def our_logits(model_dir: Path, pixels: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """The imported model as `owdfa attribute` loads it (every card field and tensor checked)."""
    from owdfa.attribution import load_checked_model

    model, card = load_checked_model(model_dir, "last")
    with torch.no_grad():
        return model(pixels)["logits"], card


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------------------------
# import and forward parity


def test_known_k_checkpoint_imports_and_gives_the_official_logits(tmp_path, p1_known):
    path, state = p1_known
    source = local_checkpoint(path, filename="protocol1/protocol1_seed2026.ckpt")
    imported = import_official_checkpoint(source, backbone=BACKBONE)
    write_model_dir(tmp_path / "model", imported)

    pixels = images()
    ours, card = our_logits(tmp_path / "model", pixels)
    torch.testing.assert_close(ours, official_logits(state, pixels, 41), rtol=1e-4, atol=1e-4)
    assert ours.shape == (3, 41) and ours.std() > 0.1  # not a degenerate comparison: FFE matters too
    assert (ours - official_logits(state, pixels, 41, ffe=False)).abs().max() > 1e-2

    fields = imported.card
    assert isinstance(fields, ModelCard)
    assert (fields.protocol, fields.seed, fields.num_known) == ("p1", 2026, 19)
    assert fields.num_prototypes == fields.num_active == 41 and fields.dropout == 0.2
    assert fields.model_options == {"ffe": True, "patch_features": False} and fields.image_size == 256
    assert fields.preprocessing.mode == "crop" and fields.preprocessing.margin == 1.2
    assert fields.preprocessing.upsample == 0
    assert fields.normalisation == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    classes = fields.classes
    assert all(isinstance(c, CardClass) for c in classes)
    assert [c.label for c in classes] == list(official_class_order("p1"))
    assert [c.target for c in classes] == list(range(41))
    assert all(c.known == (c.target < 19) for c in classes)
    assert classes[0].name == "Real" and classes[0].folder == "0_Real_CelebDF + 0_Real_FF++"
    assert classes[1].name == "Swap_Deepfakes"
    source_record = fields.source
    assert source_record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert source_record["filename"] == "protocol1/protocol1_seed2026.ckpt"
    assert (source_record["epoch"], source_record["pytorch_lightning_version"]) == (37, "2.2.5")
    assert source_record["best_model_score"] == pytest.approx(0.8798)
    # the card as written is what our card reader accepts, and what `owdfa attribute` gets
    written = json.loads((tmp_path / "model" / "card.json").read_text())
    assert written["backbone"] == BACKBONE and card.num_active == 41 and card.protocol == "p1"
    assert card == fields  # read back: the card that was built
    # None fields are left out but for the ones every card records (val_best_epoch, preprocessing)
    assert written["val_best_epoch"] is None and not {"method_state", "pretrained_from"} & set(written)
    # timm's unused ImageNet head is the only official tensor left behind
    assert not any(k.startswith("backbone.fc") for k in imported.state)
    assert imported.state["prototypes"].data_ptr() != state["encoder.fc2"].data_ptr()


def test_unknown_k_checkpoint_keeps_every_row_unless_told(tmp_path):
    state = official_state(130, seed=2)  # P2: 10 x 13 known
    path = save_checkpoint(tmp_path / "cal_run.ckpt", lightning_checkpoint(state))  # a name that says nothing
    source = local_checkpoint(path)

    imported = import_official_checkpoint(source, backbone=BACKBONE, seed=2027)
    card = imported.card
    assert (card.protocol, card.num_prototypes, card.num_active, card.num_known) == ("p2", 130, 130, 13)
    assert card.method == "cal_dpp_official" and card.method_state["dpp_faithful"] is True and card.dpp_faithful
    assert "not stored in the checkpoint" in card.method_state["num_active_source"]

    pruned = import_official_checkpoint(source, backbone=BACKBONE, known_k=False, num_active=37)
    write_model_dir(tmp_path / "model", pruned)
    pixels = images(2)
    ours, loaded = our_logits(tmp_path / "model", pixels)
    assert ours.shape == (2, 37) and loaded.num_active == 37
    torch.testing.assert_close(ours, official_logits(state, pixels, 37), rtol=1e-4, atol=1e-4)

    with pytest.raises(DataError) as err:
        import_official_checkpoint(source, backbone=BACKBONE, num_active=12)
    assert one_line(err).endswith("num_active 12 is outside [13, 130]")


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("protocol1_seed2026.ckpt", {}),  # known K, seed from the name
        ("wok_protocol2_seed2025.ckpt", {"num_active": 40}),  # unknown K: method_state, num_active given
        ("best.ckpt", {"protocol": "p3"}),  # known K, no seed
    ],
)
def test_an_imported_card_reads_back_and_rewrites_to_the_same_bytes(tmp_path, name, options):
    rows = 130 if name.startswith("wok_protocol2") else 41
    path = save_checkpoint(tmp_path / name, lightning_checkpoint(official_state(rows, seed=3)))
    imported = import_official_checkpoint(local_checkpoint(path), backbone=BACKBONE, **options)
    write_model_dir(tmp_path / "model", imported)

    text = (tmp_path / "model" / "card.json").read_text()
    assert text == imported.card.to_json()  # written by the shared writer
    again = ModelCard.read(tmp_path / "model")
    assert again == imported.card and again.to_json() == text
    written = json.loads(text)
    assert "pretrained_from" not in written and written["val_best_epoch"] is None
    assert ("seed" in written) == (imported.card.seed is not None)
    assert ("method_state" in written) == (imported.card.method == "cal_dpp_official")


def test_official_file_names_and_p3_target_order():
    assert len({run.filename for run in OFFICIAL_RUNS}) == 18
    assert official_run("protocol3/protocol_seed2027.ckpt").protocol == "p3"  # (sic) in the release
    assert official_run("wok_protocol2_seed2025.ckpt") == official_run("wok_protocol2/wok_protocol2_seed2025.ckpt")
    assert not official_run("wok_protocol2_seed2025.ckpt").known_k and official_run("x.ckpt") is None
    # the official label order lists the novel classes as CPython iterates their set
    for protocol, info in OWDFA40_PROTOCOLS.items():
        assert list(OFFICIAL_NOVEL_ORDER[protocol]) == list(set(range(41)) - set(info.known))
    assert official_class_order("p3")[29:32] == (32, 2, 34)


def test_known_k_protocol_must_be_named_when_the_file_name_is_not_official(tmp_path, p1_known):
    renamed = tmp_path / "best.ckpt"
    renamed.write_bytes(p1_known[0].read_bytes())
    with pytest.raises(DataError) as err:
        import_official_checkpoint(local_checkpoint(renamed), backbone=BACKBONE)
    assert "cannot tell the protocol" in one_line(err)
    card = import_official_checkpoint(local_checkpoint(renamed), backbone=BACKBONE, protocol="p3").card
    assert card.num_known == 29 and card.seed is None and card.method == "cal_official"


# --------------------------------------------------------------------------------------------
# safe reading


@pytest.mark.parametrize(
    ("make", "protocol"),
    [
        (lambda target: Hostile(os.system, f"touch {target}"), 2),
        (lambda target: Hostile(open, str(target), "w"), 2),
        (lambda target: Hostile(open, str(target), "w"), 4),  # STACK_GLOBAL names it from the stack
    ],
    ids=["os.system", "builtins.open", "builtins.open-protocol4"],
)
def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path, make, protocol):
    target = tmp_path / "pwned"
    checkpoint = lightning_checkpoint(official_state(41))
    checkpoint["callbacks"]["Hostile"] = make(target)
    path = save_checkpoint(tmp_path / "protocol1" / "protocol1_seed2025.ckpt", checkpoint, protocol)

    with pytest.raises(DataError) as err:
        import_official_checkpoint(local_checkpoint(path), backbone=BACKBONE)
    action = checkpoint["callbacks"]["Hostile"].action
    assert one_line(err) == (
        f"{path}: refused to unpickle {action.__module__}.{action.__name__} (only tensors and plain data are read)"
    )
    assert not target.exists()
    with zipfile.ZipFile(path) as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    assert f"{action.__module__}.{action.__name__}" in pickle_globals(pickled)


def test_hyper_parameter_metadata_is_read_as_inert_plain_data(tmp_path, monkeypatch):
    # Lightning's AttributeDict, pickled under its real module path (lightning is not installed here)
    class AttributeDict(dict):
        pass

    modules = ["lightning", "lightning.fabric", "lightning.fabric.utilities", "lightning.fabric.utilities.data"]
    for name in modules:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    AttributeDict.__module__, AttributeDict.__qualname__ = modules[-1], "AttributeDict"
    sys.modules[modules[-1]].AttributeDict = AttributeDict  # type: ignore[attr-defined]
    calls: list[str] = []
    monkeypatch.setattr(argparse.Namespace, "__init__", lambda self, **kw: calls.append("init"))
    args = argparse.Namespace.__new__(argparse.Namespace)
    args.__dict__.update(protocol=1, model=argparse.Namespace.__new__(argparse.Namespace))
    args.model.__dict__.update(name="CAL_Classifier", encoder="resnet50")
    hparams = {"args": args, "extra": AttributeDict(lr=2e-4, tags=["a"])}
    checkpoint = lightning_checkpoint(official_state(41), hparams_name="kwargs", hyper_parameters=hparams)
    path = save_checkpoint(tmp_path / "protocol1_seed2025.ckpt", checkpoint)

    read = read_lightning_checkpoint(path)
    assert read["hyper_parameters"] == {
        "args": {"protocol": 1, "model": {"name": "CAL_Classifier", "encoder": "resnet50"}},
        "extra": {"lr": 2e-4, "tags": ["a"]},
    }
    assert type(read["hyper_parameters"]["args"]) is dict and type(read["hyper_parameters"]["extra"]) is dict
    assert calls == []  # nothing of the metadata classes ran
    assert read["epoch"] == 37 and set(read["state_dict"]) == set(checkpoint["state_dict"])


def flip_byte_inside(data: bytes, needle: bytes) -> bytes:
    at = data.find(needle)
    assert at > 0
    return data[: at + 4] + bytes([data[at + 4] ^ 0xFF]) + data[at + 5 :]


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncated", "truncated or corrupt checkpoint (damaged zip archive)"),
        ("flipped", "corrupt checkpoint (CRC mismatch in "),
        ("text", "not a PyTorch checkpoint (not a zip archive)"),
        ("empty", "empty file, not a checkpoint"),
        ("other-zip", "not a torch.save checkpoint (no data.pkl record in the zip)"),
        ("list", "not a Lightning checkpoint (it holds a list, not a dict with a state_dict)"),
        ("no-state", "not a Lightning checkpoint (no state_dict; top-level keys: epoch, global_step)"),
        ("non-tensor", "state_dict entry 'encoder.fc2' is a str, not a tensor"),
    ],
)
def test_damaged_or_foreign_files_are_one_line_each(tmp_path, p1_known, damage, expected):
    path = tmp_path / "protocol1_seed2025.ckpt"
    original = p1_known[0].read_bytes()
    if damage == "truncated":
        path.write_bytes(original[: len(original) // 2])
    elif damage == "flipped":
        path.write_bytes(flip_byte_inside(original, p1_known[1]["encoder.fc2"].numpy().tobytes()[:64]))
    elif damage == "text":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "other-zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    elif damage == "list":
        save_checkpoint(path, [torch.zeros(2)])
    elif damage == "no-state":
        save_checkpoint(path, {"epoch": 3, "global_step": 10})
    elif damage == "non-tensor":
        save_checkpoint(path, {"state_dict": {"encoder.fc2": "weights"}})
    with pytest.raises(DataError) as err:
        import_official_checkpoint(local_checkpoint(path), backbone=BACKBONE)
    assert one_line(err).startswith(f"{path}: {expected}")


def mutate(state: OrderedDict[str, torch.Tensor], change: str) -> OrderedDict[str, torch.Tensor]:
    state = OrderedDict(state)
    if change == "ffe-shape":
        state["encoder.fft_attn_module.freq_attn_net.0.weight"] = torch.zeros(8, 3, 3, 3)
    elif change == "feature-dim":
        state["encoder.fc2"] = torch.zeros(41, 100)
    elif change == "rows":
        state["encoder.fc2"] = torch.zeros(40, 96)
    elif change == "missing":
        del state["encoder.bottleneck.running_var"]
    elif change == "unexpected":
        state["encoder.proj.weight"] = torch.zeros(3)
    elif change == "nan":
        state["encoder.bottleneck.weight"] = torch.full((96,), float("nan"))
    elif change == "half":
        state["encoder.encoder.conv1.0.weight"] = state["encoder.encoder.conv1.0.weight"].half()
    elif change == "no-prototypes":
        del state["encoder.fc2"]
    return state


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("ffe-shape", "encoder.fft_attn_module.freq_attn_net.0.weight has shape [8, 3, 3, 3], expected [16, 3, 3, 3]"),
        ("feature-dim", "encoder.fc2 has shape [41, 100], expected [41, 96]"),
        ("rows", "encoder.fc2 has 40 rows, but a known-K p1 model has 41"),
        ("missing", "missing encoder.bottleneck.running_var (our neck.running_var)"),
        ("unexpected", "unexpected encoder.proj.weight (not part of CAL_Classifier with backbone test_resnet)"),
        ("nan", "encoder.bottleneck.weight holds NaN or infinite values"),
        ("half", "encoder.encoder.conv1.0.weight is float16, expected float32"),
        ("no-prototypes", "no encoder.fc2 (CAL's prototype matrix): not a CAL checkpoint"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_key(tmp_path, p1_known, change, expected):
    path = save_checkpoint(tmp_path / "protocol1_seed2025.ckpt", lightning_checkpoint(mutate(p1_known[1], change)))
    with pytest.raises(DataError) as err:
        import_official_checkpoint(local_checkpoint(path), backbone=BACKBONE)
    assert one_line(err).startswith(f"{path}: {expected}")


# --------------------------------------------------------------------------------------------
# the Hub download, from a local server that speaks the Hub's API for a model repo


@pytest.fixture
def model_hub(p1_known, tmp_path, monkeypatch) -> Iterator[FakeHub]:
    """The server, and the already imported client pointed at it: online, no token, caches under tmp."""
    files = {"protocol1/protocol1_seed2025.ckpt": p1_known[0].read_bytes(), "README.md": b"# CAL\n"}
    with serve_repo(OFFICIAL_REPO_ID, files) as hub:
        _point_client_at(hub, tmp_path, monkeypatch)
        yield hub


def _point_client_at(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "hf-home"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name, sub in (("HF_HOME", ""), ("HF_HUB_CACHE", "hub"), ("HF_XET_CACHE", "xet"), ("HF_TOKEN_PATH", "token")):
        monkeypatch.setattr(constants, name, str(home / sub) if sub else str(home))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)


def test_checkpoint_is_downloaded_at_a_pinned_commit_verified_and_imported(tmp_path, model_hub):
    name = "protocol1/protocol1_seed2025.ckpt"
    fetched = fetch_official_checkpoint(name, COMMIT, tmp_path / "downloads")

    assert fetched.path.read_bytes() == model_hub.files[name]
    assert fetched.sha256 == hashlib.sha256(model_hub.files[name]).hexdigest() and fetched.commit == COMMIT
    assert fetched.path.is_relative_to(tmp_path / "downloads" / "hyzheng__OWDFA_CAL" / COMMIT)
    assert not any("README" in path for path in model_hub.requested())  # only the one file is fetched
    card = import_official_checkpoint(fetched, backbone=BACKBONE).card
    assert (card.protocol, card.seed) == ("p1", 2025)
    record = card.source
    assert {key: record[key] for key in ("repo_id", "revision", "commit", "filename", "sha256")} == {
        "repo_id": OFFICIAL_REPO_ID,
        "revision": COMMIT,
        "commit": COMMIT,
        "filename": name,
        "sha256": fetched.sha256,
    }


def test_download_problems_are_one_line_each(tmp_path, model_hub, monkeypatch):
    with pytest.raises(DataError) as err:
        fetch_official_checkpoint("protocol9/protocol9_seed2025.ckpt", COMMIT, tmp_path / "d1")
    assert one_line(err) == (
        f"protocol9/protocol9_seed2025.ckpt is not in {OFFICIAL_REPO_ID} at commit {COMMIT}; "
        "its checkpoints: protocol1/protocol1_seed2025.ckpt"
    )

    model_hub.corrupt.add("protocol1/protocol1_seed2025.ckpt")
    with pytest.raises(DataError) as err:
        fetch_official_checkpoint("protocol1/protocol1_seed2025.ckpt", COMMIT, tmp_path / "d2")
    assert "but the Hub declares" in one_line(err) and "delete it and download again" in one_line(err)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", closed)
    with pytest.raises(DataError) as err:
        fetch_official_checkpoint("protocol1/protocol1_seed2025.ckpt", COMMIT, tmp_path / "d3")
    assert one_line(err).startswith(f"cannot reach the Hub at {closed}")


def test_a_protocol_that_contradicts_the_official_file_name_is_refused(p1_known):
    path = p1_known[0]  # protocol1_seed2026.ckpt: a p1 checkpoint by its released name
    with pytest.raises(DataError) as err:
        import_official_checkpoint(local_checkpoint(path), protocol="p2", backbone=BACKBONE)
    assert one_line(err) == f"{path}: protocol p2 given, but protocol1/protocol1_seed2026.ckpt is a p1 checkpoint"
