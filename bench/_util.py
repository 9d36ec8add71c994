"""Small helpers shared by the benchmarks: timing, a byte-counting HTTP server, result lines."""

from __future__ import annotations

import functools
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from edgeci.reposerver import RepoHandler, Server


def timed(fn: Callable[[], object], runs: int = 1) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def sh(argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


def result(name: str, value: float, target: float, unit: str, *, lower_is_better: bool = True) -> bool:
    ok = value <= target if lower_is_better else value >= target
    cmp = "<=" if lower_is_better else ">="
    print(f"RESULT {name}: {value:.3f}{unit} (target {cmp} {target:g}{unit}) {'PASS' if ok else 'MISS'}", flush=True)
    return ok


class _CountingHandler(RepoHandler):
    """edgeci's repo handler (what stage and production serve), quiet, counting the bytes of files sent.
    The tests' tests/fixtures/httpserver.py RepoHTTPServer does the same; bench runs without tests/ on its path."""

    counter: list[int]

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        while chunk := source.read(1 << 16):
            outputfile.write(chunk)
            self.counter[0] += len(chunk)


@contextmanager
def serve(directory: Path) -> Iterator[tuple[str, list[int]]]:
    """Serve `directory` on 127.0.0.1 as edgeci.reposerver does; yields (base URL, [bytes sent so far])."""
    counter = [0]
    handler = type("H", (_CountingHandler,), {"counter": counter})
    httpd = Server(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))  # backlog 128 for ostree
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", counter
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
