"""Jenkins as the approval source, through jenkinsapi (imported lazily: pip install 'edgeci[jenkins]').

Who approved comes from Jenkins itself: the pipeline's `input` step (its submitter list set by the shared
library's configuration, not by the built branch) records the user who answered it on the run, as an
ApproverAction whose userId the build API exports (GET /job/X/N/api/json: actions[].userId). edgeci reads
it back at the gate and again at promotion; a name passed with --approver counts only when Jenkins recorded
that user as an approver of this build. edgeci also reads the build's causes (who triggered it) and change
sets (who wrote the change), and the inputs still waiting through /job/X/N/wfapi/pendingInputActions.
Token: EDGECI_JENKINS_TOKEN with gate.jenkins.user.

Binding rule: the input message shows "edgeci-approve <checksum>" and the pipeline passes that same
checksum with --approved-checksum (or $EDGECI_APPROVED_CHECKSUM); a build started with the parameter
EDGECI_CHECKSUM binds its input to that value. An approver without a checksum does not count.
Jenkins has no API for group membership: approvers must be in gate.allowed_users when groups are
configured (the input step's `submitter` enforces groups inside Jenkins).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edgeci.approvals import Source
from edgeci.errors import GateError
from edgeci.jenkins_api import job_url
from edgeci.policy import Approval, Evidence, Person
from edgeci.record import now_iso

if TYPE_CHECKING:
    from edgeci.record import Candidate

CHECKSUM_PARAMETER = "EDGECI_CHECKSUM"
APPROVER_ACTION = "org.jenkinsci.plugins.workflow.support.steps.input.ApproverAction"


def recorded_approvers(data: Mapping[str, Any]) -> list[str]:
    """The users Jenkins recorded as having answered the build's input steps, in order, once each."""
    out: list[str] = []
    for action in data.get("actions") or []:
        if isinstance(action, Mapping) and action.get("_class") == APPROVER_ACTION and action.get("userId"):
            user = str(action["userId"])
            if user not in out:
                out.append(user)
    return out


def _import_jenkinsapi() -> Any:
    try:
        from jenkinsapi import jenkins
    except ImportError:
        raise GateError("jenkinsapi is not installed (gate.source is jenkins)",
                        fix="install it: pip install 'edgeci[jenkins]'") from None
    return jenkins


def collect(cfg: Any, checksum: str, *, approver: str | None = None, approved_checksum: str | None = None,
            build: int | None = None, env: Mapping[str, str] | None = None) -> Evidence:
    import requests

    env = os.environ if env is None else env
    j = cfg.gate.jenkins
    url = j.url or env.get("JENKINS_URL", "")
    job = j.job or env.get("JOB_NAME", "")
    number = build or (int(env["BUILD_NUMBER"]) if env.get("BUILD_NUMBER", "").isdigit() else None)
    if not url or not job or number is None:
        missing = "gate.jenkins.url" if not url else "gate.jenkins.job" if not job else "the build number"
        raise GateError(f"Jenkins is the approval source but {missing} is unknown", where=missing,
                        fix="set gate.jenkins.url/job (JENKINS_URL/JOB_NAME in Jenkins) and --build (BUILD_NUMBER)")
    token = cfg.secret("JENKINS_TOKEN")
    user = j.user or env.get("EDGECI_JENKINS_USER", "")
    if bool(user) != bool(token):
        raise GateError("Jenkins needs both a user and a token (or neither)", where="gate.jenkins.user",
                        fix="set gate.jenkins.user and EDGECI_JENKINS_TOKEN")
    mod = _import_jenkinsapi()
    ev = Evidence()
    where = f"{job_url(url, job)}/{number}/"
    try:
        server = mod.Jenkins(url, username=user or None, password=token or None, lazy=True, timeout=30)
        the_job = server.get_job_by_url(job_url(url, job), job)
        b = the_job.get_build(number)
        causes = b.get_causes()
        data = b._data or {}
        params = b.get_params()
        resp = server.requester.get_url(f"{b.baseurl}/wfapi/pendingInputActions")
        if resp.status_code == 404:
            pending: list[dict[str, Any]] = []
            ev.notes.append("the build has no wfapi (Pipeline: Stage View plugin): pending inputs not checked")
        else:
            resp.raise_for_status()
            pending = json.loads(resp.text or "[]")
    except GateError:
        raise
    except requests.exceptions.HTTPError as e:
        code = e.response.status_code if e.response is not None else "?"
        fix = "check gate.jenkins.user and EDGECI_JENKINS_TOKEN" if code in (401, 403) else None
        raise GateError(f"Jenkins answered HTTP {code} while reading the build", where=where, fix=fix) from None
    except requests.exceptions.RequestException as e:
        raise GateError(f"Jenkins is unreachable: {type(e).__name__}", where=where,
                        fix="check gate.jenkins.url (JENKINS_URL)") from None
    except Exception as e:  # jenkinsapi raises its own exception types (NotFound, JenkinsAPIException, …)
        raise GateError(f"cannot read the Jenkins build: {type(e).__name__}: {e}", where=where) from None

    for c in causes:
        if c.get("userId"):
            ev.people.append(Person("pipeline triggerer", (str(c["userId"]), str(c.get("userName") or ""))))
        elif c.get("upstreamProject"):
            ev.notes.append(f"started by {c['upstreamProject']} #{c.get('upstreamBuild')}: "
                            "its triggerer is not checked")
    for cs in data.get("changeSets") or ([data["changeSet"]] if data.get("changeSet") else []):
        for item in (cs or {}).get("items") or []:
            author = item.get("author") or {}
            ids = tuple(str(x) for x in (item.get("authorEmail"), author.get("fullName")) if x)
            if ids:
                ev.people.append(Person("commit author", ids))
    for p in pending:
        ev.pending.append(f"Jenkins input '{p.get('message', '')}' ({p.get('id', '?')}) of {job} #{number}")

    recorded = recorded_approvers(data)
    if approver and approver not in recorded:
        ev.notes.append(f"--approver {approver}: Jenkins recorded no input of {job} #{number} answered by this "
                        "user: not counted")
    named = (approved_checksum or env.get("EDGECI_APPROVED_CHECKSUM", "")
             or str(params.get(CHECKSUM_PARAMETER, ""))).strip().lower()
    groups: frozenset[str] | None = None if cfg.gate.allowed_groups else frozenset()
    for user in recorded:
        ev.approvals.append(Approval(
            user=user, checksum=named, time=now_iso(),
            source=f"jenkins input {job} #{number}", groups=groups))
    return ev


class JenkinsSource(Source):
    """The input step's submitter of the build that asked for approval, read through the Jenkins API."""

    name = "jenkins"

    def collect(self, candidate: Candidate) -> Evidence:
        o = self.ctx.options
        return collect(self.ctx.cfg, candidate.checksum, approver=o.get("approver"),
                       approved_checksum=o.get("approved_checksum"), build=o.get("build"), env=self.ctx.env)
