"""DVC stage `import_official@<name>`: one of the CAL authors' released checkpoints as a model directory
(params: official.revision, official.download_dir, official.models.<name>).

`file` is a path in the Hub repo hyzheng/OWDFA_CAL, downloaded at `official.revision` into
`official.download_dir` and checked against the Hub's sha256, or an existing local .ckpt file (known
by its path only: after replacing it, `dvc repro -f import_official@<name>`). Either is read without
running any code it carries and converted by `owdfa.official.checkpoint`; `evaluate_official@<name>`
then scores the model on its protocol's test split. The params and the import: `owdfa.official.stage`.
"""

import argparse
from pathlib import Path

from owdfa.core.stage import run_stage
from owdfa.official.stage import import_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True, help="the model's key under official.models")
    parser.add_argument("--out", type=Path, required=True, help="the model directory to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    card = import_model(args.params, args.name, args.out)
    from owdfa.official.checkpoint import import_setting

    setting = import_setting(card)
    digest = card.source["sha256"][:12]
    print(f"import_official: {card.protocol}, {setting}, seed {card.seed} (sha256 {digest}...) -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
