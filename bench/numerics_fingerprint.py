"""Which kernel gives other bits on another CPU: a fingerprint of exact mode on this machine.

Exact mode (`owdfa.core.numerics`) pins ATen, oneDNN, MKL and OpenBLAS to AVX2 kernels and 2 threads so
that every x86-64 machine trains the same weights. On 2026-12-03 an AMD EPYC (Zen 1, AVX2 only)
reproduced every data stage of the committed `dvc.lock` but trained other `pretrain@p1` weights
than the Intel Xeon (AVX-512, AMX) that made it: some kernel still depends on the machine. This
script runs, in exact mode and on seeded inputs, what the pipeline runs and hashes the output bits:

* every module of the default CAL network (`train.backbone` with FFE, BNNeck and prototypes) in a
  training-mode forward pass, in call order, then every parameter's gradient after one backward;
* three training steps of the loop itself (`owdfa.train.loop.TrainStep`) for the baseline and CAL;
* NumPy's (OpenBLAS) matrix product and a few reductions, as evaluation uses them.

It also records which oneDNN implementation ran each primitive (`ONEDNN_VERBOSE`) and the cache
sizes oneDNN sees. Run it on two machines and `--compare` names the first probe whose bits differ:
a convolution whose oneDNN implementation also differs points at oneDNN's CPU-dependent kernel
choice; a matrix product at MKL.

Each file states what its bits depend on besides the CPU: the numerics version (`owdfa.core.numerics.
NUMERICS_VERSION`, the generation of exact mode's pins), the library versions, and `code`, a digest
of the source the probes run (the package files they import but owdfa/core/numerics.py, whose pins the
numerics version names; bench/train.py, this script, and params.yaml's train and methods
sections). `--check` compares this machine with every committed fingerprint that agrees on all
three and exits 1 on the first probe that differs, naming both
machines (the suite runs it: tests/test_bench.py); a committed file made on other code or another
numerics version is listed as not comparable (regenerate it on its machine).
Usage: python bench/numerics_fingerprint.py                  # ~6 s; writes reports/numerics/fingerprint-<machine>.json
       python bench/numerics_fingerprint.py --compare reports/numerics/fingerprint-amd-epyc.json
       python bench/numerics_fingerprint.py --check         # with every committed fingerprint; 1 on a difference
<machine> = vendor-family-model-ISA from /proc/cpuinfo (e.g. intel-6-143-avx512, amd-23-49-avx2), so two
kinds of CPU never share a file name; a run never writes over the file it compares against.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import cpu_name

from owdfa.core.import_closure import import_closure
from owdfa.core.io import atomic_write_json
from owdfa.core.machine import cpu_identity, machine_slug
from owdfa.core.numerics import NUMERICS_VERSION, Numerics, exact_environment

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "reports" / "numerics"
MARK = "FINGERPRINT "
BATCH, NUM_CLASSES, STEPS = 32, 15, 3


def digest(array: Any) -> str:
    """The first 16 hex digits of the sha256 of an array's bytes (a tensor or a NumPy array)."""
    data = array.detach().contiguous().cpu().numpy() if hasattr(array, "detach") else array
    return hashlib.sha256(data.tobytes()).hexdigest()[:16]


def network_probes(image_size: int) -> dict[str, str]:
    """Each module's output in a training-mode forward pass, then each parameter's gradient."""
    import torch
    import yaml

    from owdfa.core.config import Section
    from owdfa.core.numerics import configure_torch
    from owdfa.methods import build_method
    from owdfa.models import AttributionModel
    from owdfa.train.loop import seed_everything

    section = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    seed_everything(0)
    configure_torch()
    method = build_method("cal", Section.from_file("methods", ROOT / "params.yaml"))
    model = AttributionModel(section["backbone"], NUM_CLASSES, dropout=section["dropout"], **method.model_options())
    model = model.to(memory_format=torch.channels_last).train()
    probes: dict[str, str] = {}
    names = {module: name or "model" for name, module in model.named_modules()}

    def record(module: torch.nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, dict):
            outputs = sorted(output.items())
        else:
            outputs = [("", output)] if isinstance(output, torch.Tensor) else list(enumerate(output or ()))
        for part, tensor in outputs:
            if isinstance(tensor, torch.Tensor):
                suffix = f" [{part}]" if part != "" else ""
                probes.setdefault(f"forward {names[module]} ({type(module).__name__}){suffix}", digest(tensor))

    hooks = [m.register_forward_hook(record) for m in model.modules()]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, image_size, image_size, generator=generator).to(memory_format=torch.channels_last)
    logits = model(images)["logits"]
    weights = torch.randn(logits.shape, generator=generator)
    (logits * weights).sum().backward()
    for hook in hooks:
        hook.remove()
    for name, param in model.named_parameters():
        if param.grad is not None:
            probes[f"gradient {name}"] = digest(param.grad)
    return probes


