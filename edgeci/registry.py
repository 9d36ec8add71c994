"""Push to an OCI registry (or an OCI layout directory) by digest, with skopeo: destination and tags from
the configuration, copy, tag, and verify that the pushed manifest and layers are the archive's.

Later stages use DESTINATION@DIGEST, never a tag.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeci.config import Config
    from edgeci.junit import Case
    from edgeci.tools.skopeo import Access

TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass
class Destination:
    """Where the image goes: `base` as recorded (no tag), and the skopeo reference for a tag."""

    base: str  # docker://HOST/REPO or oci:DIR (DIR as configured, relative to the config)
    kind: str  # docker | oci
    layout: Path | None = None  # oci: the layout directory, absolute

    def ref(self, tag: str) -> str:
        if self.kind == "docker":
            return f"{self.base}:{tag}"
        return f"oci:{self.layout}:{tag}"

    def by_digest(self, digest: str) -> str:
        return f"{self.base}@{digest}"


def destination(cfg: Config, name: str) -> Destination:
    """registry.image for blueprint `name`; ConfigError for anything but docker://HOST/REPO or oci:DIR."""
    from edgeci.errors import ConfigError

    raw = cfg.registry.image
    try:
        value = raw.format(blueprint=name)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"registry.image '{raw}' has an unknown placeholder ({e})",
                          where="registry.image", fix="only {blueprint} is substituted") from None
    if value.startswith("docker://"):
        rest = value[len("docker://"):]
        host, _, repo = rest.partition("/")
        if not host or not repo:
            raise ConfigError(f"registry.image '{value}' names no repository", where="registry.image",
                              fix="use docker://HOST[:PORT]/REPO, e.g. docker://quay.example.com/edge/{blueprint}")
        if "@" in repo or ":" in repo.rsplit("/", 1)[-1]:
            raise ConfigError(f"registry.image '{value}' includes a tag or digest", where="registry.image",
                              fix="give the repository only; tags come from the blueprint version and registry.tags")
        if repo != repo.lower():
            raise ConfigError(f"registry.image '{value}': repository names must be lower case",
                              where="registry.image")
        return Destination(value.rstrip("/"), "docker")
    if value.startswith("oci:"):
        d = value[len("oci:"):]
        if not d or ":" in d:
            raise ConfigError(f"registry.image '{value}': expected oci:DIR without a tag", where="registry.image")
        return Destination(value, "oci", cfg.path(d))
    raise ConfigError(f"registry.image '{value}' is neither docker://HOST/REPO nor oci:DIR",
                      where="registry.image", fix="e.g. docker://quay.example.com/edge/{blueprint}")


def tags_for(cfg: Config, name: str, version: str, arch: str) -> list[str]:
    """Blueprint version, latest, then registry.tags ({blueprint}, {version}, {arch} substituted), deduplicated.
    With registry.release_tags false (a review candidate) only registry.tags, which must then name one."""
    from edgeci.errors import ConfigError

    release = [version, "latest"] if cfg.registry.release_tags else []
    if not release and not cfg.registry.tags:
        raise ConfigError("registry.release_tags is false but registry.tags names no tag", where="registry.tags",
                          fix="give a review candidate its own tag, e.g. mr-<iid>-<sha>")
    out: list[str] = []
    for raw in [*release, *cfg.registry.tags]:
        try:
            tag = str(raw).format(blueprint=name, version=version, arch=arch)
        except (KeyError, IndexError, ValueError):
            raise ConfigError(f"tag '{raw}' has an unknown placeholder", where="registry.tags",
                              fix="use {blueprint}, {version} or {arch}") from None
        if not TAG_RE.match(tag):
            raise ConfigError(f"'{tag}' is not a valid image tag", where="registry.tags",
                              fix="tags are 1-128 characters of letters, digits, '_', '.', '-'")
        if tag not in out:
            out.append(tag)
    return out


@dataclass
class ArchiveFacts:
    digest: str
    layers: list[str]
    diff_ids: list[str]
    config_digest: str


def archive_facts(path: Path) -> ArchiveFacts:
    """The archive's manifest digest, layer digests and diff_ids, every blob verified against its digest."""
    from edgeci.errors import RegistryError
    from edgeci.oci import ArchiveReader, OCIError

    try:
        with ArchiveReader(path) as reader:
            img = reader.image()
            cfg_digest = str(img.manifest["config"]["digest"])
            reader.verify_blob(cfg_digest)
            layers = []
            for layer in img.layers:
                reader.verify_blob(str(layer["digest"]))
                layers.append(str(layer["digest"]))
            diff_ids = [str(d) for d in (img.config.get("rootfs") or {}).get("diff_ids") or []]
    except OCIError as e:
        raise RegistryError(f"the compose archive is not a valid OCI archive: {e.message}", where=str(path),
                            fix="run 'edgeci compose' again") from None
    return ArchiveFacts(img.digest, layers, diff_ids, cfg_digest)


