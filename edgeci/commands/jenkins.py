"""`edgeci jenkins job|approve|abort|targets|candidates|lint`: Jenkins glue.

job creates or updates (idempotently) the Pipeline job that runs the Jenkinsfile from git; approve
and abort answer the build's pending `input` (the approver Jenkins records, and the pipeline passes to
`edgeci gate --approver`, is the user authenticated with EDGECI_JENKINS_TOKEN); targets prints the
"BLUEPRINT ARCH PARENT_URL" lines the shared library's Plan stage builds, and candidates the checksums its
approval shows and binds (`edgeci gate --approved-checksum`); lint validates Declarative Pipeline files
(edgeci.ci.declarative) as Jenkins does when a build starts.
"""

from __future__ import annotations

import argparse

from edgeci.config import Config

HELP = "Jenkins: create/update the pipeline job, approve or abort a build's input, list build targets"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    j = sub.add_parser("job", help="create or update the pipeline job (idempotent)",
                       description="Create or update a Pipeline job that runs the Jenkinsfile from git. "
                                   "Nothing is written when the job already has these settings.")
    j.add_argument("--name", default=None, help="job name, folders with / (default: gate.jenkins.job or "
                                                "edge-images)")
    j.add_argument("--repo", default=None, help="git URL (default: this repository's origin remote)")
    j.add_argument("--branch", default="main", help="branch to build (default: main)")
    j.add_argument("--script-path", default="Jenkinsfile", help="path of the Jenkinsfile (default: Jenkinsfile)")
    j.add_argument("--credentials-id", default="", help="Jenkins credentials id for the git repository")
    j.add_argument("--as", dest="user", default=None, metavar="USER",
                   help="Jenkins user (default: gate.jenkins.user); its API token in EDGECI_JENKINS_TOKEN")

    for name, verb in (("approve", "approve"), ("abort", "abort")):
        a = sub.add_parser(name, help=f"{verb} the build's pending input (the promotion approval)")
        a.add_argument("build", type=int, metavar="BUILD", help="build number")
        a.add_argument("--job", default=None, help="job name (default: gate.jenkins.job or edge-images)")
        a.add_argument("--id", dest="input_id", default=None,
                       help="input id (default: the only pending input; the pipeline's is 'Promote')")
        a.add_argument("--as", dest="user", default=None, metavar="USER",
                       help="Jenkins user to act as (default: gate.jenkins.user); EDGECI_JENKINS_TOKEN must be "
                            "its API token. Jenkins records this user as the approver.")
        if name == "approve":
            a.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                           help="value of an input parameter (repeatable; others take their defaults)")

    c = sub.add_parser("candidates", help="print 'BLUEPRINT ARCH CHECKSUM VERSION' of the boot-tested candidates "
                                          "(what the approval shows)")
    c.add_argument("targets", nargs="*", metavar="BLUEPRINT/ARCH",
                   help="the targets (default: every build record)")

    lint = sub.add_parser("lint", help="validate Declarative Pipeline files as Jenkins does when a build starts",
                          description="Check the Declarative model (sections, directives, options, triggers, "
                                      "parameters, when and post conditions) of Jenkinsfiles and shared-library "
                                      "steps, without Jenkins.")
    lint.add_argument("files", nargs="*", metavar="FILE", help="files to check (default: ./Jenkinsfile)")

    t = sub.add_parser("targets", help="print 'BLUEPRINT ARCH PARENT_URL' for each blueprint × arch to build "
                                       "(PARENT_URL: production, '-' for a first release)")
    t.add_argument("--base", metavar="REV", default=None,
                   help="blueprints changed since REV (empty or all-zero: every blueprint)")
    t.add_argument("--head", metavar="REV", default="HEAD")
    t.add_argument("--all", action="store_true", help="every blueprint (the monthly rebuild)")


