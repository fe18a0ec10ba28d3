"""The regime study: how each method fares as the starting features get stronger (docs/regime-study.md, "Where does
CAL's lead come from?").

Each regime is a grid of params/grids.yaml named `regime-<start>-<protocol>` (a starting point, and
possibly a longer schedule, on one protocol, seeds 0-2), run by `owdfa grid` into reports/grid/. Any other
grid with the same settings apart from `run.methods` (CAL's ablation rows, say) adds its methods to that
regime; a method both grids ran must have the same results, or one of them is stale. This module only
reads those committed files and writes, per protocol, `reports/study/regimes-<protocol>.md`
(the tables), `regimes-<protocol>.png` (All, Novel and GCD-v2 New ACC against the starting features'
known-class accuracy) and `acr-<protocol>.png` (CAL's novel threshold and DPP's K-hat per epoch), so
`owdfa study <protocol>` regenerates them exactly and nothing is copied by hand.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from owdfa.core.errors import DataError
from owdfa.core.io import atomic_write_text
from owdfa.evaluate import plots
from owdfa.experiments.grid import GRIDS_FILE, OUT_DIR, Grid, load_grids, made_under, numerics_version

STUDY_DIR = Path("reports/study")
PREFIX = "regime-"
METHODS_KEY = "run.methods"
# The paper's orderings on All ACC, best first: CAL > CPL > baseline, and its ablation's V >= IV > II > I
# (a tie keeps this order, so V = IV holds).
MAIN_ORDER = ("cal", "cpl", "baseline")
ABLATION_ORDER = ("cal", "cal_abl4", "cal_abl2", "cal_abl1")
ABLATION_ROWS = ("cal_abl1", "cal_abl2", "cal_abl3", "cal_abl4", "cal")  # the ablation table's columns, I-V
LONGER_SCHEDULE = "longer schedule"  # a regime that trains for more epochs (train.epochs)
METRICS = (("all_acc", "All ACC"), ("novel_acc", "Novel ACC"), ("gcd_v2_new_acc", "GCD-v2 New ACC"))


@dataclass(frozen=True)
class Regime:
    """One grid's results on the protocol: its starting features and every method's summary."""

    grid: Grid
    probe: float | None  # starting features: nearest-class-mean known-class accuracy (validation)
    pretrain_val: float | None  # the pretrain classifier's validation accuracy (None without one)
    methods: dict[str, dict[str, Any]]  # method -> metrics.json entry (means and _std)
    trajectories: dict[str, dict[str, Any]]  # method -> per-seed per-epoch series
    companions: tuple[str, ...] = ()  # grids that added methods in the same settings
    added: frozenset[str] = frozenset()  # the methods only a companion ran
    # companions whose own pretrain gave other starting features: (grid name, its probe)
    other_starts: tuple[tuple[str, float | None], ...] = ()
    # companions made under another numerics version, not combined: (grid name, its version)
    other_numerics: tuple[tuple[str, int | None], ...] = ()
    numerics: int | None = None  # the exact-mode numerics version the grid was made under


def regime_grids(protocol: str, grids: Sequence[Grid]) -> list[Grid]:
    """The study's grids for `protocol`, in the grids file's order."""
    suffix = f"-{protocol}"
    return [g for g in grids if g.name.startswith(PREFIX) and g.name.endswith(suffix)]


def _settings(grid: Grid) -> dict[str, Any]:
    """What a grid sets apart from the methods it runs: the regime it runs them in."""
    return {key: value for key, value in grid.sets.items() if key != METHODS_KEY}


def companion_grids(regime: Grid, grids: Sequence[Grid]) -> list[Grid]:
    """The grids that are not regimes themselves but run more methods in `regime`'s settings."""
    settings = _settings(regime)
    return [g for g in grids if not g.name.startswith(PREFIX) and _settings(g) == settings]


