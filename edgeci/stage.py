"""The stage repository: extract the ostree repo from an edge-container image safely, serve it, verify it.

Extraction verifies every layer digest (and uncompressed diff_id) before writing a byte, then writes
only entries below the repo path, refusing absolute paths, `..`, links that leave the repo, device
nodes and fifos, and archives over the size bound; it writes into a temporary directory inside the
stage directory, swapped into place only when complete. StageServer runs `python -m
edgeci.stageserver` in the background; wait_for_commit polls a stage host until it serves a commit.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from edgeci.errors import StageError, StageMismatch
from edgeci.oci import CHUNK, ArchiveReader, OCIError
from edgeci.wait import Waiting, WaitTimeout

if TYPE_CHECKING:
    from edgeci.config import Config

GZIP_TYPES = ("application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip")
TAR_TYPES = ("application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar")
PID_FILE = "stageserver.json"
LOG_FILE = "stageserver.log"


def _fmt_bytes(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"


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
                f"{self.what} is larger than stage.max_archive_bytes ({_fmt_bytes(self.limit)})",
                fix="raise stage.max_archive_bytes if the image is genuinely that large",
            )


# -- image sources -------------------------------------------------------------------------------

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
        raise StageError(f"archive is larger than stage.max_archive_bytes ({_fmt_bytes(max_bytes)})",
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


# -- safe extraction -----------------------------------------------------------------------------

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


# -- populating the stage directory --------------------------------------------------------------

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
        raise StageError(f"archive is larger than stage.max_archive_bytes ({_fmt_bytes(max_bytes)})", where=str(p),
                         fix="raise stage.max_archive_bytes if the archive is genuinely that large")
    if sha256:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        if h.hexdigest() != sha256.removeprefix("sha256:"):
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


# -- HTTP -------------------------------------------------------------------------------------------

def _opener(url: str) -> urllib.request.OpenerDirector:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in ("127.0.0.1", "localhost", "::1"):
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def ref_url(base: str, ref: str) -> str:
    return f"{base.rstrip('/')}/refs/heads/{ref}"


def fetch_ref(base: str, ref: str, *, timeout: float = 10.0) -> str | None:
    """The checksum BASE/refs/heads/REF serves; None when it answers 404.

    Unreachable or other HTTP errors raise StageError naming the URL.
    """
    url = ref_url(base, ref)
    try:
        with _opener(url).open(url, timeout=timeout) as resp:
            body = resp.read(4096).decode("ascii", errors="replace").strip()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise StageError(f"stage answered HTTP {e.code} {e.reason}", where=url,
                         fix="check the stage server's log") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        reason = getattr(reason, "strerror", None) or str(reason)
        raise StageError(f"stage unreachable: {reason}", where=url,
                         fix="check that the stage server runs and stage.url") from None
    return body


def wait_for_commit(
    base: str,
    ref: str,
    expected: str,
    *,
    deadline: float,
    interval: float = 5.0,
    backoff: float = 1.5,
    max_interval: float = 60.0,
    progress: Callable[[str, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Poll BASE/refs/heads/REF until it serves `expected`; StageMismatch (naming both) at the deadline.

    A stage that was never reachable is an infrastructure error (StageError), not a mismatch.
    """
    served: dict[str, str | None] = {"last": None}
    reached = {"ever": False}
    url = ref_url(base, ref)

    def check() -> tuple[str, str | None]:
        try:
            value = fetch_ref(base, ref, timeout=min(30.0, max(1.0, interval * 2)))
        except StageError as e:  # a stage host restarting its container: not yet, until the deadline
            return e.message, None
        reached["ever"] = True
        served["last"] = value
        if value == expected:
            return f"serves {expected}", value
        if value is None:
            return f"no ref {ref} yet", None
        return f"serves {value}", None

    waiting: Waiting[str] = Waiting(deadline=deadline, interval=interval, backoff=backoff,
                                    max_interval=max_interval, progress=progress, sleep=sleep, clock=clock)
    try:
        return waiting.wait(check, what=f"{url} to serve {expected}")
    except WaitTimeout as e:
        if not reached["ever"]:
            raise StageError(f"{e.last_state} (gave up after {deadline:g} s)", where=url,
                             fix="check that the stage host runs the edge-container and stage.url") from None
        last = served["last"]
        raise StageMismatch(
            f"after {deadline:g} s the stage serves {last or 'no commit'}, expected {expected}",
            where=url,
            fix="check podman auto-update on the stage host (journalctl -u podman-auto-update), "
                "or raise stage.wait_deadline",
        ) from None


