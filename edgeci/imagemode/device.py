"""edgeci's stand-in for bootc on a device: what `bootc upgrade` / `bootc switch` do under the hood.

There is no bootc binary on these machines. bootc (through ostree-rs-ext) pulls the image by digest, enforcing
the device's /etc/containers/policy.json, unpacks its layers, commits the root filesystem into the device's
ostree repository (recording the manifest digest in the commit's metadata, `ostree.manifest-digest`) and
deploys that commit; `bootc rollback` makes the previous deployment the default. Here:

- `pull_and_commit(image, repo, …)` — the image-specific part, independent of any boot-test backend: real
  skopeo pulls `docker://REPO@sha256:…` (never a tag) into the device's blob cache (an OCI layout, so an
  update downloads only the layers the device lacks) with the generated policy.json and registries.d, then
  the layers are applied in order (OCI whiteouts honoured), /etc moves to /usr/etc as ostree expects, and
  real `ostree commit` writes the tree into the target repository. Returns the commit checksum and the bytes
  downloaded. A qemu/libvirt backend calls it with the path of its device's repository.
- `BootcStandInGuest` — the sysroot boot-test backend's device driven by it: deploy = pull_and_commit +
  `ostree admin deploy`, boot/rollback = the sysroot guest's. The device reports the image digest it runs
  (what `bootc status` shows), so the boot-test scenarios compare digests.

Everything named `stand-in` here is edgeci's, not bootc's; see docs/image-mode.md for the real sequence.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeci.boottest.guest import BootResult, DeployResult, Guest, PullStats, RollbackResult
from edgeci.errors import BootTestError, ConfigError, ToolError
from edgeci.imagemode import sign
from edgeci.tools.ostree import ADMIN_PREFIX, is_checksum
from edgeci.tools.run import run

STANDIN = "edgeci's stand-in for bootc upgrade (skopeo pull by digest with policy.json, unpack, ostree commit, " \
          "ostree admin deploy)"
DIGEST_KEY = "ostree.manifest-digest"  # the commit metadata key ostree-rs-ext (bootc) writes
REF_PREFIX = "ostree/container/image/"  # where bootc keeps imported images' commits (a ref per image)
_BY_DIGEST = re.compile(r"^docker://([^@]+)@(sha256:[0-9a-f]{64})$")


@dataclass
class ImageCommit:
    """An image committed into a device's ostree repository."""

    checksum: str  # the ostree commit
    digest: str  # the image's manifest digest
    downloaded_bytes: int  # blobs the device did not have yet (layers, config, manifest)
    image_bytes: int  # the image's compressed layers, all of them (what a fresh device downloads)
    layers_fetched: int
    layers: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"checksum": self.checksum, "digest": self.digest, "downloaded_bytes": self.downloaded_bytes,
                "image_bytes": self.image_bytes, "layers_fetched": self.layers_fetched, "layers": self.layers,
                "seconds": round(self.seconds, 3)}


def _blobs(layout: Path) -> dict[str, int]:
    d = layout / "blobs" / "sha256"
    return {p.name: p.stat().st_size for p in d.iterdir()} if d.is_dir() else {}


def _manifest(layout: Path, digest: str) -> dict[str, Any]:
    path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BootTestError(f"the pulled manifest {digest} is unreadable: {e}", where=str(path)) from None
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
        raise BootTestError(f"{digest} is not an image manifest (an index? pull one architecture's digest)",
                            where=str(path))
    return data


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


def _inside(root: Path, name: str) -> Path | None:
    norm = os.path.normpath(name.lstrip("/"))
    if norm in (".", "") or norm.startswith(".."):
        return None
    return root / norm


