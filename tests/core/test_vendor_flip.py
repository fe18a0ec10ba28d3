"""Exact mode gives the same bits whichever vendor the CPU reports: Intel and AMD train the same weights.

MKL picks its code path by the CPU vendor as well as by the ISA, so a pin that holds on Intel can be
ignored on AMD (numerics version 1's MKL_CBWR=AVX2,STRICT was). This test shows the process the other
vendor, on this machine, with a CPUID shim of our own (tests/helpers/cpuid_vendor.c, built here with
the system C compiler and preloaded), and compares the numerics fingerprint (bench/numerics_fingerprint.py:
every module and gradient of the CAL network, three training steps of the baseline and CAL, NumPy's
products and reductions) computed natively and with the vendor flipped: Intel shown as AMD family 0x17,
AMD shown as Intel family 6. The ISA flags stay the real ones, so this finds vendor dependence; the
committed fingerprints of other machines (test_bench.py) cover the rest.

It skips only where it cannot run: not x86-64 Linux, no CPUID faulting (the flag cpuid_fault in
/proc/cpuinfo; which of the project's machines have it: docs/numerics.md, "The checks you can run"), or
no C compiler.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import ROOT as REPO_ROOT

from owdfa.core.machine import cpu_identity
from owdfa.core.numerics import _cpu_flags

ROOT = REPO_ROOT
SHIM_SOURCE = ROOT / "tests" / "helpers" / "cpuid_vendor.c"
VENDOR_STRINGS = {"intel": "GenuineIntel", "amd": "AuthenticAMD"}
# The pipeline's own image size (data.synthetic.image_size, align.image_size). At 32 px one oneDNN
# convolution (layer3.0.conv2) gives other bits when the vendor is flipped: oneDNN blocks it by the
# cache sizes it reads through CPUID, from leaves that differ by vendor, and an Intel CPU shown as
# AMD does not answer AMD's cache leaves as an AMD would (docs/numerics.md, "The checks you can run").
# 64 px computes the same bits.
IMAGE_SIZE = 64


def cpu_flags_and_vendor() -> tuple[set[str], str]:
    """/proc/cpuinfo's flags (empty where there is none) and the vendor: intel, amd or unknown."""
    return _cpu_flags() or set(), cpu_identity()["vendor"]


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CPUID shim, compiled for this session; skips where this machine cannot run it."""
    flags, vendor = cpu_flags_and_vendor()
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"the vendor flip needs x86-64 Linux, this is {platform.system()} {platform.machine()}")
    if vendor == "unknown":
        pytest.skip("the CPU vendor is neither Intel nor AMD")
    if "cpuid_fault" not in flags:
        pytest.skip("this CPU or kernel cannot make CPUID fault (no cpuid_fault in /proc/cpuinfo)")
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("no C compiler (cc, gcc or clang) to build the CPUID shim")
    library = tmp_path_factory.mktemp("shim") / "cpuid_vendor.so"
    build = [compiler, "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", str(library), str(SHIM_SOURCE)]
    done = subprocess.run(build, capture_output=True, text=True)
    assert done.returncode == 0, f"building the shim failed: {done.stderr}"
    return library


def other_vendor() -> str:
    return {"intel": "amd", "amd": "intel"}[cpu_flags_and_vendor()[1]]


def flipped(shim: Path, vendor: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONFAULTHANDLER"}
    return {**env, "LD_PRELOAD": str(shim), "OWDFA_CPUID_VENDOR": vendor}


def vendor_seen(env: dict[str, str], shim: Path) -> str:
    """The vendor string that a CPUID instruction in a process started with `env` reads."""
    probe = (
        "import ctypes, sys\n"
        "seen = ctypes.create_string_buffer(13)\n"
        f"ctypes.CDLL({str(shim)!r}).cpuid_vendor_seen(seen)\n"
        "print(seen.value.decode())\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def fingerprint(out: Path, env: dict[str, str]) -> list[list[str]]:
    script = ROOT / "bench" / "numerics_fingerprint.py"
    done = subprocess.run(
        [sys.executable, str(script), "--image-size", str(IMAGE_SIZE), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())["probes"]


def first_difference(native: list[list[str]], shown: list[list[str]]) -> str | None:
    theirs = dict(shown)
    differ = [name for name, value in native if theirs.get(name) != value]
    return f"'{differ[0]}' ({len(differ)} of {len(native)} probes differ)" if differ else None


def test_the_shim_shows_the_other_vendor_and_only_when_asked(shim: Path) -> None:
    # Without this the comparison below could pass because nothing was flipped.
    vendor = other_vendor()
    assert vendor_seen(flipped(shim, vendor), shim) == VENDOR_STRINGS[vendor]
    native = {k: v for k, v in os.environ.items() if k != "OWDFA_CPUID_VENDOR"}
    assert vendor_seen({**native, "LD_PRELOAD": str(shim)}, shim) == VENDOR_STRINGS[cpu_flags_and_vendor()[1]]
    # a wrong value is refused in one line, not taken as a vendor
    done = subprocess.run(
        [sys.executable, "-c", "pass"], env=flipped(shim, "via"), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "OWDFA_CPUID_VENDOR must be amd or intel" in done.stderr


@pytest.mark.slow
def test_exact_mode_gives_the_same_bits_with_the_vendor_flipped(shim: Path, tmp_path: Path) -> None:
    vendor = other_vendor()
    native = fingerprint(tmp_path / "native.json", {k: v for k, v in os.environ.items() if k != "OWDFA_CPUID_VENDOR"})
    shown = fingerprint(tmp_path / f"shown-{vendor}.json", flipped(shim, vendor))
    difference = first_difference(native, shown)
    assert difference is None, (
        f"exact mode depends on the CPU vendor: shown as {VENDOR_STRINGS[vendor]}, this machine gives other "
        f"bits from probe {difference}"
    )


def test_first_difference_names_the_first_probe() -> None:
    native = [["a", "1"], ["b", "2"], ["c", "3"]]
    assert first_difference(native, [["a", "1"], ["b", "2"], ["c", "3"]]) is None
    assert first_difference(native, [["a", "1"], ["b", "9"], ["c", "8"]]) == "'b' (2 of 3 probes differ)"
