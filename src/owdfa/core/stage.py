"""Running an entry point (a stage script, the `owdfa` command): user mistakes become one line on stderr.

One rule for both: an `OwdfaError` (and whatever else the caller names) prints `error: <message>` and
gives exit status 2, as does a write the disk refuses (full, a file-size limit, read-only) where no
code nearer the write named its output; an interrupt prints `error: interrupted` and gives 130;
never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from owdfa.core.errors import OwdfaError
from owdfa.core.io import write_failure


def exit_status(main: Callable[[], int | None], errors: tuple[type[BaseException], ...] = (OwdfaError,)) -> int:
    """Run `main` and return its exit status (None: 0), turning `errors` into one line and status 2."""
    try:
        return int(main() or 0)
    except (*errors, OSError) as exc:
        message = write_failure(exc) if isinstance(exc, OSError) else None
        if message is None and not isinstance(exc, errors):
            raise
        print(f"error: {message or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def run_stage(main: Callable[[], object]) -> None:
    """A stage script's `__main__`: exit with `main`'s status (0 on success)."""

    def call() -> int:
        main()  # a stage's own return value is not a status
        return 0

    status = exit_status(call)
    if status:
        raise SystemExit(status)
