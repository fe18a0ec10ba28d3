"""Which files of the owdfa package a script runs: the one source for code dependencies.

A stage's DVC code deps (`dvc.yaml`, checked by tests/core/test_dvc_deps.py) and the resume fingerprint of
a training run (`owdfa.train.loop`) must both name exactly the package files the code imports, directly
or through other package files. This walks the `import` statements (at any depth of the file, so a
stage's imports inside `main()` count; not those under `if TYPE_CHECKING:`, which never run) and
follows Python's rules: importing `owdfa.a.b` also runs `owdfa/__init__.py` and `owdfa/a/__init__.py`,
and `from owdfa.a import b` imports the submodule `b` when there is one. Only static imports are
seen, so the package has none of the `importlib`/`__import__` kind.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "owdfa"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/owdfa (this file is in core/)
SOURCE_ROOT = PACKAGE_DIR.parent  # src/
REPO_ROOT = SOURCE_ROOT.parent  # package files are named relative to it (`src/owdfa/...`), as in dvc.yaml


def _module_file(module: str) -> Path | None:
    """The file that runs for `module` (a package's __init__.py), if it is part of the package."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = SOURCE_ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(module: str) -> list[str]:
    """`owdfa.a.b` -> [owdfa, owdfa.a, owdfa.a.b]: every package on the way runs its __init__.py."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _own_module(path: Path) -> str | None:
    """Dotted name of a package file (None for a script outside the package)."""
    try:
        rel = path.resolve().relative_to(SOURCE_ROOT)
    except ValueError:
        return None
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_modules(path: Path) -> set[str]:
    """Dotted names of every package module `path`'s import statements run."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = _own_module(path)
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.update(_with_parents(alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                if own is None:
                    raise ValueError(f"{path}: relative import outside the {PACKAGE} package")
                anchor = own.split(".")
                drop = node.level - (1 if is_package else 0)
                anchor = anchor[: len(anchor) - drop] if drop else anchor
                base = ".".join([*anchor, base] if base else anchor)
            found.update(_with_parents(base))
            for alias in node.names:
                found.add(f"{base}.{alias.name}")  # a submodule, if one has that name (else dropped)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@cache
def _closure(path: Path) -> frozenset[Path]:
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        for module in _imported_modules(current):
            file = _module_file(module)
            if file is not None and file not in seen:
                seen.add(file)
                todo.append(file)
    return frozenset(seen)


def import_closure(script: str | Path) -> list[str]:
    """Package files `script` runs when it runs, sorted, as repo-relative paths (`src/owdfa/...`).

    `script` is a stage script or a package file (which is itself not included unless imported
    back). Paths use `/` whatever the OS, as dvc.yaml does.
    """
    return _repo_paths(_closure(Path(script).resolve()))


def module_closure(module: str) -> list[str]:
    """Package files that `import <module>` runs (the module, its packages' __init__.py and their imports)."""
    if _module_file(module) is None:
        raise ValueError(f"{module} is not a module of the {PACKAGE} package")
    files: set[Path] = set()
    for name in _with_parents(module):
        file = _module_file(name)
        if file is not None:
            files |= {file, *_closure(file)}
    return _repo_paths(files)


def _repo_paths(files: set[Path] | frozenset[Path]) -> list[str]:
    return sorted(f.relative_to(REPO_ROOT).as_posix() for f in files)
