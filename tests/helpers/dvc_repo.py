"""A copy of the DVC pipeline (dvc.yaml, params.yaml, stages/, src/) in a folder of its own, and params edits."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from helpers.paths import ROOT


def set_keys(params: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in place (each parent mapping must already exist); returns `params`."""
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        assert last in node, f"params.yaml has no key {dotted}"
        node[last] = value
    return params


def dump_params(path: Path, params: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(params, sort_keys=False, default_flow_style=None))


def copy_pipeline(path: Path, changes: dict[str, Any], dvc_env: dict[str, str]) -> dict[str, str]:
    """Copy the pipeline (dvc.yaml, params.yaml with dotted `changes`, stages/, src/) into `path`.

    Returns the environment for dvc there: stage commands import the copied src/ (the files dvc
    hashes), not the editable install that other work may be changing while the tests run.
    """
    path.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, path / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "stages", path / "stages", ignore=ignore)
    shutil.copytree(ROOT / "src", path / "src", ignore=ignore)
    (path / ".gitignore").write_text("/data/\n__pycache__/\n")
    dump_params(path / "params.yaml", set_keys(yaml.safe_load((path / "params.yaml").read_text()), changes))
    return pipeline_env(path, dvc_env)


def pipeline_env(path: Path, dvc_env: dict[str, str]) -> dict[str, str]:
    """`dvc_env` for a pipeline copied to `path`: its stage commands import `path`/src."""
    pythonpath = [str(path / "src"), *filter(None, [dvc_env.get("PYTHONPATH")])]
    return dict(dvc_env, PYTHONPATH=os.pathsep.join(pythonpath))