def training_probes(image_size: int) -> dict[str, str]:
    """The loop's own step (sampler, views, loss, Adam), STEPS times, for the baseline and CAL."""
    import numpy as np
    import torch
    import yaml
    from train import synthetic_data, training_step  # bench/train.py: this script's folder is on sys.path

    from owdfa.core.config import Section
    from owdfa.core.numerics import configure_torch
    from owdfa.methods import build_method
    from owdfa.train.config import TrainConfig
    from owdfa.train.loop import seed_everything

    section = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    config = TrainConfig(backbone=section["backbone"], dropout=section["dropout"], batch_size=BATCH)
    probes: dict[str, str] = {}
    for variant in ("baseline", "cal"):
        seed_everything(0)
        configure_torch()
        method = build_method(variant, Section.from_file("methods", ROOT / "params.yaml"))
        step = training_step(config, synthetic_data(4 * BATCH, image_size), torch.device("cpu"), method)
        for i in range(STEPS):
            losses = step()  # loss term -> value (a Python float: every bit of the float32 result)
            probes[f"train step {i + 1} {variant}: losses"] = digest(np.array([v for _, v in sorted(losses.items())]))
    return probes


def numpy_probes() -> dict[str, str]:
    """OpenBLAS's matrix product (k-means' distances) and NumPy's reductions, on seeded data."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((257, 129)), rng.standard_normal((129, 65))
    x32 = a.astype(np.float32)
    return {
        "numpy matmul float64": digest(a @ b),
        "numpy matmul float32": digest(x32 @ b.astype(np.float32)),
        "numpy sum/exp/log float32": digest(np.concatenate([x32.sum(0), np.exp(x32).sum(1), np.log1p(x32**2).mean(1)])),
    }


def child(image_size: int) -> None:
    """Run every probe in this process (its environment holds exact mode's pins); print one JSON line."""
    from owdfa.core import numerics

    numerics.pin(Numerics())
    numerics.configure_torch()
    probes = {**network_probes(image_size), **training_probes(image_size), **numpy_probes()}
    print(MARK + json.dumps({"probes": probes, "numerics": numerics.describe()}), flush=True)


def onednn_implementations(log: str) -> list[str]:
    """`primitive kind: implementation (propagation)`, each once, from ONEDNN_VERBOSE's exec lines."""
    seen: dict[str, None] = {}
    for line in log.splitlines():
        fields = line.split(",")
        if line.startswith("onednn_verbose") and "exec" in fields:
            at = fields.index("exec")
            if len(fields) > at + 4:
                seen.setdefault(f"{fields[at + 2]}: {fields[at + 3]} ({fields[at + 4]})")
    return sorted(seen)


def caches() -> dict[str, str]:
    """Cache sizes as lscpu reports them (oneDNN sizes its blocking by them)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^(L\d\w?) cache:\s*(.*)$", out, re.MULTILINE)}


def code_digest() -> str:
    """sha256 (16 hex digits) of everything the probes run besides the libraries: a change moves it."""
    import yaml

    scripts = [Path(__file__).resolve(), ROOT / "bench" / "train.py", ROOT / "bench" / "common.py"]
    files = sorted({*(ROOT / f for script in scripts for f in import_closure(script)), *scripts})
    # the pins are what the numerics version names: a pin changed without a new version must show
    # up as a difference of bits, not hide as "other code"
    files = [f for f in files if f != ROOT / "src" / "owdfa" / "core" / "numerics.py"]
    digest_of = hashlib.sha256()
    for file in files:
        digest_of.update(file.relative_to(ROOT).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    digest_of.update(json.dumps({k: params[k] for k in ("train", "methods")}, sort_keys=True).encode())
    return digest_of.hexdigest()[:16]


def fingerprint(image_size: int) -> dict[str, Any]:
    # faulthandler would take SIGSEGV from a preloaded CPUID shim (the vendor-flip test)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ONEDNN_", "DNNL_", "PYTHONFAULTHANDLER"))}
    env.update(exact_environment(Numerics().threads), ONEDNN_VERBOSE="1")
    proc = subprocess.run(
        [sys.executable, __file__, "--child", "--image-size", str(image_size)], env=env, capture_output=True, text=True
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        sys.exit(f"error: the probe process failed: {(proc.stderr or proc.stdout).strip()[-600:]}")
    result = json.loads(lines[-1][len(MARK) :])
    return {
        "cpu": cpu_name(),
        "cpu_identity": cpu_identity(),
        "caches": caches(),
        "numerics_version": NUMERICS_VERSION,
        "code": code_digest(),
        "image_size": image_size,
        "numerics": result["numerics"],
        "onednn_implementations": onednn_implementations(proc.stdout),
        "probes": [[name, value] for name, value in result["probes"].items()],  # call order, not sorted
    }


def compare(mine: dict[str, Any], theirs: dict[str, Any], label: str) -> None:
    """Print where the two fingerprints differ: each differing probe, the first one, the oneDNN kernels."""
    print(f"this machine: {mine['cpu']}  |  {label}: {theirs['cpu']}")
    ours, other = dict(mine["probes"]), dict(theirs["probes"])
    differ = [k for k in ours if other.get(k) not in (None, ours[k])]
    missing = sorted(set(ours) ^ set(other))
    for key in differ:
        print(f"  differs: {key}")
    if differ:
        print(f"first difference: {differ[0]} ({len(differ)} of {len(ours)} probes differ)")
    else:
        print(f"all {len(ours)} shared probes give the same bits")
    if missing:
        print(f"  {len(missing)} probes exist on one side only (another version of the code?)")
    here, there = set(mine["onednn_implementations"]), set(theirs["onednn_implementations"])
    for line in sorted(here - there):
        print(f"  oneDNN here only:  {line}")
    for line in sorted(there - here):
        print(f"  oneDNN there only: {line}")


def not_comparable(mine: dict[str, Any], theirs: dict[str, Any]) -> str | None:
    """Why two fingerprints cannot be expected to agree (None: they can)."""
    if theirs.get("numerics_version", 1) != mine["numerics_version"]:
        return f"numerics version {theirs.get('numerics_version', 1)}, this one {mine['numerics_version']}"
    if theirs.get("code") != mine["code"]:
        return "made on other code (another commit's models, training step or params)"
    if theirs.get("image_size") != mine["image_size"]:
        return f"{theirs.get('image_size')} px images, this one {mine['image_size']} px"
    versions, here = theirs.get("numerics", {}).get("versions"), mine["numerics"]["versions"]
    if versions != here:
        return f"made with {versions}, this one {here}"
    return None


def check(mine: dict[str, Any], folder: Path, own: Path | None) -> int:
    """Compare `mine` with every fingerprint in `folder` it can be compared with; 1 on a difference."""
    label = f"this machine ({mine['cpu']}, {machine_slug(mine['cpu_identity'])})"
    compared, failures = 0, []
    for path in sorted(folder.glob("fingerprint-*.json")):
        if own is not None and path.resolve() == own.resolve():
            continue  # the file this run just wrote
        try:
            theirs = json.loads(path.read_text())
            other = dict(theirs["probes"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            failures.append(f"{path}: not a fingerprint ({exc})")
            continue
        reason = not_comparable(mine, theirs)
        if reason:
            print(f"  not compared: {path.name} ({reason})")
            continue
        compared += 1
        differ = [(k, v) for k, v in mine["probes"] if other.get(k) not in (None, v)]
        if differ:
            name, value = differ[0]
            failures.append(
                f"probe '{name}': {label} gives {value}, {path.name} ({theirs.get('cpu')}) gives {other[name]} "
                f"({len(differ)} of {len(mine['probes'])} probes differ)"
            )
        else:
            print(f"  same bits: {path.name} ({theirs.get('cpu')}), all {len(mine['probes'])} probes")
    for failure in failures:
        print(f"DIFFERS: {failure}")
    if not compared and not failures:
        print(f"no committed fingerprint of numerics version {mine['numerics_version']} and this code to compare with")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--out", type=Path, help="default: reports/numerics/fingerprint-<machine>.json")
    parser.add_argument("--compare", type=Path, help="a fingerprint from another machine")
    parser.add_argument(
        "--check",
        nargs="?",
        type=Path,
        const=COMMITTED,
        metavar="FOLDER",
        help="compare with every comparable fingerprint in FOLDER (default reports/numerics); exit 1 on a difference",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.image_size)
        return
    mine = fingerprint(args.image_size)
    out: Path | None = args.out or COMMITTED / f"fingerprint-{machine_slug(mine['cpu_identity'])}.json"
    summary = f"{len(mine['probes'])} probes, {len(mine['onednn_implementations'])} oneDNN implementations"
    if args.compare and out is not None and out.resolve() == args.compare.resolve():
        # The reference of a comparison is never overwritten (it would then be compared with itself).
        print(f"{summary}; not written: {out} is the fingerprint compared against")
    elif args.check and not args.out:
        print(f"{summary}; not written (--check compares with the committed files; --out writes one)")
        out = None
    elif out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, mine)
        print(f"{summary} -> {out}")
    if args.compare:
        try:
            theirs = json.loads(args.compare.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            sys.exit(f"error: {args.compare}: not a fingerprint ({exc})")
        compare(mine, theirs, str(args.compare))
    if args.check:
        sys.exit(check(mine, args.check, out))


if __name__ == "__main__":
    main()
