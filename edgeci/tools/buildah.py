"""Typed wrappers over buildah (bud, pull, push, inspect, tag, rmi, from/run/rm), every call through
edgeci.tools.run.

Every call names its storage explicitly (`Storage`: --root, --runroot, --storage-driver), so a build never
touches the machine's default container storage and a caller can remove the whole store afterwards.
Builds use `--isolation chroot`: no OCI runtime, no user namespace set-up, works as root in a CI container.

`bud()` returns the finished process whatever its exit code: the build log is the candidate's evidence
(edgeci.imagemode.build reads the failing step from it); every other call raises ToolError on failure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeci.errors import ToolError
from edgeci.tools.run import Completed, run

PathLike = str | os.PathLike[str]
DEFAULT_BUILD_TIMEOUT = 3600.0
PULL_POLICIES = ("always", "missing", "never", "newer")


@dataclass(frozen=True)
class Storage:
    """Where buildah keeps images and containers for one build (use a private directory per job)."""

    root: Path
    runroot: Path
    driver: str = "vfs"

    @classmethod
    def under(cls, base: PathLike, driver: str = "vfs") -> Storage:
        """root and runroot as two subdirectories of `base`."""
        b = Path(base)
        return cls(b / "root", b / "runroot", driver)

    def args(self) -> list[str]:
        return ["--root", os.fspath(self.root), "--runroot", os.fspath(self.runroot),
                "--storage-driver", self.driver]


def _buildah(storage: Storage, *args: str) -> list[str]:
    return ["buildah", *storage.args(), *args]


def _tls(verify: bool | None) -> list[str]:
    return [] if verify is None else [f"--tls-verify={'true' if verify else 'false'}"]


def bud(
    storage: Storage,
    containerfile: PathLike,
    context: PathLike,
    tag: str,
    *,
    build_args: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    pull: str = "missing",
    tls_verify: bool | None = None,
    isolation: str = "chroot",
    iidfile: PathLike | None = None,
    extra: Sequence[str] = (),
    timeout: float | None = DEFAULT_BUILD_TIMEOUT,
) -> Completed:
    """buildah bud -f CONTAINERFILE -t TAG CONTEXT; the completed process, also when the build failed."""
    if pull not in PULL_POLICIES:
        raise ValueError(f"pull policy {pull!r} is not one of {PULL_POLICIES}")
    argv = _buildah(storage, "bud", "--isolation", isolation, f"--pull={pull}", *_tls(tls_verify),
                    "-f", os.fspath(containerfile), "-t", tag)
    for k, v in (build_args or {}).items():
        argv += ["--build-arg", f"{k}={v}"]
    for k, v in (labels or {}).items():
        argv += ["--label", f"{k}={v}"]
    if iidfile is not None:
        argv += ["--iidfile", os.fspath(iidfile)]
    argv += [*extra, os.fspath(context)]
    return run(argv, timeout=timeout, check=False)


def pull(storage: Storage, ref: str, *, tls_verify: bool | None = None, timeout: float | None = 1800) -> str:
    """buildah pull REF (docker://…, oci-archive:…, oci:…); returns the image ID."""
    r = run(_buildah(storage, "pull", "--quiet", *_tls(tls_verify), ref), timeout=timeout)
    return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""


def tag(storage: Storage, image: str, *names: str) -> None:
    run(_buildah(storage, "tag", image, *names), timeout=120)


def push(
    storage: Storage,
    image: str,
    dest: str,
    *,
    digestfile: PathLike | None = None,
    tls_verify: bool | None = None,
    timeout: float | None = 1800,
) -> str | None:
    """buildah push IMAGE DEST (oci-archive:FILE[:NAME], oci:DIR, docker://…); the manifest digest when
    `digestfile` is given."""
    argv = _buildah(storage, "push", "--quiet", *_tls(tls_verify))
    if digestfile is not None:
        argv += ["--digestfile", os.fspath(digestfile)]
    run([*argv, image, dest], timeout=timeout)
    if digestfile is None:
        return None
    return Path(digestfile).read_text().strip() or None


def inspect(storage: Storage, name: str, *, kind: str = "image", timeout: float | None = 120) -> dict[str, Any]:
    """buildah inspect --type KIND NAME, parsed."""
    r = run(_buildah(storage, "inspect", "--type", kind, name), timeout=timeout)
    try:
        data = json.loads(r.stdout)
    except json.JSONDecodeError:
        raise ToolError(f"buildah inspect printed no JSON for {name}", where=name) from None
    if not isinstance(data, dict):
        raise ToolError(f"buildah inspect printed no JSON object for {name}", where=name)
    return data


def exists(storage: Storage, name: str) -> bool:
    """Whether the store holds an image named `name` (buildah inspect succeeds)."""
    r = run(_buildah(storage, "inspect", "--type", "image", name), timeout=120, check=False)
    return r.ok


def rmi(storage: Storage, *images: str, force: bool = False) -> None:
    run(_buildah(storage, "rmi", *(["--force"] if force else []), *images), timeout=300)


def from_image(storage: Storage, image: str, *, pull: str = "never") -> str:
    """buildah from IMAGE: a working container on the image; returns its name."""
    r = run(_buildah(storage, "from", f"--pull={pull}", "--quiet", image), timeout=300)
    return r.stdout.strip().splitlines()[-1]


def run_in(storage: Storage, container: str, argv: Sequence[str], *, isolation: str = "chroot",
           timeout: float | None = 600) -> Completed:
    """buildah run CONTAINER -- ARGV; the completed process (the caller judges the exit code)."""
    return run(_buildah(storage, "run", "--isolation", isolation, container, "--", *argv), timeout=timeout,
               check=False)


def rm(storage: Storage, *containers: str) -> None:
    run(_buildah(storage, "rm", *containers), timeout=300)


def rm_all(storage: Storage) -> None:
    """Remove every working container of the store (what a failed build leaves behind)."""
    run(_buildah(storage, "rm", "--all"), timeout=300, check=False)
