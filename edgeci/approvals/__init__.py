"""Approval sources behind one protocol: each gathers the Evidence (approvals bound to a checksum, the change's
authors, pending requests) for one candidate. local.py reads signed-off approval files, gitlab.py deployment and
merge-request approvals, jenkins.py the input step's submitter. The gate's rules live in edgeci/policy.py.

Add a source: a module with a class implementing ApprovalSource, registered in SOURCES below.
"""

from __future__ import annotations

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


def source(name: str, ctx: SourceContext) -> ApprovalSource:
    from edgeci.errors import ConfigError

    if name not in SOURCES:
        raise ConfigError(f"unknown approval source '{name}'", where="gate.source",
                          fix=f"use one of: {', '.join(SOURCES)}")
    module, cls = SOURCES[name]
    made: ApprovalSource = getattr(importlib.import_module(module), cls)(ctx)
    return made


def gather(name: str, ctx: SourceContext, candidate: Candidate) -> Evidence:
    """The source's evidence plus the authors every source shares: the git authors of the blueprint and the
    identities CI gives for who started the run (a local source already includes them)."""
    from edgeci.approvals import local_source as local

    evidence = source(name, ctx).collect(candidate)
    if name != "local":
        people, notes = local.git_people(ctx.blueprint_path)
        people += local.env_people(ctx.env)
        evidence.people = people + evidence.people
        evidence.notes = notes + evidence.notes
    return evidence
