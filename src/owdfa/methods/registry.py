"""From a run variant's params to its method object.

Each method class registers itself (`@register_loss`, as timm's models do with `@register_model`);
importing its module is what registers it, so the modules are imported here, statically: the code a
training stage runs (`owdfa.import_closure`) then includes every method a variant may name, and a
new method is one decorated class plus one import line here.
"""

from __future__ import annotations

from owdfa.config import Section
from owdfa.errors import ConfigError
from owdfa.methods import cal, cpl  # noqa: F401 - imported for their @register_loss
from owdfa.methods.base import LOSSES, Method


def build_method(variant: str, methods: Section) -> Method:
    """Instantiate the run variant `variant` from `methods.<variant>` (its `loss` picks the class)."""
    if not methods.has(variant):
        known = ", ".join(sorted(methods.keys()))
        raise ConfigError("run.methods", f"unknown method {variant!r}; {methods.name} defines {known}")
    section = methods.section(variant)
    loss = section.str("loss", choices=sorted(LOSSES))
    return LOSSES[loss].from_section(section)
