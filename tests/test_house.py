"""The library's shape, as docs/architecture rules state it: floors that import only downwards, and
functions that take their state named rather than as long lists of loose arguments."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "owdfa"

# Each folder (or top module) and the floor it lives on: an import may only go to a lower floor.
FLOORS = {
    "core": 0,
    "data": 1,
    "models": 1,
    "methods": 1,
    "modeldir": 2,
    "train": 3,
    "evaluate": 3,
    "official": 3,
    "experiments": 4,
    "attribution": 4,
    "cli": 5,
}
MAX_PARAMETERS = 7
# Functions allowed more, and why: each mirrors a flat interface a user writes by hand.
WIDE_BY_DESIGN = {
    ("attribution.py", "attribute"): "the public keyword API, one keyword per `owdfa attribute` flag",
    ("core/config.py", "param"): "a field factory like dataclasses.field (bounds, choices, key path, reader)",
}


def _modules() -> list[tuple[str, Path, ast.Module]]:
    return [(p.relative_to(SRC).as_posix(), p, ast.parse(p.read_text())) for p in sorted(SRC.rglob("*.py"))]


def _floor_of(relative: str) -> str:
    first = relative.split("/")[0]
    return first.removesuffix(".py")


def test_every_import_goes_down_a_floor_or_stays_in_its_folder() -> None:
    upward = []
    for relative, _, tree in _modules():
        here = _floor_of(relative)
        if here == "__init__":
            continue
        for node in ast.walk(tree):
            names = (
                [node.module]
                if isinstance(node, ast.ImportFrom) and node.module
                else [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                parts = name.split(".")
                if parts[0] != "owdfa" or len(parts) < 2 or parts[1] == here:
                    continue
                assert parts[1] in FLOORS, f"{relative} imports {name}: a folder FLOORS does not place"
                if FLOORS[parts[1]] >= FLOORS[here]:
                    upward.append(f"{relative} imports {name}")
    assert FLOORS.keys() >= {_floor_of(r) for r, _, _ in _modules()} - {"__init__"}
    assert not upward, "imports that do not go down a floor: " + "; ".join(upward)


def test_no_function_takes_more_than_seven_parameters_but_the_named_ones() -> None:
    wide = {}
    for relative, _, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args
                names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
                names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
                count = len(names) - (1 if names[:1] in (["self"], ["cls"]) else 0)
                if count > MAX_PARAMETERS:
                    wide[relative, node.name] = count
    assert set(wide) == set(WIDE_BY_DESIGN), {key: wide.get(key) for key in set(wide) ^ set(WIDE_BY_DESIGN)}