def apply_layer(blob: Path, root: Path) -> None:
    """Apply one layer tarball to `root`: whiteouts (.wh.NAME, .wh..wh..opq) first remove what lower layers
    put there; devices and fifos are skipped (an unprivileged unpack cannot make them; the device's /dev is
    devtmpfs); everything else is extracted with tarfile's "tar" filter (no absolute paths or links out)."""
    with tarfile.open(blob, mode="r:*") as tar:
        members = tar.getmembers()
        for m in members:
            target = _inside(root, m.name)
            if target is None:
                continue
            base = target.name
            if base == ".wh..wh..opq":
                if target.parent.is_dir():
                    for child in target.parent.iterdir():
                        _remove(child)
            elif base.startswith(".wh."):
                _remove(target.parent / base[len(".wh."):])
        for m in members:
            target = _inside(root, m.name)
            if target is None or target.name.startswith(".wh.") or m.ischr() or m.isblk() or m.isfifo():
                continue
            if not m.isdir() and (target.exists() or target.is_symlink()):
                _remove(target)
            elif m.isdir() and target.is_symlink():
                target.unlink()
            tar.extract(m, root, filter="tar", set_attrs=True)
            if m.isdir():  # keep directories writable for the layers above (mode restored by ostree's owner)
                target.chmod(target.stat().st_mode | stat.S_IWUSR | stat.S_IXUSR | stat.S_IRUSR)


def _ostree(repo: Path, *args: str, user_namespace: bool, timeout: float = 1800) -> str:
    prefix = list(ADMIN_PREFIX) if user_namespace else []
    r = run([*prefix, "ostree", f"--repo={repo}", *args], timeout=timeout, check=False)
    if not r.ok:
        raise ToolError(f"ostree {args[0]} failed: {(r.stderr.strip().splitlines() or ['no output'])[-1]}",
                        where=str(repo), argv=r.argv, returncode=r.returncode, stderr=r.stderr)
    return r.stdout.strip()


def pull_and_commit(
    image: str,
    repo: str | os.PathLike[str],
    *,
    ref: str,
    policy: str | os.PathLike[str],
    registries_d: str | os.PathLike[str] | None,
    blob_cache: str | os.PathLike[str],
    endpoint: sign.Endpoint | None = None,
    user_namespace: bool = True,
    subject: str = "",
) -> ImageCommit:
    """edgeci's stand-in for the pull-and-import half of `bootc upgrade`: pull `docker://REPO@sha256:…` with
    the device's policy.json into `blob_cache` (an OCI layout kept between updates), unpack it and commit its
    root filesystem to `ref` in the ostree repository `repo`. A tag is refused (pull the tested digest only);
    a signature the policy refuses is a RegistryError (exit 2 here: the caller decides what it means)."""
    m = _BY_DIGEST.match(image)
    if not m:
        raise ConfigError(f"'{image}' is not an image by digest", where="image",
                          fix="pull docker://REPO@sha256:<digest> (the tested digest, never a tag)")
    digest = m.group(2)
    started = time.monotonic()
    cache = Path(blob_cache)
    cache.mkdir(parents=True, exist_ok=True)
    before = _blobs(cache)
    # the policy judges the source's signatures; the local blob cache keeps none (an OCI layout cannot)
    got = sign.copy(image, f"oci:{cache}:{digest.replace(':', '-')}", registries_d=registries_d, policy=policy,
                    src_endpoint=endpoint, preserve_digests=True, remove_signatures=True)
    if got.digest != digest:
        raise BootTestError(f"pulled {got.digest}, not the requested {digest}", where=image,
                            fix="the registry served another manifest for that digest; check it")
    after = _blobs(cache)
    downloaded = sum(size for name, size in after.items() if name not in before)
    manifest = _manifest(cache, digest)
    layers = [str(d["digest"]) for d in manifest["layers"]]
    fetched = sum(1 for d in layers if d.removeprefix("sha256:") not in before)
    with tempfile.TemporaryDirectory(prefix="edgeci-unpack-", dir=cache.parent) as tmp:
        root = Path(tmp) / "rootfs"
        root.mkdir()
        for d in layers:
            apply_layer(cache / "blobs" / "sha256" / d.removeprefix("sha256:"), root)
        etc, usr_etc = root / "etc", root / "usr" / "etc"
        if etc.is_dir() and not etc.is_symlink():
            if usr_etc.exists():
                raise BootTestError("the image has both /etc and /usr/etc", where=image,
                                    fix="keep configuration in /etc only (bootc moves it to /usr/etc)")
            (root / "usr").mkdir(exist_ok=True)
            etc.rename(usr_etc)
        checksum = _ostree(Path(repo), "commit", f"--branch={ref}", f"--tree=dir={root}", "--owner-uid=0",
                           "--owner-gid=0", f"--add-metadata-string={DIGEST_KEY}={digest}",
                           f"--subject={subject or image}", user_namespace=user_namespace)
    if not is_checksum(checksum):
        raise ToolError(f"ostree commit printed no checksum: {checksum[:80]!r}", where=str(repo))
    return ImageCommit(checksum, digest, downloaded, sum(int(d.get("size", 0)) for d in manifest["layers"]),
                       fetched, len(layers), time.monotonic() - started)


