"""Fuzzing at the trust boundaries: generated input gives a result or one owdfa error, nothing else.

Each target feeds `hypothesis`-generated input to one reader of data from elsewhere: card.json, the
weights file, a zip from the Hub, a params section, an image file, the names in a class folder, an
official Lightning checkpoint. The property is the same everywhere (docs/attribution.md, "Trust
model"): a result, or one `OwdfaError` line; never another exception, never a write outside the
destination, never code run. The suite runs each target under the deterministic `ci` profile (a
small budget, derandomised); `python bench/fuzz.py --minutes N` runs them for as long as asked.
Each finding becomes an `@example` here.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.tiny_model import save_tiny_model_dir, tiny_card
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from owdfa.core.config import Section
from owdfa.core.errors import OwdfaError
from owdfa.data.archive import extract_zip
from owdfa.data.faces import decode_rgb
from owdfa.data.index import build_index
from owdfa.data.walk import display_name
from owdfa.modeldir.card import read_card
from owdfa.modeldir.checks import check_weights
from owdfa.modeldir.io import load_state

settings.register_profile(
    "ci", max_examples=25, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(  # bench/fuzz.py: as many examples as its time budget allows, new ones every run
    "long",
    max_examples=int(os.environ.get("OWDFA_FUZZ_EXAMPLES", "10000")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("OWDFA_FUZZ_PROFILE", "ci"))

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)
NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=40)


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="owdfa-fuzz-"))


def files_under(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


# --- card.json -------------------------------------------------------------------------------------


def _card_changes() -> st.SearchStrategy[dict[str, Any]]:
    """A real card's keys set to generated values, or generated keys added."""
    keys = list(tiny_card().to_dict())
    return st.dictionaries(st.sampled_from([*keys, "extra", "format"]), JSON, min_size=1, max_size=4)


@given(changes=_card_changes())
@example(changes={"classes": [[[[[]]]]]})
@example(changes={"model_options": {"ffe": "yes"}})
def test_card_json_gives_a_card_or_one_error(changes: dict[str, Any]) -> None:
    root = workdir()
    try:
        model_dir = save_tiny_model_dir(root / "m")
        card = json.loads((model_dir / "card.json").read_text())
        card.update(changes)
        (model_dir / "card.json").write_text(json.dumps(card))
        try:
            read_card(model_dir)
        except OwdfaError as exc:
            assert "\n" not in str(exc)
    finally:
        shutil.rmtree(root)


@given(raw=st.binary(max_size=300))
def test_card_bytes_give_a_card_or_one_error(raw: bytes) -> None:
    root = workdir()
    try:
        (root / "card.json").write_bytes(raw)
        try:
            read_card(root)
        except OwdfaError as exc:
            assert "\n" not in str(exc)
    finally:
        shutil.rmtree(root)


# --- the weights file ------------------------------------------------------------------------------


@given(cut=st.integers(0, 4000), flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), max_size=4))
def test_weights_file_gives_checked_tensors_or_one_error(cut: int, flips: list[tuple[int, int]]) -> None:
    root = workdir()
    try:
        model_dir = save_tiny_model_dir(root / "m")
        path = model_dir / "model.safetensors"
        data = bytearray(path.read_bytes())
        for offset, mask in flips:
            data[offset % len(data)] ^= mask
        path.write_bytes(bytes(data[: len(data) - cut]) if cut else bytes(data))
        try:
            check_weights(load_state(model_dir), tiny_card(), path)
        except OwdfaError as exc:
            assert "\n" not in str(exc)
    finally:
        shutil.rmtree(root)


# --- a zip from the Hub ----------------------------------------------------------------------------

ENTRY_NAMES = st.one_of(
    NAMES,
    st.lists(st.sampled_from(["a", "..", ".", "", "/", "\\", "C:", "__MACOSX", ".h", "x" * 300]), max_size=6).map(
        "/".join
    ),
)


