"""CPU numerics pinned so that a run's bits should not depend on the x86-64 machine (params: numerics).

Floating-point training on the CPU depends on which kernels run, and those are chosen per machine:
ATen's vector width (AVX2 or AVX-512), oneDNN's instruction set for convolutions, MKL's code path
for matrix products, exp/log/sqrt and FFTs, OpenBLAS's kernel for NumPy's products (k-means,
metrics), NumPy's own SIMD loops, and the number of threads that split each reduction. In exact mode
(`reproducible: true`, the default) each is pinned to a level every x86-64 machine of the last
decade has (AVX2 with FMA) and to a fixed thread count. `reproducible: false` leaves the libraries to
pick the widest kernels and all cores.

MKL chooses its code path by the CPU *vendor* as well as the ISA: Intel's oneMKL guide ("Getting
Started with Conditional Numerical Reproducibility") documents the ISA branches of `MKL_CBWR` (AVX2,
AVX512, ...) for Intel processors only and says a non-Intel CPU takes the AUTO branch instead; only
`COMPATIBLE` is defined for Intel and compatible processors alike. So exact mode pins `COMPATIBLE`
(until numerics version 2 it pinned `AVX2,STRICT`, which an AMD CPU ignored: the AMD EPYCs trained
other weights). NumPy picks its SIMD loops at import (`NPY_DISABLE_CPU_FEATURES` turns its AVX-512
targets off, so exp/log/sums take the AVX2 loops on every machine). What was verified, on which CPUs
and how (a fresh clone, a fingerprint, the vendor-flip test), is docs/numerics.md, "Exact results across machines".

The libraries read these settings once, when they load, so `pin()` must run before torch or NumPy
is imported: the stages and `owdfa attribute` call it first and import their library afterwards;
`configure_torch()` then sets what the libraries only take at run time (thread counts,
deterministic algorithms).
"""

from __future__ import annotations

import os
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from owdfa.core.config import Section, load_section, param
from owdfa.core.errors import ConfigError, OwdfaError

# The generation of exact mode: which pins it sets. Results (dvc.lock, reports, grids, fingerprints)
# of one version agree across machines; a change of pins that moves any bit increments it.
# 1: MKL_CBWR=AVX2,STRICT (vendor-dependent); 2: MKL_CBWR=COMPATIBLE + NumPy's AVX2 loops.
NUMERICS_VERSION = 2
DEFAULT_THREADS = 2  # the embedded benchmark's committed tables were computed with 2 threads
REQUIRED_CPU_FLAGS = ("avx2", "fma")
# What every library reads at load time in exact mode (thread counts are added by `exact_environment`).
EXACT_ISA = {
    "ATEN_CPU_CAPABILITY": "avx2",  # ATen's vectorised kernels: 8-wide float, not 16-wide
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN convolutions: no AVX-512 / AMX kernels
    "MKL_CBWR": "COMPATIBLE",  # MKL: the one code path its guide documents for Intel and AMD alike
    "OPENBLAS_CORETYPE": "Haswell",  # NumPy's OpenBLAS: the AVX2 kernels whatever the CPU
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # NumPy's own loops: AVX2, never AVX-512
}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# How an idle OpenMP thread waits at a barrier: scheduling only, never the numbers. torch's pip
# wheel runs on GNU libgomp, whose default spins ~300,000 iterations (a few ms) at every barrier.
# A job alone is fastest that way; when another process holds the core a partner thread needs (a
# second sweep job, any busy process), that spin burns the partner's time slice. bench/concurrency.py
# (CAL step, 2 threads, 2 cores, ms per step; reports/bench.json "concurrency"): libgomp's default
# 225 alone, 513-3190 each with a second job, 1331 next to one busy loop; GOMP_SPINCOUNT=2000
# 244-249 alone (+9-11 %), 468-471 with a second job (2 jobs at once finish as soon as one after
# another), 472 next to a busy loop. So a lone run (`dvc repro`) keeps libgomp's default, and
# `shared_cores_environment()` gives the short spin to whoever starts jobs side by side
# (`owdfa grid -j 2`, or a user exporting GOMP_SPINCOUNT=2000 before `dvc queue start -j 2`).
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
SHARED_CORES_WAIT_POLICY = {"GOMP_SPINCOUNT": "2000"}
NUMERIC_MODULES = ("torch", "numpy")


