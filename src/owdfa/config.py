"""Reading params.yaml sections with validation.

Each stage reads only its own section. `Section` wraps a mapping and remembers its dotted path,
so every lookup that fails names the exact key (`train.epochs: expected an integer >= 1`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from owdfa.errors import ConfigError

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
            _check_range(self.key(key), v, min, max)
        if low > high:
            raise ConfigError(self.key(key), f"low {low} is larger than high {high}")
        return low, high

    def check_unknown(self, allowed: Iterable[str]) -> None:
        """Reject keys the code does not know: a typo must not be silently ignored."""
        extra = sorted(set(self._data) - set(allowed))
        if extra:
            raise ConfigError(self.key(extra[0]), "unknown key (typo?)")


def _check_range(key: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise ConfigError(key, f"must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(key, f"must be <= {high}, got {value}")
