"""From a run variant's params to its method object: every loss class, imported by name here.

The imports are plain, static ones, so that the code a training stage runs (`owdfa.import_closure`)
includes every method a variant may name; a new method is one more class in `LOSSES`.
"""

from __future__ import annotations

from owdfa.config import Section
from owdfa.errors import ConfigError
from owdfa.methods.base import Baseline, Method
from owdfa.methods.cal import CAL
from owdfa.methods.cpl import CPL

LOSSES: dict[str, type[Method]] = {cls.name: cls for cls in (Baseline, CAL, CPL)}


def build_method(variant: str, methods: Section) -> Method:
    """Instantiate the run variant `variant` from `methods.<variant>` (its `loss` picks the class)."""
    if not methods.has(variant):
        known = ", ".join(sorted(methods.keys()))
        raise ConfigError("run.methods", f"unknown method {variant!r}; {methods.name} defines {known}")
    section = methods.section(variant)
    loss = section.str("loss", choices=sorted(LOSSES))
    return LOSSES[loss].from_section(section)
