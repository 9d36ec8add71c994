"""`edgeci gitlab child-pipeline|schedule|protect-environment|mr-note`: GitLab CI glue.

child-pipeline prints the generated child pipeline (one job per changed blueprint × arch and stage);
schedule and protect-environment create or update, idempotently, the monthly rebuild schedule and
the protected production environment; mr-note posts or updates the merge request's summary note.
The token comes from EDGECI_GITLAB_TOKEN; the URL and project from gate.gitlab or CI_SERVER_URL /
CI_PROJECT_ID.
"""

from __future__ import annotations

import argparse

from edgeci.config import Config

ACCESS_NAMES = ("developer", "maintainer", "admin")  # edgeci.ci.gitlab_setup.ACCESS_LEVELS
HELP = "GitLab CI: generate the child pipeline, manage the schedule, protected environment, MR note"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    c = sub.add_parser("child-pipeline", help="print the child pipeline for the blueprints to build",
                       description="Print the child pipeline YAML: compose, push, stage, boot-test (and the "
                                   "manual, gated promote on the default branch and schedules) for every "
                                   "changed blueprint × arch.")
    c.add_argument("--base", metavar="REV", default=None,
                   help="build the blueprints changed since REV (CI_COMMIT_BEFORE_SHA on push, "
                        "CI_MERGE_REQUEST_DIFF_BASE_SHA in merge requests); empty or all-zero: every blueprint")
    c.add_argument("--head", metavar="REV", default="HEAD", help="head revision (default: HEAD)")
    c.add_argument("--all", action="store_true", help="every blueprint (scheduled rebuilds)")
    c.add_argument("--mode", choices=["auto", "merge_request", "branch", "default_branch", "schedule"],
                   default="auto", help="pipeline kind (default: from CI_PIPELINE_SOURCE and the branch)")
    c.add_argument("--image", default=None, help="job image (default: EDGECI_IMAGE)")
    c.add_argument("--build-tags", default=None, metavar="T1,T2",
                   help="runner tags of the build jobs (default: EDGECI_BUILD_TAGS)")
    c.add_argument("--promote-tags", default=None, metavar="T1,T2",
                   help="runner tags of the promote job, the production host (default: EDGECI_PROMOTE_TAGS "
                        "or ostree-prod)")
    c.add_argument("--install", default=None, metavar="REQUIREMENT",
                   help="pip requirement installed in jobs without edgeci (default: EDGECI_INSTALL)")
    c.add_argument("--parent-pipeline-id", default=None, help="parent pipeline id (default: CI_PIPELINE_ID)")
    c.add_argument("--mr-iid", default=None, help="merge request iid (default: CI_MERGE_REQUEST_IID)")
    c.add_argument("--output", "-o", metavar="FILE", default=None,
                   help="write the YAML to FILE (atomically) instead of standard output")

    s = sub.add_parser("schedule", help="create or update the monthly rebuild schedule (idempotent)")
    s.add_argument("--cron", required=True, help="cron expression, e.g. '0 3 1 * *'")
    s.add_argument("--ref", default=None, help="branch to run on (default: CI_DEFAULT_BRANCH or main)")
    s.add_argument("--description", default=None,
                   help="the schedule's name, which identifies it (default: 'edgeci: monthly rebuild of "
                        "every blueprint')")
    s.add_argument("--timezone", default="UTC", help="cron time zone (default: UTC)")
    s.add_argument("--inactive", action="store_true", help="create or set the schedule inactive")
    s.add_argument("--variable", action="append", default=[], metavar="KEY=VALUE",
                   help="a variable of the scheduled pipelines (repeatable)")
    s.add_argument("--prune-variables", action="store_true",
                   help="delete schedule variables not given with --variable")

    e = sub.add_parser("protect-environment", help="protect the production environment with approval rules "
                                                   "(idempotent)")
    e.add_argument("--name", default=None, help="environment (default: gate.gitlab.environment, production)")
    e.add_argument("--approvals", type=int, default=None,
                   help="approvals required before a deployment (default: gate.approvals_required)")
    who = e.add_mutually_exclusive_group()
    who.add_argument("--group", default=None, help="group (path or id) whose members approve")
    who.add_argument("--user", default=None, help="user (username or id) who approves")
    e.add_argument("--deploy-access", choices=sorted(ACCESS_NAMES), default="maintainer",
                   help="role allowed to run the promote job (default: maintainer)")
    e.add_argument("--resource-group", default=None,
                   help="the promote jobs' resource group (default: EDGECI_RESOURCE_GROUP or production)")
    e.add_argument("--process-mode", default="oldest_first",
                   choices=["unordered", "oldest_first", "newest_first", "newest_ready_first"],
                   help="order in which waiting promotions run (default: oldest_first, so an older candidate is "
                        "never promoted after a newer one and refused as a downgrade)")

    n = sub.add_parser("mr-note", help="post or update the summary note on the merge request")
    n.add_argument("--iid", default=None, help="merge request iid (default: EDGECI_MR_IID or CI_MERGE_REQUEST_IID)")
    n.add_argument("--targets", default=None, metavar="BP/ARCH ...",
                   help="what to summarise (default: EDGECI_TARGETS, else every record under build/)")
    n.add_argument("--output", "-o", metavar="FILE", default=None, help="also write the markdown to FILE")
    n.add_argument("--dry-run", action="store_true", help="print the note instead of posting it")



