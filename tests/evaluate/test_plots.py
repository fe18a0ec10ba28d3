"""Report figures: readable (titles, axis labels), valid PNGs, byte-identical on re-render."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from owdfa.evaluate import plots

NAMES5 = ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter"]
NUM_KNOWN5 = 2


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_readable(fig: Figure) -> None:
    """Every visible axes has a title (own or figure suptitle) and labels; image panels need a caption."""
    suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
    data_axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert data_axes
    for ax in data_axes:
        assert ax.get_title() or suptitle, "axes without a title"
        if ax.axison:
            assert ax.get_xlabel(), f"axes {ax.get_title()!r} lacks an x label"
            assert ax.get_ylabel(), f"axes {ax.get_title()!r} lacks a y label"
        else:  # an image panel: pixels have no axes, but it must say what it shows
            assert ax.get_title()
    for cbar_ax in (ax for ax in fig.axes if ax.get_label() == "<colorbar>"):
        assert cbar_ax.get_ylabel() or cbar_ax.get_xlabel(), "colourbar without a label"


def assert_writes_identical_png(tmp_path: Path, write: Callable[[Path], Path]) -> None:
    a, b = tmp_path / "a.png", tmp_path / "sub" / "b.png"
    assert write(a) == a
    write(b)
    with Image.open(a) as img:
        img.verify()
    with Image.open(a) as img:
        assert img.format == "PNG" and min(img.size) > 100
    assert _sha(a) == _sha(b)
    write(a)  # overwrite in place: same bytes, no temp files left behind
    assert _sha(a) == _sha(b)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.png", "b.png"]


# --------------------------------------------------------------------------------------------------
# confusion matrix
# --------------------------------------------------------------------------------------------------
def _permuted_case() -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """5 classes, clusters are a permutation of the labels plus one surplus cluster (9) and some noise."""
    y = np.repeat(np.arange(5), 10)
    perm = {0: 3, 1: 0, 2: 4, 3: 1, 4: 2}  # class -> cluster
    p = np.array([perm[c] for c in y])
    p[[0, 10]] = 9  # one sample each of class 0 and 1 lands in a surplus cluster
    p[20] = perm[3]  # one class-2 sample in class 3's cluster
    return y, p, perm


def test_confusion_table_orders_columns_by_matched_class() -> None:
    y, p, _ = _permuted_case()
    table = plots.confusion_table(y, p, NAMES5)
    assert list(table.columns) == ["actual", "predicted", "count"]
    assert table["count"].sum() == y.size
    cols = list(dict.fromkeys(table["predicted"]))
    assert cols == [*NAMES5, "extra-9"]
    assert list(dict.fromkeys(table["actual"])) == NAMES5
    matrix = table.pivot(index="actual", columns="predicted", values="count").loc[NAMES5, cols].to_numpy()
    assert matrix.diagonal().tolist() == [9, 9, 9, 10, 10]
    assert matrix[2, 3] == 1 and matrix[:, 5].tolist() == [1, 1, 0, 0, 0]


def test_confusion_pairs_match_table() -> None:
    y, p, _ = _permuted_case()
    pairs = plots.confusion_pairs(y, p, NAMES5)
    assert len(pairs) == y.size
    counted = pairs.value_counts().rename("count").reset_index()
    table = plots.confusion_table(y, p, NAMES5)
    merged = table[table["count"] > 0].merge(counted, on=["actual", "predicted"], suffixes=("", "_pairs"))
    assert len(merged) == len(counted) and (merged["count"] == merged["count_pairs"]).all()


def test_confusion_rejects_labels_beyond_class_names() -> None:
    with pytest.raises(ValueError, match="class names"):
        plots.confusion_table(np.array([0, 5]), np.array([0, 1]), NAMES5)


def test_confusion_matrix_figure(tmp_path: Path) -> None:
    y, p, _ = _permuted_case()
    fig = plots.make_confusion_matrix(y, p, NAMES5, NUM_KNOWN5, "Attribution confusion, protocol 1")
    assert_readable(fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [*NAMES5, "extra-9"]
    assert len(ax.texts) >= 5  # counts annotated on a small matrix
    assert_writes_identical_png(
        tmp_path,
        lambda path: plots.save_figure(plots.make_confusion_matrix(y, p, NAMES5, NUM_KNOWN5, "Confusion"), path),
    )


def test_confusion_matrix_figure_41_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = [f"method_{i:02d}" for i in range(41)]
    y = np.repeat(np.arange(41), 6)
    p = rng.permutation(43)[y]
    p[rng.random(y.size) < 0.2] = 42
    fig = plots.make_confusion_matrix(y, p, names, 20, "Confusion, 41 methods")
    assert_readable(fig)
    assert len(fig.axes[0].texts) == 2  # only the known/novel markers: counts are unreadable at 41 classes
    out = plots.save_figure(fig, tmp_path / "cm41.png")
    with Image.open(out) as img:
        assert img.size[0] > 1000


# --------------------------------------------------------------------------------------------------
# reliability, confidence, K trajectory, training curves
# --------------------------------------------------------------------------------------------------
def _reliability_table() -> pd.DataFrame:
    edges = np.linspace(0, 1, 11)
    mid = (edges[:-1] + edges[1:]) / 2
    count = np.array([0, 0, 2, 5, 9, 12, 20, 31, 50, 120])
    acc = np.where(count > 0, np.clip(mid - 0.08, 0, 1), np.nan)
    return pd.DataFrame(
        {"bin_lower": edges[:-1], "bin_upper": edges[1:], "count": count, "mean_confidence": mid, "accuracy": acc}
    )


def test_reliability_figure(tmp_path: Path) -> None:
    table = _reliability_table()
    fig = plots.make_reliability(table, 0.0731, "Calibration of CAL, protocol 1")
    assert_readable(fig)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert any("ECE = 0.073" in label for label in labels)
    assert_writes_identical_png(
        tmp_path, lambda path: plots.save_figure(plots.make_reliability(table, 0.0731, "Calibration"), path)
    )
    with pytest.raises(ValueError, match="lacks columns"):
        plots.make_reliability(table.drop(columns="accuracy"), 0.1, "x")


@pytest.mark.slow
def test_confidence_histograms_figure(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    groups = {m: {"known": rng.beta(8, 2, 60), "novel": rng.beta(3, 3, 40)} for m in ("CAL", "CPL", "baseline", "ORCA")}
    groups["empty-novel"] = {"known": rng.beta(8, 2, 10), "novel": np.array([])}
    fig = plots.make_confidence_histograms(groups, "Max-softmax confidence, known vs novel classes")
    assert_readable(fig)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    mean_known = groups["CAL"]["known"].mean()
    assert labels[0].startswith("known classes") and f"mean {mean_known:.3f}" in labels[0]
    assert all(ax.get_xlim() == (0.0, 1.0) for ax in fig.axes if ax.get_visible())
    assert_writes_identical_png(
        tmp_path, lambda path: plots.save_figure(plots.make_confidence_histograms(groups, "Confidence"), path)
    )


def test_k_trajectory_figure(tmp_path: Path) -> None:
    runs = {"CAL seed 0": [12, 15, 17, None, 20], "CPL seed 0": [10, 11, 14, 16, 18]}
    fig = plots.make_k_trajectory(runs, k_true=20, num_known=10, title="Estimated number of classes per epoch")
    assert_readable(fig)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "true number of classes K = 20" in labels and "known classes = 10" in labels
    assert_writes_identical_png(
        tmp_path, lambda path: plots.save_figure(plots.make_k_trajectory(runs, 20, 10, "K"), path)
    )


def test_training_curves_figure(tmp_path: Path) -> None:
    history = [{"epoch": e, "loss": 2.0 / (e + 1), "val_acc": e / 10} for e in range(6)]
    history[3].pop("val_acc")  # a missing value is a gap, not an error
    fig = plots.make_training_curves(history, ["loss", "val_acc"], "Training curves, CAL seed 0")
    assert_readable(fig)
    assert_writes_identical_png(
        tmp_path,
        lambda path: plots.save_figure(plots.make_training_curves(history, ["loss", "val_acc"], "Curves"), path),
    )


# --------------------------------------------------------------------------------------------------
# t-SNE and uncertainty maps
# --------------------------------------------------------------------------------------------------
def _features(n_per_class: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(5), n_per_class)
    centres = rng.normal(scale=4.0, size=(5, 8))
    return centres[y] + rng.normal(size=(y.size, 8)), y


def test_tsne_embedding_deterministic_and_subsampled() -> None:
    x, _ = _features()
    a, idx_a = plots.tsne_embedding(x, seed=3, max_points=100)
    b, idx_b = plots.tsne_embedding(x, seed=3, max_points=100)
    assert a.shape == (100, 2) and np.array_equal(idx_a, idx_b)
    assert np.all(np.diff(idx_a) > 0) and idx_a.max() < x.shape[0]
    assert np.array_equal(a, b)
    _, idx_c = plots.tsne_embedding(x, seed=4, max_points=100)
    assert not np.array_equal(idx_a, idx_c)
    small, idx_small = plots.tsne_embedding(x[:10], seed=0)  # perplexity shrinks with n
    assert small.shape == (10, 2) and idx_small.tolist() == list(range(10))


def test_tsne_figure(tmp_path: Path) -> None:
    x, y = _features(n_per_class=20)
    known = y < NUM_KNOWN5
    fig = plots.make_tsne(x, y, known, NAMES5, seed=0, title="t-SNE of test features", max_points=80)
    assert_readable(fig)
    ax = fig.axes[0]
    assert "80 of 100 samples" in ax.get_title()
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == NAMES5
    assert [h.get_marker() for h in legend.legend_handles] == ["o", "o", "^", "^", "^"]
    assert_writes_identical_png(
        tmp_path, lambda path: plots.save_figure(plots.make_tsne(x, y, known, NAMES5, 0, "t-SNE", max_points=80), path)
    )


def test_class_colors_cycle_beyond_palette() -> None:
    colors = plots.class_colors(61)
    assert len(set(colors[:60])) == 60 and colors[60] == colors[0]


@pytest.mark.slow
@pytest.mark.parametrize("signed", [True, False])
def test_uncertainty_maps_figure(tmp_path: Path, signed: bool) -> None:
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    maps = [rng.normal(size=(4, 4)) if signed else rng.random((32, 32)) for _ in range(5)]
    captions = [f"FaceSwap sample {i}" for i in range(5)]
    label = "Δ predictive entropy (nats) when occluded"
    fig = plots.make_uncertainty_maps(images, maps, captions, "Occlusion sensitivity", label)
    assert_readable(fig)
    cbar_axes = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(cbar_axes) == 1 and cbar_axes[0].get_ylabel() == label
    titles = {ax.get_title() for ax in fig.axes if ax.get_visible()}
    assert set(captions) <= titles
    assert_writes_identical_png(
        tmp_path,
        lambda path: plots.save_figure(plots.make_uncertainty_maps(images, maps, captions, "Occlusion", label), path),
    )
    with pytest.raises(ValueError, match="equal length"):
        plots.make_uncertainty_maps(images, maps[:2], captions, "x", label)


def test_no_pyplot_figures_left_open() -> None:
    """Figures are plain Figure objects: nothing registered with pyplot, so nothing leaks."""
    y, p, _ = _permuted_case()
    plots.make_confusion_matrix(y, p, NAMES5, NUM_KNOWN5, "Confusion")
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        assert pyplot.get_fignums() == []
