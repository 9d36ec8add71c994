"""`edgeci push BLUEPRINT`: copy the compose's edge-container archive to the configured image, by digest.

Destination registry.image with {blueprint} substituted: docker://HOST/REPO, or oci:DIR (the
embedded default, no registry). Tags: the blueprint version, latest, registry.tags. Records the
manifest digest (later stages use DESTINATION@DIGEST, never a tag), then verifies the pushed
image: its manifest by digest answers and its layers match the archive's. JUnit: copy, one case
per tag, verify.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from edgeci.config import Config
from edgeci.target import invalidates

if TYPE_CHECKING:
    from edgeci.junit import Case

HELP = "push the edge-container image to the registry (or OCI directory) and record its digest"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgeci.target import add_target_args

    add_target_args(p)


@invalidates("push")
def run(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci.errors import EdgeCIError, RecordError
    from edgeci.junit import Outcome, write_junit
    from edgeci.oci import sha256_file
    from edgeci.registry import destination, push, tags_for
    from edgeci.target import load_record, target
    from edgeci.tools.skopeo import Access
    from edgeci.ui import say

    name, arch = target(cfg, args)
    rec = load_record(cfg, name, arch)
    rec.require("blueprint", "compose")
    from edgeci.imagemode import stages as _image

    if _image.is_image_record(rec):  # image mode: signed push by digest
        return _image.push(cfg, name, arch, rec)
    compose = rec.section("compose")
    kind = compose.get("type") or cfg.image_type(name)
    if kind != "edge-container":
        raise RecordError(f"blueprint '{name}' was composed as {kind}, not edge-container: there is no image to push",
                          where=f"{rec.path}: compose.type",
                          fix="set image_type: edge-container for it, or skip push and stage the commit directly")
    artifact = cfg.path(str(compose.get("artifact") or ""))
    if not compose.get("artifact") or not artifact.is_file():
        raise RecordError("the compose artifact is missing", where=str(artifact), fix="run 'edgeci compose' again")
    expected = str(compose.get("artifact_sha256") or "").removeprefix("sha256:")
    if expected and sha256_file(artifact) != expected:
        raise RecordError("the compose artifact does not match the sha256 in the build record (changed since compose)",
                          where=str(artifact), fix="run 'edgeci compose' again")
    dest = destination(cfg, name)
    version = str(rec.section("blueprint").get("version") or "")
    tags = tags_for(cfg, name, version or "latest", arch)
    access = Access.from_config(cfg)
    say(f"push {name}/{arch}: {artifact.name} -> {dest.base} (tags {', '.join(tags)})")
    cases: list[Case] = []
    try:
        digest = push(cfg, artifact, dest, tags, access, cases)
    except EdgeCIError as e:
        if cases and cases[-1].outcome is Outcome.PASSED and not cases[-1].message:
            cases[-1].outcome, cases[-1].message = Outcome.ERROR, str(e)
        write_junit(cfg.reports_dir, "push", name, arch, cases)
        raise
    image_ref = dest.by_digest(digest)
    rec.set("push", {"destination": dest.base, "tags": tags, "digest": digest, "image_ref": image_ref})
    rec.save()
    report = write_junit(cfg.reports_dir, "push", name, arch, cases)
    say(f"push {name}/{arch}: {image_ref}")
    say(f"push {name}/{arch}: verified {len(cases) - 2} tag(s) and the layers; report {report}")
    return 0
