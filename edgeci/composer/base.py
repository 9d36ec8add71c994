"""The Composer protocol every Image Builder backend implements (local, weldr, cloud).

A backend pushes a blueprint, starts a compose, reports its status, and downloads the artifact
shaped exactly like Image Builder's: edge-commit → <id>-commit.tar (repo/ + compose.json),
edge-container → <id>-container.tar (an OCI archive serving the repo on port 8080).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


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
