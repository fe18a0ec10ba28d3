"""OWDFA-40 from the Hub: the real huggingface_hub client against a local server that speaks the Hub API.

The server (`helpers.fake_hub`, a dataset repo on 127.0.0.1) answers what the client calls for a
dataset download: repo info with file metadata, the recursive tree listing, and HEAD/GET with Range
of each file. It never advertises Xet, so the client uses plain HTTP. It can drop a connection
part-way, answer an error to a resumed request, or serve bytes that differ from the sha256 it declares.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers.fake_hub import FakeHub, serve_repo, sha256
from helpers.paths import ROOT as REPO_ROOT

# Imported at collection, not inside a test: the client's log handler binds to the sys.stderr of its first
# import, and a capsys stream is closed after its test.
from huggingface_hub import constants, snapshot_download  # noqa: F401
from PIL import Image

from owdfa.core.config import Section
from owdfa.core.errors import ConfigError, DataError
from owdfa.data.fetch import fetch
from owdfa.data.hub import HubConfig, hub_config
from owdfa.data.protocols import LANDMARK_PREDICTOR_FILE

REPO_ID = "hyzheng/OWDFA40-Benchmark"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ROOT = REPO_ROOT
PREDICTOR_SIZE = 1 << 20


def png(seed: int, size: int = 24) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def astronaut_png() -> bytes:
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


@dataclass(frozen=True)
class Dataset:
    """The served repo (path -> bytes) and what each class folder must contain after extraction."""

    files: dict[str, bytes]
    images: dict[str, dict[str, bytes]]  # class folder -> relative path -> bytes


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    images = {
        # per-video sub-folders, a real face photo, and macOS litter that must be skipped
        "0_Real_FF++": {"000/0000.png": png(1), "000/0001.png": png(2), "001/0000.png": png(3)},
        "0_Real_CelebDF": {"id0_0000/000.png": png(4), "astronaut/000.png": astronaut_png()},
        # the zip holds its own top-level folder, as some zips do
        "1_Swap_Deepfakes": {"1_Swap_Deepfakes/000_003/000.png": png(5), "1_Swap_Deepfakes/000_003/001.png": png(6)},
        "2_Swap_FaceSwap": {"000_003/000.png": png(7)},
    }
    files = {f"data/{folder}.zip": zip_bytes(content) for folder, content in images.items()}
    files["data/0_Real_FF++.zip"] = zip_bytes({**images["0_Real_FF++"], "__MACOSX/000/._0000.png": b"\0fork"})
    files[LANDMARK_PREDICTOR_FILE] = np.random.default_rng(0).bytes(PREDICTOR_SIZE)
    files["README.md"] = b"# OWDFA-40 (test copy)\n"
    files[".gitattributes"] = b"*.zip filter=lfs diff=lfs merge=lfs -text\n"
    return Dataset(files, images)


@pytest.fixture
def hub(dataset: Dataset) -> Iterator[FakeHub]:
    lfs = {name for name in dataset.files if name.endswith((".zip", ".dat"))}
    with serve_repo(REPO_ID, dataset.files, repo_type="dataset", lfs=lfs, commit=COMMIT) as fake:
        yield fake


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def client_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the already imported client at tmp: online, no token, its home and caches under tmp/hf-home.

    The client reads HF_HUB_OFFLINE (CI sets it to 1) and its cache paths once, at import, so the
    module constants are patched too; the subprocess tests below use plain environment variables.
    """
    home = tmp_path / "hf-home"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name, sub in (
        ("HF_HOME", ""),
        ("HF_HUB_CACHE", "hub"),
        ("HF_XET_CACHE", "xet"),
        ("HF_ASSETS_CACHE", "assets"),
        ("HF_TOKEN_PATH", "token"),
        ("HF_STORED_TOKENS_PATH", "stored_tokens"),
    ):
        monkeypatch.setattr(constants, name, str(home / sub) if sub else str(home))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return home


def data_section(tmp_path: Path, **hub_params) -> Section:
    params = {
        "repo_id": REPO_ID,
        "revision": COMMIT,
        "classes": [0, 1],
        "predictor": True,
        "max_extracted_gb": 1.0,
        "download_dir": str(tmp_path / "downloads"),
        **hub_params,
    }
    return Section({"source": "hub", "hub": params}, "data")


