"""`python -m edgeci.stageserver DIR --port P`: a small threaded HTTP server for a stage ostree repo.

Serves regular files below DIR only (no directory listings, nothing a link resolves to outside
DIR), GET and HEAD. Writes the port it listens on to --port-file once bound (port 0 = any free
port), so edgeci.stage.StageServer knows the URL. SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import signal
import sys
import tempfile
from typing import Any


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
    ap = argparse.ArgumentParser(prog="python -m edgeci.stageserver", description=__doc__)
    ap.add_argument("directory")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", default=None, help="write the bound port here once listening")
    args = ap.parse_args(argv)
    root = os.path.realpath(args.directory)
    if not os.path.isdir(root):
        print(f"stageserver: {root}: not a directory", file=sys.stderr)
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
        print(f"stageserver: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
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
    print(f"stageserver: serving {root} on http://{args.host}:{port}/", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