@given(
    entries=st.lists(st.tuples(ENTRY_NAMES, st.binary(max_size=64), st.integers(0, 0xFFFF)), max_size=8),
    max_bytes=st.integers(0, 1000),
)
@example(entries=[("../evil.png", b"x", 0)], max_bytes=100)
@example(entries=[("a/" * 2100 + "x.png", b"x", 0)], max_bytes=100)
@example(entries=[("link.png", b"/etc/passwd", 0o120777)], max_bytes=100)
def test_zip_extracts_inside_its_folder_or_gives_one_error(
    entries: list[tuple[str, bytes, int]], max_bytes: int
) -> None:
    root = workdir()
    try:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, content, mode in entries:
                info = zipfile.ZipInfo(name)
                info.external_attr = mode << 16
                archive.writestr(info, content)
        (root / "in.zip").write_bytes(buffer.getvalue())
        outside_before = files_under(root)
        dest = root / "out"
        try:
            report = extract_zip(root / "in.zip", dest, max_bytes)
        except OwdfaError as exc:
            assert "\n" not in str(exc)
        else:
            assert report.bytes <= max_bytes
        written = files_under(root) - outside_before
        assert all(Path(p).is_relative_to(dest) for p in written), written
        assert not any(Path(p).is_symlink() for p in written)
    finally:
        shutil.rmtree(root)


# --- params sections -------------------------------------------------------------------------------


def _section_readers() -> dict[str, Any]:
    from owdfa.data.hub import hub_config
    from owdfa.evaluate.evaluation import evaluate_config
    from owdfa.methods import build_method
    from owdfa.train.config import pretrain_plan, train_config

    return {
        "train": train_config,
        "pretrain": pretrain_plan,
        "evaluate": evaluate_config,
        "data.hub": hub_config,
        "methods": lambda section: build_method("cal", section),
    }


def _params_changes() -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    import yaml
    from helpers.paths import ROOT

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    base = {"train": params["train"], "pretrain": params["pretrain"], "evaluate": params["evaluate"]}
    base["data.hub"] = params["data"]["hub"]
    base["methods"] = params["methods"]
    return st.sampled_from(sorted(base)).flatmap(
        lambda name: st.tuples(
            st.just(name),
            st.dictionaries(st.sampled_from([*_keys(base[name]), "typo_key"]), JSON, max_size=3).map(
                lambda changes, name=name: {**base[name], **changes}
            ),
        )
    )


def _keys(section: dict[str, Any]) -> list[str]:
    return sorted(section)


@given(case=_params_changes())
@example(case=("train", {"epochs": float("inf")}))
@example(case=("evaluate", {"uncertainty_maps": {"\n": None}}))  # found: a key with a newline, a two-line error
def test_params_section_gives_a_config_or_one_error(case: tuple[str, dict[str, Any]]) -> None:
    name, data = case
    try:
        _section_readers()[name](Section(data, name))
    except OwdfaError as exc:
        assert "\n" not in str(exc)


# --- image files -----------------------------------------------------------------------------------


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@given(
    suffix=st.sampled_from([".png", ".jpg", ".webp", ".bmp"]),
    raw=st.one_of(
        st.binary(max_size=200),
        st.tuples(st.integers(0, 3), st.integers(0, 200), st.integers(0, 255)).map(
            lambda t: (lambda b: b[: t[1]] + bytes([t[2]]) + b[t[1] + 1 :])(_png(t[0]))
        ),
    ),
)
@example(
    suffix=".png", raw=b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 1 << 30, 1 << 30)
)  # noqa: E501
def test_image_decodes_or_gives_one_error(suffix: str, raw: bytes) -> None:
    root = workdir()
    try:
        path = root / f"x{suffix}"
        path.write_bytes(raw)
        try:
            image = decode_rgb(path)
        except OwdfaError as exc:
            assert "\n" not in str(exc)
        else:
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    finally:
        shutil.rmtree(root)


# --- names in class folders ------------------------------------------------------------------------


