"""DVC stage `evaluate@<protocol>-<method>-<seed>`: test-split metrics of one run (params: evaluate, numerics)."""

import argparse
from pathlib import Path

from owdfa.core.config import Section
from owdfa.core.numerics import pin_from_params
from owdfa.core.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--faces", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for metrics.json and run.json")
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    pin_from_params(args.params)  # before torch and NumPy load: the kernels they pick decide the numbers
    from owdfa.evaluate.evaluation import evaluate

    m = evaluate(
        Section.from_file("evaluate", args.params), args.model, args.split, args.faces, args.out, args.predictions
    )
    last = m["last"]
    print(
        f"evaluate: last epoch all_acc {last['all_acc']}, known_acc {last['known_acc']}, novel_acc {last['novel_acc']}"
    )


if __name__ == "__main__":
    run_stage(main)