def image_digest_of(repo: str | os.PathLike[str], checksum: str, *, user_namespace: bool = True) -> str | None:
    """The image digest an ostree commit was imported from (its ostree.manifest-digest), or None."""
    prefix = list(ADMIN_PREFIX) if user_namespace else []
    r = run([*prefix, "ostree", f"--repo={os.fspath(repo)}", "show", f"--print-metadata-key={DIGEST_KEY}",
             checksum], check=False, timeout=120)
    if not r.ok:
        return None
    value = r.stdout.strip().strip("'")
    return value if value.startswith("sha256:") else None


# -- the device's trust: what it accepts -------------------------------------------------------------------

@dataclass
class DeviceTrust:
    """What the device enforces: repositories (HOST/REPO) → the repository their signatures were made for
    (None: the same), the public key and the lookaside URL."""

    repos: Mapping[str, str | None]
    public_key: str
    lookaside_url: str = ""
    kind: str = "gpg"  # gpg | sigstore

    def write(self, etc_root: Path) -> tuple[Path, Path]:
        """/etc/containers/policy.json and registries.d under etc_root (the device's /); returns both."""
        key_name = "edgeci.gpg" if self.kind == "gpg" else "edgeci.pub"
        key = etc_root / sign.DEVICE_KEY_DIR / key_name
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_text(self.public_key)
        scopes: dict[str, list[dict[str, Any]]] = {}
        lookaside: dict[str, dict[str, Any]] = {}
        for repo, signed in self.repos.items():
            scope = sign._scope(repo)
            identity = sign.signed_identity(scope, sign._scope(signed) if signed else None, follow_tags=False)
            req = (sign.gpg_requirement(str(key), identity) if self.kind == "gpg"
                   else sign.sigstore_requirement(str(key), identity))
            scopes[scope] = [req]
            lookaside[scope] = sign.registries_d_entry(lookaside=self.lookaside_url or None,
                                                       use_sigstore_attachments=self.kind == "sigstore")
        policy = etc_root / sign.DEVICE_POLICY
        policy.parent.mkdir(parents=True, exist_ok=True)
        policy.write_text(json.dumps(sign.device_policy(scopes, insecure_local_transports=True), indent=2) + "\n")
        rd = sign.write_registries_d(etc_root / sign.DEVICE_REGISTRIES_D, lookaside)
        return policy, rd.parent


# -- the sysroot boot-test device driven by the stand-in --------------------------------------------------

@dataclass
class DeviceSettings:
    trust: DeviceTrust
    endpoint: sign.Endpoint | None = None
    image_name: str = "image"
    imported: dict[str, str] = field(default_factory=dict)  # ostree commit -> image digest hex


