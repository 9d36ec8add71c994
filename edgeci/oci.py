"""OCI image layouts and archives written with the standard library (skopeo accepts them).

An archive is a tar of an OCI image layout: oci-layout, index.json (with the
org.opencontainers.image.ref.name annotation) and blobs/sha256/…. Layers are uncompressed tars
(media type …layer.v1.tar): an ostree archive-mode repo is already compressed object by object.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeci.errors import EdgeCIError

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
CHUNK = 1 << 20


class OCIError(EdgeCIError):
    """An OCI archive or layout is malformed."""


@dataclass
class LayerEntry:
    """A file or directory tree from the host placed at `arcname` inside the layer."""

    source: Path
    arcname: str  # path inside the image, without a leading slash


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _normalize(ti: tarfile.TarInfo) -> tarfile.TarInfo:
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def _parents(arcname: str) -> list[str]:
    parts = arcname.strip("/").split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _write_layer(entries: Sequence[LayerEntry], blobs: Path) -> tuple[str, int]:
    """Write one uncompressed layer tar into blobs/; returns (digest hex, size)."""
    fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".layer.")
    os.close(fd)
    seen: set[str] = set()
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            for d in _parents(entry.arcname):  # parent directories first, as container tools expect
                if d not in seen:
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(_normalize(ti))
                    seen.add(d)
            tar.add(entry.source, arcname=entry.arcname.strip("/"), filter=_normalize)
            seen.add(entry.arcname.strip("/"))
    digest = sha256_file(tmp)
    size = os.path.getsize(tmp)
    os.replace(tmp, blobs / digest)
    return digest, size


def _put_blob(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return digest, len(data)


def write_layout(
    layout: str | os.PathLike[str],
    layers: Sequence[Sequence[LayerEntry]],
    *,
    ref_name: str = "latest",
    architecture: str = "amd64",
    config: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> str:
    """Write an OCI image layout directory; returns the manifest digest ("sha256:…")."""
    root = Path(layout)
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    layer_descs, diff_ids = [], []
    for entries in layers:
        digest, size = _write_layer(entries, blobs)
        layer_descs.append({"mediaType": LAYER_TAR, "digest": f"sha256:{digest}", "size": size})
        diff_ids.append(f"sha256:{digest}")
    image_config: dict[str, Any] = {
        "architecture": architecture,
        "os": "linux",
        "config": dict(config or {}),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "edgeci"} for _ in layer_descs],
    }
    if labels:
        image_config["config"]["Labels"] = dict(labels)
    cfg_digest, cfg_size = _put_blob(blobs, json.dumps(image_config, sort_keys=True).encode())
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": f"sha256:{cfg_digest}", "size": cfg_size},
        "layers": layer_descs,
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    man_digest, man_size = _put_blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": f"sha256:{man_digest}",
            "size": man_size,
            "annotations": {REF_NAME: ref_name},
        }],
    }
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (root / "index.json").write_text(json.dumps(index, sort_keys=True))
    return f"sha256:{man_digest}"


def write_archive(dest: str | os.PathLike[str], layers: Sequence[Sequence[LayerEntry]], **kw: Any) -> str:
    """Write an OCI archive (a tar of a layout) atomically; returns the manifest digest."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".oci-") as tmp:
        layout = Path(tmp) / "layout"
        digest = write_layout(layout, layers, **kw)
        part = Path(tmp) / "archive.tar"
        with tarfile.open(part, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in ("oci-layout", "index.json"):
                tar.add(layout / name, arcname=name, filter=_normalize)
            tar.add(layout / "blobs", arcname="blobs", filter=_normalize)
        os.replace(part, dest)
    return digest


# -- reading --------------------------------------------------------------------------------------

@dataclass
class Image:
    """An image in an OCI layout: its manifest digest, manifest and config."""

    digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    ref_name: str | None

    @property
    def layers(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("layers", []))


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OCIError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise OCIError(f"{what} is not a JSON object")
    return obj


def _check_digest(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.startswith("sha256:") or len(value) != 71 \
            or any(c not in "0123456789abcdef" for c in value[7:]):
        raise OCIError(f"{what} has an invalid digest {value!r}")
    return value


class ArchiveReader:
    """Read blobs from an OCI archive (tar) or layout directory without extracting it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._tar: tarfile.TarFile | None = None
        if self.path.is_file():
            try:
                self._tar = tarfile.open(self.path, "r:*")
            except (tarfile.TarError, OSError) as e:
                raise OCIError(f"{self.path}: not a readable tar archive: {e}") from None
            self._members = {m.name.lstrip("./"): m for m in self._tar.getmembers()}
        elif not (self.path / "index.json").is_file():
            raise OCIError(f"{self.path}: neither an OCI archive nor an OCI layout directory")

    def close(self) -> None:
        if self._tar:
            self._tar.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, name: str) -> io.BufferedIOBase:
        if self._tar is None:
            try:
                return open(self.path / name, "rb")
            except FileNotFoundError:
                raise OCIError(f"{self.path}: missing {name}") from None
        member = self._members.get(name)
        f = self._tar.extractfile(member) if member is not None and member.isfile() else None
        if f is None:
            raise OCIError(f"{self.path}: missing {name}")
        return f  # type: ignore[return-value]

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def blob_name(self, digest: str) -> str:
        return "blobs/sha256/" + _check_digest(digest, "descriptor")[7:]

    def verify_blob(self, digest: str) -> int:
        """Hash a blob and compare with its digest; returns its size."""
        h = hashlib.sha256()
        size = 0
        with self.open(self.blob_name(digest)) as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
        if f"sha256:{h.hexdigest()}" != digest:
            raise OCIError(f"{self.path}: blob {digest} does not match its digest (corrupt or tampered)")
        return size

    def image(self, ref_name: str | None = None) -> Image:
        index = _load_json(self.read("index.json"), "index.json")
        manifests = index.get("manifests")
        if not isinstance(manifests, list) or not manifests:
            raise OCIError(f"{self.path}: index.json lists no manifests")
        chosen = manifests[0]
        if ref_name is not None:
            for m in manifests:
                if isinstance(m, dict) and (m.get("annotations") or {}).get(REF_NAME) == ref_name:
                    chosen = m
                    break
            else:
                raise OCIError(f"{self.path}: no image named '{ref_name}'")
        digest = _check_digest(chosen.get("digest"), "index.json manifest")
        manifest_bytes = self.read(self.blob_name(digest))
        if f"sha256:{hashlib.sha256(manifest_bytes).hexdigest()}" != digest:
            raise OCIError(f"{self.path}: manifest {digest} does not match its digest")
        manifest = _load_json(manifest_bytes, "manifest")
        cfg_desc = manifest.get("config") or {}
        cfg_digest = _check_digest(cfg_desc.get("digest"), "manifest config")
        config = _load_json(self.read(self.blob_name(cfg_digest)), "image config")
        for layer in manifest.get("layers", []):
            _check_digest(layer.get("digest"), "manifest layer")
        return Image(digest, manifest, config, (chosen.get("annotations") or {}).get(REF_NAME))


def copy_layout_blobs(src: Iterable[Path], dest_blobs: Path) -> None:
    dest_blobs.mkdir(parents=True, exist_ok=True)
    for p in src:
        target = dest_blobs / p.name
        if not target.exists():
            with contextlib.suppress(FileExistsError):
                shutil.copyfile(p, target)
