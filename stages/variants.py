"""DVC stage `variants`: every run variant resolved (its `base:` applied) and checked (params: methods).

Writes `<out>/<variant>.json`, the full settings of each variant; a training run depends on its own
variant's file, so editing `methods.cal` re-runs the runs of `cal` and of every variant built on it.
"""

import argparse
from pathlib import Path

from owdfa.core.config import Section
from owdfa.core.stage import run_stage
from owdfa.methods.registry import write_variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    names = write_variants(Section.from_file("methods", args.params), args.out)
    print(f"variants: {len(names)} resolved ({', '.join(names)})")


if __name__ == "__main__":
    run_stage(main)
