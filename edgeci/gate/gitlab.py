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
from typing import Any

from edgeci.errors import GateError
from edgeci.gate.policy import Approval, Evidence, Person, approve_mark

CHECKSUM_VARIABLE = "EDGECI_CHECKSUM"


def _import_gitlab() -> Any:
    try:
        import gitlab
    except ImportError:
        raise GateError("python-gitlab is not installed (gate.source is gitlab)",
                        fix="install it: pip install 'edgeci[gitlab]'") from None
    return gitlab


def _user(data: Mapping[str, Any] | None) -> tuple[str, tuple[str, ...]]:
    data = data or {}
    username = str(data.get("username") or "")
    aliases = tuple(str(data[k]) for k in ("name", "email", "public_email") if data.get(k))
    return username, aliases


class _Client:
    """The few GitLab calls the gate needs, with python-gitlab's errors turned into GateError."""

    def __init__(self, url: str, project: str, token: str, gitlab_mod: Any) -> None:
        self.url = url
        self.mod = gitlab_mod
        self.gl = gitlab_mod.Gitlab(url, private_token=token or None, timeout=30, retry_transient_errors=True)
        self.project = self.gl.projects.get(project, lazy=True)
        self._members: dict[str, set[str]] = {}

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import requests

        try:
            return fn(*args, **kwargs)
        except self.mod.exceptions.GitlabAuthenticationError as e:
            raise GateError(f"GitLab refused the token while reading {what}: {e}", where=self.url,
                            fix="set EDGECI_GITLAB_TOKEN to a token with read_api scope") from None
        except self.mod.exceptions.GitlabError as e:
            raise GateError(f"GitLab could not give {what}: {e}", where=self.url) from None
        except requests.exceptions.RequestException as e:
            raise GateError(f"GitLab is unreachable while reading {what}: {type(e).__name__}", where=self.url,
                            fix="check gate.gitlab.url (or CI_SERVER_URL)") from None

    def members(self, group: str) -> set[str]:
        if group not in self._members:
            g = self.gl.groups.get(group, lazy=True)
            users = self.call(f"the members of group {group}", g.members_all.list, get_all=True)
            self._members[group] = {str(u.username).casefold() for u in users}
        return self._members[group]

    def groups_of(self, username: str, wanted: list[str]) -> frozenset[str]:
        return frozenset(g for g in wanted if username.casefold() in self.members(g))


def find_deployment(client: _Client, environment: str, job_id: int, *, scan: int = 200) -> int | None:
    """The deployment a CI job (CI_JOB_ID) created in `environment` (newest first, at most `scan`)."""

    def search() -> int | None:
        deps = client.project.deployments.list(environment=environment, order_by="id", sort="desc", iterator=True)
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
    url = g.url or env.get("CI_SERVER_URL", "")
    project = g.project or env.get("CI_PROJECT_ID", "")
    if not url or not project:
        raise GateError("GitLab is the approval source but its URL or project is unknown",
                        where="gate.gitlab.url" if not url else "gate.gitlab.project",
                        fix="set gate.gitlab.url and gate.gitlab.project (CI_SERVER_URL/CI_PROJECT_ID in GitLab CI)")
    token = cfg.secret("GITLAB_TOKEN")
    client = _Client(url, project, token, _import_gitlab())
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
        dep = client.call(f"deployment {dep_id}", client.project.deployments.get, dep_id)
        a = dep.attributes
        pinned = ""
        deployable = a.get("deployable") or {}
        for role, who in (("pipeline triggerer", a.get("user")), ("pipeline triggerer", deployable.get("user"))):
            name, aliases = _user(who)
            if name:
                ev.people.append(Person(role, (name, *aliases)))
        pipeline_id = (deployable.get("pipeline") or {}).get("id")
        if pipeline_id:
            pipe = client.call(f"pipeline {pipeline_id}", client.project.pipelines.get, pipeline_id)
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
        mr = client.call(f"merge request !{mr_iid}", client.project.mergerequests.get, mr_iid)
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
