"""The index (sorted class-folder listing), the split manifests and the open-world protocols."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from owdfa.core.config import Section
from owdfa.core.errors import ConfigError, DataError
from owdfa.data.index import IndexRow, build_index, read_index, write_index
from owdfa.data.protocols import (
    BENCHMARK_CLASS_COUNTS,
    BENCHMARKS,
    OWDFA40_PROTOCOLS,
    SYNTHETIC_PROTOCOLS,
    detect_benchmark,
    get_protocol,
)
from owdfa.data.split import SPLITS, SplitConfig, make_split, read_split, split_config, write_split
from owdfa.data.synthetic import METHODS

# --------------------------------------------------------------------------------------------
# build_index


def _touch(root: Path, rel: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded by the index")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    for rel in (
        "0_Real_B/vid2/b.png",
        "0_Real_A/vid1/z.jpg",
        "0_Real_A/vid1/a.png",
        "0_Real_A/top.PNG",
        "12_Generate_Big/id0001/00001.webp",
        "3_Swap_Foo/id0007/deep/er/x.jpeg",
        "3_Swap_Foo/id0007/y.bmp",
        # ignored inside class folders
        "3_Swap_Foo/id0007/notes.txt",
        "3_Swap_Foo/id0007/.hidden.png",
        "3_Swap_Foo/.cache/c.png",
        "3_Swap_Foo/__MACOSX/m.png",
        "3_Swap_Foo/id0007/__MACOSX/m.png",
        "3_Swap_Foo/noext",
        # non-class folders, skipped and reported
        "extras/e.png",
        "Real_NoLabel/r.png",
        # ignored without a report
        "__MACOSX/0_Real_A/a.png",
        ".git/objects/o.png",
        ".0_Real_Hidden/h.png",
        "README.png",
    ):
        _touch(root, rel)
    (root / "3_Swap_Foo" / "folder.png").mkdir()  # a directory with an image suffix
    return root


def test_build_index_rows(tree):
    rows, skipped = build_index(tree)
    assert [r.path for r in rows] == [
        "0_Real_A/top.PNG",
        "0_Real_A/vid1/a.png",
        "0_Real_A/vid1/z.jpg",
        "0_Real_B/vid2/b.png",
        "12_Generate_Big/id0001/00001.webp",
        "3_Swap_Foo/id0007/deep/er/x.jpeg",
        "3_Swap_Foo/id0007/y.bmp",
    ]
    assert [r.path for r in rows] == sorted(r.path for r in rows)
    assert [r.label for r in rows] == [0, 0, 0, 0, 12, 3, 3]
    assert [r.class_name for r in rows] == ["0_Real_A"] * 3 + [
        "0_Real_B",
        "12_Generate_Big",
        "3_Swap_Foo",
        "3_Swap_Foo",
    ]
    assert [r.group for r in rows] == [
        "0_Real_A/top",
        "0_Real_A/vid1",
        "0_Real_A/vid1",
        "0_Real_B/vid2",
        "12_Generate_Big/id0001",
        "3_Swap_Foo/id0007/deep/er",
        "3_Swap_Foo/id0007",
    ]
    assert sorted(skipped) == ["Real_NoLabel", "extras"]


def test_build_index_skips_names_it_cannot_write_and_shows_them_escaped(tmp_path, capsys):
    root = tmp_path / "raw"
    _touch(root, "0_Real_A/ok.png")
    bad_utf8 = os.fsdecode(b"bad\xff\xfe.png")  # not UTF-8: the index is a UTF-8 CSV
    _touch(root, f"0_Real_A/{bad_utf8}")
    _touch(root, "0_Real_A/esc\x1b[31mred\r.png")  # a terminal escape and a carriage return
    bad_class = os.fsdecode(b"1_Swap_X\xff")  # a class folder name that is not UTF-8
    _touch(root, f"{bad_class}/s.png")
    _touch(root, "2_Swap_Y/\x07bell/t.png")
    _touch(root, "2_Swap_Y/fine.png")
    rows, _ = build_index(root)
    assert [r.path for r in rows] == ["0_Real_A/ok.png", "2_Swap_Y/fine.png"]
    write_index(rows, tmp_path / "index.csv")  # no UnicodeEncodeError
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 4 and all(line.startswith("index: skipped ") for line in lines), err
    assert all(line.isprintable() for line in lines), err
    assert "bad\\xff\\xfe.png" in err and "\\x1b" in err and "\\r" in err and "\\x07" in err


def test_build_index_folders_sharing_a_label_are_one_class(tree):
    rows, _ = build_index(tree)
    real = [r for r in rows if r.label == 0]
    assert {r.class_name for r in real} == {"0_Real_A", "0_Real_B"}
    # Groups stay per folder, so a split never mixes the two sources.
    assert {r.group.split("/")[0] for r in real} == {"0_Real_A", "0_Real_B"}


def test_build_index_is_independent_of_creation_order(tmp_path, tree):
    other = tmp_path / "other"
    for row in reversed(build_index(tree)[0]):
        _touch(other, row.path)
    assert build_index(other)[0] == build_index(tree)[0]


def test_build_index_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        build_index(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        build_index(tmp_path / "empty")
    _touch(tmp_path / "noclass", "extras/e.png")
    _touch(tmp_path / "noclass", "0_Real_A/readme.txt")
    with pytest.raises(DataError, match="no images found"):
        build_index(tmp_path / "noclass")


def test_index_round_trip(tmp_path, tree):
    rows, _ = build_index(tree)
    write_index(rows, tmp_path / "index.csv")
    assert read_index(tmp_path / "index.csv") == rows
    assert (tmp_path / "index.csv").read_text().splitlines()[0] == "path,label,class_name,group"
    with pytest.raises(DataError, match="index not found"):
        read_index(tmp_path / "nope.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not an index table"):
        read_index(tmp_path / "bad.csv")


def test_index_row_is_frozen():
    row = IndexRow("0_Real_A/a.png", 0, "0_Real_A", "0_Real_A/")
    with pytest.raises(AttributeError):
        row.label = 1  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# make_split

PER_CLASS = {0: 70}  # every other class: 40 images
CONFIG = SplitConfig(
    seed=7,
    real_budget=50,
    known_budget=30,
    novel_budget=20,
    test_fraction=0.2,
    labelled_fraction=0.5,
    val_fraction=0.2,
    allow_short_classes=False,
)
P1 = SYNTHETIC_PROTOCOLS["p1"]
# sha256 of make_split(make_faces(), P1, CONFIG) as CSV, from before group-wise splits existed.
PINNED_MANIFEST_DIGEST = "90028c5d2290d2d133d5245cf63caea2eb08f4017bda83632f774abf5d9b7f13"


def make_faces(sizes: dict[int, int] | None = None) -> pd.DataFrame:
    sizes = sizes or {}
    records = []
    for label in range(15):
        name = METHODS[label].folder
        for i in range(sizes.get(label, PER_CLASS.get(label, 40))):
            records.append((f"{name}/id{i % 6:04d}/{i:05d}.png", label, name, f"{name}/id{i % 6:04d}"))
    faces = pd.DataFrame(records, columns=["path", "label", "class_name", "group"])
    faces.insert(0, "row", range(len(faces)))
    return faces


@pytest.fixture(scope="module")
def faces() -> pd.DataFrame:
    return make_faces()


@pytest.fixture(scope="module")
def manifest(faces) -> pd.DataFrame:
    return make_split(faces, P1, CONFIG)


def budget_of(label: int) -> int:
    if label == 0:
        return CONFIG.real_budget
    return CONFIG.known_budget if P1.is_known(label) else CONFIG.novel_budget


def test_split_columns_and_disjoint_rows(manifest, faces):
    assert list(manifest.columns) == ["row", "path", "label", "class_name", "group", "target", "known", "split"]
    assert manifest["path"].is_unique  # one split per image: the splits are disjoint
    assert set(manifest["split"]) == set(SPLITS)
    by_path = faces.set_index("path")
    for column in ("row", "label", "class_name", "group"):
        assert (manifest[column].to_numpy() == by_path.loc[manifest["path"], column].to_numpy()).all()


def test_split_budgets_and_test_share(manifest):
    for label in range(15):
        rows = manifest[manifest["label"] == label]
        budget = budget_of(label)
        assert len(rows) == budget, label
        n_test = int((rows["split"] == "test").sum())
        assert n_test == max(1, round(CONFIG.test_fraction * budget))
        assert abs(n_test / budget - CONFIG.test_fraction) <= 0.5 / budget + 1e-9


def test_split_known_and_novel_classes(manifest):
    known_rows = manifest[manifest["label"].isin(P1.known)]
    novel_rows = manifest[~manifest["label"].isin(P1.known)]
    assert known_rows["known"].all() and not novel_rows["known"].any()
    assert set(novel_rows["split"]) == {"unlabelled", "test"}
    assert set(known_rows["split"]) == {"labelled", "val", "unlabelled", "test"}
    for split in ("labelled", "val"):
        assert set(manifest.loc[manifest["split"] == split, "label"]) == set(P1.known)
    # Every class, known or novel, is in the test split.
    assert set(manifest.loc[manifest["split"] == "test", "label"]) == set(range(15))


def test_split_targets(manifest):
    known = sorted(P1.known)
    novel = [c for c in range(15) if c not in P1.known]
    expected = {c: t for t, c in enumerate(known + novel)}
    target_of = manifest.drop_duplicates("label").set_index("label")["target"].to_dict()
    assert target_of == expected
    assert (manifest["known"] == (manifest["target"] < len(known))).all()


def test_split_labelled_and_val_counts(manifest):
    train_known = manifest["known"] & (manifest["split"] != "test")
    expected_labelled = round(CONFIG.labelled_fraction * int(train_known.sum()))
    labelled_or_val = manifest["split"].isin(["labelled", "val"])
    assert int(labelled_or_val.sum()) == expected_labelled
    for target in range(len(P1.known)):
        of_class = manifest["target"] == target
        n_lab = int((of_class & (manifest["split"] == "labelled")).sum())
        n_val = int((of_class & (manifest["split"] == "val")).sum())
        assert n_lab >= 1
        if n_lab + n_val >= 2:
            assert 1 <= n_val == max(1, min(round(CONFIG.val_fraction * (n_lab + n_val)), n_lab + n_val - 1))


def test_split_without_val(faces):
    manifest = make_split(faces, P1, replace(CONFIG, val_fraction=0.0))
    assert "val" not in set(manifest["split"])


def test_split_is_sorted_and_deterministic(manifest, faces):
    assert list(manifest["path"]) == sorted(manifest["path"])
    assert manifest.index.equals(pd.RangeIndex(len(manifest)))
    pd.testing.assert_frame_equal(make_split(faces, P1, CONFIG), manifest)
    shuffled = faces.sample(frac=1.0, random_state=np.random.RandomState(3)).reset_index(drop=True)
    assert not shuffled["path"].equals(faces["path"])
    pd.testing.assert_frame_equal(make_split(shuffled, P1, CONFIG), manifest)


def test_split_seed_changes_the_manifest(manifest, faces):
    other = make_split(faces, P1, replace(CONFIG, seed=8))
    assert not other.equals(manifest)
    assert set(other["path"]) != set(manifest["path"])  # a different draw of the budgets
    # ... but never the per-class budgets.
    assert other.groupby("label").size().equals(manifest.groupby("label").size())


@pytest.mark.parametrize(
    ("label", "key"), [(0, "split.budgets.real"), (1, "split.budgets.known"), (2, "split.budgets.novel")]
)
def test_split_budget_larger_than_class(label, key):
    short = make_faces({label: 10})
    with pytest.raises(ConfigError, match=re.escape(key)) as err:
        make_split(short, P1, CONFIG)
    assert "\n" not in str(err.value)
    assert METHODS[label].folder in str(err.value)
    manifest = make_split(short, P1, replace(CONFIG, allow_short_classes=True))
    assert (manifest["label"] == label).sum() == 10


def test_split_protocol_must_fit_the_data(faces):
    with pytest.raises(ConfigError, match="lacks"):
        make_split(faces[faces["label"] != 1], P1, CONFIG)
    everything = replace(P1, known=tuple(range(15)))
    with pytest.raises(ConfigError, match="no novel class"):
        make_split(faces, everything, CONFIG)


def test_write_split_round_trip(tmp_path, faces, manifest):
    section = Section(
        {
            "seed": 7,
            "budgets": {"real": 50, "known": 30, "novel": 20},
            "test_fraction": 0.2,
            "labelled_fraction": 0.5,
            "val_fraction": 0.2,
            "allow_short_classes": False,
            "group_by_video": False,
            "custom_protocols": {},
        },
        "split",
    )
    assert split_config(section) == CONFIG
    table = write_split(section, faces, "p1", tmp_path / "p1")
    assert table["benchmark"] == "synthetic" and table["protocol"] == "p1"
    assert table["num_known"] == len(P1.known) and table["num_classes"] == 15
    assert table["counts"] == {s: int((manifest["split"] == s).sum()) for s in SPLITS}
    assert [c["label"] for c in table["classes"][: len(P1.known)]] == sorted(P1.known)
    assert table["classes"][0]["name"] == "Real_Camera"
    read_manifest, read_table = read_split(tmp_path / "p1")
    assert read_table == json.loads(json.dumps(table))
    pd.testing.assert_frame_equal(read_manifest, manifest, check_dtype=False)
    with pytest.raises(ConfigError, match=re.escape("run.protocols")):
        write_split(section, faces, "p9", tmp_path / "p9")
    with pytest.raises(DataError, match="split manifest not found"):
        read_split(tmp_path / "p9")


# --------------------------------------------------------------------------------------------
# protocols


def family_of(label: int) -> str:
    return METHODS[label].family


def test_synthetic_protocols_as_documented():
    assert SYNTHETIC_PROTOCOLS["p1"].known == (0, 1, 3, 5, 8, 11, 13)
    assert SYNTHETIC_PROTOCOLS["p2"].known == (0, 1, 3, 5, 8)
    assert SYNTHETIC_PROTOCOLS["p3"].known == (0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 13)
    families = {m.family for m in METHODS if m.label != 0}
    for family in families:
        members = [m.label for m in METHODS if m.family == family]
        p1_known = [c for c in members if SYNTHETIC_PROTOCOLS["p1"].is_known(c)]
        assert 1 <= len(p1_known) < len(members), family  # about half known, some novel
        p3_novel = [c for c in members if not SYNTHETIC_PROTOCOLS["p3"].is_known(c)]
        assert len(p3_novel) == 1, family  # one novel per family
    assert not any(family_of(c) == "Generate" for c in SYNTHETIC_PROTOCOLS["p2"].known)
    assert set(SYNTHETIC_PROTOCOLS["p2"].known) < set(SYNTHETIC_PROTOCOLS["p1"].known)
    assert set(SYNTHETIC_PROTOCOLS["p1"].known) < set(SYNTHETIC_PROTOCOLS["p3"].known)


@pytest.mark.parametrize("bench", sorted(BENCHMARKS))
def test_real_is_always_known(bench):
    for name, protocol in BENCHMARKS[bench].items():
        assert protocol.name == name
        assert protocol.is_known(0)
        assert list(protocol.known) == sorted(set(protocol.known))
        assert all(0 <= c < BENCHMARK_CLASS_COUNTS[bench] for c in protocol.known)


def test_owdfa40_protocol_sizes():
    assert BENCHMARK_CLASS_COUNTS["owdfa40"] == 41
    sizes = {name: len(p.known) for name, p in OWDFA40_PROTOCOLS.items()}
    assert sizes == {"p1": 19, "p2": 13, "p3": 29}
    assert set(OWDFA40_PROTOCOLS["p2"].known) < set(OWDFA40_PROTOCOLS["p1"].known)
    assert set(OWDFA40_PROTOCOLS["p1"].known) < set(OWDFA40_PROTOCOLS["p3"].known)


def test_detect_benchmark():
    assert detect_benchmark(set(range(15))) == "synthetic"
    assert detect_benchmark(set(range(41))) == "owdfa40"
    assert detect_benchmark(set(range(14))) == "custom"
    assert detect_benchmark({0, 2, 3}) == "custom"


def test_get_protocol_errors_name_the_key():
    assert get_protocol("synthetic", "p2") is SYNTHETIC_PROTOCOLS["p2"]
    assert get_protocol("owdfa40", "p3") is OWDFA40_PROTOCOLS["p3"]
    with pytest.raises(ConfigError, match=r"run\.protocols: unknown protocol 'p4'") as err:
        get_protocol("synthetic", "p4", key="run.protocols")
    assert "\n" not in str(err.value) and err.value.key == "run.protocols"
    with pytest.raises(ConfigError, match=r"protocol: no built-in protocols for a 'custom' dataset"):
        get_protocol("custom", "p1")


def test_split_is_unchanged_for_existing_manifests(manifest):
    """The per-image path draws exactly as before group support (pinned by a digest of the manifest)."""
    import hashlib

    digest = hashlib.sha256(manifest.to_csv(index=False, lineterminator="\n").encode()).hexdigest()
    assert digest == PINNED_MANIFEST_DIGEST


def test_split_draws_a_multi_folder_label_in_equal_shares():
    faces = make_faces()
    # Turn the real class into two folders, as OWDFA-40's Celeb-DF + FF++ real folders.
    second = faces["label"].eq(0) & (np.arange(len(faces)) % 2 == 1)
    faces.loc[second, "class_name"] = "0_Real_Other"
    faces.loc[second, "path"] = faces.loc[second, "path"].str.replace("0_Real_Camera", "0_Real_Other")
    manifest = make_split(faces, P1, CONFIG)
    real = manifest[manifest["label"] == 0]
    assert real["class_name"].value_counts().to_dict() == {"0_Real_Camera": 25, "0_Real_Other": 25}
    assert real["target"].nunique() == 1
    short = faces[~(faces["class_name"].eq("0_Real_Other") & (np.arange(len(faces)) % 4 == 1))]
    with pytest.raises(ConfigError, match=r"split\.budgets\.real: its share 25 of the budget 50 .* 0_Real_Other"):
        make_split(short, P1, CONFIG)


def test_split_group_by_video_keeps_each_video_in_one_split():
    faces = make_faces()
    grouped = make_split(faces, P1, replace(CONFIG, group_by_video=True))
    # Budgets stay exact; each (class, video) sits in exactly one split.
    assert grouped.groupby("label").size().equals(make_split(faces, P1, CONFIG).groupby("label").size())
    per_group = grouped.groupby("group")["split"].nunique()
    assert (per_group == 1).all(), per_group[per_group > 1]
    assert {"labelled", "val", "unlabelled", "test"} <= set(grouped["split"])
    # The per-image split does leak videos across splits on the same data.
    leaky = make_split(faces, P1, CONFIG).groupby("group")["split"].nunique()
    assert (leaky > 1).any()
    # Deterministic.
    pd.testing.assert_frame_equal(make_split(faces, P1, replace(CONFIG, group_by_video=True)), grouped)


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("c23-000_003-0012.png", "9_X/c23-000_003"),  # CPL-era FF++ frames: video 000_003
        ("Celeb-real-id0_0000-031.png", "9_X/Celeb-real-id0_0000"),
        ("00017.png", "9_X/00017"),  # a generated image: its own group
        ("seed0042.png", "9_X/seed0042"),  # no separator before the digits: not a frame number
        ("portrait.jpg", "9_X/portrait"),
    ],
)
def test_flat_files_are_grouped_by_video_name(tmp_path, name, group):
    _touch(tmp_path, f"9_X/{name}")
    rows, _ = build_index(tmp_path)
    assert rows[0].group == group


def owdfa40_faces(real_per_folder: int = 10_500, fake_per_class: int = 2_100) -> pd.DataFrame:
    from owdfa.data.protocols import OWDFA40_FOLDERS

    records = []
    for folder in OWDFA40_FOLDERS:
        label = int(folder.split("_")[0])
        count = real_per_folder if label == 0 else fake_per_class
        records += [
            (f"{folder}/v{i // 32:04d}/{i % 32:03d}.png", label, folder, f"{folder}/v{i // 32:04d}")
            for i in range(count)
        ]
    faces = pd.DataFrame(records, columns=["path", "label", "class_name", "group"])
    faces.insert(0, "row", range(len(faces)))
    return faces


@pytest.mark.parametrize(
    ("protocol", "known", "train", "labelled", "unlabelled", "test"),
    # Totals from CAL's rules (spec/data.md section 3): budgets 20,000 real (10,000 per real folder),
    # 2,000 known, 1,500 novel; 80/20 per class; 75 % of known-class training images labelled.
    [
        ("p1", 19, 71_200, 33_600, 37_600, 17_800),
        ("p2", 13, 68_800, 26_400, 42_400, 17_200),
        ("p3", 29, 75_200, 45_600, 29_600, 18_800),
    ],
)
def test_owdfa40_protocol_split_sizes(protocol, known, train, labelled, unlabelled, test):
    faces = owdfa40_faces()
    config = SplitConfig(2025, 20_000, 2_000, 1_500, 0.2, 0.75, 0.0, False)
    manifest = make_split(faces, OWDFA40_PROTOCOLS[protocol], config)
    counts = manifest["split"].value_counts().to_dict()
    assert counts == {"labelled": labelled, "unlabelled": unlabelled, "test": test}
    assert counts["labelled"] + counts["unlabelled"] == train
    assert manifest.loc[manifest["known"], "target"].nunique() == known
    assert manifest.loc[manifest["label"] == 0, "class_name"].value_counts().to_list() == [10_000, 10_000]
    # The labelled validation carve-out comes out of the labelled share only.
    with_val = make_split(faces, OWDFA40_PROTOCOLS[protocol], replace(config, val_fraction=0.1))
    assert (with_val["split"] == "test").sum() == test
    assert with_val["split"].isin(["labelled", "val"]).sum() == labelled


def test_custom_protocol_for_own_class_folders(tmp_path):
    faces = make_faces()
    faces = faces[faces["label"].isin([0, 2, 5, 7])]  # not a built-in benchmark's label set
    section = dict(
        seed=1,
        budgets={"real": 20, "known": 10, "novel": 10},
        test_fraction=0.2,
        labelled_fraction=0.75,
        val_fraction=0.0,
        allow_short_classes=False,
        group_by_video=False,
        custom_protocols={"mine": [2, 5]},
    )
    table = write_split(Section(section, "split"), faces, "mine", tmp_path / "mine")
    assert table["benchmark"] == "custom" and table["protocol"] == "mine"
    assert [c["label"] for c in table["classes"] if c["known"]] == [0, 2, 5]
    with pytest.raises(ConfigError, match=r"run\.protocols: .*define yours under split\.custom_protocols"):
        write_split(Section(section, "split"), faces, "p1", tmp_path / "p1")
    section["custom_protocols"] = {"mine": [2, 5, 9]}
    with pytest.raises(ConfigError, match="names known class 9 that the data lacks"):
        write_split(Section(section, "split"), faces, "mine", tmp_path / "mine")
