"""Waiting: deadline, backoff, one progress line per state change, retry_on; driven by a fake clock."""

from __future__ import annotations

import pytest

from edgeci.wait import Waiting, WaitTimeout


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def waiting(t: FakeTime, **kw: object) -> Waiting[str]:
    return Waiting(sleep=t.sleep, clock=t.clock, **kw)  # type: ignore[arg-type]


def test_returns_the_first_value() -> None:
    t = FakeTime()
    answers = iter([("QUEUED", None), ("RUNNING", None), ("FINISHED", "done")])
    assert waiting(t, deadline=60, interval=2).wait(lambda: next(answers)) == "done"
    assert t.sleeps == [2, 2]


def test_deadline_raises_wait_timeout_with_last_state() -> None:
    t = FakeTime()
    w = waiting(t, deadline=10, interval=1, backoff=2, max_interval=4)
    with pytest.raises(WaitTimeout) as e:
        w.wait(lambda: ("RUNNING", None), what="compose 42")
    assert t.sleeps == [1, 2, 4, 3]  # backoff, capped, and never sleeping past the deadline
    assert t.now == 110.0
    assert e.value.last_state == "RUNNING" and e.value.exit_code == 2
    assert "compose 42 after 10 s (last state: RUNNING)" in str(e.value)


def test_backoff_is_capped_at_max_interval() -> None:
    t = FakeTime()
    n = iter(range(100))
    w = waiting(t, deadline=1000, interval=1, backoff=3, max_interval=10)
    w.wait(lambda: ("x", None) if next(n) < 6 else ("y", "ok"))
    assert t.sleeps == [1, 3, 9, 10, 10, 10]


def test_progress_once_per_state_change() -> None:
    t = FakeTime()
    seen: list[tuple[str, float]] = []
    states = iter(["QUEUED", "QUEUED", "RUNNING", "RUNNING", "RUNNING", "QUEUED", "FINISHED"])

    def check() -> tuple[str, str | None]:
        s = next(states)
        return s, ("ok" if s == "FINISHED" else None)

    waiting(t, deadline=100, interval=5, progress=lambda s, el: seen.append((s, el))).wait(check)
    assert seen == [("QUEUED", 0.0), ("RUNNING", 10.0), ("QUEUED", 25.0)]


def test_retry_on_counts_exceptions_as_not_yet() -> None:
    t = FakeTime()
    seen: list[str] = []
    calls = iter([ConnectionError("refused"), ConnectionError("refused"), "ready"])

    def check() -> tuple[str, str | None]:
        v = next(calls)
        if isinstance(v, Exception):
            raise v
        return "up", v

    w = waiting(t, deadline=30, interval=1, retry_on=(ConnectionError,), progress=lambda s, _: seen.append(s))
    assert w.wait(check) == "ready"
    assert seen == ["unreachable (refused)"]


def test_other_exceptions_propagate() -> None:
    t = FakeTime()

    def check() -> tuple[str, str | None]:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        waiting(t, deadline=30, retry_on=(ConnectionError,)).wait(check)


def test_retry_on_until_deadline_reports_the_unreachable_state() -> None:
    t = FakeTime()

    def check() -> tuple[str, str | None]:
        raise ConnectionError("no route")

    with pytest.raises(WaitTimeout, match=r"last state: unreachable \(no route\)"):
        waiting(t, deadline=3, interval=1, retry_on=(ConnectionError,)).wait(check)


def test_zero_deadline_still_checks_once() -> None:
    t = FakeTime()
    assert waiting(t, deadline=0).wait(lambda: ("done", "v")) == "v"
    with pytest.raises(WaitTimeout):
        waiting(t, deadline=0).wait(lambda: ("no", None))
    assert t.sleeps == []
