"""Face detection/alignment (real dlib on a real photo) and the align stage's robustness.

The photo is scikit-image's `astronaut()` (512 x 512, one frontal face around x 179-266, y 83-170).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import dlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data

from owdfa.core.config import Section
from owdfa.core.errors import ConfigError, DataError
from owdfa.data.align import align
from owdfa.data.face_cache import read_faces
from owdfa.data.faces import (
    PREDICTOR_FILE,
    FaceAligner,
    bundled_predictor_path,
    decode_rgb,
    resize_rgb,
    template_eyes,
)
from owdfa.data.index import IndexRow, write_index

ASTRONAUT = data.astronaut()
FACE_CENTRE = (222.0, 126.0)


@pytest.fixture(scope="module")
def aligned() -> FaceAligner:
    return FaceAligner("aligned", 256)


@pytest.fixture(scope="module")
def cropper() -> FaceAligner:
    return FaceAligner("crop", 256)


def eye_centres(aligner: FaceAligner, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hit = aligner.detect(rgb)
    assert hit is not None, "no face on the image"
    points = aligner.landmarks(rgb, hit[0])
    return points[36:42].mean(axis=0), points[42:48].mean(axis=0)


# --------------------------------------------------------------------------------------------
# crop (CAL parity)


def test_crop_finds_the_astronaut_face_and_crops_the_enlarged_box(cropper: FaceAligner) -> None:
    face = cropper(ASTRONAUT)
    assert face.found and face.score is not None and face.score > 0.5
    left, top, right, bottom = face.box
    assert abs((left + right) / 2 - FACE_CENTRE[0]) < 25 and abs((top + bottom) / 2 - FACE_CENTRE[1]) < 25
    assert 60 <= right - left <= 150 and 60 <= bottom - top <= 150
    # margin 1.2: 10 % of the box's width/height added on each side, then squashed with PIL bilinear
    grow_x, grow_y = 0.1 * (right - left), 0.1 * (bottom - top)
    box = (
        int(np.floor(left - grow_x)),
        int(np.floor(top - grow_y)),
        int(np.ceil(right + grow_x)),
        int(np.ceil(bottom + grow_y)),
    )
    assert cropper.crop_box(face.box, 512, 512) == box
    expected = Image.fromarray(ASTRONAUT).crop(box).resize((256, 256), Image.Resampling.BILINEAR, reducing_gap=None)
    assert face.image.dtype == np.uint8 and face.image.shape == (256, 256, 3)
    np.testing.assert_array_equal(face.image, np.asarray(expected))


def test_crop_box_is_clipped_to_the_image(cropper: FaceAligner) -> None:
    assert cropper.crop_box((-5, 2, 48, 100), 50, 90) == (0, 0, 50, 90)
    assert cropper.crop_box((10, 10, 20, 20), 50, 90) == (9, 9, 21, 21)


@pytest.mark.parametrize("mode", ["crop", "aligned"])
def test_no_face_passes_the_whole_image_on_flagged(mode: str, cropper: FaceAligner, aligned: FaceAligner) -> None:
    aligner = cropper if mode == "crop" else aligned
    blank = np.full((300, 400, 3), 128, dtype=np.uint8)
    face = aligner(blank)
    assert not face.found and face.score is None and face.box is None
    np.testing.assert_array_equal(face.image, resize_rgb(blank, 256))
    tiny = aligner(np.zeros((1, 1, 3), dtype=np.uint8))
    assert not tiny.found and tiny.image.shape == (256, 256, 3)


def test_the_highest_scoring_box_is_kept_not_the_first(cropper: FaceAligner) -> None:
    # upsample 1 also fires on the mission patch (score ~0.12): the face must win on score
    aligner = FaceAligner("crop", 256, upsample=1)
    rects, scores, _ = dlib.get_frontal_face_detector().run(ASTRONAUT, 1, 0.0)
    assert len(rects) >= 2
    face = aligner(ASTRONAUT)
    assert face.score == pytest.approx(max(scores))
    assert abs((face.box[0] + face.box[2]) / 2 - FACE_CENTRE[0]) < 25

    class Reversed:  # the detector's list in the worst order: low score first
        def run(self, img, upsample, threshold):
            return [dlib.rectangle(0, 0, 9, 9), dlib.rectangle(20, 20, 59, 59)], [0.1, 0.9], [0, 0]

    aligner._detector = Reversed()
    face = aligner(ASTRONAUT)
    assert face.box == (20, 20, 60, 60) and face.score == pytest.approx(0.9)


# --------------------------------------------------------------------------------------------
# aligned


def test_aligned_puts_the_eyes_on_the_template(aligned: FaceAligner) -> None:
    face = aligned(ASTRONAUT)
    assert face.found and face.image.shape == (256, 256, 3)
    want_left, want_right = template_eyes(256, 0.25)
    assert want_left == pytest.approx((81.15, 79.53), abs=0.01)
    assert want_right == pytest.approx((171.48, 79.53), abs=0.01)
    left, right = eye_centres(aligned, face.image)  # landmarks found again on the output
    assert np.linalg.norm(left - want_left) <= 3.0
    assert np.linalg.norm(right - want_right) <= 3.0


def _tilt_degrees(left: np.ndarray, right: np.ndarray) -> float:
    return float(np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0])))


def test_aligned_levels_a_rotated_face(aligned: FaceAligner) -> None:
    rotated = np.asarray(Image.fromarray(ASTRONAUT).rotate(15, Image.Resampling.BILINEAR, center=FACE_CENTRE))
    left_in, right_in = eye_centres(aligned, rotated)
    assert abs(_tilt_degrees(left_in, right_in)) > 10  # the input's eyes really are tilted
    face = aligned(rotated)
    assert face.found
    left, right = eye_centres(aligned, face.image)
    assert abs(right[1] - left[1]) <= 2.0 and abs(_tilt_degrees(left, right)) < 1.5
    want_left, want_right = template_eyes(256, 0.25)
    assert np.linalg.norm(left - want_left) <= 3.0 and np.linalg.norm(right - want_right) <= 3.0


def test_template_scales_with_size_and_padding() -> None:
    (lx, ly), (rx, ry) = template_eyes(512, 0.25)
    assert (lx, ly, rx, ry) == pytest.approx((162.30, 159.06, 342.96, 159.06), abs=0.01)
    (lx0, _), (rx0, _) = template_eyes(100, 0.0)
    assert (lx0, rx0) == pytest.approx((22.55, 75.48), abs=0.01)


# --------------------------------------------------------------------------------------------
# decoding: the bad-image corpus


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height grey pixels (a decompression bomb's header) and no data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _photo(size: int = 96) -> np.ndarray:
    return resize_rgb(ASTRONAUT, size)


def write_corpus(folder: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Write the good and bad files; returns {good name: expected RGB} and the bad names."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = _photo()
    good: dict[str, np.ndarray] = {}
    Image.fromarray(photo).save(folder / "rgb.png")
    good["rgb.png"] = photo
    rgba = np.dstack([photo, np.linspace(0, 255, photo.shape[1], dtype=np.uint8)[None, :].repeat(photo.shape[0], 0)])
    Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
    good["rgba.png"] = photo  # alpha dropped, the colour under it kept
    grey = np.asarray(Image.fromarray(photo).convert("L"))
    Image.fromarray(grey).save(folder / "grey.png")
    good["grey.png"] = np.repeat(grey[:, :, None], 3, axis=2)
    palette = Image.fromarray(photo).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(folder / "palette.png")
    good["palette.png"] = np.asarray(palette.convert("RGB"))
    sixteen = (np.arange(96 * 96, dtype=np.uint32).reshape(96, 96) * 7 % 65536).astype(np.uint16)
    sixteen[0, :4] = (0, 257, 65535, 1000)
    Image.fromarray(sixteen).save(folder / "sixteen.png")
    scaled = ((sixteen.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    good["sixteen.png"] = np.repeat(scaled[:, :, None], 3, axis=2)
    Image.fromarray(photo).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    good["cmyk.jpg"] = photo  # compared with a JPEG tolerance
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    wide = resize_rgb(ASTRONAUT, 64)[:32]
    Image.fromarray(wide).save(folder / "exif_rotated.png", exif=exif)
    good["exif_rotated.png"] = np.rot90(wide, k=-1)

    bad: list[str] = []
    (folder / "empty.png").write_bytes(b"")
    bad.append("empty.png")
    jpeg = folder / "full.jpg"
    Image.fromarray(photo).save(jpeg, quality=90)
    (folder / "truncated.jpg").write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    jpeg.unlink()
    bad.append("truncated.jpg")
    png = folder / "full.png"
    Image.fromarray(photo).save(png)
    (folder / "truncated.png").write_bytes(png.read_bytes()[:300])
    png.unlink()
    bad.append("truncated.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    bad.append("corrupt.png")
    (folder / "not_an_image.jpg").write_text("<html>404 not found</html>\n")
    bad.append("not_an_image.jpg")
    (folder / "bomb.png").write_bytes(_png_header_only(20000, 20000))  # > 2 x MAX_IMAGE_PIXELS: PIL's error
    bad.append("bomb.png")
    (folder / "bomb_warning.png").write_bytes(_png_header_only(10000, 10000))  # > MAX_IMAGE_PIXELS: PIL's warning
    bad.append("bomb_warning.png")
    return good, bad


def test_decode_reads_every_good_mode_and_rejects_every_bad_file(tmp_path: Path) -> None:
    good, bad = write_corpus(tmp_path)
    for name, expected in good.items():
        decoded = decode_rgb(tmp_path / name)
        assert decoded.dtype == np.uint8 and decoded.shape == expected.shape, name
        if name.endswith(".jpg"):
            assert np.abs(decoded.astype(int) - expected.astype(int)).mean() < 6, name
        else:
            np.testing.assert_array_equal(decoded, expected, err_msg=name)
    sixteen = decode_rgb(tmp_path / "sixteen.png")
    assert list(sixteen[0, :4, 0]) == [0, 1, 255, 4]
    for name in bad:
        with pytest.raises(DataError, match=name.replace(".", r"\.")):
            decode_rgb(tmp_path / name)
    with pytest.raises(DataError, match="decompression bomb"):
        decode_rgb(tmp_path / "bomb_warning.png")
    with pytest.raises(DataError, match="missing.png"):
        decode_rgb(tmp_path / "missing.png")


# --------------------------------------------------------------------------------------------
# the align stage


def make_raw(base: Path) -> tuple[Path, Path, dict[str, np.ndarray], list[str]]:
    """raw/ with a face class (astronaut variants and blanks) and a class of the corpus files; its index."""
    raw = base / "raw"
    good, bad = write_corpus(raw / "1_Mixed_Corpus" / "files")
    faces = raw / "0_Real_Astronaut" / "id0"
    faces.mkdir(parents=True)
    Image.fromarray(ASTRONAUT).save(faces / "a0.png")
    Image.fromarray(ASTRONAUT[:, ::-1]).save(faces / "a1.png")
    Image.fromarray(np.full((200, 200, 3), 30, np.uint8)).save(faces / "blank.png")
    good.update({"a0.png": ASTRONAUT, "a1.png": ASTRONAUT[:, ::-1], "blank.png": np.full((200, 200, 3), 30, np.uint8)})
    rows = []
    for path in sorted(p for p in raw.rglob("*") if p.is_file()):
        rel = path.relative_to(raw)
        folder = rel.parts[0]
        rows.append(IndexRow(rel.as_posix(), int(folder.split("_")[0]), folder, f"{folder}/{rel.parent.name}"))
    index = base / "index.csv"
    write_index(rows, index)
    return raw, index, good, bad


def test_align_skips_bad_files_with_a_warning_and_counts_them(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw, index, good, bad = make_raw(tmp_path)
    section = Section({"mode": "resize", "image_size": 32}, "align")
    summary = align(section, raw, index, tmp_path / "faces", workers=1, progress=False)
    assert summary == {
        "mode": "resize",
        "image_size": 32,
        "images": len(good),
        "skipped": len(bad),
        "skipped_per_class": {"1_Mixed_Corpus": len(bad)},
    }
    err = capsys.readouterr().err
    for name in bad:
        assert f"{name}: unreadable image" in err
    table, images = read_faces(tmp_path / "faces")
    assert list(table.columns) == ["row", "path", "label", "class_name", "group", "face_status"]
    assert set(table["face_status"]) == {"not_checked"}
    assert sorted(Path(p).name for p in table["path"]) == sorted(good)
    assert images.shape == (len(good), 32, 32, 3)
    for row, path in zip(table["row"], table["path"], strict=True):
        expected = resize_rgb(good[Path(path).name], 32)
        if not path.endswith(".jpg"):
            np.testing.assert_array_equal(images[row], expected, err_msg=path)


def test_resize_mode_matches_plain_pil_decoding_byte_for_byte(tmp_path: Path) -> None:
    """Mode resize is what align did before dlib: PIL decode, RGB, bilinear resize, np.save."""
    raw = tmp_path / "raw"
    rng = np.random.default_rng(0)
    rows = []
    for label, folder in enumerate(["0_Real_Camera", "1_Swap_Some"]):
        for i in range(6):
            shape = (int(rng.integers(20, 90)), int(rng.integers(20, 90)), 3)
            path = raw / folder / f"id{i % 2}" / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
            rel = path.relative_to(raw).as_posix()
            rows.append(IndexRow(rel, label, folder, f"{folder}/id{i % 2}"))
    write_index(rows, tmp_path / "index.csv")
    section = Section({"mode": "resize", "image_size": 48}, "align")
    align(section, raw, tmp_path / "index.csv", tmp_path / "faces", workers=1, progress=False)
    expected = []
    for row in rows:
        with Image.open(raw / row.path) as img:
            rgb = img.convert("RGB").resize((48, 48), Image.Resampling.BILINEAR, reducing_gap=None)
            expected.append(np.asarray(rgb))
    np.save(tmp_path / "expected.npy", np.stack(expected))
    assert (tmp_path / "faces" / "images.npy").read_bytes() == (tmp_path / "expected.npy").read_bytes()
    table = pd.DataFrame(
        {
            "row": range(len(rows)),
            "path": [r.path for r in rows],
            "label": [r.label for r in rows],
            "class_name": [r.class_name for r in rows],
            "group": [r.group for r in rows],
            "face_status": "not_checked",
        }
    )
    assert (tmp_path / "faces" / "faces.csv").read_text() == table.to_csv(index=False, lineterminator="\n")


@pytest.mark.slow
def test_one_and_two_workers_write_identical_caches(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw, index, good, bad = make_raw(tmp_path)
    section = Section({"mode": "crop", "image_size": 64, "workers": 2}, "align")
    one = align(section, raw, index, tmp_path / "one", workers=1, progress=False)
    two = align(section, raw, index, tmp_path / "two", progress=False)  # workers from params: 2
    assert one == two
    for name in ("images.npy", "faces.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    table, _ = read_faces(tmp_path / "one")
    assert list(table.columns)[-2:] == ["face_status", "face_score"]
    status = dict(zip(table["path"].map(lambda p: Path(p).name), table["face_status"], strict=True))
    assert status["a0.png"] == status["a1.png"] == "found"
    assert status["blank.png"] == status["grey.png"] == "no_face"  # 96 px copies: too small for upsample 0
    assert table.loc[table["face_status"] == "no_face", "face_score"].eq("").all()
    assert table.loc[table["face_status"] == "found", "face_score"].map(float).gt(0).all()
    assert one["skipped"] == len(bad) and one["images"] == len(good)
    assert one["no_face"] == int((table["face_status"] == "no_face").sum())
    rates = one["no_face_rate_per_class"]
    assert list(rates) == ["0_Real_Astronaut", "1_Mixed_Corpus"]
    assert rates["0_Real_Astronaut"] == round(1 / 3, 4)
    err = capsys.readouterr().err
    assert all(err.count(f"{name}: unreadable image") == 2 for name in bad)


@pytest.mark.slow
def test_aligned_mode_through_the_stage(tmp_path: Path) -> None:
    raw, index, good, _ = make_raw(tmp_path)
    section = Section({"mode": "aligned", "image_size": 128, "detector": {"upsample": 0, "threshold": 0.0}}, "align")
    summary = align(section, raw, index, tmp_path / "faces", workers=1, progress=False)
    assert summary["mode"] == "aligned" and summary["images"] == len(good)
    table, images = read_faces(tmp_path / "faces")
    row = int(table.index[table["path"].str.endswith("a0.png")][0])
    np.testing.assert_array_equal(images[row], FaceAligner("aligned", 128)(ASTRONAUT).image)


# --------------------------------------------------------------------------------------------
# params errors


def _align_error(tmp_path: Path, params: dict) -> ConfigError:
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    with pytest.raises(ConfigError) as info:
        align(Section(params, "align"), raw, tmp_path / "index.csv", tmp_path / "faces", progress=False)
    return info.value


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"mode": "detect", "image_size": 64}, "align.mode"),
        ({"mode": "crop", "image_size": 8}, "align.image_size"),
        ({"mode": "crop", "image_size": 64, "detector": {"upsample": -1}}, "align.detector.upsample"),
        ({"mode": "crop", "image_size": 64, "detector": {"upsampel": 1}}, "align.detector.upsampel"),
        ({"mode": "crop", "image_size": 64, "detector": {"threshold": "low"}}, "align.detector.threshold"),
        ({"mode": "crop", "image_size": 64, "margin": 0.5}, "align.margin"),
        ({"mode": "crop", "image_size": 64, "workers": -2}, "align.workers"),
        ({"mode": "crop", "image_size": 64, "marign": 1.3}, "align.marign"),
        ({"mode": "aligned", "image_size": 64, "predictor": "/no/such/file.dat"}, "align.predictor"),
    ],
)
def test_params_errors_name_the_key(tmp_path: Path, params: dict, key: str) -> None:
    error = _align_error(tmp_path, params)
    assert error.key == key
    assert str(error).startswith(f"params.yaml: {key}: ")


def test_predictor_auto_prefers_the_raw_copy_then_the_bundled_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from owdfa.data.align import read_align_params

    raw = tmp_path / "raw"
    raw.mkdir()
    section = Section({"mode": "aligned", "image_size": 64}, "align")
    settings, workers = read_align_params(section, raw)
    assert settings.predictor_path == str(bundled_predictor_path()) and workers == 0
    (raw / PREDICTOR_FILE).symlink_to(bundled_predictor_path())
    assert read_align_params(section, raw)[0].predictor_path == str(raw / PREDICTOR_FILE)
    (raw / PREDICTOR_FILE).unlink()
    monkeypatch.setattr("owdfa.data.align.bundled_predictor_path", lambda: None)
    with pytest.raises(ConfigError, match=r"^params\.yaml: align\.predictor: auto: no shape_predictor"):
        read_align_params(section, raw)
    assert read_align_params(Section({"mode": "crop", "image_size": 64}, "align"), raw)[0].predictor_path is None


@pytest.mark.parametrize("workers", [1, 2])
def test_a_file_that_is_no_predictor_is_a_config_error(tmp_path: Path, workers: int) -> None:
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"not a dlib model" * 10)
    raw, index, _, _ = make_raw(tmp_path)
    section = Section({"mode": "aligned", "image_size": 64, "predictor": str(junk)}, "align")
    with pytest.raises(ConfigError, match=r"^params\.yaml: align\.predictor: cannot load"):
        align(section, raw, index, tmp_path / "faces", workers=workers, progress=False)
    assert not (tmp_path / "faces").exists()
