"""The `folder` source: a local OWDFA-40-like tree copied into data/raw, the source left untouched."""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from owdfa.core.config import Section
from owdfa.core.errors import ConfigError, DataError, OwdfaError
from owdfa.data.fetch import fetch
from owdfa.data.protocols import LANDMARK_PREDICTOR_FILE


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def tree_digest(root: Path) -> str:
    """Names, kinds, bytes, modes and mtimes of everything below root (symlinks not followed)."""
    digest = hashlib.sha256()
    for current, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = Path(current, name)
            info = path.lstat()
            digest.update(f"{path.relative_to(root)}|{info.st_mode}|{info.st_mtime_ns}|{info.st_size}\n".encode())
            if path.is_file() and not path.is_symlink():
                digest.update(path.read_bytes())
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
    return digest.hexdigest()


def folder_section(path: object, **extra) -> Section:
    return Section({"source": "folder", "folder": {"path": path}, **extra}, "data")


@pytest.fixture
def owdfa_like(tmp_path: Path) -> Path:
    """CAL's layout: `<root>/data/<label>_<Type>_<Method>/<video>/<frame>.png` and the predictor at `<root>/`."""
    root = tmp_path / "OWDFA40"
    data = root / "data"
    write(data / "0_Real_FF++" / "000" / "0000.png", b"ff0")
    write(data / "0_Real_FF++" / "000" / "0001.PNG", b"ff1")
    write(data / "0_Real_FF++" / "001" / "0000.png", b"ff2")
    write(data / "0_Real_CelebDF" / "id0_0000" / "000.jpg", b"cd0")
    write(data / "1_Swap_Deepfakes" / "1_Swap_Deepfakes" / "000_003" / "000.png", b"df0")  # zip-made nesting
    write(data / "1_Swap_Deepfakes" / "000_003" / "001.jpeg", b"df1")
    write(data / "38_Edit_e4e" / "fake" / "a.png", b"e4e")
    # litter and non-images: skipped
    write(data / "0_Real_FF++" / "000" / "._0000.png", b"fork")
    write(data / "0_Real_FF++" / ".DS_Store", b"litter")
    write(data / "0_Real_FF++" / ".cache" / "x.png", b"hidden")
    write(data / "1_Swap_Deepfakes" / "__MACOSX" / "000_003" / "._000.png", b"fork")
    write(data / "1_Swap_Deepfakes" / "list.txt", b"not an image")
    write(root / "__MACOSX" / "data" / "2_Swap_FaceSwap" / "._a.png", b"fork")
    write(root / ".trash" / "3_Swap_DeepFaceLab" / "a.png", b"hidden class")
    write(root / "docs" / "README.md", b"notes")
    write(root / LANDMARK_PREDICTOR_FILE, b"dlib model")
    (data / "1_Swap_Deepfakes" / "000_003" / "loop").symlink_to("..")  # must not recurse forever
    return root


