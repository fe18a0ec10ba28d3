"""User-facing errors.

A user mistake (bad params, unreadable file, unknown protocol) must end a stage with one clear
line naming the key or file, never a traceback. Library code raises these; the stage entry
points (`owdfa.stage.run_stage`) turn them into that line and a non-zero exit.
"""

from __future__ import annotations


class OwdfaError(Exception):
    """An error caused by input the user controls; its message is shown as is."""


class ConfigError(OwdfaError):
    """A params.yaml value is missing, of the wrong type or impossible."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem  # without the file: readers of other files name theirs (`<dir>/card.json: <key>: ...`)
        super().__init__(f"params.yaml: {key}: {problem}")


class DataError(OwdfaError):
    """An input file or folder is missing, unreadable or inconsistent."""
