"""One polling helper for every "poll until": deadline, interval, backoff, progress callback."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from edgeci.errors import EdgeCIError

T = TypeVar("T")


class WaitTimeout(EdgeCIError):
    """The deadline passed before the condition held."""

    def __init__(self, message: str, *, last_state: str = "", **kw: str) -> None:
        self.last_state = last_state
        super().__init__(message, **kw)


@dataclass
class Waiting(Generic[T]):
    """Poll `check()` until it reports done, or the deadline passes.

    `check()` returns `(state, value)`; a value that is not None ends the wait and is returned.
    `state` is a short text ("RUNNING", "serves 3f2a…"): `progress(state, elapsed)` is called once per
    change of state, so callers print one line per state change rather than one per poll.
    The interval grows by `backoff` after each poll, up to `max_interval`. Exceptions listed in
    `retry_on` count as "not yet" until the deadline (a server restarting mid-poll).
    """

    deadline: float
    interval: float = 1.0
    backoff: float = 1.0
    max_interval: float = 30.0
    progress: Callable[[str, float], None] | None = None
    retry_on: tuple[type[BaseException], ...] = ()
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def wait(self, check: Callable[[], tuple[str, T | None]], *, what: str = "condition") -> T:
        start = self.clock()
        end = start + self.deadline
        interval = self.interval
        last_state: str | None = None
        while True:
            try:
                state, value = check()
            except self.retry_on as e:
                state, value = f"unreachable ({e})", None
            if value is not None:
                return value
            if state != last_state and self.progress:
                self.progress(state, self.clock() - start)
            last_state = state
            now = self.clock()
            if now >= end:
                raise WaitTimeout(
                    f"gave up waiting for {what} after {self.deadline:g} s (last state: {state})",
                    last_state=state,
                )
            self.sleep(min(interval, max(0.0, end - now)))
            interval = min(interval * self.backoff, self.max_interval)