def local_dir(tmp_path: Path) -> Path:
    return tmp_path / "downloads" / REPO_ID.replace("/", "__")


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_fetch_downloads_verifies_and_unpacks_only_the_requested_classes(
    tmp_path, hub, dataset, client_env, monkeypatch, capsys
):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    out = tmp_path / "raw"
    summary = fetch(data_section(tmp_path), out)

    # Class folders unpacked with exactly the served images; litter skipped and reported.
    for folder in ("0_Real_FF++", "0_Real_CelebDF", "1_Swap_Deepfakes"):
        got = {p.relative_to(out / folder).as_posix(): p.read_bytes() for p in (out / folder).rglob("*") if p.is_file()}
        assert got == dataset.images[folder], folder
    assert summary["classes"] == {"0_Real_CelebDF": 2, "0_Real_FF++": 3, "1_Swap_Deepfakes": 2}
    assert summary["images"] == 7 and summary["commit"] == COMMIT
    assert summary["skipped"]["0_Real_FF++"]["entries"] == [
        ["__MACOSX/000/._0000.png", "macOS resource fork (__MACOSX)"]
    ]
    assert (out / LANDMARK_PREDICTOR_FILE).read_bytes() == dataset.files[LANDMARK_PREDICTOR_FILE]
    assert json.loads((out / "SOURCE.json").read_text()) == {k: v for k, v in summary.items() if k != "warnings"}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["0_Real_CelebDF", "0_Real_FF++", "1_Swap_Deepfakes", "SOURCE.json", LANDMARK_PREDICTOR_FILE]
    )

    # allow_patterns: a class not asked for, README and .gitattributes were never fetched.
    fetched = {p for p in hub.requested("GET") if "/resolve/" in p}
    assert {p.rsplit("/", 1)[-1] for p in fetched} == {
        "0_Real_FF++.zip",
        "0_Real_CelebDF.zip",
        "1_Swap_Deepfakes.zip",
        LANDMARK_PREDICTOR_FILE,
    }
    assert not (local_dir(tmp_path) / "data" / "2_Swap_FaceSwap.zip").exists()
    assert not (local_dir(tmp_path) / "README.md").exists()

    # The manifest records our own hash and the Hub's for every file, equal to the served bytes.
    manifest = json.loads((tmp_path / "downloads" / "manifest.json").read_text())
    assert (manifest["repo_id"], manifest["revision"], manifest["commit"]) == (REPO_ID, COMMIT, COMMIT)
    recorded = {entry["path"]: entry for entry in manifest["files"]}
    assert set(recorded) == {
        "data/0_Real_FF++.zip",
        "data/0_Real_CelebDF.zip",
        "data/1_Swap_Deepfakes.zip",
        LANDMARK_PREDICTOR_FILE,
    }
    for path, entry in recorded.items():
        served = dataset.files[path]
        assert entry["sha256"] == entry["hub_sha256"] == sha256(served)
        assert entry["size"] == entry["hub_size"] == len(served)
        assert Path(entry["local_path"]).read_bytes() == served

    # A pinned commit gives no warning; nothing was written outside tmp_path's download and output folders.
    assert "warning" not in capsys.readouterr().err
    assert not client_env.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads", "raw"]