def run(args: argparse.Namespace, cfg: Config) -> int:
    action = {
        "child-pipeline": _child_pipeline,
        "schedule": _schedule,
        "protect-environment": _protect_environment,
        "mr-note": _mr_note,
    }[args.action]
    return action(args, cfg)


def _child_pipeline(args: argparse.Namespace, cfg: Config) -> int:
    import os

    from edgeci.changes import changed
    from edgeci.ci.gitlab_setup import (
        FORWARD_VARIABLE,
        ZERO_SHA,
        ChildOptions,
        Mode,
        child_pipeline,
        forwarded,
        render_yaml,
        split_tags,
        targets_for,
    )
    from edgeci.production import production_url
    from edgeci.record import atomic_write_text
    from edgeci.ui import say, warn

    opts = ChildOptions.from_env(cfg, os.environ)
    for name in forwarded(os.environ)[1]:
        warn(f"{FORWARD_VARIABLE}: {name} looks like a secret and is not copied into the child pipeline "
             "(make it a project CI/CD variable)")
    if args.mode != "auto":
        opts.mode = Mode(args.mode)
    if args.image is not None:
        opts.image = args.image
    if args.build_tags is not None:
        opts.build_tags = split_tags(args.build_tags)
    if args.promote_tags is not None:
        opts.promote_tags = split_tags(args.promote_tags)
    if args.install is not None:
        opts.install = args.install
    if args.parent_pipeline_id is not None:
        opts.parent_pipeline_id = args.parent_pipeline_id
    if args.mr_iid is not None:
        opts.mr_iid = args.mr_iid

    bp_dir = cfg.blueprints_dir
    repo = bp_dir if bp_dir.is_dir() else cfg.root
    base = (args.base or "").strip()
    build_all = args.all
    if not build_all and (not base or base == ZERO_SHA):
        # The first push of a branch has no previous commit (GitLab sends 40 zeros): build everything.
        warn("no base revision for this pipeline (first push of a branch?): building every blueprint")
        build_all = True
    cs = changed(repo, None if build_all else base, args.head or "HEAD", bp_dir, all=build_all)
    targets = targets_for(cfg, cs.changed)
    # an image builds FROM its base and finds production in the registry: no ostree parent URL
    opts.parent_urls = {t: production_url(cfg, t.blueprint, t.arch) for t in targets if not t.image}

    header = [f"Generated by `edgeci gitlab child-pipeline` ({opts.mode.value} pipeline): do not edit.",
              "all blueprints" if build_all else f"blueprints changed in {cs.merge_base[:12]}...{cs.head[:12]}"]
    for name in cs.changed:
        header.append(f"  {name}: " + "; ".join(cs.reasons.get(name, [])))
    for t in targets:
        url = opts.parent_urls.get(t)
        header.append(f"  {t.blueprint}/{t.arch} on top of " + (url or "nothing (first release)"))
    if cs.deleted:
        header.append("deleted (nothing to build): " + ", ".join(cs.deleted))
    if opts.forward:
        header.append("forwarded pipeline variables: " + ", ".join(sorted(opts.forward)))
    if opts.mode.review:
        header.append(f"review candidates ({opts.review_name}): pushed to the -review image with tag "
                      f"{opts.review_tag}, staged in their own directory; no promotion")
    else:
        header.append("promote jobs are manual and do not block: the pipeline ends when the candidate is ready "
                      "for approval")
    text = render_yaml(child_pipeline(targets, opts), header="\n".join(header))
    if args.output:
        atomic_write_text(args.output, text)
        say(f"child pipeline: {len(targets)} target{'s' if len(targets) != 1 else ''} "
            f"({', '.join(f'{t.blueprint}/{t.arch}' for t in targets) or 'nothing to build'}) → {args.output}")
    else:
        say(text.rstrip("\n"))
    return 0


def _parse_variables(pairs: list[str]) -> dict[str, str]:
    import re

    from edgeci.errors import ConfigError

    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_]{1,255}", key):
            raise ConfigError(f"--variable expects KEY=VALUE with KEY made of A-Z, a-z, 0-9 and _, got '{pair}'",
                              fix="e.g. --variable EDGECI_REBUILD=all")
        out[key] = value
    return out


