"""GitLab as the approval source, through python-gitlab (imported lazily: pip install 'edgeci[gitlab]').

Reads the deployment approvals of the protected environment (GET /projects/:id/deployments/:deployment_id,
its `approvals` list of {user, status, comment}), the merge request's approvals
(GET /projects/:id/merge_requests/:iid/approvals → approved_by) and author, who triggered the pipeline,
and group membership through /groups/:id/members/all. Token: EDGECI_GITLAB_TOKEN (api or read_api scope).

Binding rule — how a GitLab approval names the commit checksum it approves:
  1. a deployment approval whose comment says "edgeci-approve <checksum>" names that checksum;
  2. an approval of the merge request names the checksum its author last wrote as "edgeci-approve <checksum>"
     in a note on that merge request;
  3. otherwise a deployment approval names the checksum of its pipeline's EDGECI_CHECKSUM variable (a
     promotion pipeline created for exactly one candidate);
  4. otherwise it names no checksum and does not count.
A checksum may be abbreviated to 12 or more hex digits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edgeci.approvals import Source
from edgeci.errors import GateError
from edgeci.gitlab_api import Connection, connect
from edgeci.policy import Approval, Evidence, Person, approve_mark

if TYPE_CHECKING:
    from edgeci.record import Candidate

CHECKSUM_VARIABLE = "EDGECI_CHECKSUM"


def _user(data: Mapping[str, Any] | None) -> tuple[str, tuple[str, ...]]:
    data = data or {}
    username = str(data.get("username") or "")
    aliases = tuple(str(data[k]) for k in ("name", "email", "public_email") if data.get(k))
    return username, aliases


def find_deployment(client: Connection, environment: str, job_id: int, *, scan: int = 200) -> int | None:
    """The deployment a CI job (CI_JOB_ID) created in `environment` (newest first, at most `scan`)."""

    def search() -> int | None:
        deps = client.project(lazy=True).deployments.list(environment=environment, order_by="id", sort="desc",
                                                          iterator=True)
        for i, d in enumerate(deps):
            if i >= scan:
                break
            deployable = d.attributes.get("deployable") or {}
            if int(deployable.get("id") or -1) == job_id:
                return int(d.id)
        return None

    found: int | None = client.call(f"the deployments of environment {environment}", search)
    return found


def collect(cfg: Any, checksum: str, *, merge_request: int | None = None, deployment: int | None = None,
            env: Mapping[str, str] | None = None) -> Evidence:
    env = os.environ if env is None else env
    g = cfg.gate.gitlab
    client = connect(cfg, env, token_required=False)
    project = client.project(lazy=True)
    wanted_groups = list(cfg.gate.allowed_groups)
    ev = Evidence()

    def groups(username: str) -> frozenset[str]:
        return client.groups_of(username, wanted_groups) if wanted_groups else frozenset()

    mr_iid = merge_request or (int(env["CI_MERGE_REQUEST_IID"]) if env.get("CI_MERGE_REQUEST_IID") else None)
    dep_id = deployment
    if dep_id is None and env.get("CI_JOB_ID"):
        dep_id = find_deployment(client, g.environment, int(env["CI_JOB_ID"]))
    if dep_id is None and mr_iid is None:
        raise GateError("no GitLab deployment or merge request to read approvals from",
                        fix="run the gate in the protected environment's job (CI_JOB_ID), "
                            "or pass --deployment ID or --merge-request IID")

    if dep_id is not None:
        dep = client.call(f"deployment {dep_id}", project.deployments.get, dep_id)
        a = dep.attributes
        pinned = ""
        deployable = a.get("deployable") or {}
        for role, who in (("pipeline triggerer", a.get("user")), ("pipeline triggerer", deployable.get("user"))):
            name, aliases = _user(who)
            if name:
                ev.people.append(Person(role, (name, *aliases)))
        pipeline_id = (deployable.get("pipeline") or {}).get("id")
        if pipeline_id:
            pipe = client.call(f"pipeline {pipeline_id}", project.pipelines.get, pipeline_id)
            name, aliases = _user(pipe.attributes.get("user"))
            if name:
                ev.people.append(Person("pipeline triggerer", (name, *aliases)))
            variables = client.call(f"the variables of pipeline {pipeline_id}", pipe.variables.list, get_all=True)
            for v in variables:
                if v.attributes.get("key") == CHECKSUM_VARIABLE:
                    pinned = str(v.attributes.get("value") or "").strip().lower()
        for item in a.get("approvals") or []:
            name, aliases = _user(item.get("user"))
            comment = str(item.get("comment") or "")
            ev.approvals.append(Approval(
                user=name, checksum=approve_mark(comment) or pinned, time=str(item.get("created_at") or ""),
                source=f"gitlab deployment {dep_id}", comment=comment, status=str(item.get("status") or "approved"),
                aliases=aliases, groups=groups(name)))
        if a.get("status") == "blocked":
            left = a.get("pending_approval_count")
            ev.pending.append(f"GitLab deployment {dep_id} is blocked"
                              + (f" waiting for {left} more approval(s)" if left else ""))

    if mr_iid is not None:
        mr = client.call(f"merge request !{mr_iid}", project.mergerequests.get, mr_iid)
        name, aliases = _user(mr.attributes.get("author"))
        if name:
            ev.people.append(Person("merge-request author", (name, *aliases)))
        approvals = client.call(f"the approvals of !{mr_iid}", mr.approvals.get)
        notes = client.call(f"the notes of !{mr_iid}", mr.notes.list, get_all=True, sort="asc", order_by="created_at")
        marks: dict[str, tuple[str, str]] = {}
        for n in notes:
            na = n.attributes
            if na.get("system"):
                continue
            mark = approve_mark(str(na.get("body") or ""))
            author, _ = _user(na.get("author"))
            if mark and author:
                marks[author.casefold()] = (mark, str(na.get("created_at") or ""))
        for entry in approvals.attributes.get("approved_by") or []:
            name, aliases = _user(entry.get("user"))
            mark, when = marks.get(name.casefold(), ("", ""))
            ev.approvals.append(Approval(user=name, checksum=mark, time=when, source=f"gitlab merge request !{mr_iid}",
                                         aliases=aliases, groups=groups(name)))
    return ev


class GitLabSource(Source):
    """Deployment approvals of the protected environment and merge-request approvals, read through the API."""

    name = "gitlab"

    def collect(self, candidate: Candidate) -> Evidence:
        o = self.ctx.options
        return collect(self.ctx.cfg, candidate.checksum, merge_request=o.get("merge_request"),
                       deployment=o.get("deployment"), env=self.ctx.env)
