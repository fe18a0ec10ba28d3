"""Each DVC stage's code deps are exactly the files its script imports (owdfa.core.import_closure).

A file a stage runs but does not list lets `dvc repro` report stale results as current; a file it
lists but does not run re-runs it (and everything after it) for nothing. The closure itself is
checked against Python's own import machinery, and on a hand-listed case.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.paths import ROOT as REPO_ROOT

from owdfa.core.import_closure import import_closure, module_closure

ROOT = REPO_ROOT
SCRIPT = re.compile(r"python (stages/\w+\.py)")


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: body.get("do", body) for name, body in stages.items()}


def _code_deps(body: dict) -> list[str]:
    return sorted(d for d in body["deps"] if isinstance(d, str) and d.startswith(("stages/", "src/")))


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_stage_code_deps_are_its_import_closure(stage: str) -> None:
    body = _stages()[stage]
    script = SCRIPT.search(body["cmd"]).group(1)
    wanted = sorted([script, *import_closure(ROOT / script)])
    listed = _code_deps(body)
    missing, extra = sorted(set(wanted) - set(listed)), sorted(set(listed) - set(wanted))
    assert not missing and not extra, (
        f"dvc.yaml stage {stage}: missing {missing}, not imported {extra}; its code deps should be:\n"
        + "\n".join(f"- {name}" for name in wanted)
    )


def test_every_package_file_is_some_stages_dep_or_the_cli() -> None:
    """Dead code, or code a stage runs without DVC knowing, shows up here."""
    used = {name for body in _stages().values() for name in _code_deps(body)}
    used |= set(module_closure("owdfa.cli"))
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "src" / "owdfa").rglob("*.py")}
    assert package - used == set()


def test_closure_of_a_small_stage_by_hand() -> None:
    # stages/index.py: from owdfa.data.index ... and from owdfa.core.stage ...; data/index.py imports
    # data/walk.py (which imports no package module), core/errors.py and core/io.py; each package's
    # __init__.py runs too. Sorted by path.
    assert import_closure(ROOT / "stages" / "index.py") == [
        "src/owdfa/__init__.py",
        "src/owdfa/core/__init__.py",
        "src/owdfa/core/errors.py",
        "src/owdfa/core/io.py",
        "src/owdfa/core/stage.py",
        "src/owdfa/data/__init__.py",
        "src/owdfa/data/index.py",
        "src/owdfa/data/walk.py",
    ]


def test_evaluation_does_not_run_the_training_code() -> None:
    closure = import_closure(ROOT / "stages" / "evaluate.py")
    assert "src/owdfa/train/loop.py" not in closure and not any("/methods/" in n for n in closure)
    assert "src/owdfa/evaluate/estimate_k.py" in closure and "src/owdfa/models/inference.py" in closure


@pytest.mark.slow
@pytest.mark.parametrize(
    "module",
    [
        "owdfa.train.stages",
        "owdfa.evaluate.evaluation",
        "owdfa.evaluate.report",
        "owdfa.data.fetch",
        "owdfa.data.align",
        "owdfa.cli",
    ],
)
def test_closure_covers_what_python_imports(module: str) -> None:
    """A fresh interpreter's own record (sys.modules) after the import: every package file it ran is
    in the closure (the closure may hold more: imports inside functions run later)."""
    probe = (
        f"import json, sys, {module}; "
        "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items() "
        "if (n == 'owdfa' or n.startswith('owdfa.')) and getattr(m, '__file__', None))))"
    )
    # This checkout's src/ first: the closure is computed from its files, whichever checkout is installed.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    ran = {Path(f).resolve().relative_to(ROOT).as_posix() for f in json.loads(out.stdout)}
    assert ran <= set(module_closure(module)), sorted(ran - set(module_closure(module)))


def test_type_checking_blocks_skipped_function_imports_followed(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from owdfa.train import loop as training\n"
        "else:\n    import owdfa.core.errors\n"
        "def main():\n    from owdfa.data import index\n"
    )
    assert import_closure(script) == [
        "src/owdfa/__init__.py",
        "src/owdfa/core/__init__.py",
        "src/owdfa/core/errors.py",
        "src/owdfa/core/io.py",
        "src/owdfa/data/__init__.py",
        "src/owdfa/data/index.py",
        "src/owdfa/data/walk.py",
    ]