def _schedule(args: argparse.Namespace, cfg: Config) -> int:
    import os

    from edgeci.ci.gitlab_setup import FORWARD_VARIABLE, ScheduleSpec, ensure_schedule, forwarded, validate_cron
    from edgeci.errors import ConfigError
    from edgeci.gitlab_api import connect
    from edgeci.ui import say

    validate_cron(args.cron)
    spec = ScheduleSpec(
        cron=args.cron,
        ref=args.ref or os.environ.get("CI_DEFAULT_BRANCH", "") or "main",
        timezone=args.timezone,
        active=not args.inactive,
        variables=_parse_variables(args.variable),
        prune_variables=args.prune_variables,
    )
    _, refused = forwarded({FORWARD_VARIABLE: " ".join(spec.variables)})
    if refused:
        raise ConfigError(f"schedule variable {', '.join(refused)} looks like a secret: it would be written into "
                          "the child pipeline's YAML", where="--variable",
                          fix="make it a masked, protected project CI/CD variable (Settings > CI/CD > Variables)")
    if spec.variables:
        # the template's plan job copies these into the child pipeline, where the jobs run (GitLab forwards
        # pipeline variables to a child only with trigger:forward, which the template sets as well)
        spec.variables[FORWARD_VARIABLE] = " ".join(sorted(spec.variables))
    if args.description:
        spec.description = args.description
    conn = connect(cfg)
    project = conn.project()
    changes = ensure_schedule(conn, project, spec)
    for change in changes:
        say(change.line())
    if not any(c.wrote for c in changes):
        say("nothing to change")
    return 0


def _protect_environment(args: argparse.Namespace, cfg: Config) -> int:
    import os

    from edgeci.ci.gitlab_setup import (
        ACCESS_LEVELS,
        EnvironmentSpec,
        Rule,
        ensure_protected_environment,
        ensure_resource_group,
        resolve_group,
        resolve_user,
    )
    from edgeci.errors import ConfigError
    from edgeci.gitlab_api import connect
    from edgeci.ui import say

    approvals = cfg.gate.approvals_required if args.approvals is None else args.approvals
    if approvals < 0:
        raise ConfigError("--approvals must be 0 or more", where="--approvals")
    conn = connect(cfg)
    project = conn.project()
    spec = EnvironmentSpec(name=args.name or cfg.gate.gitlab.environment or "production",
                           deploy=[Rule("access_level", ACCESS_LEVELS[args.deploy_access])])
    if approvals:
        if args.group:
            who = Rule("group_id", resolve_group(conn, args.group))
        elif args.user:
            who = Rule("user_id", resolve_user(conn, args.user))
        else:
            who = Rule("access_level", ACCESS_LEVELS["maintainer"])
        spec.approvals = {who: approvals}
    for change in ensure_protected_environment(conn, project, spec):
        say(change.line())
    group = args.resource_group or os.environ.get("EDGECI_RESOURCE_GROUP", "") or "production"
    say(ensure_resource_group(conn, project, group, args.process_mode).line())
    return 0


def _mr_note(args: argparse.Namespace, cfg: Config) -> int:
    import os

    from edgeci.ci.gitlab_setup import Target, discover_targets, mr_summary, upsert_mr_note
    from edgeci.errors import ConfigError
    from edgeci.gitlab_api import connect
    from edgeci.record import atomic_write_text
    from edgeci.ui import say

    spec = args.targets if args.targets is not None else os.environ.get("EDGECI_TARGETS", "")
    targets: list[Target] = []
    for item in spec.split():
        bp, sep, arch = item.partition("/")
        if not sep or not bp or not arch:
            raise ConfigError(f"target '{item}' is not BLUEPRINT/ARCH", where="--targets",
                              fix="e.g. --targets 'gateway/x86_64 kiosk/x86_64'")
        targets.append(Target(bp, arch))
    if not targets:
        targets = discover_targets(cfg)
    body = mr_summary(cfg, targets)
    if args.output:
        atomic_write_text(args.output, body)
    if args.dry_run:
        say(body.rstrip("\n"))
        return 0
    iid_text = args.iid or os.environ.get("EDGECI_MR_IID", "") or os.environ.get("CI_MERGE_REQUEST_IID", "")
    if not iid_text.isdigit():
        raise ConfigError("no merge request to comment on" + (f" ('{iid_text}' is not an iid)" if iid_text else ""),
                          where="--iid", fix="pass --iid N (inside a merge-request pipeline CI_MERGE_REQUEST_IID)")
    conn = connect(cfg)
    project = conn.project()
    say(upsert_mr_note(conn, project, int(iid_text), body).line())
    return 0