class BootcStandInGuest(Guest):
    """A sysroot device (edgeci.boottest.sysroot_guest) updated by edgeci's stand-in for bootc: deploy()
    pulls the image by digest with the device's policy, commits and deploys it; boot() reports the image
    digest the default deployment came from, as `bootc status` does."""

    runs_system = False
    TOOLS: tuple[str, ...] = ("ostree", "unshare", "skopeo")

    def __init__(self, inner: Any, settings: DeviceSettings) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.settings = settings
        self.etc = Path(inner.work_dir).with_name(Path(inner.work_dir).name + "-device-etc")
        self.policy = self.etc / sign.DEVICE_POLICY
        self.registries_d = self.etc / sign.DEVICE_REGISTRIES_D
        self.blob_cache = Path(inner.work_dir).with_name(Path(inner.work_dir).name + "-images")
        self.last: ImageCommit | None = None

    def start(self) -> None:
        for d in (self.etc, self.blob_cache):
            _remove(d)
        self.inner.start()
        self.policy, self.registries_d = self.settings.trust.write(self.etc)

    def deploy(self, remote: str, url: str, ref: str, commit: str | None) -> DeployResult:
        from edgeci.tools import ostree

        if not commit:
            raise BootTestError("the stand-in for bootc deploys images by digest only", where=url)
        image = f"{url.rstrip('/')}@sha256:{commit.removeprefix('sha256:')}"
        ic = pull_and_commit(image, self.inner.repo, ref=f"{REF_PREFIX}{self.settings.image_name}",
                             policy=self.policy, registries_d=self.registries_d, blob_cache=self.blob_cache,
                             endpoint=self.settings.endpoint, subject=image)
        self.settings.imported[ic.checksum] = ic.digest.removeprefix("sha256:")
        self.last = ic
        ostree.admin_deploy(self.inner.sysroot, self.inner.osname, ic.checksum)
        deployed = self.inner.deployments()
        if not deployed or deployed[0].checksum != ic.checksum:
            raise BootTestError(f"ostree admin deploy of {ic.checksum} did not make it the default deployment",
                                where=str(self.inner.sysroot))
        text = (f"{STANDIN}: {image} -> ostree commit {ic.checksum}; downloaded {ic.downloaded_bytes} B "
                f"({ic.layers_fetched} of {ic.layers} layers; the whole image is {ic.image_bytes} B)")
        stats = PullStats(bytes=ic.downloaded_bytes, content_objects=ic.layers_fetched, text=text)
        return DeployResult(ic.digest.removeprefix("sha256:"), stats)

    def _as_image(self, boot: BootResult) -> BootResult:
        """The boot as `bootc status` would show it: the image digest the deployment was imported from."""
        ostree_commit = boot.commit
        digest = self.settings.imported.get(ostree_commit or "")
        if digest is None and ostree_commit:
            found = image_digest_of(self.inner.repo, ostree_commit)
            digest = found.removeprefix("sha256:") if found else None
        if digest is not None:
            boot.commit = digest
            boot.expected_commit = digest
        boot.entry = f"{boot.entry}; ostree commit {ostree_commit}" + (f" from image sha256:{digest}" if digest
                                                                        else " (not from an image)")
        return boot

    def boot(self) -> BootResult:
        return self._as_image(self.inner.boot())

    def prove_rollback(self) -> RollbackResult:
        rr = self.inner.prove_rollback()
        rr.previous = self._as_image(rr.previous)
        rr.detail = f"{rr.detail}; the stand-in's `bootc rollback` is the same reordering of the deployments"
        return rr

    def stop(self) -> None:
        self.inner.stop()
        for d in (self.etc, self.blob_cache):
            with contextlib.suppress(OSError):
                _remove(d)


@contextlib.contextmanager
def device(inner: Any, settings: DeviceSettings) -> Iterator[BootcStandInGuest]:
    g = BootcStandInGuest(inner, settings)
    with g:
        yield g
