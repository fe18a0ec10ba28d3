"""dvclive curves of a training run, kept equal to an uninterrupted run's across a kill and a resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from owdfa.core.io import atomic_write_text, writing


def log_record(live: Any, record: dict[str, Any]) -> None:
    with writing(Path(live.dir)):  # dvclive appends to its files: a refused write names the folder
        for k, v in record.items():
            if k != "epoch":
                live.log_metric(k, round(float(v), 6))
        live.next_step()


def close_live(live: Any) -> None:
    with writing(Path(live.dir)):
        live.end()


def open_live(live_dir: Path | None, history: list[dict[str, Any]]):
    """A dvclive logger whose curves hold exactly the epochs in `history`.

    Resuming: rows an interrupted run logged after its last checkpoint are dropped and dvclive
    continues (`resume=True`); when the folder lacks some of the checkpointed epochs (DVC removed
    it, say) it is rewritten from the history instead. Either way the files equal an
    uninterrupted run's.
    """
    if live_dir is None:
        return None
    options = {"dir": str(live_dir), "dvcyaml": None, "save_dvc_exp": False, "report": None}
    with writing(Path(live_dir)):
        return _open(options, Path(live_dir), history)


def _open(options: dict[str, Any], live_dir: Path, history: list[dict[str, Any]]) -> Any:
    from dvclive import Live

    if history and trim_live(live_dir, history):
        live = Live(resume=True, **options)
        for k, v in history[-1].items():  # the summary of the last kept epoch, not of a dropped one
            if k != "epoch":
                live.log_metric(k, round(float(v), 6), plot=False)
        live.summary["step"] = len(history) - 1
        live.step = len(history)
        return live
    live = Live(**options)
    for record in history:
        log_record(live, record)
    return live


def trim_live(live_dir: Path, history: list[dict[str, Any]]) -> bool:
    """Drop curve rows of epochs >= len(history); True when every curve then holds exactly those epochs."""
    metrics_dir = live_dir / "plots" / "metrics"
    names = {k for k in history[-1] if k != "epoch"}
    if not (live_dir / "metrics.json").is_file() or not metrics_dir.is_dir():
        return False
    found = set()
    for path in sorted(metrics_dir.rglob("*.tsv")):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = lines[:1]
        for line in lines[1:]:
            head = line.split("\t", 1)[0]
            if line.endswith("\n") and head.isdigit() and int(head) < len(history):
                kept.append(line)
        if [int(line.split("\t", 1)[0]) for line in kept[1:]] != list(range(len(history))):
            return False
        if kept != lines:
            atomic_write_text(path, "".join(kept))
        found.add(path.relative_to(metrics_dir).with_suffix("").as_posix())
    return found == names