def test_branch_revision_warns_with_the_commit_to_pin(tmp_path, hub, client_env, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    summary = fetch(data_section(tmp_path, revision="main", classes=[1], predictor=False), tmp_path / "raw")
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert COMMIT in warnings[0] and f"dvc exp run -S data.hub.revision={COMMIT}" in warnings[0]
    assert summary["warnings"] == warnings and summary["commit"] == COMMIT and summary["revision"] == "main"
    assert not (tmp_path / "raw" / LANDMARK_PREDICTOR_FILE).exists()
    assert not client_env.exists()


@pytest.mark.slow
def test_dropped_connection_is_resumed_with_a_range_request(tmp_path, hub, client_env, monkeypatch):
    """The client keeps what it received in whole 10 MiB chunks and asks for the rest with a Range request."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    big = np.random.default_rng(1).bytes(13 << 20)
    hub.files[LANDMARK_PREDICTOR_FILE] = big
    drop_at = (11 << 20) + 12345
    hub.drop_first_get[LANDMARK_PREDICTOR_FILE] = drop_at
    fetch(data_section(tmp_path, classes=[1]), tmp_path / "raw")
    ranges = [rng for method, path, rng in hub.requests if method == "GET" and path.endswith(".dat")]
    assert len(ranges) == 2 and ranges[0] is None
    resumed_from = int(ranges[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_from <= drop_at
    assert (tmp_path / "raw" / LANDMARK_PREDICTOR_FILE).read_bytes() == big
    manifest = json.loads((tmp_path / "downloads" / "manifest.json").read_text())
    assert {e["path"]: e["sha256"] for e in manifest["files"]}[LANDMARK_PREDICTOR_FILE] == sha256(big)


@pytest.mark.slow
def test_failed_download_is_one_line_and_a_rerun_completes(tmp_path, hub, dataset, client_env, monkeypatch):
    """The connection drops and the resume attempt fails: one line; the next run finishes the job."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hub.files[LANDMARK_PREDICTOR_FILE] = big = np.random.default_rng(2).bytes(12 << 20)
    hub.drop_first_get[LANDMARK_PREDICTOR_FILE] = 11 << 20
    hub.fail_resume.add(LANDMARK_PREDICTOR_FILE)
    with pytest.raises(DataError) as err:
        fetch(data_section(tmp_path, classes=[1]), tmp_path / "raw")
    assert "HTTP 500" in one_line(err) and hub.url in str(err.value)
    assert not (tmp_path / "raw").exists()
    zip_before = (local_dir(tmp_path) / "data" / "1_Swap_Deepfakes.zip").stat()

    hub.fail_resume.clear()
    fetch(data_section(tmp_path, classes=[1]), tmp_path / "raw")
    assert (tmp_path / "raw" / LANDMARK_PREDICTOR_FILE).read_bytes() == big
    # The zip that had arrived in the first run was kept, not fetched again.
    assert (local_dir(tmp_path) / "data" / "1_Swap_Deepfakes.zip").stat().st_mtime_ns == zip_before.st_mtime_ns
    assert len([p for p in hub.requested("GET") if p.endswith("1_Swap_Deepfakes.zip")]) == 1


def test_bytes_that_differ_from_the_hub_hash_are_reported_and_kept(tmp_path, hub, dataset, client_env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hub.corrupt.add("data/1_Swap_Deepfakes.zip")
    with pytest.raises(DataError) as err:
        fetch(data_section(tmp_path, classes=[1], predictor=False), tmp_path / "raw")
    message = one_line(err)
    downloaded = local_dir(tmp_path) / "data" / "1_Swap_Deepfakes.zip"
    assert str(downloaded) in message
    assert sha256(dataset.files["data/1_Swap_Deepfakes.zip"]) in message  # what the Hub declares
    assert sha256(downloaded.read_bytes()) in message  # what arrived; the file is left for the user
    assert not (tmp_path / "raw").exists()
    assert not (tmp_path / "downloads" / "manifest.json").exists()


def test_a_file_changed_on_disk_is_caught_on_the_next_run(tmp_path, hub, client_env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    section = data_section(tmp_path, classes=[1], predictor=False)
    fetch(section, tmp_path / "raw")
    downloaded = local_dir(tmp_path) / "data" / "1_Swap_Deepfakes.zip"
    data = bytearray(downloaded.read_bytes())
    data[len(data) // 2] ^= 1
    downloaded.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        fetch(section, tmp_path / "raw")
    assert str(downloaded) in one_line(err) and sha256(bytes(data)) in str(err.value)


def test_offline_rerun_of_a_pinned_commit_uses_the_manifest(tmp_path, hub, client_env, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    section = data_section(tmp_path, classes=[1])
    fetch(section, tmp_path / "raw")
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    capsys.readouterr()
    summary = fetch(section, tmp_path / "raw")
    assert summary["images"] == 2 and summary["commit"] == COMMIT
    assert "cannot reach the Hub" in capsys.readouterr().err

    # Without the Hub, the manifest is what a changed file is caught against.
    downloaded = local_dir(tmp_path) / LANDMARK_PREDICTOR_FILE
    with open(downloaded, "r+b") as handle:
        handle.write(b"X")
    with pytest.raises(DataError) as err:
        fetch(section, tmp_path / "raw")
    assert "manifest.json records the Hub's" in one_line(err) and str(downloaded) in str(err.value)


def test_unreachable_endpoint_is_one_line(tmp_path, client_env, monkeypatch):
    url = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", url)
    with pytest.raises(DataError) as err:
        fetch(data_section(tmp_path), tmp_path / "raw")
    assert one_line(err).startswith(f"cannot reach the Hub at {url}")
    assert "HF_ENDPOINT" in str(err.value)
    assert not (tmp_path / "raw").exists()


def test_class_missing_on_the_hub_is_named(tmp_path, hub, client_env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    with pytest.raises(DataError) as err:
        fetch(data_section(tmp_path, classes=[1, 3]), tmp_path / "raw")
    message = one_line(err)
    assert message.startswith("data/3_Swap_DeepFaceLab.zip is not in") and "data/1_Swap_Deepfakes.zip" in message
    assert not hub.requested("HEAD") and not [p for p in hub.requested("GET") if "/resolve/" in p]


def test_unknown_revision_and_repo_are_one_line(tmp_path, hub, client_env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    with pytest.raises(DataError, match="data.hub.revision") as err:
        fetch(data_section(tmp_path, revision="v9"), tmp_path / "raw")
    one_line(err)
    with pytest.raises(DataError, match="data.hub.repo_id") as err:
        fetch(data_section(tmp_path, repo_id="someone/else"), tmp_path / "raw")
    one_line(err)


def test_offline_mode_is_one_line(tmp_path, client_env, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as err:
        fetch(data_section(tmp_path), tmp_path / "raw")
    assert "HF_HUB_OFFLINE" in one_line(err) and "data.source" in str(err.value)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"classes": "some"}, "data.hub.classes"),
        ({"classes": []}, "data.hub.classes"),
        ({"classes": [1, 99]}, "data.hub.classes"),
        ({"classes": [True]}, "data.hub.classes"),
        ({"repo_id": "no-slash"}, "data.hub.repo_id"),
        ({"revision": ""}, "data.hub.revision"),
        ({"max_extracted_gb": 0}, "data.hub.max_extracted_gb"),
        ({"predictor": "yes"}, "data.hub.predictor"),
        ({"revison": "main"}, "data.hub.revison"),
    ],
)
def test_bad_hub_params(tmp_path, change, key):
    with pytest.raises(ConfigError) as err:
        fetch(data_section(tmp_path, **change), tmp_path / "raw")
    assert str(err.value).startswith(f"params.yaml: {key}: ")
    assert not (tmp_path / "downloads").exists()


def test_classes_pick_zips_and_both_real_folders_for_label_0(tmp_path):
    config: HubConfig = hub_config(data_section(tmp_path, classes=[2, 0]).section("hub"))
    assert config.repo_files == [
        "data/0_Real_CelebDF.zip",
        "data/0_Real_FF++.zip",
        "data/2_Swap_FaceSwap.zip",
        LANDMARK_PREDICTOR_FILE,
    ]
    assert len(hub_config(data_section(tmp_path, classes="all").section("hub")).folders) == 42


# --------------------------------------------------------------------------------------------
# the stage as a user runs it: a fresh process that reads HF_ENDPOINT / HF_HUB_OFFLINE itself


def run_stage(tmp_path: Path, endpoint: str, offline: str = "0", **hub_params) -> subprocess.CompletedProcess:
    params = {
        "data": {
            "source": "hub",
            "hub": {
                "repo_id": REPO_ID,
                "revision": "main",
                "classes": [0, 2],
                "predictor": False,
                "max_extracted_gb": 1.0,
                "download_dir": "data/downloads",
                **hub_params,
            },
        }
    }
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HUB_OFFLINE=offline,
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="127.0.0.1,localhost",
    )
    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / "fetch.py"), "--out", "data/raw", "--params", "params.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_stage_subprocess(tmp_path, hub, dataset):
    done = run_stage(tmp_path, hub.url)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "fetch: 6 images in 3 classes -> data/raw"
    assert f"data.hub.revision={COMMIT}" in done.stderr  # 'main' is not pinned
    raw = tmp_path / "data" / "raw"
    assert (raw / "2_Swap_FaceSwap" / "000_003" / "000.png").read_bytes() == dataset.images["2_Swap_FaceSwap"][
        "000_003/000.png"
    ]
    assert not (tmp_path / "hf-home").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "params.yaml"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["downloads", "raw"]

    offline = run_stage(tmp_path, hub.url, offline="1")
    assert offline.returncode == 2 and "Traceback" not in offline.stderr
    assert offline.stderr.strip().splitlines() == [offline.stderr.strip()]
    assert "HF_HUB_OFFLINE" in offline.stderr

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    unreachable = run_stage(fresh, closed_port_url())
    assert unreachable.returncode == 2 and "Traceback" not in unreachable.stderr
    assert unreachable.stderr.strip().startswith("error: cannot reach the Hub at http://127.0.0.1:")
    assert len(unreachable.stderr.strip().splitlines()) == 1


def test_entries_that_may_be_images_are_named_and_fail_the_fetch_unless_accepted(
    tmp_path, hub, client_env, monkeypatch, capsys
):
    # A name longer than the file system takes cannot be written: the dataset would lack an image the
    # source has, so fetch names it and fails (one line), unless data.hub.accept_skipped says so.
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    long_name = "1_Swap_Deepfakes/000_003/" + "x" * 300 + ".png"
    hub.files["data/1_Swap_Deepfakes.zip"] = zip_bytes({"1_Swap_Deepfakes/000_003/000.png": png(5), long_name: png(9)})
    with pytest.raises(DataError) as err:
        fetch(data_section(tmp_path, classes=[1], predictor=False), tmp_path / "raw")
    message = one_line(err)
    assert message.startswith("1 zip entries that may be images were not extracted") and long_name in message
    assert "data.hub.accept_skipped: true" in message
    assert f"fetch: skipped 1_Swap_Deepfakes.zip: {long_name}: " in capsys.readouterr().err
    assert not (tmp_path / "raw").exists()  # nothing half-written

    summary = fetch(data_section(tmp_path, classes=[1], predictor=False, accept_skipped=True), tmp_path / "raw")
    assert summary["classes"] == {"1_Swap_Deepfakes": 1}
    source = json.loads((tmp_path / "raw" / "SOURCE.json").read_text())
    assert [entry[0] for entry in source["skipped"]["1_Swap_Deepfakes"]["entries"]] == [long_name]
