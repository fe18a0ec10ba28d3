"""The report stage: per-run metrics -> reports/metrics.json, reports/results.md and comparison figures.

metrics.json keeps a small, stable key set for `dvc metrics diff` / `dvc exp show`
(`p1.baseline.all_acc`, mean over seeds, `_std` beside it); per-run detail stays in
reports/runs/<protocol>-<method>-<seed>/. Numbers are fractions in JSON and percentages in the
Markdown tables, as the papers print them. Every table says which metric convention and which
checkpoint (last epoch, or the epoch selected on the labelled validation split) its numbers come
from. Output depends only on the inputs (bit-identical on a re-run).

Beside them: each protocol's starting features (the pretrain stage's probe, `starting_features` in
metrics.json) and reports/trajectories.json, what changed per epoch in every run that changes
something (DPP's K-hat, CAL's novel threshold and ACR's kept share), for the regime study.

Imported models (`official.models` in params.yaml: the CAL authors' released weights, evaluated by
`evaluate_official@<name>` into reports/runs/official-<name>/) join the same tables as rows of their
own, one per protocol and method (mean ± std over the imported seeds), marked "(official
checkpoint)"; metrics.json keys them by the card's method (`p1.cal_official`). Without imported
models the report is what it was before they existed, byte for byte.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from owdfa.core.errors import DataError
from owdfa.core.io import atomic_write_json, atomic_write_text
from owdfa.core.numerics import summary as numerics_summary

# Per checkpoint (`last` and `val_best`) in the per-run metrics.json.
CHECKPOINT_KEYS = (
    "all_acc",
    "all_nmi",
    "all_ari",
    "novel_acc",
    "novel_nmi",
    "novel_ari",
    "known_acc",
    "gcd_v2_all_acc",
    "gcd_v2_old_acc",
    "gcd_v2_new_acc",
)
# Top level of the per-run metrics.json (K estimates) and its `calibration` section.
# K columns: (key, table header, what the number is). Which estimators ran is evaluate.k_estimators;
# a column whose key no run of the protocol has is left out of the table.
K_COLUMNS = (
    (
        "k_hat",
        "K̂ prototypes",
        "Prototypes: K̂ from the classifier (DPP's pruned count; the true K, fixed, when K is known).",
    ),
    (
        "k_hat_gcd",
        "K̂ GCD (k-means + Brent)",
        "GCD: GCD's own K estimator as its official code runs it: plain scikit-learn k-means (k-means++, "
        "n_init=10, random_state=0) on the L2-normalised features of all training images, each K scored by the "
        "Hungarian accuracy on the labelled images only, K searched by bounded Brent over [known, round(f × known)] "
        "(f = `evaluate.kmeans_max_factor`), each trial point truncated to an int.",
    ),
    (
        "k_hat_ss_kmeans_folds",
        "K̂ SS-k-means folds (ours)",
        "SS-k-means folds: our variant, not GCD's: semi-supervised k-means with part of the labelled images "
        "pinned, scored on labelled images held out in two complementary folds of the known classes, same search "
        "range.",
    ),
)
K_KEYS = tuple(key for key, _, _ in K_COLUMNS)
CALIBRATION_KEYS = ("ece", "known_confidence", "novel_confidence", "known_epistemic", "novel_epistemic")
# The stable key set of reports/metrics.json per protocol and method (each also with `_std`).
SUMMARY_KEYS = (
    *CHECKPOINT_KEYS,
    *K_KEYS,
    "val_best_all_acc",
    "val_best_novel_acc",
    "val_best_known_acc",
    "ece",
    "known_confidence",
    "novel_confidence",
)
OWDFA_COLUMNS = (
    ("all_acc", "All ACC"),
    ("all_nmi", "All NMI"),
    ("all_ari", "All ARI"),
    ("novel_acc", "Novel ACC"),
    ("novel_nmi", "Novel NMI"),
    ("novel_ari", "Novel ARI"),
    ("known_acc", "Known ACC"),
)
GCD_COLUMNS = (("gcd_v2_all_acc", "All"), ("gcd_v2_old_acc", "Old"), ("gcd_v2_new_acc", "New"))
# CAL's ablation (its Table 4) as variants of params.yaml's methods.
ABLATION_ROWS = (
    ("cal_abl1", "I", "CE + R, FFE"),
    ("cal_abl2", "II", "+ CCR, no FFE"),
    ("cal_abl3", "III", "+ CCR, FFE"),
    ("cal_abl4", "IV", "+ CCR + ACR, no FFE"),
    ("cal", "V", "+ CCR + ACR, FFE (full CAL)"),
)
# Imported models: reports/runs/<IMPORTED_PREFIX><name>/ and data/predictions/<IMPORTED_PREFIX><name>.csv
IMPORTED_PREFIX = "official-"
# The row label of an imported model, by its card's method (owdfa.official.checkpoint.official_card)
IMPORTED_LABELS = {"cal_official": "CAL (official checkpoint)", "cal_dpp_official": "CAL-DPP (official checkpoint)"}
IMPORTED_SPLIT_CAVEAT = (
    "Our OWDFA-40 split is drawn from sorted file lists, while the official one followed the file order of the "
    "authors' machine, so part of our test split was in their training set: these numbers are optimistic."
)
OWDFA_CONVENTION = (
    "OW-DFA convention (CAL/CPL Table 2): All = one Hungarian matching over all test images; Novel = a "
    "separate matching on novel-class images; Known = direct accuracy. Percent."
)


def run_key(protocol: str, method: str, seed: int | str) -> str:
    return f"{protocol}-{method}-{seed}"


def imported_run_key(name: str) -> str:
    """The evaluate_official stage's folder (reports/runs/) and predictions file name for `official.models.<name>`."""
    return f"{IMPORTED_PREFIX}{name}"