def _job_name(cfg: Config, name: str | None) -> str:
    from edgeci.ci.jenkins_setup import DEFAULT_JOB

    return name or cfg.gate.jenkins.job or DEFAULT_JOB


def run(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci.ui import say

    if args.action == "targets":
        return _targets(args, cfg)
    if args.action == "lint":
        return _lint(args)
    if args.action == "candidates":
        return _candidates(args, cfg)

    from edgeci.ci.jenkins_setup import InputClient, JobSpec, default_repo, ensure_job
    from edgeci.errors import ConfigError
    from edgeci.jenkins_api import connect

    conn = connect(cfg, user=args.user)
    if args.action == "job":
        repo = args.repo or default_repo(cfg)
        if not repo:
            raise ConfigError("no git repository URL for the job", where="--repo",
                              fix="pass --repo URL (this directory has no 'origin' remote)")
        spec = JobSpec(name=_job_name(cfg, args.name), repo=repo, branch=args.branch,
                       script_path=args.script_path, credentials_id=args.credentials_id)
        say(ensure_job(conn, spec).line())
        return 0

    client = InputClient(conn)
    try:
        job = _job_name(cfg, args.job)
        if args.action == "approve":
            params = {}
            for pair in args.param:
                key, sep, value = pair.partition("=")
                if not sep or not key:
                    raise ConfigError(f"--param expects NAME=VALUE, got '{pair}'", where="--param")
                params[key] = value
            say(client.approve(job, args.build, args.input_id, params).line())
        else:
            say(client.abort(job, args.build, args.input_id).line())
    finally:
        client.close()
    return 0


def _lint(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgeci.ci.declarative import JENKINS_GRAMMAR, validate_file
    from edgeci.errors import ConfigError
    from edgeci.ui import say

    files = [Path(f) for f in args.files] or [Path("Jenkinsfile")]
    findings = []
    for f in files:
        if not f.is_file():
            raise ConfigError(f"{f} is not a file", where=str(f), fix="give the Jenkinsfile or library step to check")
        findings += validate_file(f)
    for finding in findings:
        say(finding.line_text())
    count = f"{len(files)} file{'s' if len(files) != 1 else ''}"
    say(f"jenkins lint: {count}, " + (f"{len(findings)} finding(s)" if findings else "no findings")
        + f" ({JENKINS_GRAMMAR})")
    return 1 if findings else 0


def _targets(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci.changes import changed
    from edgeci.ci.gitlab_setup import ZERO_SHA, targets_for
    from edgeci.production import production_url
    from edgeci.ui import say, warn

    base = (args.base or "").strip()
    build_all = args.all
    if not build_all and (not base or base == ZERO_SHA):
        warn("no base revision: building every blueprint")
        build_all = True
    bp_dir = cfg.blueprints_dir
    repo = bp_dir if bp_dir.is_dir() else cfg.root
    cs = changed(repo, None if build_all else base, args.head or "HEAD", bp_dir, all=build_all)
    for t in targets_for(cfg, cs.changed):
        # an image builds FROM its base and finds production in the registry: no ostree parent URL
        say(f"{t.blueprint} {t.arch} {'-' if t.image else production_url(cfg, t.blueprint, t.arch) or '-'}")
    return 0


def _candidates(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci.ci.gitlab_setup import Target, discover_targets
    from edgeci.errors import ConfigError
    from edgeci.target import load_record
    from edgeci.ui import say

    targets = []
    for item in args.targets:
        bp, sep, arch = item.partition("/")
        if not sep or not bp or not arch:
            raise ConfigError(f"target '{item}' is not BLUEPRINT/ARCH", fix="e.g. gateway/x86_64")
        targets.append(Target(bp, arch))
    for t in targets or discover_targets(cfg):
        rec = load_record(cfg, t.blueprint, t.arch)
        rec.require("compose")
        version = (rec.get("blueprint") or {}).get("version", "?")
        say(f"{t.blueprint} {t.arch} {rec.checksum} {version}")
    return 0
