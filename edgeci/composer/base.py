"""The Composer protocol every Image Builder backend implements (local, weldr, cloud).

A backend pushes a blueprint, starts a compose, reports its status, and downloads the artifact
shaped exactly like Image Builder's: edge-commit → <id>-commit.tar (repo/ + compose.json),
edge-container → <id>-container.tar (an OCI archive serving the repo on port 8080).
"""

from __future__ import annotations

import enum
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from edgeci.errors import ComposeFailed, ComposerError


class ComposeState(enum.StrEnum):
    WAITING = "WAITING"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"

    @property
    def done(self) -> bool:
        return self in (ComposeState.FINISHED, ComposeState.FAILED)


@dataclass
class ComposeRequest:
    blueprint_name: str
    blueprint_toml: str  # the blueprint as written in git
    image_type: str = "edge-container"
    ref: str = ""
    parent: str = ""  # commit checksum; "" = resolve from url's ref tip (as osbuild-composer does)
    url: str = ""  # repo URL to take the parent from (production)
    arch: str = "x86_64"
    distro: str = ""
    size: int = 0
    # edgeci-specific, carried into commit metadata by backends that can (the local one)
    git_sha: str = ""
    checks_yaml: str = ""  # blueprints/<name>.checks.yaml rendered into the test OS (local backend)
    blueprint_version: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("blueprint_toml")
        d.pop("checks_yaml")
        return d


@dataclass
class ComposeStatus:
    id: str
    state: ComposeState
    blueprint_name: str = ""
    blueprint_version: str = ""
    image_type: str = ""
    queued: float | None = None
    started: float | None = None
    finished: float | None = None
    detail: str = ""  # backend-specific state detail (cloud image_status: building/uploading)


@dataclass
class ComposeResult:
    """What a finished compose produced, after download."""

    id: str
    image_type: str
    artifact: Path  # the downloaded <id>-container.tar / <id>-commit.tar
    sha256: str
    commit: str  # the ostree commit checksum inside
    ref: str
    parent: str = ""
    # The release version: the blueprint's version as composed (never the commit's "version" metadata,
    # which osbuild stamps with the OS release, e.g. "9.4").
    version: str = ""
    packages: list[dict[str, str]] = field(default_factory=list)  # [{name, version, release, arch}]
    warnings: list[str] = field(default_factory=list)


ProgressFn = Callable[[str, float], None]


@runtime_checkable
class Composer(Protocol):
    """One Image Builder backend."""

    name: str

    def push_blueprint(self, name: str, toml_text: str) -> None:
        """Store the blueprint on the server (refuses a version the server would silently bump)."""

    def start(self, request: ComposeRequest) -> str:
        """Start a compose; returns its id. Never starts a duplicate on a retried request."""

    def status(self, compose_id: str) -> ComposeStatus:
        """The compose's current state."""

    def wait(self, compose_id: str, *, deadline: float, progress: ProgressFn | None = None) -> ComposeStatus:
        """Poll until FINISHED or FAILED (or the deadline: WaitTimeout), one progress call per change."""

    def logs(self, compose_id: str) -> str:
        """The compose's build log text (for a FAILED compose's JUnit failure)."""

    def download(self, compose_id: str, dest_dir: Path) -> Path:
        """Download the artifact into dest_dir (temp name, renamed when complete); returns its path."""

    def info(self, compose_id: str) -> dict[str, Any]:
        """Compose details: at least "packages" (list of {name, version, release, arch}) and "commit"."""


# -- one wait for every backend -------------------------------------------------------------------

class ComposerUnreachable(ComposerError):
    """The server cannot be reached (not listening, restarting, socket missing)."""


class _Unreachable(Exception):
    """The server could not be reached this poll: a short reason for the progress line, retried."""


def wait_compose(
    status: Callable[[str], ComposeStatus],
    compose_id: str,
    *,
    deadline: float,
    interval: float,
    max_interval: float,
    backoff: float = 1.5,
    progress: ProgressFn | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    state_text: Callable[[ComposeStatus], str] = lambda st: st.state.value,
    unreachable: Callable[[ComposerError], str] | None = None,
    final_progress: bool = False,
) -> ComposeStatus:
    """Poll `status(compose_id)` until FINISHED or FAILED (Composer.wait for every backend).

    One progress call per change of `state_text(status)`; the interval grows by `backoff` up to
    `max_interval`; past the deadline WaitTimeout (exit 2) names the last state. When `unreachable`
    is given, a ComposerUnreachable poll is "not yet" (a restarting server), shown as
    "unreachable (<unreachable(error)>)". `final_progress` reports the end state too.
    """
    from edgeci.wait import Waiting

    def check() -> tuple[str, ComposeStatus | None]:
        try:
            st = status(compose_id)
        except ComposerUnreachable as e:
            if unreachable is None:
                raise
            raise _Unreachable(unreachable(e)) from None
        return state_text(st), (st if st.state.done else None)

    waiting: Waiting[ComposeStatus] = Waiting(
        deadline=deadline, interval=interval, backoff=backoff, max_interval=max_interval, progress=progress,
        retry_on=(_Unreachable,), sleep=sleep, clock=clock)
    start = clock()
    result = waiting.wait(check, what=f"compose {compose_id}")
    if final_progress and progress:
        progress(result.state.value, clock() - start)
    return result


# -- a FAILED compose: where its log is and what went wrong first --------------------------------------

# Lines that say what failed, most specific first; osbuild/dnf/Go (composer) spellings.
_ERROR_PATTERNS = [
    re.compile(r"^\s*(?:error|ERROR|Error)\b[:\s].*\S"),
    re.compile(r"^\s*(?:FATAL|Fatal|fatal)\b[:\s].*\S"),
    re.compile(r"\b(?:Traceback \(most recent call last\)|Exception|failed|FAILED|Failed)\b"),
]


def first_error_line(log: str, *, limit: int = 300) -> str:
    """The first line of a compose log that says what failed ("" when none does).

    Prefers an "error: …" line (dnf, osbuild stages, composer job errors) over a line that merely
    mentions a failure ("stage org.osbuild.rpm failed"), so the message names the cause.
    """
    lines = [line.rstrip() for line in log.splitlines() if line.strip()]
    for pattern in _ERROR_PATTERNS:
        for line in lines:
            if pattern.search(line):
                line = " ".join(line.split())
                return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""


def save_compose_log(compose_id: str, text: str, dest_dir: Path) -> Path:
    """Write a compose's log to dest_dir/<id>-compose.log (atomically); returns its path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / f"{compose_id}-compose.log"
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".compose-log-", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") or not text else text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def compose_failed(status: ComposeStatus, log: str, log_path: Path | str | None = None,
                   report_path: Path | str | None = None) -> ComposeFailed:
    """The error for a compose that ended FAILED: its first error line, and where the full log is.

    "compose 4b9b… FAILED: error: package kernel-rt not found" — where: the saved log (or the report),
    fix: read that log. Exit 1 (the candidate failed).
    """
    first = first_error_line(log) or status.detail or "the compose log names no error"
    message = f"compose {status.id} {status.state.value}: {first}"
    if log_path:
        fix = f"read the full compose log {log_path}" + (f" (also in the report {report_path})" if report_path else "")
    elif report_path:
        fix = f"read the compose log in the report {report_path}"
    else:
        fix = "read the compose log (composer-cli compose log ID, or GET /composes/ID/logs)"
    return ComposeFailed(message, where=str(log_path or report_path or f"compose {status.id}"), fix=fix)
