"""What an Image Builder artifact holds: the ostree commit checksum, its ref, parent and version.

Reads an edge-commit tar (repo/ + compose.json with "ostree-commit") or an edge-container OCI
archive (the repo inside a layer, at usr/share/nginx/html/repo) in one streaming pass, without
extracting the repository. The parent and the "version" metadata come from the commit object itself,
copied alone into a scratch repository where `ostree rev-parse COMMIT^` reads it — so a multi-gigabyte
artifact costs one read, not an extraction. Any backend (weldr, cloud, local) can use it.

Image Builder's osbuild stamps a commit's "version" with the OS release (os-release VERSION_ID, e.g.
"9.4"), not the blueprint's version: `os_version` is that, and never a release version. The release
version is the blueprint's, as composed (ComposeResult.version).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeci.errors import ComposerError

# Where Image Builder's edge-container serves the repository from (nginx on port 8080).
REPO_IN_CONTAINER = "usr/share/nginx/html/repo"
# A member of a repository somewhere in a tar: refs, commit objects (metadata objects are small).
_MEMBER_RE = re.compile(
    r"^(?P<repo>(?:.+/)?repo)/(?:refs/heads/(?P<ref>.+)|objects/(?P<a>[0-9a-f]{2})/(?P<b>[0-9a-f]{62})\.commit)$"
)
_CHECKSUM_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_SMALL = 4 << 20  # refs, compose.json and commit objects are tiny; refuse absurd ones
_MAX_COMMITS = 10000

# Image Builder's file name for each image type (imageType.Filename()).
FILENAMES = {
    "edge-commit": "commit.tar",
    "edge-container": "container.tar",
    "edge-installer": "installer.iso",
    "edge-simplified-installer": "simplified-installer.iso",
    "edge-raw-image": "image.raw.xz",
    "iot-commit": "commit.tar",
    "iot-container": "container.tar",
}


@dataclass
class ArtifactInfo:
    """The ostree commit an edge-commit / edge-container artifact carries."""

    image_type: str  # edge-commit | edge-container
    commit: str
    ref: str
    parent: str = ""  # "" when the commit has none
    os_version: str = ""  # the commit's "version" metadata (osbuild: the OS release, e.g. 9.4), "" when absent
    compose: dict[str, Any] | None = None  # compose.json of an edge-commit


@dataclass
class _Scan:
    refs: dict[str, str]
    commits: dict[str, bytes]
    compose: dict[str, Any] | None


def _name(member: tarfile.TarInfo) -> str:
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, where: str) -> bytes:
    if member.size > _MAX_SMALL:
        raise ComposerError(f"'{member.name}' is {member.size} bytes, far larger than such a file can be",
                            where=where, fix="the artifact is corrupt or not an Image Builder artifact")
    f = tar.extractfile(member)
    if f is None:
        return b""
    with f:
        return f.read()


def _scan(tar: tarfile.TarFile, where: str, scan: _Scan) -> None:
    """One pass over a tar stream, collecting refs, commit objects and compose.json."""
    for member in tar:
        name = _name(member)
        if name == "compose.json" and member.isfile():
            try:
                data = json.loads(_read_small(tar, member, where))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ComposerError(f"compose.json is not valid JSON: {e}", where=where) from None
            if isinstance(data, dict):
                scan.compose = data
            continue
        m = _MEMBER_RE.match(name)
        if not m or not member.isfile():
            continue
        if m.group("ref"):
            text = _read_small(tar, member, where).decode("ascii", "replace").strip()
            if _CHECKSUM_RE.match(text):
                scan.refs[m.group("ref")] = text
        elif len(scan.commits) < _MAX_COMMITS:
            scan.commits[m.group("a") + m.group("b")] = _read_small(tar, member, where)


def _scan_layers(path: Path, scan: _Scan) -> None:
    from edgeci.oci import ArchiveReader, OCIError

    try:
        with ArchiveReader(path) as reader:
            # Top layer first: a later layer's file replaces an earlier one's.
            for layer in reversed(reader.image().layers):
                with reader.open(reader.blob_name(layer["digest"])) as f, \
                        tarfile.open(fileobj=f, mode="r|*") as tar:
                    _scan(tar, str(path), scan)
                if scan.refs:
                    return
    except OCIError as e:
        raise ComposerError(f"not a readable OCI archive: {e.message}", where=str(path),
                            fix="download the artifact again") from None


def _is_oci(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if _name(member) in ("oci-layout", "index.json"):
                    return True
                if _name(member) == "compose.json" or _name(member).startswith("repo/"):
                    return False
    except (tarfile.TarError, OSError) as e:
        raise ComposerError(f"not a readable tar archive: {e}", where=str(path),
                            fix="download the artifact again") from None
    return False


def scan_artifact(path: str | os.PathLike[str]) -> tuple[str, _Scan]:
    """(image type, what the artifact's repository holds) in one streaming pass."""
    p = Path(path)
    scan = _Scan({}, {}, None)
    try:
        if _is_oci(p):
            image_type = "edge-container"
            _scan_layers(p, scan)
        else:
            image_type = "edge-commit"
            with tarfile.open(p, "r|*") as tar:
                _scan(tar, str(p), scan)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ComposerError(f"cannot read the artifact: {e}", where=str(p),
                            fix="download the artifact again (it may be truncated)") from None
    return image_type, scan


def inspect(path: str | os.PathLike[str], image_type: str | None = None, ref: str | None = None) -> ArtifactInfo:
    """The commit an edge-commit / edge-container artifact carries, with its parent and OS version.

    `ref` picks the ref when the repository has several (the compose request's ref); without it the
    repository must hold exactly one, or compose.json must name the commit.
    """
    p = Path(path)
    found_type, scan = scan_artifact(p)
    if image_type and image_type.replace("iot-", "edge-") != found_type:
        raise ComposerError(f"the artifact is an {found_type}, not the requested {image_type}", where=str(p),
                            fix="check composer image type mapping and the compose request")
    commit, chosen_ref = _choose(scan, ref, p)
    if commit not in scan.commits:
        raise ComposerError(f"the artifact has no commit object for {commit}", where=str(p),
                            fix="the artifact is incomplete; download it again or re-run the compose")
    data = scan.commits[commit]
    if hashlib.sha256(data).hexdigest() != commit:
        raise ComposerError(f"commit object {commit} does not match its checksum (corrupt artifact)",
                            where=str(p), fix="download the artifact again")
    parent, version = commit_parent_and_version(commit, data)
    return ArtifactInfo(found_type, commit, chosen_ref, parent or "", version or "", scan.compose)


def _choose(scan: _Scan, ref: str | None, p: Path) -> tuple[str, str]:
    compose = scan.compose or {}
    named = compose.get("ostree-commit")
    if ref and ref in scan.refs:
        return scan.refs[ref], ref
    if isinstance(named, str) and _CHECKSUM_RE.match(named):
        compose_ref = compose.get("ref") if isinstance(compose.get("ref"), str) else ""
        if ref and compose_ref and compose_ref != ref:
            raise ComposerError(f"the artifact carries ref '{compose_ref}', not the requested '{ref}'",
                                where=str(p), fix="check the ref in the compose request and edgeci.yaml")
        return named, str(compose_ref or ref or "")
    if ref and scan.refs:
        raise ComposerError(f"the artifact's repository has no ref '{ref}' (it has: {', '.join(sorted(scan.refs))})",
                            where=str(p), fix="check blueprints.<name>.ref in edgeci.yaml against the compose")
    if len(scan.refs) == 1:
        (only_ref, commit), = scan.refs.items()
        return commit, only_ref
    if not scan.refs:
        raise ComposerError("no ostree repository with a ref found in the artifact", where=str(p),
                            fix="only edge-commit and edge-container artifacts carry a commit")
    raise ComposerError(f"the artifact's repository has several refs ({', '.join(sorted(scan.refs))})",
                        where=str(p), fix="name the ref in the compose request")


def commit_parent_and_version(commit: str, commit_object: bytes) -> tuple[str | None, str | None]:
    """Parent checksum and "version" metadata of a commit object, read by ostree in a scratch repo."""
    from edgeci.tools import ostree

    with tempfile.TemporaryDirectory(prefix="edgeci-commit-") as tmp:
        repo = Path(tmp) / "repo"
        ostree.init(repo, mode="archive")
        obj = repo / "objects" / commit[:2] / f"{commit[2:]}.commit"
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(commit_object)
        return ostree.parent(repo, commit), ostree.metadata(repo, commit, "version")