def pushed_image(dest: Destination, digest: str, access: Access) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, config) of the pushed image fetched by digest; the manifest's bytes must hash to it."""
    from edgeci.errors import RegistryError
    from edgeci.tools import skopeo

    if dest.kind == "docker":
        ref = dest.by_digest(digest)
        manifest = skopeo.inspect(ref, raw=True, **access.kw())
        raw = manifest.pop("_raw")
        if "sha256:" + hashlib.sha256(raw.encode()).hexdigest() != digest:
            raise RegistryError(f"the registry's manifest for {digest} does not hash to it", where=ref,
                                fix="the registry altered the manifest; check it")
        config = skopeo.inspect(ref, config=True, **access.kw())
        return manifest, config
    from edgeci.errors import StageError
    from edgeci.image import open_image
    from edgeci.oci import OCIError

    assert dest.layout is not None
    try:
        with open_image(dest.layout, digest) as img:
            for layer in img.layers:
                img.reader.verify_blob(layer.digest)
            return img.manifest, img.config
    except (StageError, OCIError) as e:
        raise RegistryError(f"the pushed image cannot be read back: {e.message}", where=dest.by_digest(digest),
                            fix="run 'edgeci push' again") from None


def compare_layers(facts: ArchiveFacts, manifest: dict[str, Any], config: dict[str, Any]) -> str:
    """'' when the pushed image's layers are the archive's (same diff_ids; same or recompressed blobs)."""
    pushed = [str(x.get("digest")) for x in manifest.get("layers") or []]
    pushed_diff = [str(d) for d in (config.get("rootfs") or {}).get("diff_ids") or []]
    if len(pushed) != len(facts.layers):
        return f"the pushed image has {len(pushed)} layers, the archive {len(facts.layers)}"
    if pushed_diff != facts.diff_ids:
        return f"the pushed image's layer diff_ids {pushed_diff} differ from the archive's {facts.diff_ids}"
    return ""


def push(
    cfg: Config,
    archive: Path,
    dest: Destination,
    tags: list[str],
    access: Access,
    cases: list[Case],
) -> str:
    """Copy, tag and verify; returns the manifest digest. Appends a JUnit case per step to `cases`."""
    from edgeci.errors import RegistryError
    from edgeci.junit import Case, Outcome
    from edgeci.tools import skopeo

    def copy(src: str, target: str, digestfile: Path) -> str | None:
        if dest.kind == "oci":
            assert dest.layout is not None
            dest.layout.parent.mkdir(parents=True, exist_ok=True)
        return skopeo.copy(src, target, digestfile=digestfile, retry_times=access.retry_times,
                           src_tls_verify=access.tls_verify, dest_tls_verify=access.tls_verify,
                           authfile=access.authfile, src_creds=access.creds, dest_creds=access.creds,
                           attempts=access.attempts, backoff=access.backoff)

    facts = archive_facts(archive)
    with tempfile.TemporaryDirectory(prefix="edgeci-push-") as tmp:
        started = time.monotonic()
        case = Case("copy")
        cases.append(case)
        digest = copy(f"oci-archive:{archive}", dest.ref(tags[0]), Path(tmp) / "digest")
        assert digest is not None
        case.seconds = time.monotonic() - started
        case.output = f"oci-archive:{archive} -> {dest.ref(tags[0])}\n{digest}"
        for tag in tags:
            started = time.monotonic()
            case = Case(f"tag {tag}")
            cases.append(case)
            if tag != tags[0]:
                src = dest.by_digest(digest) if dest.kind == "docker" else dest.ref(tags[0])
                moved = copy(src, dest.ref(tag), Path(tmp) / f"digest-{tag}")
                if moved != digest:
                    raise RegistryError(f"tag {tag} got digest {moved}, expected {digest}", where=dest.ref(tag))
            now = skopeo.inspect(dest.ref(tag), **access.kw()).get("Digest")
            if now != digest:
                raise RegistryError(f"tag {tag} points at {now}, expected {digest}", where=dest.ref(tag),
                                    fix="another push moved it meanwhile; push again")
            case.seconds = time.monotonic() - started
            case.output = f"{dest.ref(tag)} -> {digest}"
    started = time.monotonic()
    case = Case("verify")
    cases.append(case)
    manifest, config = pushed_image(dest, digest, access)
    problem = compare_layers(facts, manifest, config)
    case.seconds = time.monotonic() - started
    case.output = json.dumps({"digest": digest, "archive_digest": facts.digest, "archive_layers": facts.layers,
                              "pushed_layers": [x.get("digest") for x in manifest.get("layers") or []],
                              "diff_ids": facts.diff_ids}, indent=2)
    if problem:
        case.outcome, case.message = Outcome.FAILED, problem
        raise RegistryError(problem, where=dest.by_digest(digest), fix="push again; check the registry")
    return digest
