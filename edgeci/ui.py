"""What edgeci prints: progress and result lines on stdout, warnings and errors on stderr.

Used by the CLI and the stage glue only (domain code returns values and raises). Every line goes
through the secret mask.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from edgeci.tools.run import mask

_T0 = time.monotonic()
PAUSE_ENV = "EDGECI_TEST_PAUSE_AT"  # <step> or after-<step>: the promote kill tests stop there
RESUME_ENV = "EDGECI_TEST_RESUME_FILE"  # with the pause: carry on once this file exists


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


def step_printer(prefix: str) -> Any:
    """on_step callback: one line per finished step; honours the test pause hook."""
    from edgeci.ui import say

    pause = os.environ.get(PAUSE_ENV, "")

    def on_step(step: str, phase: str, detail: str) -> None:
        if phase == "end":
            say(f"{prefix} {step}: {detail}")
        spot = step if phase == "begin" else f"after-{step}"
        if pause and pause == spot:
            print(f"edgeci-test: paused at {spot}", flush=True)
            sys.stdout.flush()
            resume = os.environ.get(RESUME_ENV, "")
            deadline = time.monotonic() + 3600
            while time.monotonic() < deadline and not (resume and os.path.exists(resume)):
                time.sleep(0.05)

    return on_step
