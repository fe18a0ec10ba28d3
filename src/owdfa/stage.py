"""Running a stage entry point: user mistakes become one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from owdfa.errors import OwdfaError


def run_stage(main: Callable[[], object]) -> None:
    try:
        main()
    except OwdfaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
