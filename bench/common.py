"""Shared by the bench scripts: merging one section into reports/bench.json without losing the others,
and naming the machine a result was measured on."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

from owdfa.core.io import atomic_write_json


def merge_into(path: Path, key: str, report: dict[str, Any]) -> None:
    """Set `key` in the JSON object at `path` (created if absent), keeping every other key."""
    merged: dict[str, Any] = {}
    if path.is_file():
        try:
            merged = json.loads(path.read_text())
        except json.JSONDecodeError:
            sys.exit(f"error: {path}: not valid JSON; fix or remove it first")
        if not isinstance(merged, dict):
            sys.exit(f"error: {path}: expected a JSON object")
    merged[key] = report
    atomic_write_json(path, merged)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