_pinned: Numerics | None = None
_flushed: bool | None = None  # subnormals flushed to zero (flush_denormals); None: not configured


DENORMAL_PROBE_ELEMENTS = 1 << 16  # per thread: above ATen's grain (32768), so every thread gets a share


class NumericsError(OwdfaError):
    """Exact mode cannot be guaranteed in this process."""


@dataclass(frozen=True)
class Numerics:
    reproducible: bool = param(True)
    threads: int = param(DEFAULT_THREADS, min=0)  # 0: all cores (native mode only)

    @classmethod
    def from_section(cls, section: Section) -> Numerics:
        return load_section(cls, section)

    def validate(self, section: Section) -> None:
        if self.reproducible and self.threads == 0:
            raise ConfigError(
                section.key("threads"),
                "0 (all cores) gives other numbers on a machine with another core count; "
                f"set a count (e.g. {DEFAULT_THREADS}) or {section.key('reproducible')}: false",
            )

    @property
    def mode(self) -> str:
        return "exact" if self.reproducible else "native"


def exact_environment(threads: int) -> dict[str, str]:
    """The environment variables that exact mode sets (before the numeric libraries load)."""
    return {**EXACT_ISA, **dict.fromkeys(THREAD_VARIABLES, str(threads)), "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else None


def check_machine(machine: str | None = None, flags: set[str] | None = None) -> None:
    """Exact mode is defined for x86-64 with AVX2 and FMA; elsewhere say so in one line."""
    machine = machine or platform.machine()
    if machine.lower() not in ("x86_64", "amd64"):
        raise ConfigError(
            "numerics.reproducible",
            f"exact CPU results are defined for x86-64 machines, this one is {machine}; "
            "set numerics.reproducible: false (its numbers will differ from the committed tables)",
        )
    flags = _cpu_flags() if flags is None else flags
    missing = [f for f in REQUIRED_CPU_FLAGS if flags is not None and f not in flags]
    if missing:
        raise ConfigError(
            "numerics.reproducible",
            f"exact mode computes with AVX2 and FMA, which this CPU lacks ({', '.join(missing)}); "
            "set numerics.reproducible: false",
        )


def pin(numerics: Numerics) -> Numerics:
    """Set the numeric libraries' environment for `numerics`; call before torch or NumPy is imported.

    In a process that has already loaded them (a notebook, a test session) it only checks that
    they were loaded under the same settings, and raises `NumericsError` otherwise. The OpenMP wait
    policy changes no numbers and is left to the environment (`shared_cores_environment`).
    """
    wanted = exact_environment(numerics.threads) if numerics.reproducible else {}
    if not numerics.reproducible and numerics.threads:
        wanted = dict.fromkeys(THREAD_VARIABLES, str(numerics.threads))
    if numerics.reproducible:
        check_machine()
    loaded = [name for name in NUMERIC_MODULES if name in sys.modules]
    if loaded:
        differs = sorted(k for k, v in wanted.items() if os.environ.get(k) != v)
        if differs:
            raise NumericsError(
                f"numerics: {', '.join(loaded)} was imported before owdfa.core.numerics.pin() "
                f"({', '.join(differs)} not set as {numerics.mode} mode needs); call pin() first"
            )
    os.environ.update(wanted)  # overrides a user's own ATEN_CPU_CAPABILITY etc. in exact mode
    global _pinned
    _pinned = numerics
    return numerics


def shared_cores_environment(environ: dict[str, str]) -> dict[str, str]:
    """`environ` for jobs that run side by side: the short OpenMP spin unless a wait policy is set.

    A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT stands, whole (see `SHARED_CORES_WAIT_POLICY`).
    """
    if any(name in environ for name in WAIT_VARIABLES):
        return dict(environ)
    return {**environ, **SHARED_CORES_WAIT_POLICY}


def pinned() -> Numerics | None:
    """What `pin()` set in this process (None: nothing was pinned, the libraries chose)."""
    return _pinned


def pin_from_params(params: Path) -> Numerics:
    return pin(Numerics.from_section(Section.from_file("numerics", params)))


def flush_denormals() -> bool:
    """Make the CPU treat subnormal floats (below 1.2e-38) as zero on every compute thread.

    FFE's mask gradients are tiny (~8 % of them subnormal) and x86 computes with subnormals up to
    100x slower: the CAL step is ~8-18 % faster without them, and no committed output changes (a
    value under 1e-38 cannot reach the 24th bit of a sum it is added to). The flag is per thread
    and compute threads copy it when they start, so it must be set before torch's first parallel
    operation; a probe over every thread checks that. Where some thread started earlier (torch
    used before `configure_torch`, e.g. in a notebook) the flag is cleared again, so that every
    thread computes alike. Returns whether subnormals are flushed (recorded by `describe`).
    """
    import torch

    global _flushed
    torch.set_flush_denormal(True)
    probe = torch.full((DENORMAL_PROBE_ELEMENTS * max(1, torch.get_num_threads()),), 1e-20)
    _flushed = not bool((probe * probe).any())  # 1e-40 survives on a thread without the flag
    if not _flushed:
        torch.set_flush_denormal(False)
    return _flushed


def configure_torch() -> None:
    """Once torch has loaded: deterministic algorithms, the pinned thread count, subnormals flushed.

    torch caps a larger OMP_NUM_THREADS at this machine's core count when it starts, so the count
    is set here explicitly: 2 threads on a 1-core machine still split every reduction in two.
    cuBLAS needs its workspace fixed for deterministic algorithms.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills every new tensor with NaN so that a kernel reading memory it
    # never wrote shows up; every result is written before it is read (the NaN fill never reaches
    # an output: the committed runs are the same bits without it), and the fill cost ~10 % of a CAL step.
    torch.utils.deterministic.fill_uninitialized_memory = False
    if _pinned is not None and _pinned.threads:
        torch.set_num_threads(_pinned.threads)
        _pin_blas_threads(_pinned.threads)
    flush_denormals()


def _pin_blas_threads(threads: int) -> None:
    """NumPy's OpenBLAS computes with `threads` threads even where fewer CPUs are visible.

    OpenBLAS caps OPENBLAS_NUM_THREADS at the CPUs in the process's affinity mask when it loads, and
    its matrix-vector products and long dot products split the sum between threads: a 1-CPU container
    would silently sum in another order. Setting the count after loading is not capped.
    """
    import numpy  # noqa: F401  (loads OpenBLAS, so that threadpoolctl finds it)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")


def _config_version(pattern: str) -> str:
    import torch

    match = re.search(pattern, torch.__config__.show())
    return match.group(1) if match else "unknown"


def describe(device: str = "cpu", precision: str = "fp32") -> dict[str, Any]:
    """The numerics a run computed under, for model cards and reports.

    In exact mode it holds only what the pins fix (never this machine's own CPU), so it is the same
    on every machine that reproduces the run.
    """
    import numpy as np
    import torch

    numerics = pinned()
    record: dict[str, Any] = {
        "mode": numerics.mode if numerics else "unpinned",
        "version": NUMERICS_VERSION if numerics and numerics.reproducible else None,
        "device": device,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "native"),
        "mkl_cbwr": os.environ.get("MKL_CBWR", "native"),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "native"),
        "numpy_disabled_features": os.environ.get("NPY_DISABLE_CPU_FEATURES", "none"),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "subnormals": {True: "flushed", False: "kept", None: "unset"}[_flushed],
        "versions": {
            "torch": torch.__version__,
            "mkl": _config_version(r"Math Kernel Library Version ([\d.]+)"),
            "onednn": _config_version(r"MKL-DNN v(\S+)"),
            "numpy": np.__version__,
        },
    }
    return record


def summary(record: dict[str, Any]) -> str:
    """One line for logs and the report."""
    if record.get("mode") == "exact":
        isa = (
            f"version {record.get('version')}, "
            f"{record['aten_cpu_capability']} kernels "
            f"(oneDNN {record['onednn_max_cpu_isa']}, MKL {record['mkl_cbwr']}, OpenBLAS {record['openblas_coretype']})"
        )
    else:
        isa = f"native kernels ({record.get('aten_cpu_capability')})"
    versions = record.get("versions", {})
    return (
        f"{record.get('mode')} mode: {isa}, {record.get('threads')} threads, {record.get('device')} "
        f"{record.get('precision')}, torch {versions.get('torch')}, MKL {versions.get('mkl')}, "
        f"oneDNN {versions.get('onednn')}"
    )
