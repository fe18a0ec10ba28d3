"""Which CPU a result was made on: vendor, family, model and widest vector ISA, as /proc/cpuinfo says.

Exact mode's bits should not depend on it; the fingerprints of `bench/numerics_fingerprint.py` and the
grid writer's provenance record it so that a claim of that kind names the machines it was checked on.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}


def cpu_identity(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """name, vendor, family, model, isa ('avx512' | 'avx2' | 'sse') of this CPU; 'unknown' off Linux."""
    fields: dict[str, str] = {}
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {
        "name": fields.get("model name") or platform.processor() or platform.machine(),
        "vendor": VENDORS.get(fields.get("vendor_id", ""), "unknown"),
        "family": fields.get("cpu family", "?"),
        "model": fields.get("model", "?"),
        "isa": "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse",
    }


def machine_slug(identity: dict[str, str]) -> str:
    """vendor-family-model-isa (e.g. intel-6-167-avx512, amd-23-1-avx2): two kinds of CPU never share it."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(identity[k] for k in ("vendor", "family", "model", "isa")).lower())
