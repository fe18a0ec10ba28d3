"""Report figures for open-world deepfake attribution, written as bit-identical PNGs.

Every figure is built by a ``make_*`` function that returns a :class:`matplotlib.figure.Figure` (so tests
can inspect titles and labels) and written with :func:`save_figure`. pyplot is never used: figures are
plain ``Figure`` objects, so nothing is kept in a global figure registry and nothing needs closing.
Styling comes from matplotlib's defaults plus a few fixed overrides applied in a context, so a user's
matplotlibrc cannot change the bytes of a PNG and this module never mutates global rcParams. PNGs carry
no software/time metadata, so DVC sees an unchanged hash when the inputs are unchanged.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import matplotlib

# Headless stages must never try to open a window; only choose the backend if nobody has imported pyplot
# yet (switching under a live pyplot session, e.g. a notebook, would break it). We never use pyplot anyway.
if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import TwoSlopeNorm, to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from numpy.typing import ArrayLike

from owdfa.core.io import atomic_write_bytes
from owdfa.evaluate.metrics import match_clusters

__all__ = [
    "DPI",
    "class_colors",
    "confusion_pairs",
    "confusion_table",
    "make_confidence_histograms",
    "make_confusion_matrix",
    "make_k_trajectory",
    "make_reliability",
    "make_training_curves",
    "make_tsne",
    "make_uncertainty_maps",
    "png_bytes",
    "save_figure",
    "tsne_embedding",
]

DPI = 150
ANNOTATE_MAX_CLASSES = 20  # above this, per-cell count text becomes unreadable
KNOWN_MARKER, NOVEL_MARKER = "o", "^"
KNOWN_COLOR, NOVEL_COLOR = "#1f77b4", "#d62728"

# Fixed overrides on top of matplotlib's defaults: small fonts so 41 class names fit.
_RC: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 10,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "image.interpolation": "nearest",
}

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def _style() -> Iterator[None]:
    """Default style + overrides, scoped: output is independent of the user's matplotlibrc."""
    with matplotlib.style.context(["default", _RC]):
        yield


def styled(func: Callable[P, R]) -> Callable[P, R]:
    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _style():
            return func(*args, **kwargs)

    return wrapper


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure with its own Agg canvas (no global registry, nothing to close)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# --------------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------------
@styled
def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """Render to PNG bytes without metadata, so identical inputs give identical bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.05)
    return buf.getvalue()


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as PNG atomically (a killed stage never leaves a truncated image)."""
    path = Path(path)
    atomic_write_bytes(path, png_bytes(fig, dpi=dpi))
    return path


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _labels(a: ArrayLike, name: str, n_classes: int | None = None) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must contain integers, got dtype {arr.dtype}")
    if arr.min() < 0:
        raise ValueError(f"{name} must be non-negative")
    if n_classes is not None and arr.max() >= n_classes:
        raise ValueError(f"{name} has label {int(arr.max())} but only {n_classes} class names were given")
    return arr.astype(np.int64, copy=False)


