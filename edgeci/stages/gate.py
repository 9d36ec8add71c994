"""`edgeci gate BLUEPRINT`: may this exact commit go to production? Glue between the record, production's
state, an approval source (local, GitLab, Jenkins) and the policy; prints each rule's verdict and what is
being approved, writes reports/gate-<bp>-<arch>.xml and the record's gate section.
Exit 0 approved, 1 denied or still pending, 2 error.
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC
from pathlib import Path
from typing import Any

from edgeci.config import Config
from edgeci.target import invalidates

HELP = "decide whether the candidate may go to production (rules, approvals bound to its checksum)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgeci.target import add_target_args

    add_target_args(p)
    p.add_argument("--source", choices=("local", "gitlab", "jenkins"), default=None,
                   help="where approvals come from (default: gate.source, local)")
    p.add_argument("--approver", metavar="NAME", default=None,
                   help="jenkins: the user the input step's submitterParameter returned")
    p.add_argument("--approved-checksum", metavar="CHECKSUM", default=None,
                   help="jenkins: the checksum the input step showed (default $EDGECI_APPROVED_CHECKSUM)")
    p.add_argument("--build", metavar="N", type=int, default=None,
                   help="jenkins: the build that asked for approval (default $BUILD_NUMBER)")
    p.add_argument("--merge-request", metavar="IID", type=int, default=None,
                   help="gitlab: the merge request whose approvals count (default $CI_MERGE_REQUEST_IID)")
    p.add_argument("--deployment", metavar="ID", type=int, default=None,
                   help="gitlab: the deployment whose approvals count (default: the one of $CI_JOB_ID)")




def describe(cfg: Config, rec: Any, state: Any, bp_path: Path | None) -> list[str]:
    """What is being approved: commit, image, boot test, delta size, blueprint and package diffs."""
    from edgeci import policy
    from edgeci.packages import package_diff
    from edgeci.tools import git

    s = rec.sections
    compose, push, boot = s.get("compose") or {}, s.get("push") or {}, s.get("boot_test") or {}
    bp = s.get("blueprint") or {}
    prod = state.production
    lines = [
        f"candidate:  {bp.get('name', '?')} {bp.get('version', '?')}  commit {compose.get('commit', '?')}",
        f"image:      {push.get('image_ref') or push.get('digest') or '(not pushed)'}",
        f"production: {prod.ref} at {prod.commit or '(nothing released yet)'}"
        + (f" version {prod.version}" if prod.version else ""),
    ]
    scen = boot.get("scenarios") or {}
    if scen:
        lines.append(f"boot test:  {boot.get('backend', '?')}: "
                     + ", ".join(f"{k} {(v or {}).get('outcome')}" for k, v in scen.items()))
    if boot.get("delta_bytes") is not None:
        full = boot.get("full_bytes")
        lines.append(f"delta size: {boot['delta_bytes']} bytes" + (f" (full pull {full} bytes)" if full else ""))
    released = next((r for r in reversed(state.releases) if r.get("checksum") == prod.commit), None)
    if prod.commit is None:
        lines.append("blueprint diff: first release, nothing to compare with")
        return lines
    if released is None:
        lines.append("blueprint diff: production's release is not in the releases log (released outside edgeci)")
        return lines
    old_text = None
    top = git.toplevel(bp_path) if bp_path else None
    rel = str(released.get("blueprint_path") or "")
    if top is not None and released.get("blueprint_git_sha") and rel:
        old_text = git.show(top, str(released["blueprint_git_sha"]), _repo_rel(cfg, top, rel))
    new_text = None
    if top is not None and bp.get("git_sha") and bp.get("path"):
        new_text = git.show(top, str(bp["git_sha"]), _repo_rel(cfg, top, str(bp["path"])))
    # what was built, never the working tree: without the recorded git sha there is no text to show
    if old_text is not None and new_text is not None:
        diff = policy.text_diff(old_text, new_text, f"production {prod.version}", f"candidate {bp.get('version')}")
        lines.append("blueprint diff:" + (" none" if not diff else ""))
        lines += [f"  {d}" for d in diff]
    else:
        same = released.get("blueprint_sha256") and released.get("blueprint_sha256") == bp.get("sha256")
        lines.append("blueprint diff: " + ("unchanged (same sha256)" if same else
                                            "production's blueprint text is not available in this git checkout"))
    if released.get("blueprint_variables") is not None or bp.get("variables"):
        changed = policy.variables_diff(released.get("blueprint_variables"), bp.get("variables"))
        lines.append("template variables: " + ("unchanged (by sha256)" if not changed else
                                               f"{len(changed)} change(s), by sha256"))
        lines += [f"  {d}" for d in changed]
    if "packages" in released and compose.get("packages") is not None:
        pk = package_diff(released.get("packages") or [], compose.get("packages") or [])
        lines.append(f"package diff: {len(pk)} change(s)" if pk else "package diff: none")
        lines += [f"  {d}" for d in pk]
    else:
        lines.append("package diff: production's package list is not recorded")
    return lines


def _repo_rel(cfg: Config, top: Path, path: str) -> str:
    p = Path(path)
    p = p if p.is_absolute() else cfg.root / p
    try:
        return str(p.resolve().relative_to(top.resolve()))
    except ValueError:
        return path


@invalidates("gate")
def run(args: argparse.Namespace, cfg: Config) -> int:
    from datetime import datetime

    from edgeci import policy
    from edgeci.approvals import SourceContext, gather
    from edgeci.junit import Case, Outcome, write_junit
    from edgeci.production import ProdSettings, read_production
    from edgeci.record import FAILED, PASSED
    from edgeci.target import blueprint_file, load_record, target, work_dir
    from edgeci.ui import say, warn

    name, arch = target(cfg, args)
    if args.source == "local" and cfg.gate.source != "local":  # local approvals are files anyone can write
        from edgeci.errors import ConfigError

        raise ConfigError(f"--source local would lower gate.source '{cfg.gate.source}'", where="--source",
                          fix="approvals come from gate.source; it can only be changed in edgeci.yaml")
    rec = load_record(cfg, name, arch)
    rec.section("compose")
    candidate = rec.candidate(cfg.ref(name, arch))
    ref = candidate.ref
    from edgeci.imagemode import stages as _image

    image = _image.is_image_record(rec)
    state = _image.production(cfg, name) if image else read_production(ProdSettings.from_config(cfg), ref)
    bp_path = blueprint_file(cfg, name, rec.get("blueprint"))
    options = {"merge_request": args.merge_request, "deployment": args.deployment, "approver": args.approver,
               "approved_checksum": args.approved_checksum, "build": args.build}
    ctx = SourceContext(cfg, work_dir(cfg, name, arch), bp_path, options=options)
    evidence = gather(args.source or cfg.gate.source, ctx, candidate)
    g = cfg.gate
    now_env = os.environ.get("EDGECI_TEST_NOW")  # tests pin the clock for window/freeze rules
    now = datetime.fromisoformat(now_env) if now_env else datetime.now(UTC)
    import dataclasses

    # the coverage rule of the source that decides (--source overrides gate.source for this run)
    scenarios, backends = policy.boot_requirements(dataclasses.replace(g, source=args.source or g.source))
    verdict = policy.evaluate(
        candidate, state.production, evidence, approvals_required=g.approvals_required,
        allowed_users=g.allowed_users, allowed_groups=g.allowed_groups, allow_fork=g.allow_fork,
        windows=g.windows, freeze=g.freeze, now=now, required_scenarios=scenarios, accepted_backends=backends,
    )

    shown = describe(cfg, rec, state, bp_path)
    for line in shown:
        say(line)
    for note in verdict.notes:
        warn(note)
    say("")
    marks = {policy.PASSED: "PASS", policy.FAILED: "FAIL", policy.WAITING: "WAIT"}
    for r in verdict.rules:
        say(f"  {marks.get(r.outcome, r.outcome):<4}  {r.name:<24} {r.reason}")
    say("")
    say(f"gate {verdict.decision}: {name} {arch} {candidate.checksum}")

    cases = []
    for r in verdict.rules:
        outcome = Outcome.PASSED if r.outcome == policy.PASSED else Outcome.FAILED
        message = r.reason if r.outcome != policy.WAITING else f"pending: {r.reason}"
        output = "\n".join(shown) if r.name == "approvals-required" else ""
        cases.append(Case(r.name, outcome, message if outcome is not Outcome.PASSED else "", output or r.reason))
    write_junit(cfg.reports_dir, "gate", name, arch, cases)
    section = verdict.as_record()
    if image:  # promote refuses when the production tag moved since this decision
        section["production_digest"] = state.production.commit
    rec.set("gate", section, status=PASSED if verdict.approved else FAILED)
    rec.save()
    return 0 if verdict.approved else 1
