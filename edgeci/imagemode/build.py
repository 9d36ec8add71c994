"""Build an image-mode (bootc) image from its Containerfile into an OCI archive, with buildah, and record
what was built: manifest digest, base image (name and digest), labels, layers (digest, size), the installed
packages when the image carries a dpkg or rpm database, and `bootc container lint` when the image carries bootc.

The base is any reference buildah resolves: `registry.redhat.io/rhel10/rhel-bootc@sha256:…` on a RHEL host,
or a base imported into the same storage beforehand (`import_base`, e.g. a bootable tree as an OCI archive).
A Containerfile that does not build raises ImageBuildFailed (exit 1) naming the failing step, its
Containerfile line and buildah's reason; the whole log is kept next to the archive.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeci.errors import ComposeFailed, ToolError
from edgeci.imagemode.source import BOOTC_LABELS, Containerfile, load
from edgeci.oci import ArchiveReader, OCIError, sha256_file
from edgeci.tools import buildah
from edgeci.tools.run import have, run

BASE_DIGEST = "org.opencontainers.image.base.digest"
BASE_NAME = "org.opencontainers.image.base.name"
DPKG_ADMINDIR = "var/lib/dpkg"
RPM_DBPATHS = ("usr/lib/sysimage/rpm", "var/lib/rpm")
BOOTC_BINARY = "usr/bin/bootc"
NO_BOOTC = "not run: the image carries no /usr/bin/bootc"


class ImageBuildFailed(ComposeFailed):
    """The Containerfile did not build (or the built image failed `bootc container lint`): exit 1."""

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None,
                 step: str = "", log: str = "") -> None:
        self.step = step
        self.log = log
        super().__init__(message, where=where, fix=fix)


@dataclass
class Layer:
    digest: str
    size: int
    media_type: str
    diff_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size, "media_type": self.media_type, "diff_id": self.diff_id}


@dataclass
class BuiltImage:
    """What the build produced; `as_dict()` is the record's compose section for the image kind."""

    name: str
    version: str
    tag: str  # the name in the build storage
    archive: Path
    archive_sha256: str
    digest: str  # manifest digest: what every later stage addresses
    config_digest: str
    base_name: str
    base_digest: str
    labels: dict[str, str]
    layers: list[Layer]
    packages: list[dict[str, str]]
    package_db: str | None  # "dpkg" | "rpm" | None
    bootc_lint: str  # "passed" | "not run: …"
    has_bootc: bool
    duration: float
    log: Path
    warnings: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Bytes a device downloads for the whole image (the sum of its compressed layers)."""
        return sum(layer.size for layer in self.layers)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": "image", "name": self.name, "version": self.version, "tag": self.tag,
            "artifact": str(self.archive), "artifact_sha256": self.archive_sha256, "digest": self.digest,
            "config_digest": self.config_digest, "base": {"name": self.base_name, "digest": self.base_digest},
            "labels": dict(self.labels), "layers": [layer.as_dict() for layer in self.layers], "size": self.size,
            "packages": list(self.packages), "package_db": self.package_db, "bootc_lint": self.bootc_lint,
            "duration": round(self.duration, 3), "log": str(self.log), "warnings": list(self.warnings),
        }


def update_bytes(old_layers: list[dict[str, Any]] | list[Layer], new_layers: list[Layer]) -> int:
    """Bytes a device holding the old image downloads for the new one: the new image's layers it lacks."""
    have_digests = {(layer.digest if isinstance(layer, Layer) else str(layer["digest"])) for layer in old_layers}
    return sum(layer.size for layer in new_layers if layer.digest not in have_digests)


# -- the build ---------------------------------------------------------------------------------------

def import_base(storage: buildah.Storage, archive: str | os.PathLike[str], name: str) -> str:
    """Load an OCI archive (e.g. a bootable tree packed as an image) into the build storage as `name`;
    returns its image ID. How a base reaches a machine without registry.redhat.io."""
    image_id = buildah.pull(storage, f"oci-archive:{os.fspath(archive)}")
    buildah.tag(storage, image_id, name)
    return image_id


_STEP = re.compile(r"^(?:\[(\d+)/(\d+)\]\s+)?STEP (\d+)/(\d+): (.*)$")
_ERROR = re.compile(r"^(?:Error|error)[: ]\s*(.*)$")


def failing_step(log: str, cf: Containerfile) -> tuple[str, int | None, str]:
    """(the step as buildah printed it, its Containerfile line, buildah's reason) from a failed build's log."""
    last: tuple[int, int, str] | None = None  # (stage number, step number, text)
    for raw in log.splitlines():
        m = _STEP.match(raw.strip())
        if m:
            last = (int(m.group(1) or len(cf.stages)), int(m.group(3)), m.group(5))
    reason = ""
    for raw in log.splitlines():
        m = _ERROR.match(raw.strip())
        if m:
            reason = m.group(1)
    reason = re.sub(r'^building at STEP "[^"]*":\s*', "", reason)
    if last is None:
        return "", None, reason or "buildah printed no step"
    stage_no, step_no, text = last
    line: int | None = None
    if 1 <= stage_no <= len(cf.stages):
        stage = cf.stages[stage_no - 1]
        if step_no == 1:
            line = stage.line
        elif step_no - 2 < len(stage.instructions):
            line = stage.instructions[step_no - 2].line
    return text, line, reason