# -- the stage server process ---------------------------------------------------------------------

class StageServer:
    """`python -m edgeci.stageserver DIR` in the background; a context manager that always stops it.

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

    def start(self) -> StageServer:
        from edgeci.tools.run import start

        if not self.directory.is_dir():
            raise StageError("nothing to serve: directory missing", where=str(self.directory))
        self._tmp = tempfile.mkdtemp(prefix="edgeci-stage-")
        port_file = Path(self._tmp) / "port"
        log = (self.state_dir / LOG_FILE) if self.state_dir else Path(self._tmp) / LOG_FILE
        log.parent.mkdir(parents=True, exist_ok=True)
        self.process = start([sys.executable, "-m", "edgeci.stageserver", str(self.directory),
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

    def __enter__(self) -> StageServer:
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
    return b"edgeci.stageserver" in args and directory.encode() in args


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


@contextlib.contextmanager
def serving(directory: str | os.PathLike[str], **kw: Any) -> Iterator[StageServer]:
    """`with serving(repo) as server:` — start, yield, always stop."""
    server = StageServer(directory, **kw).start()
    try:
        yield server
    finally:
        server.stop()


# -- the stage host's set-up (podman + systemd), as the runbook does it by hand --------------------

def units_image(cfg: Config, name: str, push: Mapping[str, Any] | None) -> str:
    """HOST/REPO:TAG the stage host runs: the pushed repository with its moving tag ('latest').

    podman auto-update follows a tag, so the unit names the image by tag, not by digest.
    """
    from edgeci.errors import ConfigError

    if push:
        dest = str(push.get("destination") or "")
        tags = [str(t) for t in push.get("tags") or []]
    else:
        dest = cfg.registry.image.format(blueprint=name)
        tags = ["latest"]
    if not dest.startswith("docker://"):
        raise ConfigError(f"the stage host pulls from a registry, but the image goes to '{dest}'",
                          where="registry.image",
                          fix="set registry.image to docker://HOST/REPO (podman auto-update needs a registry)")
    tag = "latest" if "latest" in tags or not tags else tags[0]
    return f"{dest[len('docker://'):]}:{tag}"


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def render_units(cfg: Config, name: str, image: str) -> dict[str, str]:
    """The stage host's files: podman-run.sh, container-NAME.service, enable-auto-update.sh, README.md.

    The unit is what `podman generate systemd --new --name NAME` prints for the run line (podman 4).
    """
    container = cfg.stage.container_name.format(blueprint=name)
    cport = cfg.stage.container_port
    hport = urllib.parse.urlsplit(cfg.stage.url).port if cfg.stage.url else None
    publish = f"{hport or cport}:{cport}"
    unit = f"container-{container}.service"
    authfile = cfg.stage.host_authfile
    run_opts = ["-d", "--name", container, "--label", "io.containers.autoupdate=registry"]
    if authfile:
        run_opts += ["--label", f"io.containers.autoupdate.authfile={authfile}", "--authfile", authfile]
    if not cfg.registry.tls_verify:
        run_opts.append("--tls-verify=false")
    run_opts += ["-p", publish]
    run_line = "podman run " + " ".join(_shell_quote(o) for o in [*run_opts, image])

    unit_run = [o for o in run_opts if o != "-d"]
    pairs: list[str] = []
    i = 0
    while i < len(unit_run):  # podman prints one option per line, values on the option's line
        opt = unit_run[i]
        if opt in ("--name", "--label", "--authfile", "-p") and i + 1 < len(unit_run):
            pairs.append(f"{opt} {unit_run[i + 1]}")
            i += 2
        else:
            pairs.append(opt)
            i += 1
    exec_start = ["--cidfile=%t/%n.ctr-id", "--cgroups=no-conmon", "--rm", "--sdnotify=conmon", "-d",
                  "--replace", *pairs[:-1], f"{pairs[-1]} {image}"]
    service = "\n".join([
        f"# {unit}",
        f"# generated by edgeci for blueprint {name}; equivalent to",
        f"# `podman generate systemd --new --name {container}` for the run line in podman-run.sh",
        "",
        "[Unit]",
        f"Description=Podman {unit}",
        "Documentation=man:podman-generate-systemd(1)",
        "Wants=network-online.target",
        "After=network-online.target",
        "RequiresMountsFor=%t/containers",
        "",
        "[Service]",
        "Environment=PODMAN_SYSTEMD_UNIT=%n",
        "Restart=on-failure",
        "TimeoutStopSec=70",
        "ExecStartPre=/bin/rm \\",
        "\t-f %t/%n.ctr-id",
        "ExecStart=/usr/bin/podman run \\",
        *[f"\t{o} \\" for o in exec_start[:-1]],
        f"\t{exec_start[-1]}",
        "ExecStop=/usr/bin/podman stop \\",
        "\t--ignore -t 10 \\",
        "\t--cidfile=%t/%n.ctr-id",
        "ExecStopPost=/usr/bin/podman rm \\",
        "\t-f \\",
        "\t--ignore -t 10 \\",
        "\t--cidfile=%t/%n.ctr-id",
        "Type=notify",
        "NotifyAccess=all",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])
    run_sh = "\n".join([
        "#!/bin/sh",
        f"# Run the stage container for blueprint {name} by hand (the systemd unit does the same).",
        "# io.containers.autoupdate=registry: podman auto-update pulls the tag again and restarts",
        "# the container whenever the registry's digest for it changes.",
        "set -eu",
        f"exec {run_line}",
        "",
    ])
    enable_sh = "\n".join([
        "#!/bin/sh",
        f"# Install {unit} and enable podman auto-update on the stage host (run as root).",
        "set -eu",
        'here="$(cd "$(dirname "$0")" && pwd)"',
        f'install -m 0644 "$here/{unit}" /etc/systemd/system/{unit}',
        "systemctl daemon-reload",
        f"systemctl enable --now {unit}",
        "# checks the registry daily by default; `systemctl edit podman-auto-update.timer` to change",
        "systemctl enable --now podman-auto-update.timer",
        "",
    ])
    host = image.split("/", 1)[0]
    notes = []
    if authfile:
        notes.append(f"- The registry needs credentials: `podman login --authfile {authfile} {host}` once on the "
                     "stage host (auto-update reads the same file through the label).")
    else:
        notes.append(f"- If {host} needs credentials, set stage.host_authfile and regenerate, then "
                     f"`podman login --authfile FILE {host}` on the stage host.")
    if not cfg.registry.tls_verify:
        notes.append(f"- {host} is plain HTTP: add `[[registry]] location=\"{host}\" insecure=true` to "
                     "/etc/containers/registries.conf so auto-update can reach it.")
    readme = "\n".join([
        f"# Stage host for blueprint {name}",
        "",
        f"The stage host runs the edge-container image `{image}` with podman and serves its ostree repo",
        f"on port {hport or cport} (`http://STAGE-HOST:{hport or cport}/repo`; set stage.url to it).",
        "podman auto-update replaces the container whenever `edgeci push` moves the tag.",
        "",
        "On the stage host, as root:",
        "",
        "    sh enable-auto-update.sh         # installs and starts the unit, enables podman-auto-update.timer",
        "    podman auto-update --dry-run     # shows whether the container would be updated",
        "",
        "In CI, after `edgeci push`:",
        "",
        f"    edgeci stage wait {name}",
        "",
        "Files:",
        "",
        "- podman-run.sh: the podman run line, for a manual start",
        f"- {unit}: the systemd unit (`podman generate systemd --new` equivalent)",
        "- enable-auto-update.sh: installs the unit and enables podman-auto-update.timer",
        "",
        "Notes:",
        "",
        *notes,
        "",
    ])
    return {"podman-run.sh": run_sh, unit: service, "enable-auto-update.sh": enable_sh, "README.md": readme}