def imported_label(method: str) -> str:
    return IMPORTED_LABELS.get(method, f"{method} (imported)")


def _load(runs_dir: Path, key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    paths = runs_dir / key / "metrics.json", runs_dir / key / "run.json"
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: missing (run `dvc repro` so the evaluate stage writes it)")
    metrics, run = json.loads(paths[0].read_text()), json.loads(paths[1].read_text())
    if "last" not in metrics:
        raise DataError(f"{paths[0]}: written by an older evaluate stage (run `dvc repro` again)")
    return metrics, run


def _flat(metrics: dict[str, Any]) -> dict[str, Any]:
    """The per-run values under the summary's key names."""
    flat = {k: metrics["last"].get(k) for k in CHECKPOINT_KEYS}
    flat.update({k: metrics.get(k) for k in K_KEYS})
    selected = metrics.get("val_best") or {}
    flat.update({f"val_best_{k}": selected.get(k) for k in CHECKPOINT_KEYS})
    every_row = metrics.get("last_all_prototypes") or {}  # faithful DPP's second classifier
    flat.update({f"all_prototypes_{k}": every_row.get(k) for k in CHECKPOINT_KEYS})
    flat.update(metrics.get("calibration") or {})
    return flat


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None, None
    arr = np.asarray(vals, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return round(float(arr.mean()), 6), round(std, 6)


def _cell(mean: float | None, std: float | None, n: int, percent: bool = True, digits: int = 1) -> str:
    if mean is None:
        return "n/a"
    scale = 100.0 if percent else 1.0
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}" if n > 1 else f"{mean * scale:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _legend(runs: dict[str, dict[str, Any]]) -> list[str]:
    """What each method name in the tables means: its loss and settings from params.yaml (an imported
    model's: those of the authors' run, from its card)."""
    rows = []
    for method, run in runs.items():
        settings = run.get("method_params") or {}
        text = ", ".join(f"{k}={v}" for k, v in settings.items() if k != "method")
        if "imported" in run:
            text = f"imported weights of {run['imported'].get('trained_on')}: {text}"
        rows.append([method, str(run.get("loss")), text])
    return ["## Methods", "", *_table(["Method", "loss", "settings (methods.<name> in params.yaml)"], rows), ""]


def _numerics(grid: _Grid) -> list[str]:
    """Under which numerics the tables were computed, and whether a fresh clone regenerates them exactly."""
    seen: Counter[str] = Counter()
    imported = 0
    for infos in grid.info.values():
        for run in infos:
            for step in ("trained_under", "evaluated_under"):
                record = run.get(step)
                if step == "trained_under" and "imported" in run:  # weights made elsewhere, not by our numerics
                    imported += 1
                    continue
                seen[
                    numerics_summary(record) if record else "not recorded (a run from before owdfa.core.numerics)"
                ] += 1
    exact = all(text.startswith("exact mode") for text in seen)
    verdict = (
        "Every training and evaluation run behind these tables ran in **exact mode** (pinned AVX2 kernels, MKL's "
        "vendor-independent path and thread count), whose bits should not depend on the CPU; which CPUs were "
        "verified, and how, is in docs/numerics.md, 'Exact results across machines'."
        if exact
        else "**Not every run was in exact mode**: another machine (or thread count) may give other numbers."
    )
    if imported:
        verdict += (
            f" The {imported} imported models' weights were trained elsewhere (by the authors) and are taken as "
            "released; their evaluation is counted above."
        )
    rows = [[text, str(count)] for text, count in sorted(seen.items())]
    return ["## Numerics", "", verdict, "", *_table(["numerics (owdfa.core.numerics)", "runs"], rows), ""]


@dataclass(frozen=True)
class ReportedRuns:
    """Which evaluations the report gathers: every protocol x method x seed run (params `run`), and the
    imported models' (`imported`: names under `official.models`, evaluated into runs/official-<name>/)."""

    protocols: list[str]
    methods: list[str]
    seeds: list[int]
    imported: Sequence[str] = ()


class _Grid:
    """Every run's flattened metrics and run info, by protocol and method (a list over seeds).

    Imported models are rows too, keyed by their card's method (`cal_official`), one per protocol:
    `imported[protocol]` lists those methods, `imported_names[protocol, method]` the models behind each.
    """

    def __init__(self, runs_dir: Path, runs: ReportedRuns) -> None:
        protocols, methods, seeds, imported = runs.protocols, runs.methods, runs.seeds, runs.imported
        self.seeds = seeds
        self.values: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.info: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for protocol in protocols:
            for method in methods:
                loaded = [_load(runs_dir, run_key(protocol, method, s)) for s in seeds]
                self.values[protocol, method] = [_flat(m) for m, _ in loaded]
                self.info[protocol, method] = [r for _, r in loaded]
        self.imported: dict[str, list[str]] = {}
        self.imported_names: dict[tuple[str, str], list[str]] = {}
        seen: dict[tuple[str, str, Any], str] = {}  # (protocol, method, seed) -> model name
        for name in imported:
            metrics, run = _load(runs_dir, imported_run_key(name))
            protocol, method, seed = str(run["protocol"]), str(run["method"]), run.get("seed")
            where = f"official.models.{name}"
            if "imported" not in run:
                raise DataError(f"{runs_dir / imported_run_key(name)}/run.json: not an imported model's evaluation")
            if protocol not in protocols:
                raise DataError(f"{where}: protocol {protocol} is not in run.protocols ({', '.join(protocols)})")
            if method in methods:
                raise DataError(f"{where}: its method {method} is also a variant in run.methods; rename the variant")
            twin = seen.setdefault((protocol, method, seed), name)
            if twin != name:
                raise DataError(
                    f"{where}: {twin} is also {method} seed {seed} on {protocol}; a row is a mean over seeds, "
                    "so import each seed once"
                )
            if (protocol, method) not in self.imported_names:
                self.imported.setdefault(protocol, []).append(method)
            self.imported_names.setdefault((protocol, method), []).append(name)
            self.values.setdefault((protocol, method), []).append(_flat(metrics))
            self.info.setdefault((protocol, method), []).append(run)

    def label(self, method: str) -> str:
        """A row's name in the tables: the variant, or an imported model's marked label."""
        return imported_label(method) if any(method in rows for rows in self.imported.values()) else method

    def stat(self, protocol: str, method: str, key: str) -> tuple[float | None, float | None]:
        return _mean_std([v.get(key) for v in self.values[protocol, method]])

    def cell(self, protocol: str, method: str, key: str, **kwargs: Any) -> str:
        return _cell(*self.stat(protocol, method, key), len(self.values[protocol, method]), **kwargs)


def _protocol_section(grid: _Grid, protocol: str, methods: list[str], figures: dict[str, str]) -> list[str]:
    """The protocol's tables; imported models' rows follow the variants' (not in the selected-epoch table:
    they have no validation-selected epoch)."""
    rows = [*methods, *grid.imported.get(protocol, [])]
    info = grid.info[protocol, methods[0]][0]
    known, total = info["num_known"], info["num_classes"]
    # cards count epochs from 0 (as dvclive's steps); the report counts them from 1, "epoch E of E" is the last
    chosen = {r.get("val_best_epoch") for m in methods for r in grid.info[protocol, m]}
    selected_epochs = [str(e + 1) for e in sorted(e for e in chosen if e is not None)] or ["none"]
    lines = [
        f"## Protocol {protocol}: {known} known / {total - known} novel classes, {info['test_images']} test images",
        "",
        f"**Last epoch.** {OWDFA_CONVENTION}",
        "",
        *_table(
            ["Method", *(h for _, h in OWDFA_COLUMNS)],
            [[grid.label(m), *(grid.cell(protocol, m, k) for k, _ in OWDFA_COLUMNS)] for m in rows],
        ),
        "",
        "**Selected epoch** (best accuracy on the labelled validation split; the test split chooses nothing; "
        f"selected epochs, counted from 1 of {info['epochs']}: {', '.join(selected_epochs)}). Same convention.",
        "",
        *_table(
            ["Method", *(h for _, h in OWDFA_COLUMNS)],
            [[m, *(grid.cell(protocol, m, f"val_best_{k}") for k, _ in OWDFA_COLUMNS)] for m in methods],
        ),
        "",
        "**Last epoch, GCD v2 convention**: one joint matching scores All, Old (known) and New (novel). Percent.",
        "",
        *_table(
            ["Method", *(h for _, h in GCD_COLUMNS)],
            [[grid.label(m), *(grid.cell(protocol, m, k) for k, _ in GCD_COLUMNS)] for m in rows],
        ),
        "",
    ]
    lines += _both_classifiers(grid, protocol, rows)
    checkpoint = info.get("checkpoint", "last")
    columns = [
        c for c in K_COLUMNS if c[0] == "k_hat" or any(grid.stat(protocol, m, c[0])[0] is not None for m in rows)
    ]
    lines += [
        f"**Number of classes** ({checkpoint} checkpoint; the k-means estimates cluster the model's features of "
        "the training images: labelled, validation and unlabelled). "
        + " ".join(text for _, _, text in columns)
        + " Error = abs(K̂−K)/K.",
        "",
    ]
    k_rows = []
    for m in rows:
        cells = [grid.label(m)]
        for key, _, _ in columns:
            mean, std = grid.stat(protocol, m, key)
            cells += [_cell(mean, std, len(grid.values[protocol, m]), percent=False), _k_error(mean, total)]
        k_rows.append([*cells, str(total)])
    header = ["Method", *(h for _, header, _ in columns for h in (header, "error")), "K"]
    lines += [*_table(header, k_rows), ""]
    lines += [
        f"**Calibration and confidence** ({checkpoint} checkpoint). ECE: expected calibration error of the "
        "max-softmax confidence, correctness after the joint Hungarian matching, 15 equal-width bins. Mean "
        "confidence and MC-dropout epistemic uncertainty (mutual information, nats) on test images of known vs "
        "novel classes: the confidence skew CAL sets out to reduce.",
        "",
        *_table(
            ["Method", "ECE", "confidence known", "confidence novel", "epistemic known", "epistemic novel"],
            [
                [
                    grid.label(m),
                    grid.cell(protocol, m, "ece"),
                    grid.cell(protocol, m, "known_confidence"),
                    grid.cell(protocol, m, "novel_confidence"),
                    grid.cell(protocol, m, "known_epistemic", percent=False, digits=4),
                    grid.cell(protocol, m, "novel_epistemic", percent=False, digits=4),
                ]
                for m in rows
            ],
        ),
        "",
    ]
    if figures:
        lines += ["Figures: " + ", ".join(f"[{name}]({path})" for name, path in figures.items()) + ".", ""]
    return lines


def _both_classifiers(grid: _Grid, protocol: str, methods: list[str]) -> list[str]:
    """Faithful DPP's two classifiers side by side (methods with `dpp_faithful` only)."""
    faithful = [m for m in methods if grid.stat(protocol, m, "all_prototypes_all_acc")[0] is not None]
    if not faithful:
        return []
    keys = (("all_acc", "All ACC"), ("novel_acc", "Novel ACC"), ("known_acc", "Known ACC"))
    header = ["Method", *(f"{h}, K̂ rows" for _, h in keys), *(f"{h}, all rows" for _, h in keys)]
    rows = [
        [
            grid.label(m),
            *(grid.cell(protocol, m, k) for k, _ in keys),
            *(grid.cell(protocol, m, f"all_prototypes_{k}") for k, _ in keys),
        ]
        for m in faithful
    ]
    return [
        "**Faithful DPP, both classifiers** (last epoch, OW-DFA convention, percent). K̂ rows: the pruned "
        "classifier, the one the official code's per-epoch metrics use. All rows: every one of the 10 × |known| "
        "prototypes, the zeroed ones included, as the official offline evaluation of a saved checkpoint computes "
        "(it does not save the pruned count).",
        "",
        *_table(header, rows),
        "",
    ]


def _k_error(mean: float | None, k_true: int) -> str:
    return "n/a" if mean is None else f"{abs(mean - k_true) / k_true * 100:.1f} %"


def _ablation(grid: _Grid, protocols: list[str], methods: list[str]) -> list[str]:
    present = [row for row in ABLATION_ROWS if row[0] in methods]
    if len(present) < 2:
        return []
    header = ["", "Variant", "components", *(f"{p} All / Novel ACC" for p in protocols)]
    rows = [
        [
            numeral,
            variant,
            what,
            *(f"{grid.cell(p, variant, 'all_acc')} / {grid.cell(p, variant, 'novel_acc')}" for p in protocols),
        ]
        for variant, numeral, what in present
    ]
    return [
        "## Ablation (CAL's Table 4)",
        "",
        f"Last epoch, {OWDFA_CONVENTION}",
        "",
        *_table(header, rows),
        "",
    ]


def _comparison_figures(
    grid: _Grid, protocol: str, methods: list[str], predictions_dir: Path | None, out_dir: Path
) -> dict[str, str]:
    """Per-protocol figures across methods (first seed): confidence known vs novel, K̂ per epoch (the
    confidence figure also shows each imported row's first model; K̂ per epoch is training's alone)."""
    from owdfa.evaluate import plots

    figures: dict[str, str] = {}
    seed = grid.seeds[0]
    folder = out_dir / "figures"
    if predictions_dir is not None:
        groups = {}
        panels = {m: run_key(protocol, m, seed) for m in methods}
        for m in grid.imported.get(protocol, []):
            first = grid.imported_names[protocol, m][0]
            panels[f"{grid.label(m)}, seed {grid.info[protocol, m][0]['seed']}"] = imported_run_key(first)
        for m, key in panels.items():
            path = predictions_dir / f"{key}.csv"
            if not path.is_file():
                raise DataError(f"{path}: missing (run `dvc repro` so the evaluate stage writes it)")
            table = pd.read_csv(path)
            known = table["known"].astype(bool).to_numpy()
            confidence = table["confidence"].to_numpy(np.float64)
            groups[m] = {"known": confidence[known], "novel": confidence[~known]}
        name = f"{protocol}-confidence.png"
        plots.save_figure(
            plots.make_confidence_histograms(
                groups, f"{protocol}: max-softmax confidence on test images of known vs novel classes (seed {seed})"
            ),
            folder / name,
        )
        figures["confidence, known vs novel"] = f"figures/{name}"
    trajectories = {m: grid.info[protocol, m][0].get("k_trajectory") or [] for m in methods}
    if any(len(t) > 1 for t in trajectories.values()):
        info = grid.info[protocol, methods[0]][0]
        name = f"{protocol}-k_trajectory.png"
        plots.save_figure(
            plots.make_k_trajectory(
                {m: t for m, t in trajectories.items() if t},
                info["num_classes"],
                info["num_known"],
                f"{protocol}: number of active prototypes K̂ per epoch (seed {seed})",
            ),
            folder / name,
        )
        figures["K̂ per epoch"] = f"figures/{name}"
    return figures


def _imported_section(grid: _Grid) -> list[str]:
    """Which imported models the marked rows are, where their weights came from, and why to read them warily."""
    rows = []
    for protocol, methods in grid.imported.items():
        for method in methods:
            for name, run in zip(grid.imported_names[protocol, method], grid.info[protocol, method], strict=True):
                source = run["imported"].get("source") or {}
                commit = source.get("commit")
                where = f"{source.get('repo_id')}@{commit[:12]}" if commit else "a local file"
                rows.append(
                    [
                        name,
                        protocol,
                        grid.label(method),
                        str(run.get("seed")),
                        str(run["imported"].get("num_active")),
                        f"`{source.get('filename')}` ({where})",
                        f"{str(source.get('sha256'))[:12]}…",
                    ]
                )
    return [
        '**Imported models.** Rows marked "(official checkpoint)" are the CAL authors\' released weights '
        "(`official.models` in params.yaml), scored by the same evaluate stage on the same test split; mean ± sample "
        "std over their own seeds. Each is the one checkpoint the authors' run kept (it chose the epoch on its test "
        "split), so these rows are in the last-epoch tables and not in the selected-epoch ones. "
        + IMPORTED_SPLIT_CAVEAT,
        "",
        *_table(["Model", "protocol", "row", "seed", "active prototypes", "file", "sha256"], rows),
        "",
    ]


def build_report(
    runs_dir: Path,
    runs: ReportedRuns,
    out_dir: Path,
    predictions_dir: Path | None = None,
    pretrain_dir: Path | None = None,
) -> dict[str, Any]:
    """results.md, metrics.json and the trajectories of `runs` (evaluated into `runs_dir`) in `out_dir`.

    `predictions_dir`: the per-run prediction CSVs, for the comparison figures. `pretrain_dir`: the
    pretrain stages' metrics (<protocol>/metrics.json), the starting features' strength, reported per
    protocol and under `starting_features` in metrics.json.
    """
    protocols, methods, seeds = runs.protocols, runs.methods, runs.seeds
    grid = _Grid(runs_dir, runs)
    starting = _starting_features(pretrain_dir, protocols)
    summary: dict[str, Any] = {}
    for protocol in protocols:
        summary[protocol] = {}
        for method in [*methods, *grid.imported.get(protocol, [])]:
            entry: dict[str, Any] = {}
            for key in SUMMARY_KEYS:
                entry[key], entry[f"{key}_std"] = grid.stat(protocol, method, key)
            summary[protocol][method] = entry
    lines = [
        "# Results",
        "",
        "Generated by `dvc repro` (stage `report`); do not edit by hand. Test split only; "
        f"mean ± sample std over seeds {', '.join(map(str, seeds))}.",
        "",
    ]
    if grid.imported:
        lines += _imported_section(grid)
    for protocol in protocols:
        figures = _comparison_figures(grid, protocol, methods, predictions_dir, out_dir)
        lines += _protocol_section(grid, protocol, methods, figures)
        if protocol in starting:
            lines += _starting_line(protocol, starting[protocol])
    lines += _ablation(grid, protocols, methods)
    legend = {m: grid.info[protocols[0], m][0] for m in methods}
    for protocol, rows in grid.imported.items():
        legend.update({grid.label(m): grid.info[protocol, m][0] for m in rows if grid.label(m) not in legend})
    lines += _legend(legend)
    lines += _numerics(grid)
    lines.append(
        "Per-run figures (confusion matrix, reliability diagram, confidence histograms, t-SNE of test features, "
        "MC-dropout uncertainty maps, training curves, K̂ per epoch) are in "
        "`reports/runs/<protocol>-<method>-<seed>/plots/` (`dvc plots show` lists them)."
    )
    if starting:
        summary["starting_features"] = {p: {k: v for k, v in m.items() if k != "mode"} for p, m in starting.items()}
    atomic_write_json(out_dir / "metrics.json", summary)
    atomic_write_json(out_dir / TRAJECTORIES_FILE, _trajectories(grid, protocols, methods))
    atomic_write_text(out_dir / "results.md", "\n".join(lines) + "\n")
    return summary


TRAJECTORIES_FILE = "trajectories.json"


def _starting_features(pretrain_dir: Path | None, protocols: list[str]) -> dict[str, dict[str, Any]]:
    """protocol -> the pretrain stage's metrics (mode, probe_known_acc, val_acc), for the protocols that have them."""
    found: dict[str, dict[str, Any]] = {}
    for protocol in protocols if pretrain_dir is not None else []:
        path = pretrain_dir / protocol / "metrics.json"
        if path.is_file():
            try:
                found[protocol] = json.loads(path.read_text())
            except json.JSONDecodeError:
                raise DataError(f"{path}: not JSON (re-run the pretrain stage)") from None
    return found


def _starting_line(protocol: str, metrics: dict[str, Any]) -> list[str]:
    def percent(value: Any) -> str:
        return "n/a" if value is None else f"{100 * float(value):.1f} %"

    return [
        f"**Starting features** ({protocol}, `pretrain.mode: {metrics.get('mode')}`): known-class accuracy of a "
        f"nearest-class-mean probe on the labelled validation split {percent(metrics.get('probe_known_acc'))}; "
        f"the pretrain classifier's validation accuracy {percent(metrics.get('val_acc'))}.",
        "",
    ]


def _trajectories(grid: _Grid, protocols: list[str], methods: list[str]) -> dict[str, Any]:
    """Per protocol and method, what changed per epoch in each seed's run: K-hat (when pruned) and the
    method's own statistics (CAL's novel threshold, ACR's kept share); methods with none are left out."""
    out: dict[str, Any] = {}
    for protocol in protocols:
        for method in methods:
            runs = grid.info[protocol, method]
            series: dict[str, list[list[float]]] = {}
            if any(len(r.get("k_trajectory") or []) > 1 for r in runs):
                series["k_hat"] = [list(r.get("k_trajectory") or []) for r in runs]
            names = sorted({n for r in runs for n in r.get("method_trajectories") or {}})
            for name in names:
                series[name] = [list((r.get("method_trajectories") or {}).get(name, [])) for r in runs]
            if series:
                out.setdefault(protocol, {})[method] = {"seeds": list(grid.seeds), **series}
    return out
