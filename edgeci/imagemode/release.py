"""Promote an image-mode image: the tested digest (never what a tag points at now) copied from the stage
repository to production with its signatures, the version tag first and the production tag last, a releases
log, anti-rollback by version, and a refusal when the production tag moved behind the gate's back.

    skopeo copy --all --preserve-digests docker://STAGE@sha256:… docker://PROD:VERSION   (signatures too)
    skopeo copy docker://PROD@sha256:… docker://PROD:TAG                                 (last)

Devices following PROD:TAG see the new image only once everything else is in place; a promotion stopped
before the last step leaves PROD:TAG where it was (PROD:VERSION then exists, unused, and the same promotion
can run again).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeci.errors import PromotionError, PromotionRefused, RegistryError
from edgeci.imagemode.sign import Endpoint, Signer, copy
from edgeci.tools import skopeo
from edgeci.version import compare_versions, parse_semver

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass
class Promotion:
    digest: str
    version: str
    previous: str | None  # the digest the production tag pointed at before
    refs: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "version": self.version, "previous": self.previous, "refs": list(self.refs)}


def read_releases(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The releases log (a JSON list, oldest first); [] when it does not exist yet."""
    p = Path(path)
    if not p.exists():
        return []
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PromotionError(f"unreadable releases log: {e}", where=str(p),
                             fix="restore it from the registry's history or a backup") from None
    if not isinstance(data, list):
        raise PromotionError("the releases log is not a JSON list", where=str(p))
    return data


def _write_releases(path: Path, releases: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".releases-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(releases, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def current_digest(ref: str, endpoint: Endpoint | None) -> str | None:
    """The manifest digest docker://REPO:TAG points at now, or None when the tag (or repository) does not exist."""
    ep = endpoint or Endpoint()
    try:
        raw = skopeo.inspect(ref, raw=True, tls_verify=ep.tls_verify, authfile=ep.authfile, creds=ep.creds)["_raw"]
    except RegistryError as e:
        if "manifest unknown" in e.message or "unknown to" in e.message:
            return None
        raise
    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


def promote(
    *,
    digest: str,
    version: str,
    stage_repo: str,
    prod_repo: str,
    prod_tag: str,
    expected_previous: str | None,
    releases_log: str | os.PathLike[str],
    registries_d: str | os.PathLike[str] | None = None,
    stage_endpoint: Endpoint | None = None,
    prod_endpoint: Endpoint | None = None,
    signer: Signer | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Promotion:
    """Copy STAGE@DIGEST to PROD:VERSION with its signatures (plus a production signature when `signer`),
    then move PROD:PROD_TAG to it and append to the releases log.

    `expected_previous` is the digest PROD:PROD_TAG pointed at when the gate decided (None: the tag did not
    exist). PromotionRefused (exit 1) when the version does not go up or the tag moved since. `extra` is kept
    in the release's log entry (approvers, blueprint, packages, layers)."""
    if not DIGEST_RE.match(digest):
        raise PromotionError(f"'{digest}' is not a manifest digest", where="promote",
                             fix="promote the digest the boot test recorded (sha256:…)")
    if parse_semver(version) is None:
        raise PromotionRefused(f"version '{version}' is not semver", where="promote")
    stage_repo = stage_repo.removeprefix("docker://").rstrip("/")
    prod_repo = prod_repo.removeprefix("docker://").rstrip("/")
    log_path = Path(releases_log)
    releases = read_releases(log_path)
    if releases:
        last = releases[-1]
        if compare_versions(version, str(last["version"])) <= 0:
            raise PromotionRefused(f"version {version} is not above production's {last['version']} "
                                   f"({last['digest']})", where=str(log_path),
                                   fix="bump the version; a rollback publishes a new, higher version")
    tag_ref = f"docker://{prod_repo}:{prod_tag}"

    def check_tag() -> str | None:
        now = current_digest(tag_ref, prod_endpoint)
        if now != expected_previous:
            raise PromotionRefused(
                f"{tag_ref} points at {now or 'nothing'}, but the gate saw {expected_previous or 'no tag'}: "
                "someone moved it since the gate", where=tag_ref,
                fix="find out who moved it, then run the gate again")
        return now

    previous = check_tag()
    version_ref = f"docker://{prod_repo}:{version}"
    got = copy(f"docker://{stage_repo}@{digest}", version_ref, registries_d=registries_d, signer=signer,
               src_endpoint=stage_endpoint, dest_endpoint=prod_endpoint, all_images=True, preserve_digests=True)
    if got.digest != digest:
        raise PromotionError(f"production stored {got.digest} for {version_ref}, not {digest}", where=version_ref,
                             fix="the registry rewrote the manifest; production's tag was not moved")
    check_tag()  # still where the gate saw it, right before it moves
    moved = copy(f"docker://{prod_repo}@{digest}", tag_ref, registries_d=registries_d, src_endpoint=prod_endpoint,
                 dest_endpoint=prod_endpoint, preserve_digests=True)
    if moved.digest != digest:
        raise PromotionError(f"{tag_ref} now points at {moved.digest}, not {digest}", where=tag_ref)
    refs = [version_ref, tag_ref, f"docker://{prod_repo}@{digest}"]
    releases.append({
        **dict(extra or {}),
        "version": version, "digest": digest, "previous": previous, "tag": prod_tag,
        "source": f"docker://{stage_repo}@{digest}", "refs": refs,
        "promoted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    })
    _write_releases(log_path, releases)
    return Promotion(digest, version, previous, refs)
