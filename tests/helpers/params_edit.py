"""Params mappings with one key changed, for tests that check how each key is read."""

from __future__ import annotations

import copy
from typing import Any

DELETE = object()  # as a value: remove the key instead


def changed(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of base with the dotted `path` set to value (or removed when value is DELETE)."""
    data = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data
