"""Checks of a library function's arguments: a caller's mistake is a ValueError naming the argument.

Not for user input (params, files), which gets `owdfa.core.errors`' one-line errors; these guard the
functions that compute (bins of a calibration table, passes of MC dropout) against a wrong call.
"""

from __future__ import annotations

import numbers


def check_positive_int(value: int, name: str) -> int:
    """`value` as an int, if it is an integer >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)
