"""What edgeci prints: progress and result lines on stdout, warnings and errors on stderr.

Used by the CLI and the stage glue only (domain code returns values and raises). Every line goes
through the secret mask.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from edgeci.tools.run import mask

_T0 = time.monotonic()


def say(message: str = "") -> None:
    print(mask(message), flush=True)


def warn(message: str) -> None:
    print(f"edgeci: warning: {mask(message)}", file=sys.stderr, flush=True)


def error(message: str) -> None:
    print(f"edgeci: error: {mask(message)}", file=sys.stderr, flush=True)


def progress(prefix: str) -> Callable[[str, float], None]:
    """A progress callback for edgeci.wait.Waiting: one line per state change with elapsed time."""

    def show(state: str, elapsed: float) -> None:
        say(f"{prefix}: {state} ({elapsed:.0f}s)")

    return show


def elapsed() -> float:
    return time.monotonic() - _T0
