"""The suite's own scheduling list names files that exist (a renamed file would silently lose its place)."""

from __future__ import annotations

from pathlib import Path

from conftest import HEAVIEST_FIRST


def test_heaviest_first_names_existing_test_files() -> None:
    names = {path.name for path in Path(__file__).parent.rglob("test_*.py")}
    missing = [name for name in HEAVIEST_FIRST if name not in names]
    assert not missing, f"tests/conftest.py HEAVIEST_FIRST names files that do not exist: {missing}"
    assert len(set(HEAVIEST_FIRST)) == len(HEAVIEST_FIRST)