def class_colors(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` colours from tab20, tab20b, tab20c (60 distinct), cycling beyond that."""
    palette = [c for name in ("tab20", "tab20b", "tab20c") for c in matplotlib.colormaps[name].colors]
    return [to_rgba(palette[i % len(palette)]) for i in range(n)]


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(n / cols), cols


def _hide_unused(axes: Sequence[Axes], used: int) -> None:
    for ax in axes[used:]:
        ax.set_visible(False)


# --------------------------------------------------------------------------------------------------
# 1. confusion matrix
# --------------------------------------------------------------------------------------------------
def _confusion(
    targets: ArrayLike, preds: ArrayLike, class_names: Sequence[str]
) -> tuple[np.ndarray, list[str], list[str], list[int]]:
    """Counts ``[class, column]`` with columns = clusters ordered by their Hungarian-matched class.

    Returns (counts, row labels, column labels, matched class per column or -1 for an unmatched cluster).
    A cluster counts as matched when the joint matching pairs it with a class present in ``targets``:
    that is exactly the pairing the accuracy metrics score, so the diagonal is what All ACC counts.
    """
    n_classes = len(class_names)
    y = _labels(targets, "targets", n_classes)
    p = _labels(preds, "preds")
    if y.size != p.size:
        raise ValueError(f"targets and preds must have the same length, got {y.size} and {p.size}")
    mapping = match_clusters(y, p)
    present = set(np.unique(y).tolist())
    matched = sorted((cls, c) for c, cls in mapping.items() if cls in present)
    unmatched = sorted(c for c, cls in mapping.items() if cls not in present)
    clusters = [c for _, c in matched] + unmatched
    col_class = [cls for cls, _ in matched] + [-1] * len(unmatched)
    col_labels = [str(class_names[cls]) for cls, _ in matched] + [f"extra-{c}" for c in unmatched]
    col_of = np.full(int(p.max()) + 1, -1, dtype=np.int64)
    col_of[clusters] = np.arange(len(clusters))
    counts = np.zeros((n_classes, len(clusters)), dtype=np.int64)
    np.add.at(counts, (y, col_of[p]), 1)
    return counts, [str(n) for n in class_names], col_labels, col_class


def confusion_table(targets: ArrayLike, preds: ArrayLike, class_names: Sequence[str]) -> pd.DataFrame:
    """Dense tidy counts (actual, predicted, count), every cell in plot order, zeros included.

    ``predicted`` is the matched class name (``extra-<cluster>`` for unmatched clusters), so rows with
    ``actual == predicted`` are the correctly attributed samples.
    """
    counts, rows, cols, _ = _confusion(targets, preds, class_names)
    return pd.DataFrame(
        {
            "actual": np.repeat(rows, len(cols)),
            "predicted": np.tile(cols, len(rows)),
            "count": counts.ravel(),
        }
    )


def confusion_pairs(targets: ArrayLike, preds: ArrayLike, class_names: Sequence[str]) -> pd.DataFrame:
    """One (actual, predicted) row per sample: DVC's ``confusion`` template counts rows, not a count column."""
    _, rows, _, _ = _confusion(targets, preds, class_names)  # validates
    y, p = _labels(targets, "targets"), _labels(preds, "preds")
    present = set(np.unique(y).tolist())
    name = {c: (rows[cls] if cls in present else f"extra-{c}") for c, cls in match_clusters(y, p).items()}
    return pd.DataFrame({"actual": [rows[t] for t in y], "predicted": [name[c] for c in p.tolist()]})


@styled
def make_confusion_matrix(
    targets: ArrayLike, preds: ArrayLike, class_names: Sequence[str], num_known: int, title: str
) -> Figure:
    """Row-normalised confusion of true method vs matched cluster; known rows above the red line."""
    counts, rows, cols, col_class = _confusion(targets, preds, class_names)
    n_rows, n_cols = counts.shape
    totals = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)

    side = max(n_rows, n_cols)
    tick_size = 7 if side <= ANNOTATE_MAX_CLASSES else 5
    width = float(np.clip(0.22 * n_cols + 3.2, 4.5, 13.0))
    height = float(np.clip(0.22 * n_rows + 2.4, 3.8, 12.0))
    fig = new_figure(width, height)
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    cbar.set_label("fraction of the true method's test samples")

    if side <= ANNOTATE_MAX_CLASSES:
        for i, j in zip(*np.nonzero(counts), strict=True):
            ax.text(
                j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                color="white" if frac[i, j] > 0.5 else "black",
            )  # fmt: skip

    ax.set_xticks(range(n_cols), cols, rotation=90, fontsize=tick_size)
    ax.set_yticks(range(n_rows), rows, fontsize=tick_size)
    for lbl, cls in zip(ax.get_xticklabels(), col_class, strict=True):
        if cls < 0:
            lbl.set_color("grey")
    if 0 < num_known < n_rows:
        ax.axhline(num_known - 0.5, color=NOVEL_COLOR, lw=1.2, ls="--")
        n_known_cols = sum(0 <= c < num_known for c in col_class)
        if 0 < n_known_cols < n_cols:
            ax.axvline(n_known_cols - 0.5, color=NOVEL_COLOR, lw=0.8, ls=":")
        for y, text in ((num_known - 0.5 - 0.15, "known ↑"), (num_known - 0.5 + 0.15, "novel ↓")):
            ax.text(
                1.0, y, text, transform=ax.get_yaxis_transform(), ha="left",
                va="bottom" if "↑" in text else "top", fontsize=6, color=NOVEL_COLOR,
            )  # fmt: skip
    ax.set_xlabel("predicted cluster, named by its Hungarian-matched method (extra-N: unmatched cluster N)")
    ax.set_ylabel("true forgery method")
    ax.set_title(title)
    return fig


# --------------------------------------------------------------------------------------------------
# 2. reliability diagram
# --------------------------------------------------------------------------------------------------
_RELIABILITY_COLUMNS = ("bin_lower", "bin_upper", "count", "mean_confidence", "accuracy")


@styled
def make_reliability(table: pd.DataFrame, ece: float, title: str) -> Figure:
    """Accuracy per confidence bin against the diagonal, plus how many samples each bin holds."""
    missing = [c for c in _RELIABILITY_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"reliability table lacks columns {missing}")
    lo = table["bin_lower"].to_numpy(float)
    hi = table["bin_upper"].to_numpy(float)
    count = table["count"].to_numpy(float)
    conf = table["mean_confidence"].to_numpy(float)
    acc = table["accuracy"].to_numpy(float)
    used = (count > 0) & np.isfinite(acc) & np.isfinite(conf)
    width = hi - lo

    fig = new_figure(8.0, 3.6)
    ax_rel, ax_cnt = fig.subplots(1, 2, width_ratios=[1.15, 1.0])
    ax_rel.bar(lo[used], acc[used], width=width[used], align="edge", color=KNOWN_COLOR, alpha=0.85,
               edgecolor="white", lw=0.5, label="accuracy in bin")  # fmt: skip
    ax_rel.bar(lo[used], conf[used] - acc[used], bottom=acc[used], width=width[used], align="edge",
               color=NOVEL_COLOR, alpha=0.3, edgecolor=NOVEL_COLOR, lw=0.5, hatch="//",
               label="gap to mean confidence")  # fmt: skip
    ax_rel.plot([0, 1], [0, 1], color="black", ls="--", lw=1, label="perfect calibration")
    ax_rel.plot([], [], " ", label=f"ECE = {ece:.3f}")
    ax_rel.set_xlim(0, 1)
    ax_rel.set_ylim(0, 1)
    ax_rel.set_aspect("equal")
    ax_rel.set_xlabel("confidence (max softmax probability)")
    ax_rel.set_ylabel("accuracy")
    ax_rel.set_title("accuracy vs confidence")
    ax_rel.legend(loc="upper left")

    ax_cnt.bar(lo, count, width=width, align="edge", color="grey", edgecolor="white", lw=0.5)
    ax_cnt.set_xlim(0, 1)
    ax_cnt.set_xlabel("confidence (max softmax probability)")
    ax_cnt.set_ylabel("test samples in bin")
    ax_cnt.set_title(f"samples per confidence bin (total {int(count.sum())})")
    fig.suptitle(f"{title} (ECE {ece:.3f})")
    return fig


# --------------------------------------------------------------------------------------------------
# 3. confidence of known vs novel samples
# --------------------------------------------------------------------------------------------------
@styled
def make_confidence_histograms(groups: Mapping[str, Mapping[str, ArrayLike]], title: str, bins: int = 20) -> Figure:
    """Per method, the max-softmax density of known- vs novel-class test samples (the confidence skew)."""
    if not groups:
        raise ValueError("groups is empty")
    edges = np.linspace(0.0, 1.0, bins + 1)
    n_rows, n_cols = _grid(len(groups), 3)
    fig = new_figure(3.2 * n_cols + 0.4, 2.5 * n_rows + 0.5)
    # Same fixed [0, 1] x range on every panel, but not sharex: a panel above an empty slot keeps its ticks.
    axes = list(fig.subplots(n_rows, n_cols, squeeze=False).ravel())
    for ax, (method, by_group) in zip(axes, groups.items(), strict=False):
        for group, color in (("known", KNOWN_COLOR), ("novel", NOVEL_COLOR)):
            values = np.clip(np.asarray(by_group.get(group, []), dtype=float).ravel(), 0.0, 1.0)
            values = values[np.isfinite(values)]
            if values.size == 0:
                continue
            ax.hist(values, bins=edges, density=True, histtype="step", lw=1.4, color=color,
                    label=f"{group} classes (n={values.size}, mean {values.mean():.3f})")  # fmt: skip
            ax.axvline(values.mean(), color=color, lw=0.8, ls=":")
        ax.set_xlim(0, 1)
        ax.set_title(str(method))
        ax.set_xlabel("max softmax confidence")
        ax.set_ylabel("density")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left")
    _hide_unused(axes, len(groups))
    fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------------
# 4. estimated number of classes over training
# --------------------------------------------------------------------------------------------------
@styled
def make_k_trajectory(
    trajectories: Mapping[str, Sequence[int | float | None]], k_true: int, num_known: int, title: str
) -> Figure:
    """K-hat per epoch (epoch 1 = first entry); ``None``/NaN epochs are gaps in the line."""
    if not trajectories:
        raise ValueError("trajectories is empty")
    fig = new_figure(6.0, 3.4)
    ax = fig.add_subplot()
    tab10 = matplotlib.colormaps["tab10"].colors  # strong, distinct hues for a few runs
    colors = [tab10[i % len(tab10)] for i in range(len(trajectories))]
    for color, (run, ks) in zip(colors, trajectories.items(), strict=True):
        y = np.array([np.nan if k is None else float(k) for k in ks], dtype=float)
        ax.plot(np.arange(1, y.size + 1), y, marker="o", ms=3, lw=1.2, color=color, label=str(run))
    ax.axhline(k_true, color="black", ls="--", lw=1, label=f"true number of classes K = {k_true}")
    ax.axhline(num_known, color="grey", ls=":", lw=1, label=f"known classes = {num_known}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(r"estimated number of classes $\hat{K}$")
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig


# --------------------------------------------------------------------------------------------------
# 5. t-SNE of features
# --------------------------------------------------------------------------------------------------
def _subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def tsne_embedding(features: ArrayLike, seed: int, max_points: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE of (a deterministic subsample of) ``features``; returns (coords, row indices used).

    Runs single-threaded: Barnes-Hut sums in OpenMP threads (and BLAS in the PCA init) can change the
    last bits with the thread count, and the plot must be bit-identical from run to run.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be 2-D with at least 2 rows, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    idx = _subsample(x.shape[0], max_points, seed)
    x = x[idx]
    perplexity = min(30.0, (x.shape[0] - 1) / 3.0)
    with threadpool_limits(limits=1):
        tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity, n_jobs=1)
        coords = tsne.fit_transform(x)
    return coords, idx


@styled
def make_tsne(
    features: ArrayLike,
    targets: ArrayLike,
    known_mask: ArrayLike,
    class_names: Sequence[str],
    seed: int,
    title: str,
    max_points: int = 3000,
) -> Figure:
    """Feature clusters coloured by true method; circles = known-class samples, triangles = novel."""
    y = _labels(targets, "targets", len(class_names))
    known = np.asarray(known_mask, dtype=bool).ravel()
    if known.size != y.size or np.asarray(features).shape[0] != y.size:
        raise ValueError("features, targets and known_mask must have the same number of samples")
    coords, idx = tsne_embedding(features, seed, max_points)
    y, known = y[idx], known[idx]
    colors = class_colors(len(class_names))

    classes = np.unique(y)
    fig = new_figure(6.0 + (1.3 if classes.size <= 20 else 2.6), 5.2)
    ax = fig.add_subplot()
    handles = []
    for cls in classes:
        sel = y == cls
        for is_known, marker in ((True, KNOWN_MARKER), (False, NOVEL_MARKER)):
            s = sel & (known == is_known)
            if s.any():
                ax.scatter(coords[s, 0], coords[s, 1], s=7, marker=marker, color=colors[cls], alpha=0.75, lw=0)
        marker = KNOWN_MARKER if known[sel].mean() >= 0.5 else NOVEL_MARKER
        handles.append(Line2D([], [], ls="", marker=marker, ms=5, color=colors[cls], label=str(class_names[cls])))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("t-SNE dimension 1")
    ax.set_ylabel("t-SNE dimension 2")
    n_total = np.asarray(targets).size
    subset = f" ({idx.size} of {n_total} samples)" if idx.size < n_total else f" ({n_total} samples)"
    ax.set_title(title + subset)
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=6,
        ncols=1 if classes.size <= 20 else 2, title="method (o known, ^ novel)", title_fontsize=7,
        handletextpad=0.2, columnspacing=0.8, borderaxespad=0.0,
    )  # fmt: skip
    return fig


# --------------------------------------------------------------------------------------------------
# 6. uncertainty / occlusion maps
# --------------------------------------------------------------------------------------------------
@styled
def make_uncertainty_maps(
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    captions: Sequence[str],
    title: str,
    map_label: str,
    max_cols: int = 4,
) -> Figure:
    """Each face above its map overlay, on one shared colour scale so maps are comparable.

    Maps may be coarser than the image (e.g. a 7x7 occlusion grid); they are stretched over the image
    without smoothing, so the grid stays visible. Signed maps get a diverging scale centred on 0.
    """
    if not (len(images) == len(maps) == len(captions)) or not images:
        raise ValueError("images, maps and captions must be non-empty and of equal length")
    arrs = [np.asarray(m, dtype=float) for m in maps]
    if any(m.ndim != 2 for m in arrs):
        raise ValueError("every map must be 2-D (H x W)")
    finite = np.concatenate([m[np.isfinite(m)].ravel() for m in arrs] + [np.zeros(1)])
    lo, hi = float(finite.min()), float(finite.max())
    if lo < 0 < hi:
        bound = max(-lo, hi)
        norm_kw: dict[str, Any] = {"norm": TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)}
        cmap = "RdBu_r"
    else:
        norm_kw = {"vmin": lo, "vmax": hi if hi > lo else lo + 1e-12}
        cmap = "magma"

    n_rows, n_cols = _grid(len(images), max_cols)
    fig = new_figure(2.1 * n_cols + 1.0, 4.1 * n_rows + 0.4)
    axes = fig.subplots(2 * n_rows, n_cols, squeeze=False)
    mappable = None
    for k, (img, m, cap) in enumerate(zip(images, arrs, captions, strict=True)):
        r, c = divmod(k, n_cols)
        img = np.asarray(img)
        if img.ndim not in (2, 3):
            raise ValueError(f"image {k} must be HxW or HxWx3, got shape {img.shape}")
        h, w = img.shape[:2]
        extent = (-0.5, w - 0.5, h - 0.5, -0.5)
        top, bottom = axes[2 * r, c], axes[2 * r + 1, c]
        top.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="antialiased")
        top.set_title(str(cap), fontsize=7)
        bottom.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="antialiased")
        mappable = bottom.imshow(m, cmap=cmap, alpha=0.6, extent=extent, interpolation="nearest", **norm_kw)
        bottom.set_title("map overlay", fontsize=6)
        for ax in (top, bottom):
            ax.set_axis_off()
    for k in range(len(images), n_rows * n_cols):
        r, c = divmod(k, n_cols)
        axes[2 * r, c].set_visible(False)
        axes[2 * r + 1, c].set_visible(False)
    # Colourbar from an opaque twin of the overlay mappable: the 0.6 overlay alpha would wash it out.
    opaque = ScalarMappable(norm=mappable.norm, cmap=mappable.get_cmap())
    cbar = fig.colorbar(opaque, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, shrink=0.8)
    cbar.set_label(map_label)
    fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------------
# 7. training curves
# --------------------------------------------------------------------------------------------------
@styled
def make_training_curves(history: Sequence[Mapping[str, Any]], keys: Sequence[str], title: str) -> Figure:
    """One panel per key (losses and accuracies have different scales); x = ``epoch`` if logged, else 1..n."""
    if not keys:
        raise ValueError("keys is empty")
    epochs = np.array([row.get("epoch", i + 1) for i, row in enumerate(history)], dtype=float)
    n_rows, n_cols = _grid(len(keys), 3)
    fig = new_figure(3.0 * n_cols + 0.4, 2.4 * n_rows + 0.5)
    axes = list(fig.subplots(n_rows, n_cols, squeeze=False).ravel())
    for ax, key in zip(axes, keys, strict=False):
        values = np.array([_as_float(row.get(key)) for row in history], dtype=float)
        ax.plot(epochs, values, marker="o", ms=2.5, lw=1.2, color=KNOWN_COLOR)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    _hide_unused(axes, len(keys))
    fig.suptitle(title)
    return fig


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
