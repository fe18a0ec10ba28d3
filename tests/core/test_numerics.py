"""Exact CPU numerics (owdfa.core.numerics): the params, the pins, and another machine simulated on this one.

The machine test runs the real pretrain, train (CAL: FFE, convolutions, matrix products) and evaluate
stages (k-means, metrics) of a tiny config twice: once as this machine is, once as a narrower machine
would be, with every library's instruction set capped from outside (ATen without vector kernels,
oneDNN at SSE4.1, MKL's SSE4.2 branch, OpenBLAS's Prescott kernels) and one CPU instead of all. In
exact mode the two must agree bit for bit; with the pins off (reproducible: false, all cores) they
must differ, which shows that the masks change the numbers and the test can fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.paths import ROOT as REPO_ROOT
from helpers.tiny_run import build_tiny_split, variant_file

from owdfa.core.config import Section
from owdfa.core.errors import ConfigError
from owdfa.core.numerics import (
    EXACT_ISA,
    NUMERICS_VERSION,
    SHARED_CORES_WAIT_POLICY,
    THREAD_VARIABLES,
    WAIT_VARIABLES,
    Numerics,
    NumericsError,
    check_machine,
    describe,
    exact_environment,
    pin,
    shared_cores_environment,
    summary,
)

ROOT = REPO_ROOT
# What a narrower machine looks like to the libraries (each variable is what that library reads).
NARROW_MACHINE = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "MKL_CBWR": "SSE4_2",
    "OPENBLAS_CORETYPE": "Prescott",
}


def section(**values: object) -> Section:
    return Section({"reproducible": True, "threads": 2, **values}, "numerics")


def test_params_defaults_and_one_line_errors() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert Numerics.from_section(Section(params["numerics"], "numerics")) == Numerics(reproducible=True, threads=2)
    assert Numerics.from_section(section(reproducible=False, threads=0)).mode == "native"
    for bad, key in (
        ({"threads": 0}, "numerics.threads"),  # all cores: another machine, another split of each reduction
        ({"threads": -1}, "numerics.threads"),
        ({"reproducible": "yes"}, "numerics.reproducible"),
        ({"thread": 2}, "numerics.thread"),
    ):
        with pytest.raises(ConfigError) as info:
            Numerics.from_section(section(**bad))
        assert info.value.key == key and "\n" not in str(info.value)


def test_exact_environment_pins_every_library_and_the_threads() -> None:
    env = exact_environment(3)
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    # MKL's one branch defined for every vendor (its ISA branches hold on Intel CPUs only)
    assert env["MKL_CBWR"] == "COMPATIBLE" and env["OPENBLAS_CORETYPE"] == "Haswell"
    assert env["NPY_DISABLE_CPU_FEATURES"] == "X86_V4 AVX512_ICL AVX512_SPR"
    assert all(env[name] == "3" for name in THREAD_VARIABLES)


@pytest.mark.slow
def test_pinned_numpy_takes_its_avx2_loops_and_the_pinned_blas_threads() -> None:
    # NumPy picks its SIMD loops when it loads: after pin() its AVX-512 targets are off on any CPU, and
    # configure_torch() gives its OpenBLAS the pinned thread count even where one CPU is visible.
    probe = (
        "import os, json\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "from owdfa.core import numerics\n"
        "numerics.pin(numerics.Numerics())\n"
        "import numpy\n"
        "from numpy._core._multiarray_umath import __cpu_features__ as features\n"
        "from threadpoolctl import threadpool_info\n"
        "numerics.configure_torch()\n"
        "blas = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']\n"
        "print(json.dumps({'v4': features.get('X86_V4', False), 'avx2': features['AVX2'], 'blas': blas}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in EXACT_ISA and k not in THREAD_VARIABLES}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    result = json.loads(out.stdout)
    assert result["v4"] is False and result["avx2"] is True
    assert result["blas"] and set(result["blas"]) == {2}


def test_exact_mode_needs_x86_64_with_avx2_and_fma() -> None:
    check_machine("x86_64", {"avx", "avx2", "fma"})
    for machine, flags, words in (
        ("aarch64", None, "x86-64"),
        ("x86_64", {"avx", "sse4_2"}, "avx2, fma"),
        ("x86_64", {"avx2"}, "fma"),
    ):
        with pytest.raises(ConfigError) as info:
            check_machine(machine, flags)
        assert info.value.key == "numerics.reproducible" and words in str(info.value)
        assert "reproducible: false" in str(info.value)


def test_pin_after_torch_loaded_checks_instead_of_pretending() -> None:
    import torch  # noqa: F401  (loaded by now in any case: conftest pinned first)

    assert pin(Numerics()) == Numerics()  # the same settings: fine
    with pytest.raises(NumericsError, match="OMP_NUM_THREADS") as info:
        pin(Numerics(threads=3))
    assert "\n" not in str(info.value)
    assert os.environ["OMP_NUM_THREADS"] == "2"  # nothing was changed behind the loaded libraries


@pytest.mark.slow
def test_pin_overrides_a_users_own_caps_and_thread_count() -> None:
    probe = (
        "from owdfa.core.numerics import Numerics, configure_torch, pin; pin(Numerics(threads=3)); import torch, json; "
        "configure_torch(); print(json.dumps([torch.backends.cpu.get_cpu_capability(), torch.get_num_threads()]))"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '["AVX2", 3]'


def pinned_wait(numerics: str, **env: str) -> dict[str, str]:
    """The wait variables after pin() in a fresh process (torch not loaded) started with `env` added."""
    probe = (
        f"import json, os; from owdfa.core.numerics import Numerics, pin, WAIT_VARIABLES; pin({numerics}); "
        "print(json.dumps({k: os.environ[k] for k in WAIT_VARIABLES if k in os.environ}))"
    )
    base = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    out = subprocess.run([sys.executable, "-c", probe], env={**base, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_pin_leaves_the_openmp_wait_policy_to_the_environment() -> None:
    # a lone run is fastest with libgomp's default spin; jobs side by side get the short one
    assert pinned_wait("Numerics()") == {}
    assert pinned_wait("Numerics(reproducible=False, threads=0)") == {}
    assert pinned_wait("Numerics()", GOMP_SPINCOUNT="2000") == {"GOMP_SPINCOUNT": "2000"}
    assert not set(WAIT_VARIABLES) & set(exact_environment(2))  # scheduling, not part of the numbers


def test_jobs_side_by_side_get_the_short_spin_unless_the_user_chose_a_policy() -> None:
    assert set(SHARED_CORES_WAIT_POLICY) <= set(WAIT_VARIABLES)
    assert shared_cores_environment({"PATH": "/bin"}) == {"PATH": "/bin", **SHARED_CORES_WAIT_POLICY}
    assert shared_cores_environment({"OMP_WAIT_POLICY": "PASSIVE"}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert shared_cores_environment({"GOMP_SPINCOUNT": "300000"}) == {"GOMP_SPINCOUNT": "300000"}


def test_wait_variables_after_torch_loaded_are_not_an_inconsistency(monkeypatch) -> None:
    import torch  # noqa: F401

    monkeypatch.setenv("GOMP_SPINCOUNT", "12345")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert pin(Numerics()) == Numerics()  # no NumericsError: the wait policy changes no numbers
    assert os.environ["GOMP_SPINCOUNT"] == "12345"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    pin(Numerics())
    assert not set(WAIT_VARIABLES) & set(os.environ)  # not set behind a loaded libgomp: it would not read it
    # the cards stay the same bytes whatever the wait policy: it is not in the record
    assert not {"omp_wait_policy", "gomp_spincount"} & {key.lower() for key in describe()}


def subnormal_probe(before_configure: str) -> dict[str, object]:
    """In a fresh pinned process: run `before_configure`, then configure_torch(), then square 1e-20
    (1e-40, subnormal) over 2**20 elements, which ATen splits over both threads. The count of
    elements left non-zero says which threads flush; the record says what the card will hold."""
    probe = (
        "import json; from owdfa.core.numerics import Numerics, configure_torch, describe, pin; pin(Numerics()); "
        f"import torch; {before_configure}; configure_torch(); x = torch.full((1 << 20,), 1e-20); "
        "print(json.dumps({'kept': int(((x * x) != 0).sum()), 'threads': torch.get_num_threads(), "
        "'record': describe()['subnormals']}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.slow
def test_subnormals_are_flushed_on_every_thread_or_on_none() -> None:
    # a stage: configure_torch comes before any parallel work, so both threads flush
    assert subnormal_probe("pass") == {"kept": 0, "threads": 2, "record": "flushed"}
    # torch already computed on its thread pool (a notebook): the worker never got the flag, so the
    # main thread drops it too, rather than half the elements of one product being flushed
    late = subnormal_probe("(torch.ones(1 << 20) * 2).sum()")
    assert late == {"kept": 1 << 20, "threads": 2, "record": "kept"}


def test_record_holds_the_pins_not_the_machine() -> None:
    record = describe("cpu", "fp32")
    assert record["mode"] == "exact" and record["threads"] == 2
    assert record["aten_cpu_capability"] == "AVX2"
    assert record["onednn_max_cpu_isa"] == "AVX2" and record["mkl_cbwr"] == "COMPATIBLE"
    assert record["version"] == NUMERICS_VERSION and record["numpy_disabled_features"] == "X86_V4 AVX512_ICL AVX512_SPR"
    assert record["openblas_coretype"] == "Haswell" and record["deterministic_algorithms"] in (True, False)
    assert set(record["versions"]) == {"torch", "mkl", "onednn", "numpy"}
    assert "unknown" not in record["versions"].values()
    text = summary(record)
    assert text.startswith(f"exact mode: version {NUMERICS_VERSION}, AVX2 kernels") and "2 threads" in text


# --- another machine, simulated -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return build_tiny_split(tmp_path_factory.mktemp("numerics"))


def run_tiny_pipeline(
    tiny: tuple[Path, Path], out: Path, numerics: dict[str, object], narrow: bool, stages: int = 3
) -> dict[str, bytes]:
    """The first `stages` of pretrain, train (CAL), evaluate as subprocesses; every output file's bytes."""
    faces, split = tiny
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["numerics"].update(numerics)
    params["pretrain"].update(epochs=1, batch_size=16, device="cpu")
    params["train"].update(epochs=2, batch_size=16, lr_step=1, device="cpu")
    params["methods"]["cal"]["acr_start_epoch"] = 0
    params["evaluate"].update(device="cpu", mc_dropout_passes=2, tsne_max_points=0)  # figures: not compared
    params["evaluate"]["uncertainty_maps"]["per_class"] = 0
    out.mkdir(parents=True)
    (out / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if k not in EXACT_ISA and k not in THREAD_VARIABLES}
    env["DVC_NO_ANALYTICS"] = "1"
    if narrow:
        env.update(NARROW_MACHINE)
    variant = variant_file(out / "params.yaml", "cal", out / "variants")
    one_cpu = min(os.sched_getaffinity(0))
    common = ["--split", str(split), "--faces", str(faces), "--params", str(out / "params.yaml")]
    for stage, args in (
        ("pretrain", ["--out", str(out / "pretrain")]),
        (
            "train",
            ["--variant", str(variant), "--seed", "0", "--init", str(out / "pretrain"), "--out", str(out / "run")],
        ),
        ("evaluate", ["--model", str(out / "run"), "--out", str(out / "report"), "--predictions", str(out / "p.csv")]),
    )[:stages]:
        done = subprocess.run(
            [sys.executable, f"stages/{stage}.py", *common, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            preexec_fn=(lambda: os.sched_setaffinity(0, {one_cpu})) if narrow else None,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    files = (p for p in sorted(out.rglob("*")) if p.is_file() and p.suffix != ".png" and p.name != "params.yaml")
    result = {p.relative_to(out).as_posix(): p.read_bytes() for p in files}
    shutil.rmtree(out)  # the next run writes to the same paths, which the cards record
    return result


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_another_machine_gives_the_same_bits_in_exact_mode_only(tiny, tmp_path) -> None:
    exact = {"reproducible": True, "threads": 2}
    wide = run_tiny_pipeline(tiny, tmp_path / "run", exact, narrow=False)
    narrow = run_tiny_pipeline(tiny, tmp_path / "run", exact, narrow=True)
    for name in ("pretrain/model.safetensors", "run/model.safetensors", "run/card.json", "p.csv"):
        assert name in wide, sorted(wide)
    assert wide.keys() == narrow.keys()
    differing = [name for name in wide if wide[name] != narrow[name]]
    assert not differing, f"exact mode differs on a narrower machine: {differing}"

    native = {"reproducible": False, "threads": 0}
    # without the pins the same masks change the first weights trained: the masks matter, the test can
    # fail (pretrain is enough to show it; what is trained from different weights differs anyway)
    native_wide = run_tiny_pipeline(tiny, tmp_path / "run", native, narrow=False, stages=1)
    native_narrow = run_tiny_pipeline(tiny, tmp_path / "run", native, narrow=True, stages=1)
    assert native_wide["pretrain/model.safetensors"] != native_narrow["pretrain/model.safetensors"]
    assert b'"mode": "native"' in native_wide["pretrain/card.json"]
