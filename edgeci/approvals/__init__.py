"""Approval sources behind one protocol: each gathers the Evidence (approvals bound to a checksum, the change's
authors, pending requests) for one candidate. local.py reads signed-off approval files, gitlab.py deployment and
merge-request approvals, jenkins.py the input step's submitter. The gate's rules live in edgeci/policy.py.

Add a source: a module with a class implementing ApprovalSource, registered in SOURCES below.
"""

from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from edgeci.policy import Evidence
    from edgeci.record import Candidate

# name -> (module, class); imported only when chosen (python-gitlab and jenkinsapi are optional).
SOURCES: dict[str, tuple[str, str]] = {
    "local": ("edgeci.approvals.local_source", "LocalSource"),
    "gitlab": ("edgeci.approvals.gitlab_source", "GitLabSource"),
    "jenkins": ("edgeci.approvals.jenkins_source", "JenkinsSource"),
}


@dataclass
class SourceContext:
    """What a source may need besides the candidate: configuration, where local files live, the blueprint (for its
    git authors), the environment, and the source-specific options given on the command line."""

    cfg: Any
    work_dir: Path
    blueprint_path: Path | None
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    options: dict[str, Any] = field(default_factory=dict)  # merge_request, deployment, approver, build, …


class ApprovalSource(Protocol):
    name: str

    def collect(self, candidate: Candidate) -> Evidence:
        """Approvals as the source reports them (each naming the checksum it approves), the change's authors
        as the source knows them, pending requests and notes. Never decides: edgeci.policy does."""
        ...


class Source:
    """What every source shares: its context (configuration, work directory, blueprint, environment, options)."""

    name = ""

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx


def source(name: str, ctx: SourceContext) -> ApprovalSource:
    from edgeci.errors import ConfigError

    if name not in SOURCES:
        raise ConfigError(f"unknown approval source '{name}'", where="gate.source",
                          fix=f"use one of: {', '.join(SOURCES)}")
    module, cls = SOURCES[name]
    made: ApprovalSource = getattr(importlib.import_module(module), cls)(ctx)
    return made


def release_base(ctx: SourceContext, candidate: Candidate) -> tuple[str | None, str, list[str]]:
    """(the git sha production's release was built from, its blueprint path, notes) from production's releases
    log; (None, "", …) for a first release or when the log does not say (the whole history then counts)."""
    from edgeci.production import ProdSettings, read_production

    if ctx.cfg is None or not hasattr(ctx.cfg, "prod"):
        return None, "", ["production is not configured: every commit of the blueprint's history counts"]
    state = read_production(ProdSettings.from_config(ctx.cfg), candidate.ref)
    prod = state.production
    if prod.commit is None:
        return None, "", []
    released = next((r for r in reversed(state.releases) if r.get("checksum") == prod.commit), None)
    sha = str((released or {}).get("blueprint_git_sha") or "")
    if not sha:
        return None, "", [f"production's release {prod.commit[:12]} has no recorded git sha: every commit of the "
                          "blueprint's history counts as the change"]
    return sha, str((released or {}).get("blueprint_path") or ""), []


def gather(name: str, ctx: SourceContext, candidate: Candidate) -> Evidence:
    """The source's evidence plus what every source shares: the change's authors from git (every author,
    committer and co-author of every commit touching the blueprint or its checks since production's release,
    up to the commit the candidate was built from) and the identities CI gives for who started the run."""
    from edgeci.approvals import local_source as local

    evidence = source(name, ctx).collect(candidate)
    since, released_path, notes = release_base(ctx, candidate)
    built_from = str(candidate.blueprint_info.git_sha or "") or None
    extra: tuple[str, ...] = ()
    if released_path and ctx.blueprint_path is not None:
        from edgeci.tools import git

        top = git.toplevel(ctx.blueprint_path)
        root = getattr(ctx.cfg, "root", None)
        if top is not None and root is not None:
            p = Path(released_path)
            p = p if p.is_absolute() else Path(root) / p
            try:
                extra = (p.resolve().relative_to(top.resolve()).as_posix(),)
            except ValueError:
                extra = ()
    a = local.authorship(ctx.blueprint_path, since=since, rev=built_from, extra_paths=extra)
    people = a.people
    if name != "local":
        people += local.env_people(ctx.env)
    evidence.people = people + evidence.people
    evidence.notes = notes + a.notes + evidence.notes
    evidence.authors_unknown = evidence.authors_unknown or a.unknown
    gate = getattr(ctx.cfg, "gate", None)
    if gate is not None and evidence.boot_requirements is None:
        from edgeci.policy import boot_requirements

        # the source that decides matters: `edgeci gate --source gitlab` is a production gate
        gate_for = copy.copy(gate)
        gate_for.source = name
        evidence.boot_requirements = boot_requirements(gate_for)
    return evidence
