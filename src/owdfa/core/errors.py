"""User-facing errors.

A user mistake (bad params, unreadable file, unknown protocol) must end a stage with one clear
line naming the key or file, never a traceback. Library code raises these; the stage entry
points (`owdfa.core.stage.run_stage`) turn them into that line and a non-zero exit.
"""

from __future__ import annotations


class OwdfaError(Exception):
    """An error caused by input the user controls; its message is shown as is."""


def printable(text: str) -> str:
    """`text` as one printable line: where it holds a control character (a key from a hostile file can),
    every non-ASCII character escaped as Python writes it, so an error stays one line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


class ConfigError(OwdfaError):
    """A params.yaml value is missing, of the wrong type or impossible."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"params.yaml: {self.located}")

    @property
    def located(self) -> str:
        """`<key>: <problem>`, printable: a reader of another file prefixes it with that file's name."""
        return f"{printable(self.key)}: {printable(self.problem)}"


class DataError(OwdfaError):
    """An input file or folder is missing, unreadable or inconsistent."""


class OutputError(OwdfaError):
    """An output could not be written: a full disk, a file-size limit, a read-only folder."""
