"""One exclusive lock file for everything edgeci must do one at a time (a production repo, a stage directory).

An flock on a file: the kernel drops it when the holder dies, even by SIGKILL, so a killed run never leaves a
stale lock. The holder writes "pid N since TIME" into the file for whoever waits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def held(path: Path, timeout: float, *, on_timeout: Callable[[str], Exception], poll: float = 0.1,
         on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock at `path` (created if need be) until the block ends. `on_wait(holder)` is called once when
    another process holds it; after `timeout` seconds the error `on_timeout(holder)` is raised."""
    from edgeci.record import now_iso

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + max(timeout, 0.0)
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = ""
                with contextlib.suppress(OSError):
                    holder = path.read_text().strip()
                holder = holder or "holder unknown"
                if not told and on_wait is not None:
                    on_wait(holder)
                    told = True
                if time.monotonic() >= deadline:
                    raise on_timeout(holder) from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {now_iso()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