def files_below(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_folder_source_copies_class_folders_and_leaves_the_source_untouched(tmp_path, owdfa_like):
    before = tree_digest(owdfa_like)
    out = tmp_path / "raw"
    summary = fetch(folder_section(str(owdfa_like)), out)
    assert tree_digest(owdfa_like) == before

    copied = files_below(out)
    source = json.loads(copied.pop("SOURCE.json"))
    assert copied == {
        "0_Real_CelebDF/id0_0000/000.jpg": b"cd0",
        "0_Real_FF++/000/0000.png": b"ff0",
        "0_Real_FF++/000/0001.PNG": b"ff1",
        "0_Real_FF++/001/0000.png": b"ff2",
        "1_Swap_Deepfakes/000_003/001.jpeg": b"df1",
        "1_Swap_Deepfakes/1_Swap_Deepfakes/000_003/000.png": b"df0",
        "38_Edit_e4e/fake/a.png": b"e4e",
        LANDMARK_PREDICTOR_FILE: b"dlib model",
    }
    assert source == summary
    assert summary["classes"] == {"0_Real_CelebDF": 1, "0_Real_FF++": 3, "1_Swap_Deepfakes": 2, "38_Edit_e4e": 1}
    assert summary["images"] == 7 and summary["source"] == "folder"
    assert summary["folders"]["0_Real_FF++"] == "data/0_Real_FF++"
    assert summary["predictor"] == LANDMARK_PREDICTOR_FILE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OWDFA40", "raw"]  # no temp folders left

    # A second run replaces the output with the same content.
    (out / "stale.txt").write_text("from an earlier run")
    assert fetch(folder_section(str(owdfa_like)), out) == summary
    assert not (out / "stale.txt").exists()
    assert tree_digest(owdfa_like) == before


def test_users_own_flat_class_folders(tmp_path):
    root = tmp_path / "mine"
    write(root / "0_real" / "a.png", b"r")
    write(root / "1_my_gan" / "b.webp", b"g")
    write(root / "7_other" / "c.bmp", b"o")
    summary = fetch(folder_section(str(root)), tmp_path / "raw")
    assert summary["classes"] == {"0_real": 1, "1_my_gan": 1, "7_other": 1}
    assert summary["predictor"] is None
    assert (tmp_path / "raw" / "1_my_gan" / "b.webp").read_bytes() == b"g"


def assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("path", [None, "", "   "])
def test_unset_path_names_the_key(tmp_path, path):
    with pytest.raises(ConfigError) as err:
        fetch(folder_section(path), tmp_path / "raw")
    assert_one_line(err, "params.yaml: data.folder.path:", "not set")


def test_missing_path_names_key_and_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as err:
        fetch(folder_section(str(missing)), tmp_path / "raw")
    assert_one_line(err, "data.folder.path", str(missing))
    assert not (tmp_path / "raw").exists()


def test_folder_without_class_folders(tmp_path):
    root = tmp_path / "photos"
    write(root / "holiday" / "a.png", b"a")
    write(root / "real" / "b.png", b"b")
    write(root / ".0_hidden" / "c.png", b"c")
    with pytest.raises(DataError) as err:
        fetch(folder_section(str(root)), tmp_path / "raw")
    assert_one_line(err, str(root), "<label>_<Type>_<Method>")
    assert not (tmp_path / "raw").exists()


def test_class_folders_without_images(tmp_path):
    root = tmp_path / "empty"
    write(root / "0_Real" / "notes.txt", b"x")
    (root / "1_Swap").mkdir()
    with pytest.raises(DataError) as err:
        fetch(folder_section(str(root)), tmp_path / "raw")
    assert_one_line(err, str(root), "no images")


def test_duplicate_class_folder(tmp_path):
    root = tmp_path / "dup"
    write(root / "a" / "1_Swap_X" / "a.png", b"a")
    write(root / "b" / "1_Swap_X" / "b.png", b"b")
    with pytest.raises(DataError) as err:
        fetch(folder_section(str(root)), tmp_path / "raw")
    assert_one_line(err, "1_Swap_X", str(root / "a" / "1_Swap_X"), str(root / "b" / "1_Swap_X"))


def test_source_overlapping_the_output_is_refused(tmp_path):
    write(tmp_path / "data" / "raw" / "0_Real" / "a.png", b"a")
    before = tree_digest(tmp_path / "data")
    for source in (tmp_path / "data", tmp_path / "data" / "raw"):
        with pytest.raises(ConfigError) as err:
            fetch(folder_section(str(source)), tmp_path / "data" / "raw")
        assert_one_line(err, "data.folder.path", "overlaps")
    assert tree_digest(tmp_path / "data") == before


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"source": "folder", "folder": {"path": "x", "pth": "y"}}, "data.folder.pth"),
        ({"source": "folder", "folder": "x"}, "data.folder"),
        ({"source": "folder"}, "data.folder"),
        ({"source": "folder", "folder": {"path": 3}}, "data.folder.path"),
        # a typo in a section not in use is still reported
        ({"source": "synthetic", "synthetic": {}, "hub": {"repoid": "a/b"}}, "data.hub.repoid"),
        ({"source": "hub", "hub": {}, "folder": {"paht": "x"}}, "data.folder.paht"),
    ],
)
def test_folder_params_errors(tmp_path, data, key):
    with pytest.raises(OwdfaError) as err:
        fetch(Section(data, "data"), tmp_path / "raw")
    assert str(err.value).startswith(f"params.yaml: {key}: "), str(err.value)
    assert not (tmp_path / "raw").exists()


# --- hostile folders: links out of the folder or across classes, loops, FIFOs ----------------------


