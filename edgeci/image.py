"""Safe extraction of the ostree repo inside an edge-container image (OCI layout or archive).

Extraction verifies every layer digest (and uncompressed diff_id) before writing a byte, then writes
only entries below the repo path, refusing absolute paths, `..`, links that leave the repo, device
nodes and fifos, and archives over the size bound; it writes into a temporary directory inside the
target directory, swapped into place only when complete. Used by the stage and by promote.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from edgeci.errors import StageError, StageMismatch
from edgeci.fmt import human_bytes
from edgeci.oci import CHUNK, ArchiveReader, OCIError, sha256_file

if TYPE_CHECKING:
    pass


GZIP_TYPES = ("application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip")


TAR_TYPES = ("application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar")


@dataclass
class Budget:
    """A byte bound (stage.max_archive_bytes) shared by verification and extraction."""

    limit: int
    used: int = 0
    what: str = "archive"

    def add(self, n: int) -> None:
        self.used += n
        if self.limit and self.used > self.limit:
            raise StageError(
                f"{self.what} is larger than stage.max_archive_bytes ({human_bytes(self.limit)})",
                fix="raise stage.max_archive_bytes if the image is genuinely that large",
            )


@dataclass
class Layer:
    digest: str
    media_type: str
    size: int
    diff_id: str | None


@dataclass
class ImageSource:
    """One image (manifest + config) in an OCI archive or layout, its blobs readable via `reader`."""

    path: Path
    reader: ArchiveReader
    digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]

    @property
    def layers(self) -> list[Layer]:
        diff_ids = (self.config.get("rootfs") or {}).get("diff_ids") or []
        out = []
        for i, d in enumerate(self.manifest.get("layers") or []):
            out.append(Layer(str(d.get("digest")), str(d.get("mediaType", "")), int(d.get("size") or 0),
                             str(diff_ids[i]) if i < len(diff_ids) else None))
        return out

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_image(path: str | os.PathLike[str], digest: str | None = None, *, max_bytes: int = 0) -> ImageSource:
    """Open an OCI archive (tar) or layout directory; `digest` picks that manifest from index.json.

    An archive file over `max_bytes` is refused before it is read.
    """
    p = Path(path)
    if not p.exists():
        raise StageError("image not found", where=str(p), fix="run 'edgeci compose' (or 'edgeci push') first")
    if p.is_file() and max_bytes and p.stat().st_size > max_bytes:
        raise StageError(f"archive is larger than stage.max_archive_bytes ({human_bytes(max_bytes)})",
                         where=str(p), fix="raise stage.max_archive_bytes if the image is genuinely that large")
    try:
        reader = ArchiveReader(p)
    except OCIError as e:
        raise StageError(e.message, where=str(p)) from None
    try:
        if digest is None:
            img = reader.image()
            return ImageSource(p, reader, img.digest, img.manifest, img.config)
        return _image_by_digest(p, reader, digest)
    except OCIError as e:
        reader.close()
        raise StageError(e.message, where=str(p)) from None
    except BaseException:
        reader.close()
        raise


def _load(reader: ArchiveReader, digest: str, what: str) -> tuple[bytes, dict[str, Any]]:
    data = reader.read(reader.blob_name(digest))
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise OCIError(f"{what} {digest} does not match its digest (corrupt or tampered)")
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise OCIError(f"{what} {digest} is not JSON") from None
    if not isinstance(obj, dict):
        raise OCIError(f"{what} {digest} is not a JSON object")
    return data, obj


def _image_by_digest(p: Path, reader: ArchiveReader, digest: str) -> ImageSource:
    index = json.loads(reader.read("index.json"))
    digests = [m.get("digest") for m in index.get("manifests") or [] if isinstance(m, dict)]
    if digest not in digests:
        raise StageError(f"the image holds no manifest {digest}", where=str(p),
                         fix="re-run 'edgeci push' so the record and the image agree")
    _, manifest = _load(reader, digest, "manifest")
    cfg_digest = str((manifest.get("config") or {}).get("digest"))
    _, config = _load(reader, cfg_digest, "image config")
    return ImageSource(p, reader, digest, manifest, config)


class _HashingReader:
    """A read-only file object that hashes everything read through it."""

    def __init__(self) -> None:
        self.inner: Any = None
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.inner.read(n)
        self.hash.update(data)
        return data


def verify_layers(src: ImageSource, budget: Budget) -> list[Layer]:
    """Hash every layer (as stored, and uncompressed against its diff_id) before anything is extracted."""
    layers = src.layers
    if not layers:
        raise StageError("the image has no layers", where=str(src.path))
    for layer in layers:
        if layer.media_type not in GZIP_TYPES + TAR_TYPES:
            raise StageError(f"layer {layer.digest} has unsupported media type '{layer.media_type}'",
                             where=str(src.path), fix="push the image with gzip or uncompressed layers")
        if budget.limit and layer.size > budget.limit:
            budget.add(layer.size)
        stored = _HashingReader()
        plain = hashlib.sha256()
        try:
            with src.reader.open(src.reader.blob_name(layer.digest)) as f:
                stored.inner = f
                stream: Any = gzip.GzipFile(fileobj=cast(IO[bytes], stored), mode="rb") \
                    if layer.media_type in GZIP_TYPES else stored
                # Bounded reads: a decompression bomb stops at the budget, not in memory.
                while chunk := stream.read(CHUNK):
                    plain.update(chunk)
                    budget.add(len(chunk))
                while stored.read(CHUNK):  # hash what gzip left unread (trailing bytes) too
                    pass
        except OCIError as e:
            raise StageError(e.message, where=str(src.path)) from None
        except (zlib.error, gzip.BadGzipFile, EOFError) as e:
            raise StageError(f"layer {layer.digest} is not valid gzip: {e}", where=str(src.path)) from None
        if "sha256:" + stored.hash.hexdigest() != layer.digest:
            raise StageError(f"layer {layer.digest} does not match its digest (corrupt or tampered)",
                             where=str(src.path), fix="push or compose the image again")
        if layer.diff_id is not None and "sha256:" + plain.hexdigest() != layer.diff_id:
            raise StageError(f"layer {layer.digest} does not match its diff_id {layer.diff_id} (corrupt or tampered)",
                             where=str(src.path), fix="push or compose the image again")
    return layers


def _clean_name(raw: str, what: str) -> str:
    """A member name as a relative path; StageError for absolute paths and `..`."""
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise StageError(f"{what}: entry '{raw}' has an absolute path", fix="rebuild the image; it is unsafe")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise StageError(f"{what}: entry '{raw}' escapes with '..'", fix="rebuild the image; it is unsafe")
    if any("\0" in p for p in parts):
        raise StageError(f"{what}: entry name contains NUL", fix="rebuild the image; it is unsafe")
    return "/".join(parts)


def _inside(prefix: str, name: str) -> bool:
    return name == prefix or name.startswith(prefix + "/")


def _within(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _parent(root: str, name: str, what: str) -> str:
    """Create the parent directories of `name` under root; refuse when they resolve outside root."""
    cur = root
    for part in name.split("/")[:-1]:
        cur = os.path.join(cur, part)
        if os.path.islink(cur):
            real = os.path.realpath(cur)
            if not _within(root, real) or not os.path.isdir(real):
                raise StageError(f"{what}: entry '{name}' goes through a link that leaves the stage directory",
                                 fix="rebuild the image; it is unsafe")
        elif not os.path.isdir(cur):
            if os.path.lexists(cur):
                os.unlink(cur)
            os.mkdir(cur, 0o755)
    parent = os.path.realpath(cur)
    if not _within(root, parent):
        raise StageError(f"{what}: entry '{name}' resolves outside the stage directory",
                         fix="rebuild the image; it is unsafe")
    return parent


def _disk_error(e: OSError, dest: Path) -> StageError:
    if dest.name.startswith(".extract-"):  # name the stage dir, not the temp dir that is removed
        dest = dest.parent
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StageError(f"disk full while extracting the stage repository ({e.strerror})", where=str(dest),
                          fix="free space there, or point stage.dir at a larger filesystem")
    return StageError(f"cannot write the stage repository: {e.strerror}", where=e.filename or str(dest))


def extract_layer(fileobj: IO[bytes], dest: str | os.PathLike[str], *, prefix: str, budget: Budget,
                  what: str = "layer") -> int:
    """Extract the entries of one layer tar (a stream) below `prefix` into dest/<name>; returns entries written.

    Entries outside `prefix` are skipped (but a name that is absolute or uses `..` anywhere refuses
    the whole layer). OCI whiteouts (.wh.NAME, .wh..wh..opq) below the prefix are applied.
    """
    root = os.path.realpath(dest)
    prefix = _clean_name(prefix, "stage.repo_path")
    written = 0
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for m in tar:
                name = _clean_name(m.name, what)
                if not name or not _inside(prefix, name):
                    continue
                written += _extract_member(tar, m, name, root, prefix, budget, what)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise StageError(f"{what} is not a valid tar archive: {e}", where=str(dest)) from None
    except OSError as e:
        raise _disk_error(e, Path(dest)) from None
    return written


def _extract_member(tar: tarfile.TarFile, m: tarfile.TarInfo, name: str, root: str, prefix: str,
                    budget: Budget, what: str) -> int:
    base = name.rsplit("/", 1)[-1]
    if base.startswith(".wh."):
        parent = _parent(root, name, what)
        if base == ".wh..wh..opq":
            for child in os.listdir(parent):
                _remove(os.path.join(parent, child))
        else:
            _remove(os.path.join(parent, base[len(".wh."):]))
        return 0
    if m.ischr() or m.isblk():
        raise StageError(f"{what}: entry '{m.name}' is a device node", fix="rebuild the image; it is unsafe")
    if m.isfifo():
        raise StageError(f"{what}: entry '{m.name}' is a fifo", fix="rebuild the image; it is unsafe")
    if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
        raise StageError(f"{what}: entry '{m.name}' has unsupported type {m.type!r}",
                         fix="rebuild the image; it is unsafe")
    if m.issym():
        link = m.linkname
        if link.startswith("/"):
            raise StageError(f"{what}: symlink '{m.name}' points outside the repository (to '{link}')",
                             fix="rebuild the image; it is unsafe")
        resolved = os.path.normpath(os.path.join(os.path.dirname(name), link))
        if resolved.startswith("../") or resolved == ".." or not _inside(prefix, resolved):
            raise StageError(f"{what}: symlink '{m.name}' points outside the repository (to '{link}')",
                             fix="rebuild the image; it is unsafe")
    src_name = ""
    if m.islnk():
        try:
            src_name = _clean_name(m.linkname, what)
        except StageError:
            raise StageError(f"{what}: hardlink '{m.name}' points outside the repository (to '{m.linkname}')",
                             fix="rebuild the image; it is unsafe") from None
        if not _inside(prefix, src_name):
            raise StageError(f"{what}: hardlink '{m.name}' points outside the repository (to '{m.linkname}')",
                             fix="rebuild the image; it is unsafe")
    parent = _parent(root, name, what)
    target = os.path.join(parent, name.rsplit("/", 1)[-1])
    if m.isdir():
        if os.path.islink(target) or (os.path.lexists(target) and not os.path.isdir(target)):
            os.unlink(target)
        if not os.path.isdir(target):
            os.mkdir(target, 0o755)
        os.chmod(target, (m.mode & 0o777) | 0o700)
        return 1
    if os.path.lexists(target):
        _remove(target)
    if m.issym():
        os.symlink(m.linkname, target)
        return 1
    if m.islnk():
        src = os.path.join(root, src_name)
        if not os.path.isfile(src) or os.path.islink(src) or not _within(root, os.path.realpath(src)):
            raise StageError(f"{what}: hardlink '{m.name}' points to '{m.linkname}', which is not a file "
                             "extracted before it", fix="rebuild the image; it is unsafe")
        os.link(src, target, follow_symlinks=False)
        return 1
    budget.add(m.size)
    f = tar.extractfile(m)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            if f is not None:
                while chunk := f.read(CHUNK):
                    out.write(chunk)
            os.fchmod(out.fileno(), m.mode & 0o777)  # no setuid/setgid/sticky from an image
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise
    return 1


@dataclass
class Extracted:
    repo: Path  # the ostree repo, served as the stage
    layers: list[Layer] = field(default_factory=list)
    entries: int = 0
    bytes: int = 0


def _swap_in(stage_dir: Path, tmp: Path, top: str) -> None:
    """Move tmp/<top> to stage_dir/<top>, replacing an older copy by two renames: a reader sees the old
    tree or the new one (or, between the renames, none), never a half-extracted one."""
    new, old = tmp / top, stage_dir / top
    if os.path.lexists(old):
        trash = Path(tempfile.mkdtemp(dir=stage_dir, prefix=".old-"))
        os.replace(old, trash / top)
        os.replace(new, old)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(new, old)


def populate_from_image(src: ImageSource, stage_dir: str | os.PathLike[str], *, repo_path: str,
                        max_bytes: int) -> Extracted:
    """Verify every layer, then extract the repo below `repo_path` into stage_dir/<repo_path>."""
    layers = verify_layers(src, Budget(max_bytes, what="the image's layers (uncompressed)"))

    def fill(tmp: Path, budget: Budget) -> int:
        entries = 0
        for i, layer in enumerate(layers):
            with src.reader.open(src.reader.blob_name(layer.digest)) as raw:
                stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if layer.media_type in GZIP_TYPES \
                    else raw  # type: ignore[assignment]
                entries += extract_layer(stream, tmp, prefix=repo_path, budget=budget,
                                         what=f"layer {i + 1} ({layer.digest[:19]})")
        return entries

    result = _populate(Path(stage_dir), repo_path, max_bytes, fill)
    result.layers = layers
    return result


def populate_from_tar(tar_path: str | os.PathLike[str], stage_dir: str | os.PathLike[str], *, repo_path: str,
                      max_bytes: int, sha256: str | None = None) -> Extracted:
    """An edge-commit tar (repo/ at its top): check its sha256 first, then extract `repo_path` from it."""
    p = Path(tar_path)
    if not p.is_file():
        raise StageError("commit archive not found", where=str(p), fix="run 'edgeci compose' first")
    if max_bytes and p.stat().st_size > max_bytes:
        raise StageError(f"archive is larger than stage.max_archive_bytes ({human_bytes(max_bytes)})", where=str(p),
                         fix="raise stage.max_archive_bytes if the archive is genuinely that large")
    if sha256 and sha256_file(p) != sha256.removeprefix("sha256:"):
        raise StageError("commit archive does not match the sha256 in the build record (corrupt or replaced)",
                         where=str(p), fix="run 'edgeci compose' again")

    def fill(tmp: Path, budget: Budget) -> int:
        with open(p, "rb") as raw:  # tarfile's r|* detects gzip/xz/bzip2 itself
            return extract_layer(raw, tmp, prefix=repo_path, budget=budget, what=p.name)

    return _populate(Path(stage_dir), repo_path, max_bytes, fill)


def _populate(stage_dir: Path, repo_path: str, max_bytes: int, fill: Callable[[Path, Budget], int]) -> Extracted:
    prefix = _clean_name(repo_path, "stage.repo_path")
    if not prefix:
        raise StageError("stage.repo_path is empty", fix="set it to the repo's path in the image")
    try:
        stage_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=stage_dir, prefix=".extract-"))
    except OSError as e:
        raise _disk_error(e, stage_dir) from None
    budget = Budget(max_bytes, what="the extracted repository")
    try:
        entries = fill(tmp, budget)
        repo = tmp / prefix
        if not (repo / "config").is_file() or not (repo / "objects").is_dir():
            raise StageError(f"the image holds no ostree repository at '{prefix}'",
                             fix="check stage.repo_path, or the compose produced a broken image")
        try:
            _swap_in(stage_dir, tmp, prefix.split("/")[0])
        except OSError as e:
            raise _disk_error(e, stage_dir) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Extracted(stage_dir / prefix, entries=entries, bytes=budget.used)


def check_repo_commit(repo: Path, ref: str, expected: str) -> None:
    """The extracted repo's ref must point at the record's commit, and the commit must be complete."""
    from edgeci.tools import ostree

    tip = ostree.rev_parse(repo, ref)
    if tip is None:
        raise StageMismatch(f"the image's repository has no ref '{ref}' (expected commit {expected})",
                            where=str(repo), fix="check the blueprint's ref, or compose again")
    if tip != expected:
        raise StageMismatch(f"the image's repository has {ref} at {tip}, but the record expects {expected}",
                            where=str(repo), fix="push and stage the image of this compose (edgeci push)")
    if not ostree.has_commit(repo, expected):
        raise StageError(f"commit {expected} in the image's repository is partial", where=str(repo),
                         fix="compose again")


def local_image_path(reference: str, resolve: Callable[[str], Path]) -> Path | None:
    """The layout/archive path of an `oci:PATH[:TAG]` or `oci-archive:PATH[:TAG]` reference; None for a registry."""
    for prefix in ("oci:", "oci-archive:"):
        if reference.startswith(prefix):
            return resolve(reference[len(prefix):].split(":")[0])
    return None


def extract_pushed(destination: str, digest: str, dest_dir: str | os.PathLike[str], *, repo_path: str,
                   max_bytes: int, resolve: Callable[[str], Path], access: Any = None,
                   scratch_parent: str | os.PathLike[str] | None = None) -> Extracted:
    """The ostree repo inside exactly the pushed image DESTINATION@DIGEST, extracted into `dest_dir`.

    A local layout/archive is opened in place; a registry image is copied by digest with skopeo into a scratch
    layout (under `scratch_parent`, removed afterwards). Every layer is verified before anything is written.
    `access` is a tools.skopeo.Access for the registry (TLS, credentials, retries).
    """
    local = local_image_path(destination, resolve)
    pulled: str | None = None
    try:
        if local is not None:
            src = open_image(local, digest, max_bytes=max_bytes)
        else:
            from edgeci.tools import skopeo

            parent = Path(scratch_parent) if scratch_parent is not None else Path(dest_dir).parent
            parent.mkdir(parents=True, exist_ok=True)
            pulled = tempfile.mkdtemp(dir=parent, prefix=".pull-")
            name = destination.split("@")[0]
            source = name if "://" in name else f"docker://{name}"
            a = access or skopeo.Access()
            skopeo.copy(f"{source}@{digest}", f"oci:{pulled}:pulled", retry_times=a.retry_times,
                        src_tls_verify=a.tls_verify, authfile=a.authfile, src_creds=a.creds,
                        attempts=a.attempts, backoff=a.backoff)
            src = open_image(pulled, digest, max_bytes=max_bytes)
        with src:
            if src.digest != digest:
                raise StageError(f"the image is {src.digest}, the record says {digest}",
                                 where=f"{destination}@{digest}")
            return populate_from_image(src, dest_dir, repo_path=repo_path, max_bytes=max_bytes)
    finally:
        if pulled:
            shutil.rmtree(pulled, ignore_errors=True)
