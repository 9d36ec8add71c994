"""Push an image-mode image by digest and sign it with containers' own signatures, and write what a device
needs to enforce them (/etc/containers/policy.json, /etc/containers/registries.d/*.yaml, the public key).

Two signature kinds, whichever the site configures:

- GPG "simple signing" (`skopeo copy --sign-by FINGERPRINT`, the key in a GnuPG home): signatures are files in
  a *lookaside* store, written through `lookaside-staging: file:///DIR` in registries.d and read by devices
  from `lookaside: https://…` (a web server publishing DIR) — docker-registry has no signature API.
- sigstore (`--sign-by-sigstore-private-key KEY`, `--sign-passphrase-file`): signatures are stored in the
  registry as attachments (`use-sigstore-attachments: true`).

A signature names the reference it was signed for (the push destination). Promotion copies the stage's
signatures to production unchanged, so the device's policy maps the production repository onto the stage's
(`remapIdentity`, `signed_prefix` below): the signature says "stage/NAME@DIGEST is this image", and the
device accepts it for prod/NAME@DIGEST and no other repository.

skopeo runs through edgeci.tools.skopeo.copy with `--registries.d`/`--policy` (global options), GNUPGHOME in
its environment and a hook that names refused or unstorable signatures; everything else is its classification.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgeci.errors import ConfigError, RegistryError
from edgeci.tools import skopeo
from edgeci.tools.run import mask
from edgeci.tools.skopeo import Creds, _last_message

PathLike = str | os.PathLike[str]
DEVICE_POLICY = "etc/containers/policy.json"
DEVICE_REGISTRIES_D = "etc/containers/registries.d"
DEVICE_KEY_DIR = "etc/pki/containers"
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class GpgSigner:
    """Sign with a GPG key by fingerprint from `homedir` (GNUPGHOME)."""

    fingerprint: str
    homedir: Path

    def argv(self) -> list[str]:
        return [f"--sign-by={self.fingerprint}"]

    def env(self) -> dict[str, str]:
        return {"GNUPGHOME": os.fspath(self.homedir)}


@dataclass(frozen=True)
class SigstoreSigner:
    """Sign with a sigstore (cosign-format) private key; the passphrase comes from a file, never argv."""

    key: Path
    passphrase_file: Path | None = None

    def argv(self) -> list[str]:
        out = [f"--sign-by-sigstore-private-key={os.fspath(self.key)}"]
        if self.passphrase_file is not None:
            out.append(f"--sign-passphrase-file={os.fspath(self.passphrase_file)}")
        return out

    def env(self) -> dict[str, str]:
        return {}


Signer = GpgSigner | SigstoreSigner


@dataclass(frozen=True)
class Endpoint:
    """How skopeo reaches one registry (the repository's host): TLS, credentials or an authfile."""

    tls_verify: bool | None = None
    creds: Creds | None = None
    authfile: str | None = None


def _scope(ref: str) -> str:
    """docker://HOST/REPO[:TAG|@DIGEST] → HOST/REPO (the scope policy.json and registries.d use)."""
    rest = ref.removeprefix("docker://").split("@", 1)[0]
    host, _, path = rest.partition("/")
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path = path[: len(path) - len(last)] + last.split(":", 1)[0]
    return f"{host}/{path}"


# -- registries.d and policy.json ------------------------------------------------------------------------

def registries_d_entry(*, lookaside: str | None = None, lookaside_staging: str | None = None,
                       use_sigstore_attachments: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if lookaside:
        out["lookaside"] = lookaside
    if lookaside_staging:
        out["lookaside-staging"] = lookaside_staging
    if use_sigstore_attachments:
        out["use-sigstore-attachments"] = True
    return out


def write_registries_d(directory: PathLike, scopes: Mapping[str, Mapping[str, Any]],
                       filename: str = "edgeci.yaml") -> Path:
    """DIR/FILENAME with `docker: {SCOPE: entry}`; returns the file."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / filename
    path.write_text(yaml.safe_dump({"docker": {k: dict(v) for k, v in scopes.items()}}, sort_keys=True))
    return path


def signed_identity(prod_scope: str, signed_scope: str | None, *, follow_tags: bool) -> dict[str, Any] | None:
    """The signedIdentity a device applies to PROD_SCOPE (None: containers' default, matchRepoDigestOrExact).

    - pinned (follow_tags=False): the image is pulled by digest, or by exactly the tag it was signed for;
      signatures made for another repository (the stage) count through remapIdentity.
    - follow_tags=True: any tag of the production repository, as long as the signature was made for the
      repository the images are signed in (exactRepository). A device following a moving tag (bootc's
      default) needs this; the version only going up is then promote's and the device's check, not the
      signature's.
    """
    signed = signed_scope or prod_scope
    if follow_tags:
        return {"type": "exactRepository", "dockerRepository": signed}
    if signed != prod_scope:
        return {"type": "remapIdentity", "prefix": prod_scope, "signedPrefix": signed}
    return None


def gpg_requirement(key_path: str, identity: dict[str, Any] | None = None) -> dict[str, Any]:
    req: dict[str, Any] = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": key_path}
    if identity:
        req["signedIdentity"] = identity
    return req


def sigstore_requirement(public_key_path: str, identity: dict[str, Any] | None = None) -> dict[str, Any]:
    req: dict[str, Any] = {"type": "sigstoreSigned", "keyPath": public_key_path}
    if identity:
        req["signedIdentity"] = identity
    return req


def device_policy(scopes: Mapping[str, Sequence[Mapping[str, Any]]], *,
                  insecure_local_transports: bool = False) -> dict[str, Any]:
    """policy.json: reject everything by default; each docker scope (HOST/REPO) requires its signatures.

    With `insecure_local_transports`, local transports (containers-storage, oci, dir) are accepted
    unsigned: they only hold what a signed pull already put there."""
    for scope, reqs in scopes.items():
        if not reqs:
            raise ConfigError(f"no signature requirement for {scope}: a device would accept anything",
                              where="image_mode.policy")
    policy: dict[str, Any] = {"default": [{"type": "reject"}],
                              "transports": {"docker": {k: [dict(r) for r in v] for k, v in scopes.items()}}}
    if insecure_local_transports:
        for t in ("containers-storage", "oci", "dir"):
            policy["transports"][t] = {"": [{"type": "insecureAcceptAnything"}]}
    return policy


@dataclass
class DeviceConfig:
    policy: Path
    registries_d: Path
    public_key: Path


def write_device_config(
    root: PathLike,
    *,
    prod_repo: str,
    lookaside_url: str,
    public_key: str,
    signed_repo: str | None = None,
    follow_tags: bool = False,
    key_name: str = "edgeci.gpg",
    device_root: str = "/",
) -> DeviceConfig:
    """What a device needs to enforce GPG-signed production images, written under `root` as the device's
    /etc: policy.json, registries.d/edgeci.yaml (lookaside for the production repository and, when the
    signatures were made for another repository, for that one) and the public key. `device_root` is where
    the key path in policy.json points (/ on a device; a test passes `root` itself). `follow_tags`: see
    signed_identity()."""
    base = Path(root)
    key_rel = f"{DEVICE_KEY_DIR}/{key_name}"
    (base / DEVICE_KEY_DIR).mkdir(parents=True, exist_ok=True)
    key_file = base / key_rel
    key_file.write_text(public_key)
    prod_scope = _scope(prod_repo)
    signed_scope = _scope(signed_repo) if signed_repo else None
    req = gpg_requirement(os.path.join(device_root, key_rel),
                          signed_identity(prod_scope, signed_scope, follow_tags=follow_tags))
    policy_path = base / DEVICE_POLICY
    policy_path.parent.mkdir(parents=True, exist_ok=True)
    policy_path.write_text(json.dumps(device_policy({prod_scope: [req]}, insecure_local_transports=True),
                                      indent=2) + "\n")
    scopes = {prod_scope: registries_d_entry(lookaside=lookaside_url)}
    rd = write_registries_d(base / DEVICE_REGISTRIES_D, scopes)
    return DeviceConfig(policy_path, rd, key_file)


# -- skopeo copy with signatures ---------------------------------------------------------------------------

@dataclass
class CopyResult:
    digest: str


def copy(
    src: str,
    dest: str,
    *,
    registries_d: PathLike | None = None,
    policy: PathLike | None = None,
    signer: Signer | None = None,
    src_endpoint: Endpoint | None = None,
    dest_endpoint: Endpoint | None = None,
    all_images: bool = False,
    preserve_digests: bool = False,
    remove_signatures: bool = False,
    timeout: float | None = 3600,
) -> CopyResult:
    """skopeo [--registries.d DIR] [--policy FILE] copy … SRC DEST (edgeci.tools.skopeo.copy); the manifest
    digest written. Failures become RegistryError naming the registry, the signature policy that refused the
    source, or the signature that could not be made or stored."""
    src_ep, dest_ep = src_endpoint or Endpoint(), dest_endpoint or Endpoint()
    global_options = []
    if registries_d is not None:
        global_options.append(f"--registries.d={os.fspath(registries_d)}")
    if policy is not None:
        global_options.append(f"--policy={os.fspath(policy)}")
    extra = (["--all"] if all_images else []) + (["--remove-signatures"] if remove_signatures else [])
    if signer is not None:
        extra += signer.argv()

    def on_error(stderr: str, image: str, had_creds: bool) -> RegistryError | None:
        return _classify_signatures(stderr, src, dest)

    with tempfile.TemporaryDirectory(prefix="edgeci-copy-") as tmp:
        digest = skopeo.copy(
            src, dest, digestfile=Path(tmp) / "digest",
            src_tls_verify=src_ep.tls_verify, dest_tls_verify=dest_ep.tls_verify,
            src_creds=src_ep.creds, dest_creds=dest_ep.creds,
            src_authfile=src_ep.authfile, dest_authfile=dest_ep.authfile,
            preserve_digests=preserve_digests, extra=extra, global_options=global_options,
            env=signer.env() if signer is not None else None, on_error=on_error, timeout=timeout)
    if digest is None or not DIGEST_RE.fullmatch(digest):
        raise RegistryError(f"skopeo wrote no manifest digest (got {str(digest)[:80]!r})", where=dest)
    return CopyResult(digest)


def _classify_signatures(stderr: str, src: str, dest: str) -> RegistryError | None:
    """A refused source signature or a signature that could not be made or stored; None for anything else
    (edgeci.tools.skopeo.classify names the registry then)."""
    text = stderr.lower()
    if "source image rejected" in text or ("signature" in text and ("rejected" in text or "invalid" in text)):
        msg = re.search(r"Source image rejected: ([^\n\"]*)", stderr)
        return RegistryError(f"signature policy refused the image: {msg.group(1) if msg else stderr.strip()[-200:]}",
                             where=src, fix="sign the image with a key the policy trusts")
    if "signing" in text or "sign-by" in text or "gpg" in text or "lookaside" in text or "signature" in text:
        return RegistryError(f"signing or storing the signature failed: {mask(_last_message(stderr))[-300:]}",
                             where=dest,
                             fix="check the signing key (GNUPGHOME, fingerprint) and that registries.d gives the "
                                 "repository a writable lookaside-staging or sigstore attachments")
    return None


def signature_store(registries_d: PathLike | None, repo: str) -> dict[str, Any]:
    """The registries.d entry that applies to HOST/REPO: the longest matching scope, else default-docker.

    Without one, skopeo writes GPG signatures to the machine's own /var/lib/containers/sigstore, where no
    device finds them: push_signed refuses that instead."""
    if registries_d is None:
        return {}
    best: tuple[int, dict[str, Any]] = (-1, {})
    default: dict[str, Any] = {}
    for f in sorted(Path(registries_d).glob("*.yaml")):
        try:
            data = yaml.safe_load(f.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"unreadable registries.d file: {e}", where=str(f)) from None
        if isinstance(data.get("default-docker"), dict):
            default = data["default-docker"]
        for scope, entry in (data.get("docker") or {}).items():
            s = str(scope)
            if (repo == s or repo.startswith(s.rstrip("/") + "/")) and len(s) > best[0] and isinstance(entry, dict):
                best = (len(s), entry)
    return best[1] if best[0] >= 0 else default


@dataclass
class PushResult:
    """What was pushed. skopeo (without a terminal) does not say which blobs the registry already had, so
    the bytes a push uploads are computed from layers: the whole image into an empty repository,
    edgeci.imagemode.build.update_bytes(previous, new) when the previous image is already there."""

    digest: str
    refs: list[str]  # docker://HOST/REPO:TAG for every tag, then docker://HOST/REPO@DIGEST
    image_bytes: int  # the manifest's layers, compressed


def push_signed(
    archive: PathLike,
    repo: str,
    tags: Sequence[str],
    *,
    expected_digest: str,
    layers: Sequence[Mapping[str, Any]] = (),
    signer: Signer | None,
    registries_d: PathLike | None,
    endpoint: Endpoint | None = None,
) -> PushResult:
    """Copy the OCI archive to docker://HOST/REPO:TAGS[0] (signed), then each further tag from the pushed
    digest; refuses when the registry stored another digest than the archive's (`expected_digest`)."""
    if not tags:
        raise ConfigError("no tag to push", where=repo)
    repo = repo.removeprefix("docker://").rstrip("/")
    if signer is not None:
        store = signature_store(registries_d, repo)
        if isinstance(signer, GpgSigner) and not store.get("lookaside-staging") and not store.get("lookaside"):
            raise ConfigError(f"no signature store for {repo}: GPG signatures would stay on this machine",
                              where=os.fspath(registries_d) if registries_d else "registries.d",
                              fix=f"give {repo} a lookaside-staging (file:///DIR) and lookaside (the URL devices "
                                  "read DIR from) in registries.d")
        if isinstance(signer, SigstoreSigner) and not store.get("use-sigstore-attachments"):
            raise ConfigError(f"no sigstore attachments for {repo}", where=os.fspath(registries_d or "registries.d"),
                              fix=f"set use-sigstore-attachments: true for {repo} in registries.d")
    first = copy(f"oci-archive:{os.fspath(archive)}", f"docker://{repo}:{tags[0]}", registries_d=registries_d,
                 signer=signer, dest_endpoint=endpoint, preserve_digests=True)
    if first.digest != expected_digest:
        raise RegistryError(f"the registry stored {first.digest}, the archive is {expected_digest}",
                            where=f"docker://{repo}:{tags[0]}", fix="the registry rewrote the manifest; check it")
    refs = [f"docker://{repo}:{tags[0]}"]
    for t in tags[1:]:
        # Signatures belong to the digest: a further tag needs no signature of its own.
        r = copy(f"docker://{repo}@{first.digest}", f"docker://{repo}:{t}", registries_d=registries_d,
                 src_endpoint=endpoint, dest_endpoint=endpoint, preserve_digests=True)
        if r.digest != first.digest:
            raise RegistryError(f"tag {t} points at {r.digest}, not {first.digest}", where=f"docker://{repo}:{t}")
        refs.append(f"docker://{repo}:{t}")
    refs.append(f"docker://{repo}@{first.digest}")
    return PushResult(first.digest, refs, sum(int(d.get("size", 0)) for d in layers))