@given(
    names=st.lists(st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b), max_size=6)
)  # noqa: E501
@example(names=[b"\x1b[31mred.png", b"\xff\xfe.png", b"." + b"a" * 200 + b".png"])
def test_file_names_are_indexed_or_skipped_printably(names: list[bytes]) -> None:
    root = workdir()
    try:
        folder = os.fsencode(root / "1_Swap_Fuzz")
        os.makedirs(folder)
        for name in names:
            try:
                with open(os.path.join(folder, name + b".png"), "wb") as handle:
                    handle.write(_png(0))
            except OSError:
                pass  # a name this file system refuses (too long) is not a case of ours
        try:
            rows, _ = build_index(root)
        except OwdfaError as exc:
            assert "\n" not in str(exc)
        else:
            assert all(display_name(row.path).isprintable() for row in rows)
            assert [row.path for row in rows] == sorted(row.path for row in rows)
    finally:
        shutil.rmtree(root)


# --- official checkpoints --------------------------------------------------------------------------


class _Runs:
    """A class whose unpickling would run code: it must never be reached."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/owdfa-fuzz-ran-code",))


def _checkpoint_bytes(payload: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


CHECKPOINT_PAYLOADS = st.sampled_from(
    [
        {"state_dict": {"w": torch.zeros(2)}},
        {"state_dict": {"w": torch.zeros(2)}, "epoch": 3, "hyper_parameters": {"lr": 0.1}},
        {"hook": _Runs()},
        [1, 2, {"a": (3, 4)}],
    ]
)


@given(payload=CHECKPOINT_PAYLOADS, flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), max_size=3))
@example(payload=[1, 2, {"a": (3, 4)}], flips=[(16265, 128)])  # found: a name in the zip directory not UTF-8
@example(payload={"state_dict": {"w": torch.zeros(2)}}, flips=[(1022, 64)])  # found: "zip file version 6.4"
@example(payload={"state_dict": {"w": torch.zeros(2)}}, flips=[(1024, 64)])  # found: strong encryption flag
@example(payload={"state_dict": {"w": torch.zeros(2)}}, flips=[(1024, 32)])  # found: patched data flag
@example(payload={"state_dict": {"w": torch.zeros(2)}}, flips=[(1024, 1)])  # found: encrypted (RuntimeError)
@example(payload={"hook": _Runs()}, flips=[(19688, 12), (19688, 101)])  # found: a newline in a record's name
def test_official_checkpoint_reads_data_or_gives_one_error_and_never_runs_code(
    payload: Any, flips: list[tuple[int, int]]
) -> None:
    from owdfa.official.checkpoint import read_lightning_checkpoint

    root = workdir()
    marker = Path("/tmp/owdfa-fuzz-ran-code")
    try:
        data = bytearray(_checkpoint_bytes(payload))
        for offset, mask in flips:
            data[offset % len(data)] ^= mask
        (root / "x.ckpt").write_bytes(bytes(data))
        try:
            read_lightning_checkpoint(root / "x.ckpt")
        except OwdfaError as exc:
            assert "\n" not in str(exc)
        assert not marker.exists(), "unpickling ran code"
    finally:
        shutil.rmtree(root)


def test_a_plain_pickle_is_never_unpickled() -> None:
    """The checkpoint reader's premise, checked directly: a pickle that runs code is refused unopened."""
    from owdfa.official.checkpoint import read_lightning_checkpoint

    root = workdir()
    try:
        (root / "x.ckpt").write_bytes(pickle.dumps(_Runs()))
        with pytest.raises(OwdfaError):
            read_lightning_checkpoint(root / "x.ckpt")
        assert not Path("/tmp/owdfa-fuzz-ran-code").exists()
    finally:
        shutil.rmtree(root)


def test_a_zip_whose_directory_names_are_not_utf8_is_one_error_for_both_readers() -> None:
    """The fuzzer's finding as a fixed case: a flipped bit makes an entry's name invalid for the UTF-8
    flag it carries; zipfile raised UnicodeDecodeError, a traceback, from the Hub zip and checkpoint readers."""
    from owdfa.official.checkpoint import read_lightning_checkpoint

    root = workdir()
    try:
        data = bytearray(_checkpoint_bytes([1, 2, {"a": (3, 4)}]))
        data[16265 % len(data)] ^= 128
        (root / "x.ckpt").write_bytes(bytes(data))
        for read in (read_lightning_checkpoint, lambda path: extract_zip(path, root / "out", 1 << 20)):
            with pytest.raises(OwdfaError, match="corrupt|truncated"):
                read(root / "x.ckpt")
    finally:
        shutil.rmtree(root)
