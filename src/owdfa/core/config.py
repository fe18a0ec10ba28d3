"""Reading params.yaml sections with validation.

Each stage reads only its own section. `Section` wraps a mapping and remembers its dotted path,
so every lookup that fails names the exact key (`train.epochs: expected an integer >= 1`).

A section becomes a frozen dataclass through one loader, `load_section`: each field is read by its
annotated type, with its bounds, choices, key path or custom reader given where the field is
declared (`seed: int = param(2025, min=0)`), so a config class is its own schema. A field typed
`X | None` reads null as None and any other value as `X`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from owdfa.core.errors import ConfigError

_MISSING = object()


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Load the whole params file; a missing or malformed file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(str(path), f"not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "top level must be a mapping of sections")
    return data


class Section:
    """A validated view of one params mapping; `name` is its dotted path for error messages."""

    def __init__(self, data: Any, name: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(name, f"expected a mapping, got {type(data).__name__}")
        self._data = dict(data)
        self.name = name

    @classmethod
    def from_file(cls, section: str, path: str | Path = "params.yaml") -> Section:
        params = load_params(path)
        if section not in params:
            raise ConfigError(section, "missing section")
        return cls(params[section], section)

    def key(self, key: str) -> str:
        return f"{self.name}.{key}"

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        if key not in self._data:
            if default is _MISSING:
                raise ConfigError(self.key(key), "missing key")
            return default
        return self._data[key]

    def as_dict(self) -> dict[str, Any]:
        """A copy of the raw mapping (for hashing the params a model was trained with)."""
        return dict(self._data)

    def has(self, key: str) -> bool:
        return key in self._data

    def keys(self) -> Iterable[str]:
        return self._data.keys()

    def section(self, key: str) -> Section:
        return Section(self.raw(key), self.key(key))

    def int(self, key: str, *, min: int | None = None, max: int | None = None, default: Any = _MISSING) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(key), f"expected an integer, got {value!r}")
        _check_range(self.key(key), value, min, max)
        return value

    def float(self, key: str, *, min: float | None = None, max: float | None = None, default: Any = _MISSING) -> float:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(self.key(key), f"expected a number, got {value!r}")
        _check_finite(self.key(key), value)
        _check_range(self.key(key), value, min, max)
        return float(value)

    def bool(self, key: str, default: Any = _MISSING) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise ConfigError(self.key(key), f"expected true or false, got {value!r}")
        return value

    def str(self, key: str, *, choices: Iterable[str] | None = None, default: Any = _MISSING) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str):
            raise ConfigError(self.key(key), f"expected a string, got {value!r}")
        if choices is not None:
            allowed = list(choices)
            if value not in allowed:
                raise ConfigError(self.key(key), f"unknown value {value!r}; choose one of {', '.join(allowed)}")
        return value

    def optional_str(self, key: str, default: Any = None) -> str | None:
        value = self.raw(key, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(self.key(key), f"expected a string or null, got {value!r}")
        return value

    def str_list(self, key: str, default: Any = _MISSING) -> list[str]:
        value = self.raw(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(self.key(key), f"expected a list of strings, got {value!r}")
        return list(value)

    def int_pair(self, key: str, *, min: int | None = None, max: int | None = None) -> tuple[int, int]:
        value = self.raw(key)
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise ConfigError(self.key(key), f"expected a list of two integers [low, high], got {value!r}")
        low, high = value
        for v in value:
            _check_range(self.key(key), v, min, max)
        if low > high:
            raise ConfigError(self.key(key), f"low {low} is larger than high {high}")
        return low, high

    def float_pair(self, key: str, *, min: float | None = None, max: float | None = None) -> tuple[float, float]:
        value = self.raw(key)
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        ):
            raise ConfigError(self.key(key), f"expected a list of two numbers [low, high], got {value!r}")
        low, high = (float(v) for v in value)
        for v in (low, high):
            _check_finite(self.key(key), v)
            _check_range(self.key(key), v, min, max)
        if low > high:
            raise ConfigError(self.key(key), f"low {low} is larger than high {high}")
        return low, high

    def check_unknown(self, allowed: Iterable[str]) -> None:
        """Reject keys the code does not know: a typo must not be silently ignored."""
        extra = sorted(set(self._data) - set(allowed))
        if extra:
            raise ConfigError(self.key(extra[0]), "unknown key (typo?)")


def _check_finite(key: str, value: float) -> None:
    """YAML's .nan and .inf are numbers, but no setting means them (NaN even passes every bound)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value}")