def _read_grid(grid: Grid, protocol: str, grid_dir: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A grid's committed metrics and trajectories files, or None when it has not been run yet."""
    metrics_path = grid_dir / f"metrics-{grid.name}.json"
    trajectories_path = grid_dir / f"trajectories-{grid.name}.json"
    if not metrics_path.is_file():
        return None
    try:
        metrics = json.loads(metrics_path.read_text())
        trajectories = json.loads(trajectories_path.read_text()) if trajectories_path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise DataError(f"{metrics_path.parent}: a grid file of {grid.name} is not JSON ({exc.msg})") from None
    if protocol not in metrics:
        raise DataError(f"{metrics_path}: no results for {protocol}")
    return metrics, trajectories


def _starting_features(metrics: dict[str, Any], protocol: str) -> dict[str, Any]:
    """The grid's recorded starting features on `protocol` (probe, pretrain val ACC); {} if it has none."""
    return (metrics.get("starting_features") or {}).get(protocol) or {}


def load_regime(grid: Grid, protocol: str, grid_dir: Path, companions: Sequence[Grid] = ()) -> Regime | None:
    """The regime's committed report files with its companions' methods, or None when it has not been run.

    A companion that has not been run adds nothing. One that ran a method the regime ran too must have
    the same results for it (the same runs, so the same numbers): a difference means one grid is stale.
    A companion whose starting features differ (made on another CPU under numerics version 1, whose
    bits depended on the vendor, or stale) still adds its methods, and is listed in `other_starts` so
    the study says so. A companion made under another numerics version is not combined at all (its
    runs of the same settings computed other bits): it is listed in `other_numerics`.
    """
    read = _read_grid(grid, protocol, grid_dir)
    if read is None:
        return None
    metrics, trajectories = read
    methods = dict(metrics[protocol])
    series = dict(trajectories.get(protocol, {}))
    start = _starting_features(metrics, protocol)
    read_companions: list[str] = []
    other_starts: list[tuple[str, float | None]] = []
    other_numerics: list[tuple[str, int | None]] = []
    version = numerics_version(grid.name, grid_dir)
    for companion in companions:
        extra = _read_grid(companion, protocol, grid_dir)
        if extra is None:
            continue
        if (companion_version := numerics_version(companion.name, grid_dir)) != version:
            other_numerics.append((companion.name, companion_version))
            continue
        read_companions.append(companion.name)
        extra_metrics, extra_trajectories = extra
        extra_start = _starting_features(extra_metrics, protocol)
        if extra_start and extra_start != start:  # a grid made before probes were recorded has none to compare
            other_starts.append((companion.name, extra_start.get("probe_known_acc")))
        for method, summary in extra_metrics[protocol].items():
            if method in methods and methods[method] != summary:
                raise DataError(
                    f"{grid_dir}: {method} differs between grids {grid.name} and {companion.name}, which run it "
                    "in the same settings; re-run the stale one (`owdfa grid NAME`)"
                )
            methods.setdefault(method, summary)
        for method, trajectory in extra_trajectories.get(protocol, {}).items():
            series.setdefault(method, trajectory)
    return Regime(
        grid=grid,
        probe=start.get("probe_known_acc"),
        pretrain_val=start.get("val_acc"),
        methods=methods,
        trajectories=series,
        companions=tuple(read_companions),
        added=frozenset(methods) - frozenset(metrics[protocol]),
        other_starts=tuple(other_starts),
        other_numerics=tuple(other_numerics),
        numerics=version,
    )


def _percent(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "n/a"
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def _ordering(regime: Regime, order: tuple[str, ...]) -> str:
    """`holds` or `reversed` with the measured order of All ACC means, for the methods of `order` present."""
    present = [m for m in order if m in regime.methods and regime.methods[m].get("all_acc") is not None]
    if len(present) < 2:
        return "n/a"
    measured = sorted(present, key=lambda m: -regime.methods[m]["all_acc"])
    verdict = "holds" if measured == present else "does not hold"
    return f"{verdict} ({' > '.join(measured)})"


def _first_epoch_at_least(values: list[float], bound: float) -> int | None:
    return next((i + 1 for i, v in enumerate(values) if v >= bound), None)


def _acr_cells(regime: Regime, method: str) -> list[str]:
    """CAL's novel threshold: last value (mean over seeds), epochs at which it first reached 1 per seed
    (max-softmax confidence cannot exceed 1, so from then on no novel pseudo-label is kept), kept share."""
    series = regime.trajectories.get(method, {})
    tau = series.get("tau_novel") or []
    kept = series.get("acr_kept_fraction") or []
    if not tau:
        return ["n/a", "n/a", "n/a"]
    last = sum(s[-1] for s in tau) / len(tau)
    off = [_first_epoch_at_least(s, 1.0) for s in tau]
    off_text = ", ".join("never" if e is None else str(e) for e in off)
    kept_last = sum(s[-1] for s in kept) / len(kept) if kept else None
    return [f"{last:.3f}", off_text, _percent(kept_last)]


def _metric_table(regimes: Sequence[Regime], methods: Sequence[str], key: str, corner: str) -> list[str]:
    """A markdown table of one metric: a row per regime, a column per method (mean ± std, — if not run)."""
    lines = [f"| {corner} | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for r in regimes:
        cells = [
            _percent(r.methods[m].get(key), r.methods[m].get(f"{key}_std")) if m in r.methods else "—" for m in methods
        ]
        lines.append(f"| {r.grid.name} | " + " | ".join(cells) + " |")
    return lines


def write_study(protocol: str, repo: Path = Path("."), grids_file: Path = GRIDS_FILE) -> list[Path]:
    """reports/study/regimes-<protocol>.md and its two figures, from the committed grid files."""
    every_grid = list(load_grids(repo / grids_file).values())
    grids = regime_grids(protocol, every_grid)
    if not grids:
        raise DataError(f"{grids_file}: no grid named {PREFIX}<start>-{protocol}")
    loaded = [(g, load_regime(g, protocol, repo / OUT_DIR, companion_grids(g, every_grid))) for g in grids]
    regimes = [r for _, r in loaded if r is not None]
    missing = [g.name for g, r in loaded if r is None]
    if not regimes:
        raise DataError(f"{repo / OUT_DIR}: none of {', '.join(g.name for g in grids)} has been run (`owdfa grid`)")
    every_method = list(dict.fromkeys(m for r in regimes for m in r.methods if not m.endswith("_official")))
    methods = [m for m in every_method if any(m in r.methods and m not in r.added for r in regimes)]
    ablated = [r for r in regimes if r.added]
    only_added = [m for m in every_method if m not in methods]
    ablation_methods = [m for m in ABLATION_ROWS if m in only_added or m == "cal"] + [
        m for m in only_added if m not in ABLATION_ROWS
    ]
    out_dir = repo / STUDY_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    figure, acr_figure = out_dir / f"regimes-{protocol}.png", out_dir / f"acr-{protocol}.png"
    lines = [
        f"# Regime study, protocol {protocol}",
        "",
        f"Generated by `owdfa study {protocol}` from the grid reports in `{OUT_DIR}/` (each made by "
        "`owdfa grid NAME`, whose command is in its results file); do not edit by hand. Test split, last epoch, "
        "percent, mean ± sample std over the grid's seeds. Starting features: known-class accuracy of a "
        "nearest-class-mean probe on the labelled validation split (`owdfa.train.feature_probe`).",
        "",
    ]
    if missing:
        lines += [f"Not run yet: {', '.join(missing)}.", ""]
    lines += [
        "| Regime | Start | Starting features | Pretrain val ACC | CAL > CPL > baseline | I < II < IV ≤ V |",
        "|---|---|---|---|---|---|",
    ]
    for r in regimes:
        name = r.grid.name + "".join(f" + {c}" for c in r.companions)
        lines.append(
            f"| {name} | {r.grid.description} | {_percent(r.probe)} | {_percent(r.pretrain_val)} "
            f"| {_ordering(r, MAIN_ORDER)} | {_ordering(r, ABLATION_ORDER)} |"
        )
    lines.append("")
    lines += [
        "Made under (`reports/grid/made-NAME.json`; numerics version 1's MKL pin held on Intel CPUs only, so "
        "its grids are comparable with each other when made on Intel, and not with version 2's):",
        "",
    ]
    for name in dict.fromkeys(n for r in regimes for n in (r.grid.name, *r.companions)):
        lines.append(f"* {name}: {made_under(name, repo / OUT_DIR)}")
    lines.append("")
    for r in regimes:
        for companion, companion_version in r.other_numerics:
            lines += [
                f"**{companion} is not combined with {r.grid.name}**: it was made under numerics version "
                f"{companion_version}, {r.grid.name} under {r.numerics}, so their runs of the same settings "
                f"computed other bits. `owdfa grid {r.grid.name}` regenerates the regime under the current version.",
                "",
            ]
        for companion, probe in r.other_starts:
            lines += [
                f"**{companion} started from other features than {r.grid.name}** (probe {_percent(probe)} against "
                f"{_percent(r.probe)}), though both set the same pretraining: the two grids were made under other "
                "numerics versions or CPUs (see above), or one is stale. Their methods share a row here; "
                "read the comparison across the two grids as one between separate draws.",
                "",
            ]
    for key, title in METRICS:
        lines += [f"**{title}**", "", *_metric_table(regimes, methods, key, "Regime"), ""]
    if ablated:
        lines += [
            "**CAL's ablation**: the methods only a companion grid ran (named after the regime in the first table) "
            "beside `cal`, which is row V.",
            "",
        ]
        for key, title in METRICS:
            lines += [*_metric_table(ablated, ablation_methods, key, title), ""]
    acr_methods = [m for m in methods if any(r.trajectories.get(m, {}).get("tau_novel") for r in regimes)]
    if acr_methods:
        lines += [
            "**ACR's novel threshold τ_novel** (τ_known is fixed, `known_threshold`): last epoch's value (mean "
            "over seeds), the epoch at which it first reached 1 in each seed (from then on no novel pseudo-label "
            "passes), and the share of pseudo-labels ACR kept in the last epoch.",
            "",
            "| Regime | Method | τ_novel, last | τ_novel ≥ 1 from epoch | kept, last epoch |",
            "|---|---|---|---|---|",
        ]
        for r in regimes:
            for m in acr_methods:
                if m in r.trajectories:
                    lines.append(f"| {r.grid.name} | {m} | " + " | ".join(_acr_cells(r, m)) + " |")
        lines.append("")
    k_methods = [m for m in methods if any(r.trajectories.get(m, {}).get("k_hat") for r in regimes)]
    for m in k_methods:
        lines += [f"**{m}: K̂ per epoch** (mean over seeds)", ""]
        for r in regimes:
            series = r.trajectories.get(m, {}).get("k_hat") or []
            if series:
                means = [sum(s[i] for s in series) / len(series) for i in range(min(map(len, series)))]
                lines.append(f"* {r.grid.name}: " + ", ".join(f"{v:.1f}" for v in means))
        lines.append("")
    lines += [f"![accuracy against starting features]({figure.name})", ""]
    lines += [f"![ACR threshold and K̂ per epoch]({acr_figure.name})", ""]
    plots.save_figure(make_regime_figure(regimes, methods, METRICS, protocol), figure)
    plots.save_figure(make_acr_figure(regimes, acr_methods, k_methods, protocol), acr_figure)
    text = out_dir / f"regimes-{protocol}.md"
    atomic_write_text(text, "\n".join(lines) + "\n")
    return [text, figure, acr_figure]


# --------------------------------------------------------------------------------------------------
# figures: accuracy against the starting features, ACR's threshold and K-hat per epoch
# --------------------------------------------------------------------------------------------------
@plots.styled
def make_regime_figure(
    regimes: Sequence[Regime], methods: Sequence[str], metrics: Sequence[tuple[str, str]], protocol: str
) -> Figure:
    """One panel per metric: each method's mean ± std against the regime's starting-feature accuracy.

    A regime without a probe value is left out of the panels.
    Regimes with the default training are joined by lines; one that changes a `train.*` key (a longer
    schedule, the official view) is an open marker of the method's colour, not joined, one marker
    shape per kind of change.
    """
    fig = plots.new_figure(4.2 * len(metrics), 3.6)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    tab10 = matplotlib.colormaps["tab10"].colors
    placed = [r for r in regimes if r.probe is not None]

    changes = list(dict.fromkeys(training_change(r) for r in placed))
    others = [c for c in changes if c not in (None, LONGER_SCHEDULE)]
    markers = {LONGER_SCHEDULE: "o", **dict(zip(others, "sD^v", strict=False))}

    for ax, (key, title) in zip(axes, metrics, strict=True):
        for i, method in enumerate(methods):
            for change in changes:
                points = sorted(
                    (100 * r.probe, 100 * r.methods[method][key], 100 * (r.methods[method].get(f"{key}_std") or 0.0))
                    for r in placed
                    if training_change(r) == change and method in r.methods and r.methods[method].get(key) is not None
                )
                if not points:
                    continue
                x, y, err = (np.array(v) for v in zip(*points, strict=True))
                style = {"ls": "none", "mfc": "none", "ms": 7} if change else {"lw": 1.2, "ms": 4}
                label = f"{method}, {change}" if change else method
                marker = markers.get(change, "o")
                ax.errorbar(x, y, yerr=err, marker=marker, capsize=3, color=tab10[i % 10], label=label, **style)
        for r in placed:
            ax.axvline(100 * r.probe, color="0.85", lw=0.8, zorder=0)
        ax.set_xlabel("starting features: known-class accuracy (%)")
        ax.set_ylabel(f"{title} (%)")
        ax.set_title(f"{protocol}: {title}")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig


def training_change(regime: Regime) -> str | None:
    """How a regime trains differently from the default, in the figure's words (None: it does not).

    A regime's grid may change the training itself (`train.*` keys), not only the starting point:
    a longer schedule (`train.epochs`), or the pixel recipe of the views (`train.augment.view`).
    """
    sets = {key: value for key, value in regime.grid.sets.items() if key.startswith("train.")}
    if not sets:
        return None
    if "train.epochs" in sets:
        return LONGER_SCHEDULE
    if set(sets) == {"train.augment.view"}:
        return f"{sets['train.augment.view']} view"
    return ", ".join(f"{key}={value}" for key, value in sorted(sets.items()))


@plots.styled
def make_acr_figure(
    regimes: Sequence[Regime], acr_methods: Sequence[str], k_methods: Sequence[str], protocol: str
) -> Figure:
    """Left: CAL's novel threshold per epoch (mean over seeds), one line per regime and method; right: K-hat."""
    fig = plots.new_figure(11.0, 3.6)
    left, right = fig.subplots(1, 2)
    tab10 = matplotlib.colormaps["tab10"].colors
    styles = ["-", "--", ":", "-."]

    def mean_series(series: Sequence[Sequence[float]]) -> np.ndarray:
        length = min(len(s) for s in series)
        return np.mean([list(s)[:length] for s in series], axis=0)

    for i, r in enumerate(regimes):
        for j, method in enumerate(acr_methods):
            tau = r.trajectories.get(method, {}).get("tau_novel")
            if tau:
                y = mean_series(tau)
                left.plot(
                    np.arange(1, y.size + 1), y, ls=styles[j % 4], color=tab10[i % 10], label=f"{r.grid.name}, {method}"
                )
        for j, method in enumerate(k_methods):
            k = r.trajectories.get(method, {}).get("k_hat")
            if k:
                y = mean_series(k)
                right.plot(
                    np.arange(1, y.size + 1),
                    y,
                    ls=styles[j % 4],
                    marker="o",
                    ms=3,
                    color=tab10[i % 10],
                    label=f"{r.grid.name}, {method}",
                )
    left.axhline(1.0, color="black", lw=0.8, ls="--")
    left.set_xlabel("epoch")
    left.set_ylabel(r"$\tau_{novel}$ (mean over seeds)")
    left.set_title(f"{protocol}: ACR's novel threshold (1 = no novel pseudo-label passes)")
    right.set_xlabel("epoch")
    right.set_ylabel(r"$\hat{K}$ (mean over seeds)")
    right.set_title(f"{protocol}: DPP's active prototypes")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small", frameon=False)
    return fig
