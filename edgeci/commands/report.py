"""`edgeci report BLUEPRINT`: the release report (static HTML + JSON) from the record and production."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeci.config import Config

HELP = "write the release report (HTML and JSON) of a blueprint: history, timeline, boot test, diffs, delta"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgeci.target import add_target_args

    add_target_args(p)
    p.add_argument("--output", metavar="DIR", default=None, help="where to write (default: the reports directory)")


def _repo_with(repos: list[Path], *commits: str) -> Path | None:
    from edgeci.tools import ostree

    for repo in repos:
        if (repo / "config").is_file() and all(ostree.has_commit(repo, c) for c in commits):
            return repo
    return None


def _file_diff(repos: list[Path], old: str | None, new: str) -> dict[str, list[str]]:
    from edgeci.tools import ostree

    if not old or old == new:
        return {}
    repo = _repo_with(repos, old, new)
    if repo is None:
        return {}
    names = {"A": "added", "M": "modified", "D": "deleted"}
    out: dict[str, list[str]] = {v: [] for v in names.values()}
    for kind, path in ostree.diff(repo, old, new):
        out[names[kind]].append(path)
    return out


def collect(cfg: Config, name: str, arch: str) -> Any:
    from edgeci.packages import package_changes
    from edgeci.production import ProdSettings, read_production
    from edgeci.record import now_iso
    from edgeci.releasepage import ReportData, timeline_from_record
    from edgeci.target import load_record

    record = load_record(cfg, name, arch)
    compose = record.get("compose") or {}
    commit = str(compose.get("commit", ""))
    ref = record.ref(cfg.ref(name, arch))
    settings = ProdSettings.from_config(cfg)
    from edgeci.imagemode import stages as _image

    image = _image.is_image_record(record)
    state = _image.production(cfg, name) if image else read_production(settings, ref)
    releases = list(reversed(state.releases))
    # compare with the release before the candidate: production itself unless the candidate is it
    previous = next((r for r in releases if r.get("checksum") != commit), None)
    boot = record.get("boot_test") or {}
    stage = record.get("stage") or {}
    repos = [settings.repo]
    if stage.get("dir"):
        stage_dir = Path(str(stage["dir"]))
        repos += [stage_dir, stage_dir / cfg.stage.repo_path, stage_dir / "repo"]
    gate = record.get("gate") or {}
    push = record.get("push") or {}
    evidence, checked_by = _evidence(cfg, record)
    return ReportData(
        blueprint=name,
        arch=arch,
        version=str((record.get("blueprint") or {}).get("version", "")),
        commit=commit,
        decision=str(gate.get("decision", "")),
        releases=releases,
        timeline=timeline_from_record(record),
        boot_test=boot,
        packages=package_changes(list(previous.get("packages") or []), list(compose.get("packages") or []))
        if previous else {},
        files=_file_diff(repos, str(previous.get("checksum")) if previous else None, commit) if commit else {},
        delta_bytes=boot.get("delta_bytes"),
        full_bytes=boot.get("full_bytes"),
        image=str(push.get("image_ref", "")),
        image_mode=_image_mode(compose, push, boot, previous) if image else {},
        generated=now_iso(),
        evidence=evidence,
        evidence_policy=checked_by,
    )


def _image_mode(compose: dict[str, Any], push: dict[str, Any], boot: dict[str, Any],
                previous: dict[str, Any] | None) -> dict[str, Any]:
    """An image-mode candidate's figures: digests, layers (new ones marked against the previous release's), the
    full image, the update download (changed layers' bytes) and what the boot test's device downloaded."""
    base = compose.get("base") or {}
    had = {str(x.get("digest")) for x in (previous or {}).get("layers") or []}
    layers = [{"digest": x.get("digest"), "size": x.get("size"), "new": str(x.get("digest")) not in had}
              for x in compose.get("layers") or []]
    full = sum(int(x.get("size") or 0) for x in layers)
    update = push.get("update_bytes")
    if update is None and previous is not None:
        update = sum(int(x["size"] or 0) for x in layers if x["new"])
    upgrade = ((boot.get("scenarios") or {}).get("upgrade") or {}).get("pull") or {}
    return {"digest": compose.get("digest"), "base_name": base.get("name"), "base_digest": base.get("digest"),
            "layers": layers, "full_bytes": full, "update_bytes": update if previous is not None or update else None,
            "downloaded_bytes": upgrade.get("bytes"), "device": boot.get("device", ""),
            "build_seconds": compose.get("duration"), "push_image_bytes": push.get("image_bytes")}


def _evidence(cfg: Config, record: Any) -> tuple[list[dict[str, str]], str]:
    """The candidate's statements and their signers, checked against the trust policy when this machine has
    one (the production host, or the embedded default's demo); listed unchecked otherwise."""
    from edgeci import attest
    from edgeci.errors import EdgeCIError
    from edgeci.evidence import load_bundle

    path = attest.bundle_path(record.path)
    if not path.is_file():
        return [], ""
    try:
        bundle = load_bundle(path)
    except EdgeCIError:
        return [], ""
    try:
        policies = attest.load_policies(cfg, None)
    except EdgeCIError:
        policies = attest.Policies([])
    return attest.signers(bundle, policies), policies.sources


def run(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci.releasepage import write
    from edgeci.target import target
    from edgeci.ui import say

    name, arch = target(cfg, args)
    data = collect(cfg, name, arch)
    out_dir = Path(args.output) if args.output else cfg.reports_dir
    html_path, json_path = write(data, out_dir)
    say(f"report: {html_path}")
    say(f"data:   {json_path}")
    return 0
