"""The one registry of methods, and from a run variant's params to its method object.

Each method class registers itself (`@register_method`, as timm's models do with `@register_model`)
under its `name`; importing its module is what registers it, so `owdfa/methods/__init__.py` imports
every method module statically: the code a training stage runs (`owdfa.core.import_closure`) then includes
every method a variant may name, and a new method is one decorated class plus one import line there.

Runs name *variants* (`methods.<variant>` in params.yaml). A variant either picks a method
(`method: cal`) and sets every hyper-parameter of it, or names a `base:` variant and lists only
what differs from it (`cal_abl1: {base: cal, ccr: false, acr: false}`). `resolve_variant` is the
one place that turns either into the full settings; the `variants` stage writes them, one file per
variant, which is what a training run depends on and reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from owdfa.core.config import Section
from owdfa.core.errors import ConfigError, DataError
from owdfa.core.io import atomic_directory, atomic_write_json

METHOD_KEY = "method"  # a variant's method: a registered class's `name`
BASE_KEY = "base"  # a variant this one differs from
MAX_BASE_DEPTH = 32  # bases deeper than any sensible ablation tree are a mistake (or a cycle)
VARIANT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a file name and part of a stage name

# A variant's `method:` -> its class (a subclass of owdfa.methods.base.Method, which imports this
# module: the registry names no class of its own, so the import runs one way); `@register_method` fills it.
METHODS: dict[str, Any] = {}
MethodClass = TypeVar("MethodClass", bound=type)


def register_method(cls: MethodClass) -> MethodClass:
    """Class decorator: make a method class available to run variants as `method: <cls.name>`."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"{cls.__name__}: method name {cls.name!r} is empty or already registered")
    METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    """The registered method names, sorted (for error messages and the docs)."""
    return sorted(METHODS)


def resolve_variant(methods: Section, variant: str) -> Section:
    """`methods.<variant>` with its chain of `base:` variants applied: every setting, no `base` key.

    Keys of a variant replace its base's; a mapping value (`optimizer:`) is merged key by key.
    The result is named `methods.<variant>`, so errors in its settings name the variant the run uses.
    """
    if not methods.has(variant):
        known = ", ".join(sorted(methods.keys()))
        raise ConfigError("run.methods", f"unknown method {variant!r}; {methods.name} defines {known}")
    chain = [variant]
    own = methods.section(variant)
    while own.has(BASE_KEY):
        base = own.str(BASE_KEY)
        if base in chain:
            raise ConfigError(own.key(BASE_KEY), f"bases form a cycle: {' -> '.join([*chain, base])}")
        if not methods.has(base):
            raise ConfigError(own.key(BASE_KEY), f"no variant {base!r} in {methods.name}")
        if len(chain) > MAX_BASE_DEPTH:
            raise ConfigError(own.key(BASE_KEY), f"more than {MAX_BASE_DEPTH} bases deep")
        chain.append(base)
        own = methods.section(base)
    settings: dict[str, Any] = {}
    for name in reversed(chain):  # the root first, each variant over its base
        settings = _merged(settings, methods.section(name).as_dict())
    settings.pop(BASE_KEY, None)
    return Section(settings, methods.key(variant))


def _merged(base: dict[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in own.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(dict(out[key]), value)
        else:
            out[key] = value
    return out


def method_from_variant(variant: Section) -> Any:
    """The method object of a resolved variant (its `method:` picks the class, the rest are its fields)."""
    if variant.has("loss") and not variant.has(METHOD_KEY):  # params of owdfa before the rename
        raise ConfigError(variant.key("loss"), f"renamed: a variant names its method with `{METHOD_KEY}:`")
    method = variant.str(METHOD_KEY, choices=list_methods())
    return METHODS[method].from_section(variant)


def build_method(variant: str, methods: Section) -> Any:
    """Instantiate the run variant `variant` of the variants `methods` (bases resolved)."""
    return method_from_variant(resolve_variant(methods, variant))


def write_variants(methods: Section, out: Path) -> list[str]:
    """Every variant resolved and checked (its method built), as `out/<variant>.json`; the names written.

    All are checked, not only those of run.methods, so a mistake in any variant is found before a run
    starts. A run's stage depends on its own variant's file alone: a change that leaves a variant's
    resolved settings as they were re-runs none of its runs.
    """
    resolved: dict[str, dict[str, Any]] = {}
    for name in sorted(methods.keys()):
        if not VARIANT_NAME.fullmatch(name):
            raise ConfigError(methods.key(name), "a variant's name is letters, digits, '_', '-' and '.'")
        variant = resolve_variant(methods, name)
        method_from_variant(variant)
        resolved[name] = variant.as_dict()
    with atomic_directory(out) as tmp:
        for name, settings in resolved.items():
            atomic_write_json(tmp / f"{name}.json", settings)
    return list(resolved)


def read_variant(path: Path) -> Section:
    """A variant's resolved settings as the `variants` stage wrote them (`<variant>.json`)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no such variant file (run the `variants` stage)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a variant file ({exc})") from None
    return Section(data, f"methods.{Path(path).stem}")