@pytest.fixture
def linked(tmp_path: Path) -> tuple[Path, Path]:
    """A source whose class folders hold links: out of the source, into another class, inside their own class."""
    root = tmp_path / "src"
    secret = tmp_path / "secret"
    write(secret / "passwd.png", b"secret bytes")
    write(root / "0_Real_A" / "r.png", b"real")
    write(root / "1_Swap_B" / "s.png", b"swap")
    write(root / "1_Swap_B" / "sub" / "t.png", b"swap2")
    (root / "0_Real_A" / "evil.png").symlink_to(secret / "passwd.png")  # a file link out of the source
    (root / "0_Real_A" / "evil_dir").symlink_to(secret)  # a folder link out of the source
    (root / "0_Real_A" / "other_class").symlink_to(root / "1_Swap_B")  # would relabel class 1's images
    (root / "0_Real_A" / "swap.png").symlink_to(root / "1_Swap_B" / "s.png")  # one image, into class 0
    (root / "1_Swap_B" / "alias").symlink_to("sub")  # inside its own class: its images are taken once, via sub
    (root / "1_Swap_B" / "sub" / "up").symlink_to("../..")  # out of the class folder, into the source root
    (root / "1_Swap_B" / "sub" / "back").symlink_to("..")  # a loop inside the class: ends
    (root / "1_Swap_B" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (root / "1_Swap_B" / "broken.png").symlink_to("missing.png")  # inside, but nothing there
    return root, secret


def test_links_out_of_a_class_folder_are_skipped_with_a_warning(tmp_path, linked, capsys):
    root, secret = linked
    before, secret_before = tree_digest(root), tree_digest(secret)
    summary = fetch(folder_section(str(root)), tmp_path / "raw")
    copied = files_below(tmp_path / "raw")
    copied.pop("SOURCE.json")
    assert copied == {"0_Real_A/r.png": b"real", "1_Swap_B/s.png": b"swap", "1_Swap_B/sub/t.png": b"swap2"}
    assert b"secret bytes" not in b"".join(copied.values())
    assert summary["classes"] == {"0_Real_A": 1, "1_Swap_B": 2}
    err = capsys.readouterr().err
    for name in ("evil.png", "evil_dir", "other_class", "swap.png", "up", "dangling.png", "broken.png", "alias"):
        lines = [line for line in err.splitlines() if line.startswith("fetch: skipped ") and f"/{name}:" in line]
        assert len(lines) == 1, (name, err)
    assert "outside" in err and "broken link" in err
    assert tree_digest(root) == before and tree_digest(secret) == secret_before


def test_class_folder_links(tmp_path, capsys):
    root = tmp_path / "src"
    write(root / "0_Real_A" / "r.png", b"real")
    write(tmp_path / "elsewhere" / "x.png", b"outside")
    (root / "1_Swap_Out").symlink_to(tmp_path / "elsewhere")  # a whole class from outside: skipped
    summary = fetch(folder_section(str(root)), tmp_path / "raw")
    assert summary["classes"] == {"0_Real_A": 1}
    assert "fetch: skipped" in capsys.readouterr().err
    (root / "2_Swap_Same").symlink_to(root / "0_Real_A")  # the same images under two labels: refused
    before = tree_digest(root)
    with pytest.raises(DataError) as err:
        fetch(folder_section(str(root)), tmp_path / "raw2")
    assert_one_line(err, "0_Real_A", "2_Swap_Same", "one class")
    assert tree_digest(root) == before and not (tmp_path / "raw2").exists()


def test_a_predictor_link_out_of_the_source_is_not_copied(tmp_path, capsys):
    root = tmp_path / "src"
    write(root / "0_Real_A" / "r.png", b"real")
    write(tmp_path / "secret.dat", b"secret")
    (root / LANDMARK_PREDICTOR_FILE).symlink_to(tmp_path / "secret.dat")
    summary = fetch(folder_section(str(root)), tmp_path / "raw")
    assert summary["predictor"] is None and not (tmp_path / "raw" / LANDMARK_PREDICTOR_FILE).exists()
    assert LANDMARK_PREDICTOR_FILE in capsys.readouterr().err


def test_fifos_and_other_special_files_are_skipped(tmp_path, capsys):
    faulthandler.dump_traceback_later(120, exit=True, file=sys.__stderr__)  # a FIFO read would hang: fail instead
    root = tmp_path / "src"
    write(root / "0_Real_A" / "r.png", b"real")
    os.mkfifo(root / "0_Real_A" / "pipe.png")  # reading it would block for ever
    os.mkfifo(root / "0_Real_A" / "pipe.jpg")
    summary = fetch(folder_section(str(root)), tmp_path / "raw")
    assert summary["classes"] == {"0_Real_A": 1}
    faulthandler.cancel_dump_traceback_later()
    err = capsys.readouterr().err
    assert err.count("not a regular file") == 2, err
