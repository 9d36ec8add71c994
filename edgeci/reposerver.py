"""One HTTP server for ostree repos (stage and production): `python -m edgeci.reposerver DIR --port P`.

Serves regular files below DIR only (no directory listings, nothing a link resolves to outside
DIR), GET and HEAD. Writes the port it listens on to --port-file once bound (port 0 = any free
port), so RepoServer knows the URL. SIGTERM stops it cleanly. RepoServer runs it in the background,
with a pid file in the served directory's state directory.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeci.errors import StageError

if TYPE_CHECKING:
    pass


PID_FILE = "stageserver.json"


LOG_FILE = "stageserver.log"


class RepoServer:
    """`python -m edgeci.reposerver DIR` in the background; a context manager that always stops it.

    `detach()` leaves it running (for `edgeci stage serve`); `stop_server()` stops it later by PID.
    """

    def __init__(self, directory: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 0,
                 state_dir: str | os.PathLike[str] | None = None, ready_timeout: float = 15.0) -> None:
        self.directory = Path(directory).resolve()
        self.host = host
        self.port = port
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.ready_timeout = ready_timeout
        self.process: Any = None
        self.url = ""
        self._tmp: str | None = None

    @property
    def pid(self) -> int:
        return int(self.process.pid) if self.process is not None else 0

    @property
    def pid_file(self) -> Path | None:
        return self.state_dir / PID_FILE if self.state_dir else None

    def start(self) -> RepoServer:
        from edgeci.tools.run import start

        if not self.directory.is_dir():
            raise StageError("nothing to serve: directory missing", where=str(self.directory))
        self._tmp = tempfile.mkdtemp(prefix="edgeci-stage-")
        port_file = Path(self._tmp) / "port"
        log = (self.state_dir / LOG_FILE) if self.state_dir else Path(self._tmp) / LOG_FILE
        log.parent.mkdir(parents=True, exist_ok=True)
        self.process = start([sys.executable, "-m", "edgeci.reposerver", str(self.directory),
                              "--host", self.host, "--port", str(self.port), "--port-file", str(port_file)],
                             log_path=log)
        end = time.monotonic() + self.ready_timeout
        while not port_file.exists():
            if not self.process.alive():
                out = self.process.output().strip().splitlines()
                self._cleanup_tmp()
                raise StageError(f"the stage server exited: {out[-1] if out else 'no output'}",
                                 where=f"{self.host}:{self.port}", fix="pick another stage.port, or see " + str(log))
            if time.monotonic() > end:
                self.stop()
                raise StageError(f"the stage server did not listen within {self.ready_timeout:g} s", where=str(log))
            time.sleep(0.02)
        port = int(port_file.read_text().strip())
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{port}"
        self.port = port
        if self.pid_file is not None:
            from edgeci.record import atomic_write_text

            atomic_write_text(self.pid_file, json.dumps(
                {"pid": self.pid, "url": self.url, "dir": str(self.directory),
                 "state_dir": str(self.pid_file.parent.resolve())}, indent=2) + "\n")
        return self

    def _cleanup_tmp(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self.pid_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()
        self._cleanup_tmp()

    def detach(self) -> None:
        """Leave the server running after this process exits (`edgeci stage serve`)."""
        self._cleanup_tmp()
        self.process = None

    def __enter__(self) -> RepoServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else None


def _is_stage_server(pid: int, directory: str) -> bool:
    state = _proc_state(pid)
    if state is None or state == "Z":
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"edgeci.reposerver" in args and directory.encode() in args


def server_info(state_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The pid file's content when that server still runs, else None."""
    pf = Path(state_dir) / PID_FILE
    try:
        info = json.loads(pf.read_text())
        pid, directory = int(info["pid"]), str(info["dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # A pid file copied along with a project (cp -a, CI artifacts on a shared runner) names the server of
    # another stage directory that still exists: not ours to report or stop.
    owner = info.get("state_dir")
    if owner and Path(owner).is_dir() and Path(owner).resolve() != Path(state_dir).resolve():
        return None
    return info if _is_stage_server(pid, directory) else None


def stop_server(state_dir: str | os.PathLike[str], *, grace: float = 5.0) -> int | None:
    """Stop the server recorded in state_dir's pid file (only if that PID still is our server).

    Returns the PID stopped, or None when none was running. The pid file is removed either way.
    """
    pf = Path(state_dir) / PID_FILE
    info = server_info(state_dir)
    with contextlib.suppress(FileNotFoundError):
        pf.unlink()
    if info is None:
        return None
    pid = int(info["pid"])
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return pid
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if _proc_state(pid) in (None, "Z"):
                return pid
            time.sleep(0.05)
    raise StageError(f"the stage server (pid {pid}) does not stop", where=str(pf), fix=f"kill {pid}")


def serve_lock_path(state_dir: str | os.PathLike[str]) -> Path:
    """The lock beside a stage directory (not in it: the directory is replaced by each extraction)."""
    d = Path(state_dir).resolve()
    return d.parent / f".{d.name}.serve-lock"


@contextlib.contextmanager
def serve_lock(state_dir: str | os.PathLike[str], *, timeout: float = 900.0, poll: float = 0.1,
               on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """One `stage serve` of a stage directory at a time (an flock the kernel drops when the process dies): the
    next one waits, then replaces the server the first one started, so a directory never has two servers.
    `on_wait(holder)` is called once when another process holds the lock."""
    from edgeci.locks import held

    path = serve_lock_path(state_dir)

    def too_long(holder: str) -> Exception:
        return StageError(f"another 'edgeci stage serve' ({holder}) has been preparing {Path(state_dir)} for longer "
                          f"than {timeout:g} s", where=str(path),
                          fix="wait for it to finish, then check 'edgeci stage serve' again (it replaces the server)")

    with held(path, timeout, on_timeout=too_long, poll=poll, on_wait=on_wait):
        yield


@contextlib.contextmanager
def serving(directory: str | os.PathLike[str], **kw: Any) -> Iterator[RepoServer]:
    """`with serving(repo) as server:` — start, yield, always stop."""
    server = RepoServer(directory, **kw).start()
    try:
        yield server
    finally:
        server.stop()


# -- the server process itself ------------------------------------------------------------------------

class RepoHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler restricted to files that really live below the served directory."""

    server_version = "edgeci-stage/1"
    protocol_version = "HTTP/1.1"

    def send_head(self) -> Any:
        # http.server answers If-Modified-Since with 304 at one-second resolution: a summary rewritten in the
        # same second as the client's cached copy would look unchanged, and the client would resolve refs
        # from the stale one. ostree repos are small metadata plus immutable objects: always send the file.
        del self.headers["If-Modified-Since"]
        root = os.path.realpath(self.directory)
        real = os.path.realpath(self.translate_path(self.path))
        if real != root and not real.startswith(root + os.sep):
            self.send_error(404, "File not found")  # a link out of the repo: as if it were not there
            return None
        return super().send_head()

    def list_directory(self, path: str | os.PathLike[str]) -> Any:
        self.send_error(404, "No directory listings")
        return None

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


class Server(http.server.ThreadingHTTPServer):
    # ostree opens several connections at once; with the default backlog of 5 the others wait for a
    # SYN retransmit (1 s each), which shows up as stalls in every pull from the stage
    request_queue_size = 128


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeci.reposerver", description=__doc__)
    ap.add_argument("directory")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", default=None, help="write the bound port here once listening")
    args = ap.parse_args(argv)
    root = os.path.realpath(args.directory)
    if not os.path.isdir(root):
        print(f"reposerver: {root}: not a directory", file=sys.stderr)
        return 2
    handler = functools.partial(RepoHandler, directory=root)
    server_cls: type[http.server.ThreadingHTTPServer] = Server
    if ":" in args.host:
        import socket

        class V6(Server):
            address_family = socket.AF_INET6

        server_cls = V6
    try:
        server = server_cls((args.host, args.port), handler)
    except OSError as e:
        print(f"reposerver: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
        return 2
    server.daemon_threads = True
    port = server.server_address[1]

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    if args.port_file:
        d = os.path.dirname(os.path.abspath(args.port_file))
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".port-")
        with os.fdopen(fd, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(f"reposerver: serving {root} on http://{args.host}:{port}/", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