def _check_range(key: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise ConfigError(key, f"must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(key, f"must be <= {high}, got {value}")


# --------------------------------------------------------------------------------------------
# params section -> frozen dataclass

ConfigT = TypeVar("ConfigT")
Reader = Callable[[Section, str], Any]  # (the section holding the key, the key) -> the field's value
PARAM = "owdfa.param"  # the dataclass field metadata key holding a field's `Param`


@dataclass(frozen=True)
class Param:
    """How one dataclass field is read from its params section.

    `key` is the dotted path below the section when it differs from the field name (a nested
    mapping: `budgets.real`); `read` replaces the by-type reading for a value no type describes
    (it gets the section holding the key and the key's last part); `optional` lets params leave
    the key out, the field's default then applies; `nested` gives the specs of a nested dataclass
    whose class declares none.
    """

    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    key: str | None = None
    read: Reader | None = None
    optional: bool = False
    nested: Mapping[str, Param] | None = None


def param(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    min: float | None = None,
    max: float | None = None,
    choices: Iterable[str] | None = None,
    key: str | None = None,
    read: Reader | None = None,
    optional: bool = False,
    nested: Mapping[str, Param] | None = None,
) -> Any:
    """A dataclass field that `load_section` reads with these bounds (`default` is the code's default;
    params must still give the key unless `optional`)."""
    if optional and default is dataclasses.MISSING and default_factory is dataclasses.MISSING:
        raise TypeError("an optional param needs a default")
    spec = Param(min, max, None if choices is None else tuple(choices), key, read, optional, nested)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={PARAM: spec})


def load_section(
    cls: type[ConfigT],
    section: Section,
    *,
    extra_keys: Iterable[str] = (),
    specs: Mapping[str, Param] | None = None,
) -> ConfigT:
    """The dataclass `cls` read from `section`: unknown keys are typos, every field is checked.

    `extra_keys` are allowed beside the fields (read by someone else); `specs` gives the `Param` of
    fields declared without one (a class defined away from params); a field with neither is read
    by its type alone. The instance's `validate(section)`, where defined, checks cross-field rules.
    """
    check_keys(cls, section, extra_keys=extra_keys, specs=specs)
    config = cls(**read_params(cls, section, specs=specs))
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate(section)
    return config


def param_keys(cls: type, specs: Mapping[str, Param] | None = None) -> tuple[str, ...]:
    """The keys `cls` reads at the top of its section (a nested key path counts by its first part)."""
    return tuple(dict.fromkeys(path.split(".")[0] for path in _key_paths(cls, specs).values()))


def check_keys(
    cls: type, section: Section, *, extra_keys: Iterable[str] = (), specs: Mapping[str, Param] | None = None
) -> None:
    """Reject keys `cls` does not read, at the top and in every mapping a key path goes through."""
    section.check_unknown([*param_keys(cls, specs), *extra_keys])
    groups: dict[str, list[str]] = {}
    for path in _key_paths(cls, specs).values():
        parts = path.split(".")
        for depth in range(1, len(parts)):
            groups.setdefault(".".join(parts[:depth]), []).append(parts[depth])
    for group, allowed in groups.items():
        holder = _holder(section, group + ".", required=False)
        if holder is not None:
            holder.check_unknown(allowed)


def read_params(
    cls: type, section: Section, names: Iterable[str] | None = None, specs: Mapping[str, Param] | None = None
) -> dict[str, Any]:
    """The values of `cls`'s fields `names` (default: all) read from `section`, by field name."""
    wanted = None if names is None else set(names)
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        if field.init and (wanted is None or field.name in wanted):
            values[field.name] = _read_field(section, field, hints[field.name], _spec(field, specs))
    return values


def _spec(field: dataclasses.Field, specs: Mapping[str, Param] | None) -> Param:
    return field.metadata.get(PARAM) or (specs or {}).get(field.name) or Param()


def _key_paths(cls: type, specs: Mapping[str, Param] | None) -> dict[str, str]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    return {f.name: _spec(f, specs).key or f.name for f in dataclasses.fields(cls) if f.init}


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _holder(section: Section, path: str, required: bool) -> Section | None:
    """The section holding the last part of the dotted `path`; a missing mapping on the way is
    an error when `required`, else None (an optional key below it then takes its default)."""
    holder = section
    for part in path.split(".")[:-1]:
        if not holder.has(part) and not required:
            return None
        holder = holder.section(part)
    return holder


def _read_field(section: Section, field: dataclasses.Field, hint: Any, spec: Param) -> Any:
    path = spec.key or field.name
    holder = _holder(section, path, required=not spec.optional)
    key = path.split(".")[-1]
    if holder is None or (spec.optional and not holder.has(key)):
        return _default(field)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    nullable = origin in (typing.Union, types.UnionType) and type(None) in args
    if nullable and holder.raw(key) is None:  # a field typed `X | None` reads null as None
        return None
    if spec.read is not None:
        return spec.read(holder, key)
    bounds = {"min": spec.min, "max": spec.max}
    if nullable and set(args) != {str, type(None)} and len(args) == 2:  # `int | None` reads its value as `int`
        hint = next(arg for arg in args if arg is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return holder.bool(key)
    if hint is int:
        return holder.int(key, **bounds)
    if hint is float:
        return holder.float(key, **bounds)
    if hint is str:
        return holder.str(key, choices=spec.choices)
    if origin in (typing.Union, types.UnionType) and set(args) == {str, type(None)}:
        holder.optional_str(key, default=_MISSING)  # "expected a string or null"
        return holder.str(key, choices=spec.choices)
    if origin is tuple and args == (int, int):
        return holder.int_pair(key, **bounds)
    if origin is tuple and args == (float, float):
        return holder.float_pair(key, **bounds)
    if (origin is tuple and args == (str, ...)) or (origin is list and args == (str,)):
        return (tuple if origin is tuple else list)(holder.str_list(key))
    if dataclasses.is_dataclass(hint):
        return load_section(hint, holder.section(key), specs=spec.nested)
    raise TypeError(f"{field.name}: no params reader for {hint}; declare it with param(read=...)")
