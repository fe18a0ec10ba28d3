"""Which kernel gives other bits on another CPU: a fingerprint of exact mode on this machine.

Exact mode (`owdfa.numerics`) pins ATen, oneDNN, MKL and OpenBLAS to AVX2 kernels and 2 threads so
that every x86-64 machine trains the same weights. On 2026-12-03 an AMD EPYC (Zen 1, AVX2 only)
reproduced every data stage of the committed `dvc.lock` but trained other `pretrain@p1` weights
than the Intel Xeon (AVX-512, AMX) that made it: some kernel still depends on the machine. This
script runs, in exact mode and on seeded inputs, what the pipeline runs and hashes the output bits:

* every module of the default CAL network (`train.backbone` with FFE, BNNeck and prototypes) in a
  training-mode forward pass, in call order, then every parameter's gradient after one backward;
* three training steps of the loop itself (`owdfa.training.TrainStep`) for the baseline and CAL;
* NumPy's (OpenBLAS) matrix product and a few reductions, as evaluation uses them.

It also records which oneDNN implementation ran each primitive (`ONEDNN_VERBOSE`) and the cache
sizes oneDNN sees. Run it on two machines and `--compare` names the first probe whose bits differ:
a convolution whose oneDNN implementation also differs points at oneDNN's CPU-dependent kernel
choice; a matrix product at MKL.
Usage: python bench/numerics_fingerprint.py                  # ~20 s; writes reports/numerics/fingerprint-<machine>.json
       python bench/numerics_fingerprint.py --compare reports/numerics/fingerprint-amd-epyc.json
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

from owdfa.io import atomic_write_json
from owdfa.numerics import Numerics, exact_environment

ROOT = Path(__file__).resolve().parents[1]
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

    from owdfa.config import Section
    from owdfa.methods import build_method
    from owdfa.models import AttributionModel
    from owdfa.training import seed_everything

    section = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    seed_everything(0)
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

    from owdfa.config import Section
    from owdfa.methods import build_method
    from owdfa.train_config import TrainConfig
    from owdfa.training import seed_everything

    section = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    config = TrainConfig(backbone=section["backbone"], dropout=section["dropout"], batch_size=BATCH)
    probes: dict[str, str] = {}
    for variant in ("baseline", "cal"):
        seed_everything(0)
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
    from owdfa import numerics

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


def cpu_identity() -> dict[str, str]:
    """Vendor, family, model and widest vector ISA of this CPU (/proc/cpuinfo; 'unknown' elsewhere)."""
    fields: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(fields.get("vendor_id", ""), "unknown")
    flags = set(fields.get("flags", "").split())
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse"
    return {"vendor": vendor, "family": fields.get("cpu family", "?"), "model": fields.get("model", "?"), "isa": isa}


def machine_slug(identity: dict[str, str]) -> str:
    return re.sub(r"[^a-z0-9]+", "-", "-".join(identity[k] for k in ("vendor", "family", "model", "isa")).lower())


def fingerprint(image_size: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ONEDNN_", "DNNL_"))}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--out", type=Path, help="default: reports/numerics/fingerprint-<machine>.json")
    parser.add_argument("--compare", type=Path, help="a fingerprint from another machine")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.image_size)
        return
    mine = fingerprint(args.image_size)
    out = args.out or ROOT / "reports" / "numerics" / f"fingerprint-{machine_slug(mine['cpu_identity'])}.json"
    summary = f"{len(mine['probes'])} probes, {len(mine['onednn_implementations'])} oneDNN implementations"
    if args.compare and out.resolve() == args.compare.resolve():
        # The reference of a comparison is never overwritten (it would then be compared with itself).
        print(f"{summary}; not written: {out} is the fingerprint compared against")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, mine)
        print(f"{summary} -> {out}")
    if args.compare:
        try:
            theirs = json.loads(args.compare.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            sys.exit(f"error: {args.compare}: not a fingerprint ({exc})")
        compare(mine, theirs, str(args.compare))


if __name__ == "__main__":
    main()