@contextlib.contextmanager
def private_storage(base: str | os.PathLike[str] | None = None) -> Iterator[buildah.Storage]:
    """A throwaway buildah storage (vfs) under `base` or a new temp dir, removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="edgeci-buildah-", dir=base))
    try:
        yield buildah.Storage.under(d)
    finally:
        st = buildah.Storage.under(d)
        with contextlib.suppress(ToolError):
            buildah.rm_all(st)
        shutil.rmtree(d, ignore_errors=True)


def build_image(
    containerfile: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    storage: buildah.Storage,
    name: str,
    context: str | os.PathLike[str] | None = None,
    build_args: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    add_bootc_labels: bool = True,
    pull: str = "missing",
    tls_verify: bool | None = None,
    timeout: float | None = buildah.DEFAULT_BUILD_TIMEOUT,
) -> BuiltImage:
    """Build `containerfile` (context: its directory unless given) into the OCI archive `output`."""
    cf_path = Path(containerfile)
    cf = load(cf_path)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_name(out.name + ".build.log")
    extra_labels = dict(BOOTC_LABELS) if add_bootc_labels else {}
    extra_labels.update(labels or {})
    tag = f"localhost/edgeci/{name}:candidate"
    started = time.monotonic()
    r = buildah.bud(storage, cf_path, context if context is not None else cf_path.parent, tag,
                    build_args=build_args, labels=extra_labels, pull=pull, tls_verify=tls_verify, timeout=timeout)
    log = r.stdout + ("\n" if r.stdout and not r.stdout.endswith("\n") else "") + r.stderr
    log_path.write_text(log)
    if not r.ok:
        step, line, reason = failing_step(log, cf)
        where = f"{cf_path}:{line}" if line else str(cf_path)
        raise ImageBuildFailed(
            f"the image does not build: step '{step}' failed: {reason}" if step else
            f"the image does not build: {reason}",
            where=where, fix=f"fix that step (the whole build log: {log_path})", step=step, log=log)
    if out.exists():
        out.unlink()
    buildah.push(storage, tag, f"oci-archive:{out}:{name}")
    duration = time.monotonic() - started
    built = describe_archive(out, name=name, tag=tag, duration=duration, log=log_path)
    if not built.base_digest:
        built.base_digest = _base_digest_from_storage(storage, tag, cf)
    built.bootc_lint = bootc_container_lint(storage, tag, has_bootc=built.has_bootc)
    return built


def _base_digest_from_storage(storage: buildah.Storage, tag: str, cf: Containerfile) -> str:
    pinned = re.search(r"@(sha256:[0-9a-f]{64})$", cf.final.base)
    if pinned:
        return pinned.group(1)
    info = buildah.inspect(storage, tag)
    return str(info.get("FromImageDigest") or "")


def describe_archive(archive: str | os.PathLike[str], *, name: str, tag: str = "", duration: float = 0.0,
                     log: str | os.PathLike[str] = "") -> BuiltImage:
    """Read a built image's archive: digests, labels, layers (every blob verified), packages."""
    path = Path(archive)
    try:
        with ArchiveReader(path) as reader:
            img = reader.image()
            reader.verify_blob(str(img.manifest["config"]["digest"]))
            diff_ids = [str(d) for d in (img.config.get("rootfs") or {}).get("diff_ids") or []]
            layers = []
            for i, desc in enumerate(img.layers):
                size = reader.verify_blob(str(desc["digest"]))
                layers.append(Layer(str(desc["digest"]), size, str(desc.get("mediaType", "")),
                                    diff_ids[i] if i < len(diff_ids) else ""))
            with tempfile.TemporaryDirectory(prefix="edgeci-pkgdb-") as tmp:
                found = extract_paths(reader, [layer.digest for layer in layers], Path(tmp),
                                      [DPKG_ADMINDIR, *RPM_DBPATHS, BOOTC_BINARY])
                packages, db, warnings = read_packages(Path(tmp), found)
    except OCIError as e:
        raise ImageBuildFailed(f"the built archive is not a valid OCI archive: {e.message}", where=str(path)) \
            from None
    annotations = img.manifest.get("annotations") or {}
    labels = {str(k): str(v) for k, v in ((img.config.get("config") or {}).get("Labels") or {}).items()}
    version = labels.get("org.opencontainers.image.version") or labels.get("version") or ""
    built = BuiltImage(
        name=name, version=version, tag=tag, archive=path, archive_sha256=sha256_file(path), digest=img.digest,
        config_digest=str(img.manifest["config"]["digest"]), base_name=str(annotations.get(BASE_NAME, "")),
        base_digest=str(annotations.get(BASE_DIGEST, "")), labels=labels, layers=layers, packages=packages,
        package_db=db, bootc_lint=NO_BOOTC, has_bootc=BOOTC_BINARY in found, duration=duration, log=Path(log),
        warnings=warnings)
    return built


