"""Safe zip extraction: hostile and broken archives built here, real stdlib zipfile throughout."""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
from pathlib import Path

import pytest

from owdfa.core.errors import DataError
from owdfa.data.archive import entry_problem, extract_zip

MB = 1 << 20


def tree(root: Path) -> dict[str, bytes]:
    """Every file below root with its bytes (what 'nothing else changed' is checked against)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_zip(path: Path, entries: dict[str | zipfile.ZipInfo, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def symlink_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.fixture
def workspace(tmp_path: Path) -> tuple[Path, Path]:
    """A zip folder and an extraction target side by side, plus a bystander file that must survive."""
    (tmp_path / "zips").mkdir()
    (tmp_path / "bystander.txt").write_text("untouched")
    return tmp_path / "zips", tmp_path / "out" / "1_Swap_Deepfakes"


def test_normal_zip_extracts_every_file(workspace):
    zips, dest = workspace
    source = make_zip(
        zips / "1_Swap_Deepfakes.zip",
        {"000_003/000.png": b"a" * 100, "000_003/001.png": b"b" * 50, "empty_dir/": b"", "top.png": b"c"},
    )
    before = source.read_bytes()
    report = extract_zip(source, dest, max_bytes=MB)
    assert tree(dest) == {"000_003/000.png": b"a" * 100, "000_003/001.png": b"b" * 50, "top.png": b"c"}
    assert (dest / "empty_dir").is_dir()
    assert (report.files, report.bytes, report.skipped) == (3, 151, [])
    assert source.read_bytes() == before


def test_hostile_entries_are_skipped_with_a_reason(workspace):
    zips, dest = workspace
    source = make_zip(
        zips / "evil.zip",
        {
            "ok/1.png": b"fine",
            "../evil.png": b"slip",
            "ok/../../evil2.png": b"slip",
            "/abs.png": b"abs",
            "C:/drive.png": b"drive",
            "..\\backslash.png": b"slip",
            symlink_entry("link.png"): b"/etc/passwd",
            symlink_entry("ok/dirlink"): b"..",
            "__MACOSX/ok/._1.png": b"fork",
            "ok/._1.png": b"fork",
            ".DS_Store": b"litter",
            "ok/.hidden/x.png": b"hidden",
        },
    )
    outside_before = tree(zips.parent)
    report = extract_zip(source, dest, max_bytes=MB)
    assert tree(dest) == {"ok/1.png": b"fine"}
    reasons = dict(report.skipped)
    assert reasons == {
        "../evil.png": "'..' path component",
        "ok/../../evil2.png": "'..' path component",
        "/abs.png": "absolute path",
        "C:/drive.png": "drive letter",
        "..\\backslash.png": "'..' path component",
        "link.png": "symbolic link",
        "ok/dirlink": "symbolic link",
        "__MACOSX/ok/._1.png": "macOS resource fork (__MACOSX)",
        "ok/._1.png": "hidden file",
        ".DS_Store": "hidden file",
        "ok/.hidden/x.png": "hidden file",
    }
    assert report.files == 1
    # Nothing appeared or changed outside dest, and the zip is still there.
    after = {k: v for k, v in tree(zips.parent).items() if not k.startswith("out/")}
    assert after == outside_before
    assert not (dest.parent / "evil.png").exists() and not Path("/abs.png").exists()


def test_symlinked_destination_parent_is_not_followed(workspace, tmp_path):
    zips, dest = workspace
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest.mkdir(parents=True)
    (dest / "sub").symlink_to(elsewhere)
    report = extract_zip(make_zip(zips / "a.zip", {"sub/x.png": b"x", "y.png": b"y"}), dest, max_bytes=MB)
    assert list(elsewhere.iterdir()) == []
    assert dict(report.skipped) == {"sub/x.png": "resolves outside the target folder"}
    assert (dest / "y.png").read_bytes() == b"y"


def test_declared_size_bomb_is_refused_before_writing(workspace):
    zips, dest = workspace
    source = make_zip(zips / "bomb.zip", {"a.png": bytes(3 * MB), "b.png": bytes(3 * MB)})
    assert source.stat().st_size < 100_000  # zeros compress well: the zip itself is small
    with pytest.raises(DataError) as err:
        extract_zip(source, dest, max_bytes=5 * MB)
    assert str(source) in str(err.value) and "limit" in str(err.value)
    assert "\n" not in str(err.value)
    assert not dest.exists() or tree(dest) == {}
    assert source.exists()


@pytest.mark.parametrize("cut", [1, 30, 200])
def test_truncated_zip_is_refused(workspace, cut):
    zips, dest = workspace
    good = make_zip(zips / "good.zip", {"a.png": b"x" * 5000, "b.png": b"y" * 5000}, method=zipfile.ZIP_STORED)
    truncated = zips / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[:-cut])
    with pytest.raises(DataError) as err:
        extract_zip(truncated, dest, max_bytes=MB)
    assert str(truncated) in str(err.value) and "\n" not in str(err.value)
    assert truncated.exists()


def test_not_a_zip_is_refused(workspace):
    zips, dest = workspace
    fake = zips / "fake.zip"
    fake.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(DataError, match="not a zip file or truncated") as err:
        extract_zip(fake, dest, max_bytes=MB)
    assert str(fake) in str(err.value)
    assert fake.read_bytes() == b"<html>rate limited</html>"


def test_corrupt_entry_names_zip_and_entry_and_leaves_no_partial_file(workspace):
    zips, dest = workspace
    source = make_zip(zips / "crc.zip", {"ok.png": b"o" * 100, "bad.png": b"z" * 1000}, method=zipfile.ZIP_STORED)
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        info = archive.getinfo("bad.png")
    data[info.header_offset + 30 + len("bad.png") + 10] ^= 0xFF  # one byte of the stored content
    source.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        extract_zip(source, dest, max_bytes=MB)
    message = str(err.value)
    assert str(source) in message and "'bad.png'" in message and "\n" not in message
    assert sorted(p.name for p in dest.iterdir()) == ["ok.png"]  # no bad.png, no .bad.png.part


def test_header_that_understates_the_size_is_refused(workspace):
    """A declared size smaller than the data: zipfile stops at the declared size, the CRC then fails."""
    zips, dest = workspace
    source = make_zip(zips / "liar.zip", {"liar.png": b"L" * 4000}, method=zipfile.ZIP_STORED)
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        info = archive.getinfo("liar.png")
    struct.pack_into("<I", data, info.header_offset + 22, 100)  # local header: uncompressed size
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 100)  # central directory: uncompressed size
    source.write_bytes(bytes(data))
    with zipfile.ZipFile(source) as archive:
        assert archive.getinfo("liar.png").file_size == 100
    with pytest.raises(DataError, match="liar.png"):
        extract_zip(source, dest, max_bytes=MB)
    assert list(dest.iterdir()) == []


def test_stream_longer_than_declared_trips_the_byte_counter(workspace, monkeypatch):
    """If a reader ever produced more bytes than declared (stdlib truncates today), the counter stops it."""
    zips, dest = workspace
    source = make_zip(zips / "a.zip", {"a.png": b"a" * 100})
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, info, *a, **k: io.BytesIO(b"a" * 5000))
    with pytest.raises(DataError, match="more than its declared 100 bytes"):
        extract_zip(source, dest, max_bytes=MB)
    assert list(dest.iterdir()) == []


def test_duplicate_and_conflicting_entries(workspace):
    zips, dest = workspace
    with zipfile.ZipFile(zips / "dup.zip", "w") as archive:
        archive.writestr("a.png", b"first")
        with pytest.warns(UserWarning):
            archive.writestr("a.png", b"second")
        archive.writestr("f", b"file")
        archive.writestr("f/x.png", b"under a file")
    report = extract_zip(zips / "dup.zip", dest, max_bytes=MB)
    assert tree(dest) == {"a.png": b"first", "f": b"file"}
    assert dict(report.skipped) == {"a.png": "duplicate entry", "f/x.png": "a file of the same name is in the way"}


@pytest.mark.parametrize(
    ("name", "mode", "problem"),
    [
        ("a/b.png", 0o100644, None),
        ("a/", stat.S_IFDIR | 0o755, None),
        ("a/b.png", 0, None),  # zips made on Windows carry no unix mode
        ("fifo", stat.S_IFIFO | 0o644, "special file"),
        ("", 0, "empty name"),
        ("./", 0, "empty name"),
    ],
)
def test_entry_problem(name, mode, problem):
    assert entry_problem(name, mode << 16) == problem


def test_paths_the_file_system_refuses_are_skipped_with_a_reason(workspace):
    zips, dest = workspace
    long_name = "x" * 300 + ".png"
    deep = "/".join(["d"] * 2000) + "/deep.png"
    just_fits = "y" * 251 + ".png"  # 255 bytes: fits, though its partial name would not
    source = make_zip(
        zips / "1_Swap_Deepfakes.zip",
        {long_name: b"l", f"sub/{long_name}/": b"", deep: b"d", just_fits: b"f", "ok.png": b"o"},
    )
    before = source.read_bytes()
    report = extract_zip(source, dest, max_bytes=MB)
    reasons = dict(report.skipped)
    assert reasons[long_name].startswith("a name longer than 255 bytes")
    assert reasons[f"sub/{long_name}/"].startswith("a name longer than 255 bytes")
    assert reasons[deep].startswith("a path longer than")
    assert tree(dest) == {"ok.png": b"o", just_fits: b"f"}
    assert report.files == 2 and source.read_bytes() == before
    assert (workspace[0].parent / "bystander.txt").read_text() == "untouched"


def test_an_unexpected_refusal_is_skipped_and_a_full_disk_is_one_error(workspace, monkeypatch):
    import errno

    from owdfa.data import archive

    zips, dest = workspace
    source = make_zip(zips / "1_Swap_Deepfakes.zip", {"a.png": b"a", "b.png": b"b"})

    def refuse(errno_value):
        def copy(zipfile_archive, info, target, *args):
            raise OSError(errno_value, os.strerror(errno_value), str(target))

        return copy

    monkeypatch.setattr(archive, "_copy_entry", refuse(errno.EILSEQ))
    report = extract_zip(source, dest, max_bytes=MB)
    assert [why for _, why in report.skipped] == [
        "the file system refuses this path (Invalid or incomplete multibyte or wide character)"
    ] * 2
    monkeypatch.setattr(archive, "_copy_entry", refuse(errno.ENOSPC))
    with pytest.raises(DataError) as err:
        extract_zip(source, dest, max_bytes=MB)
    assert "\n" not in str(err.value) and "No space left on device" in str(err.value)
