"""The `import_official` stage: the params `official` and importing one entry of `official.models`.

Each entry of `official.models` names one of the CAL authors' released checkpoints: `file` is a path in
the Hub repo hyzheng/OWDFA_CAL, downloaded at `official.revision` into `official.download_dir` and
checked against the Hub's sha256, or an existing local .ckpt file. `owdfa.official.checkpoint` reads and
converts it; it is the `owdfa import` command's too, and these settings are the stage's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from owdfa.core.config import Section, load_section, param
from owdfa.core.errors import ConfigError
from owdfa.data.protocols import OWDFA40_PROTOCOLS

if TYPE_CHECKING:
    from owdfa.modeldir.card import ImportedCard

# A model's name becomes a stage name and a folder name: keep it to plain characters.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class OfficialSource:
    """Where released checkpoints come from (params `official`, without `models`)."""

    revision: str  # of the Hub repo: pin a commit sha (a branch or tag warns with the commit it resolved to)
    download_dir: str  # downloads are kept here (never deleted by the pipeline)


@dataclass(frozen=True)
class OfficialModel:
    """One entry of `official.models`."""

    file: str  # a path in the Hub repo (`protocol1/protocol1_seed2025.ckpt`) or an existing local .ckpt
    protocol: str = param(choices=tuple(OWDFA40_PROTOCOLS))  # OWDFA-40's; its split scores the model
    num_active: int | None = param(None, optional=True, min=0)  # unknown K: DPP's count (null or left out: all)
    seed: int | None = param(None, optional=True, min=0)  # null or left out: from the official file name
    backbone: str | None = param(None, optional=True)  # timm name; default the official resnet50 (tests: test_resnet)


def model_settings(params: Path, name: str) -> tuple[OfficialSource, OfficialModel]:
    """This model's settings and the shared source settings; other models' entries are not read."""
    section = Section.from_file("official", params)
    source = load_section(OfficialSource, section, extra_keys=("models",))
    models = section.section("models")
    if not models.has(name):
        raise ConfigError(models.key(name), "no such model (dvc.yaml's import_official stages come from this mapping)")
    if not MODEL_NAME.match(name):
        raise ConfigError(models.key(name), "a model name is letters, digits, '.', '_' and '-' (it names a folder)")
    return source, load_section(OfficialModel, models.section(name))


def import_model(params: Path, name: str, out: Path) -> ImportedCard:
    """Fetch (or take) the checkpoint, check it is the protocol's, write the model directory; its card."""
    from owdfa.official import checkpoint as official

    source, model = model_settings(params, name)
    where = f"official.models.{name}"
    released = official.official_run(model.file)
    if released is not None and released.protocol != model.protocol:
        problem = f"{model.protocol}, but {model.file} is a {released.protocol} checkpoint"
        raise ConfigError(f"{where}.protocol", problem)
    download_dir = Path(source.download_dir)
    if out.resolve().is_relative_to(download_dir.resolve()) or download_dir.resolve().is_relative_to(out.resolve()):
        raise ConfigError("official.download_dir", f"{download_dir} and the model directory {out} must lie apart")
    checkpoint = official.resolve_checkpoint(model.file, source.revision, download_dir, params_key=f"{where}.file")
    options = {"backbone": model.backbone} if model.backbone is not None else {}
    return official.import_to_model_dir(
        checkpoint, out, protocol=model.protocol, seed=model.seed, num_active=model.num_active, **options
    )


__all__ = ["OfficialModel", "OfficialSource", "import_model", "model_settings"]
