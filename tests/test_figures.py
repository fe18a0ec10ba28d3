"""Report figures: every axes that shows data has a title and axis labels; PNGs are bit-identical."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from owdfa import plots

NAMES = ["Real", "Swap_A", "Edit_B", "Gen_C", "Gen_D"]
TARGETS = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4])
# clusters are permuted labels: 0->0, 1->3, 2->1, 3->4, 4->2, plus one surplus cluster 6
PREDS = np.array([0, 0, 6, 3, 3, 1, 1, 4, 4, 1, 2, 2])


def figures() -> dict[str, object]:
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "bin_lower": [0.0, 0.5],
            "bin_upper": [0.5, 1.0],
            "count": [4, 8],
            "mean_confidence": [0.3, 0.8],
            "accuracy": [0.25, 0.75],
        }
    )
    features = rng.normal(size=(60, 8)) + np.repeat(np.eye(5, 8) * 4, 12, axis=0)
    targets = np.repeat(np.arange(5), 12)
    return {
        "confusion": plots.make_confusion_matrix(TARGETS, PREDS, NAMES, 2, "true method vs matched cluster"),
        "confusion_41": plots.make_confusion_matrix(
            np.arange(41).repeat(3), np.arange(41).repeat(3), [f"class_{i}" for i in range(41)], 19, "41 classes"
        ),
        "reliability": plots.make_reliability(table, 0.05, "reliability"),
        "confidence": plots.make_confidence_histograms(
            {"cal": {"known": rng.random(30), "novel": rng.random(20) * 0.6}}, "confidence known vs novel"
        ),
        "k_trajectory": plots.make_k_trajectory({"cal_dpp": [40, 30, 22, 16]}, 15, 7, "K per epoch"),
        "tsne": plots.make_tsne(features, targets, targets < 2, NAMES, 0, "t-SNE", max_points=3000),
        "maps": plots.make_uncertainty_maps(
            [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)] * 2,
            [rng.normal(size=(16, 16)).astype(np.float32)] * 2,
            ["Real", "Swap_A"],
            "uncertainty maps",
            "delta entropy (nats)",
        ),
        "curves": plots.make_training_curves(
            [{"train/loss": 1.0, "val/acc": 0.5}, {"train/loss": 0.8, "val/acc": 0.6}], ["train/loss", "val/acc"], "tc"
        ),
    }


@pytest.fixture(scope="module")
def built() -> dict[str, object]:
    return figures()


def test_every_data_axes_has_title_and_labels(built):
    for name, fig in built.items():
        titled = bool(fig._suptitle and fig._suptitle.get_text()) or any(ax.get_title() for ax in fig.axes)
        assert titled, name
        for ax in fig.axes:
            if ax.has_data() and ax.get_label() != "<colorbar>" and ax.get_visible():
                assert ax.get_xlabel() or ax.get_ylabel() or not ax.axison, (name, ax)


@pytest.mark.slow
def test_png_is_valid_and_bit_identical(built, tmp_path):
    for name, fig in built.items():
        first = plots.png_bytes(fig)
        assert Image.open(io.BytesIO(first)).format == "PNG"
        again = plots.png_bytes(figures()[name])
        assert hashlib.sha256(first).digest() == hashlib.sha256(again).digest(), name
    path = plots.save_figure(built["confusion"], tmp_path / "c.png")
    assert path.read_bytes() == plots.png_bytes(built["confusion"])


def test_confusion_table_orders_columns_by_matched_class():
    table = plots.confusion_table(TARGETS, PREDS, NAMES)
    assert int(table["count"].sum()) == len(TARGETS)
    columns = list(dict.fromkeys(table["predicted"]))
    assert columns[:5] == NAMES and columns[5].startswith("extra-")
    hits = table[table["actual"] == table["predicted"]]["count"].sum()
    assert hits == 10  # one real image in the surplus cluster, one Gen_C image in Edit_B's cluster
    pairs = plots.confusion_pairs(TARGETS, PREDS, NAMES)
    assert len(pairs) == len(TARGETS) and (pairs["actual"] == pairs["predicted"]).sum() == 10


def test_tsne_embedding_is_deterministic():
    features = np.random.default_rng(1).normal(size=(40, 6))
    first, _ = plots.tsne_embedding(features, seed=3)
    second, _ = plots.tsne_embedding(features, seed=3)
    np.testing.assert_array_equal(first, second)