# -- reading the image's filesystem ---------------------------------------------------------------------

def _safe_name(name: str) -> str | None:
    norm = posixpath.normpath(name.lstrip("/"))
    if norm.startswith("..") or norm in (".", ""):
        return None
    return norm.removeprefix("./")


def _under(path: str, prefixes: list[str]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def extract_paths(reader: ArchiveReader, layer_digests: list[str], dest: Path, prefixes: list[str]) -> set[str]:
    """Apply the layers in order to `dest`, keeping only regular files and directories under `prefixes`
    (OCI whiteouts honored); returns which prefixes exist in the final filesystem."""
    for digest in layer_digests:
        with reader.open(reader.blob_name(digest)) as blob, tarfile.open(fileobj=blob, mode="r|*") as tar:
            for m in tar:
                name = _safe_name(m.name)
                if name is None:
                    continue
                base = posixpath.basename(name)
                parent = posixpath.dirname(name)
                if base == ".wh..wh..opq":
                    if _under(parent, prefixes) or any(p.startswith(parent + "/") for p in prefixes):
                        target = dest / parent
                        if target.is_dir():
                            for child in target.iterdir():
                                _remove(child)
                    continue
                if base.startswith(".wh."):
                    _remove(dest / parent / base[len(".wh."):])
                    continue
                if not _under(name, prefixes):
                    continue
                target = dest / name
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif m.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _remove(target)
                    f = tar.extractfile(m)
                    if f is not None:
                        with open(target, "wb") as w:
                            shutil.copyfileobj(f, w)
                else:
                    # a symlink (var/lib/rpm -> ../../usr/lib/sysimage/rpm) or device: marks presence only
                    _remove(target)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.touch()
    return {p for p in prefixes if (dest / p).exists()}


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


def read_packages(root: Path, found: set[str]) -> tuple[list[dict[str, str]], str | None, list[str]]:
    """(packages, "dpkg"|"rpm"|None, warnings) from the databases extracted under `root`."""
    if DPKG_ADMINDIR in found and (root / DPKG_ADMINDIR / "status").is_file():
        admin = root / DPKG_ADMINDIR
        for sub in ("updates", "info"):
            (admin / sub).mkdir(exist_ok=True)
        r = run(["dpkg-query", "--admindir", admin, "-W", "-f", "${Package}\t${Version}\t${Architecture}\t"
                 "${db:Status-Abbrev}\n"], timeout=120)
        pkgs = []
        for line in r.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) == 4 and parts[3].startswith("i"):
                pkgs.append({"name": parts[0], "version": parts[1], "arch": parts[2]})
        return sorted(pkgs, key=lambda p: p["name"]), "dpkg", []
    for dbpath in RPM_DBPATHS:
        d = root / dbpath
        if dbpath in found and d.is_dir() and any(d.iterdir()):
            if not have("rpm"):
                return [], "rpm", [f"the image has an rpm database ({dbpath}) but rpm is not installed here: "
                                   "no package list (apt-get install rpm)"]
            r = run(["rpm", "--dbpath", d, "-qa", "--qf",
                     "%{NAME}\t%{EPOCHNUM}\t%{VERSION}\t%{RELEASE}\t%{ARCH}\n"], timeout=300)
            pkgs = []
            for line in r.stdout.splitlines():
                parts = line.split("\t")
                if len(parts) == 5:
                    pkgs.append({"name": parts[0], "epoch": parts[1], "version": parts[2], "release": parts[3],
                                 "arch": parts[4]})
            return sorted(pkgs, key=lambda p: p["name"]), "rpm", []
    return [], None, []


# -- bootc container lint -------------------------------------------------------------------------------

def bootc_container_lint(storage: buildah.Storage, tag: str, *, has_bootc: bool) -> str:
    """Run `bootc container lint` inside the built image when it carries bootc; "passed" or NO_BOOTC.
    A failing lint is ImageBuildFailed (exit 1)."""
    if not has_bootc:
        return NO_BOOTC
    container = buildah.from_image(storage, tag)
    try:
        r = buildah.run_in(storage, container, ["bootc", "container", "lint"])
    finally:
        buildah.rm(storage, container)
    if not r.ok:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ImageBuildFailed(f"bootc container lint failed in the built image: {tail[0]}", where=tag,
                               fix="fix what bootc container lint names in the Containerfile",
                               step="bootc container lint", log=r.stdout + r.stderr)
    return "passed"
