"""Jenkins: the pipeline job (Pipeline script from SCM) and approvals through the input step's API.

ensure_job() creates or updates the job with jenkinsapi and compares the config.xml fields edgeci
manages first, so an unchanged job gets no POST. approve()/abort() answer the pipeline's pending
`input` (GET /job/J/N/wfapi/pendingInputActions, then POST …/input/ID/proceedEmpty, submit or abort,
with the CSRF crumb from /crumbIssuer/api/json). The API token (EDGECI_JENKINS_TOKEN) is masked.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from edgeci.ci import Change
from edgeci.config import Config
from edgeci.errors import ConfigError, EdgeCIError
from edgeci.jenkins_api import Connection, JenkinsError, api_errors, http_error, import_jenkinsapi

DEFAULT_JOB = "edge-images"
MANAGED_BY = "Managed by edgeci (edgeci jenkins job): changes made here are replaced on its next run."
TIMEOUT = 30.0


# ---------------------------------------------------------------------------------------------
# The job's config.xml


@dataclass
class JobSpec:
    name: str = DEFAULT_JOB
    repo: str = ""
    branch: str = "main"
    script_path: str = "Jenkinsfile"
    credentials_id: str = ""
    description: str = "edgeci: RHEL for Edge images from blueprints to production. " + MANAGED_BY
    # A heavyweight checkout of the Jenkinsfile records the changelog the `changeset` condition reads.
    lightweight: bool = False


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    el = ET.SubElement(parent, tag)
    el.text = text
    return el


def job_config_xml(spec: JobSpec) -> str:
    """config.xml of a Pipeline job whose Jenkinsfile comes from git (CpsScmFlowDefinition + GitSCM)."""
    root = ET.Element("flow-definition", {"plugin": "workflow-job"})
    _text(root, "description", spec.description)
    _text(root, "keepDependencies", "false")
    ET.SubElement(root, "properties")
    definition = ET.SubElement(root, "definition", {
        "class": "org.jenkinsci.plugins.workflow.cps.CpsScmFlowDefinition", "plugin": "workflow-cps"})
    scm = ET.SubElement(definition, "scm", {"class": "hudson.plugins.git.GitSCM", "plugin": "git"})
    _text(scm, "configVersion", "2")
    remotes = ET.SubElement(scm, "userRemoteConfigs")
    remote = ET.SubElement(remotes, "hudson.plugins.git.UserRemoteConfig")
    _text(remote, "url", spec.repo)
    if spec.credentials_id:
        _text(remote, "credentialsId", spec.credentials_id)
    branches = ET.SubElement(scm, "branches")
    branch = ET.SubElement(branches, "hudson.plugins.git.BranchSpec")
    _text(branch, "name", spec.branch if "/" in spec.branch else f"*/{spec.branch}")
    _text(scm, "doGenerateSubmoduleConfigurations", "false")
    ET.SubElement(scm, "submoduleCfg", {"class": "empty-list"})
    ET.SubElement(scm, "extensions")
    _text(definition, "scriptPath", spec.script_path)
    _text(definition, "lightweight", "true" if spec.lightweight else "false")
    ET.SubElement(root, "triggers")
    _text(root, "disabled", "false")
    ET.indent(root, space="  ")
    return "<?xml version='1.1' encoding='UTF-8'?>\n" + ET.tostring(root, encoding="unicode") + "\n"


def _parse(xml_text: str, where: str) -> ET.Element:
    # ElementTree refuses an XML 1.1 declaration; Jenkins writes one. The content is 1.0-compatible.
    body = xml_text.lstrip("\ufeff")
    if body.startswith("<?xml"):
        body = body[body.index("?>") + 2:]
    try:
        return ET.fromstring(body)
    except ET.ParseError as e:
        raise JenkinsError(f"the job's config.xml is not XML ({e})", where=where) from None


def managed_fields(xml_text: str, where: str = "config.xml") -> dict[str, Any]:
    """The settings edgeci owns, as Jenkins stored them (plugin versions and formatting ignored)."""
    root = _parse(xml_text, where)

    def text(path: str) -> str:
        el = root.find(path)
        return (el.text or "").strip() if el is not None else ""

    definition = root.find("definition")
    scm = definition.find("scm") if definition is not None else None
    return {
        "type": root.tag,
        "description": text("description"),
        "definition": definition.get("class", "") if definition is not None else "",
        "scm": scm.get("class", "") if scm is not None else "",
        "urls": [(u.text or "").strip() for u in root.iterfind("definition/scm/userRemoteConfigs/*/url")],
        "credentials": [(c.text or "").strip()
                        for c in root.iterfind("definition/scm/userRemoteConfigs/*/credentialsId")],
        "branches": [(b.text or "").strip() for b in root.iterfind("definition/scm/branches/*/name")],
        "script_path": text("definition/scriptPath"),
        "lightweight": text("definition/lightweight"),
        "disabled": text("disabled"),
    }


def default_repo(cfg: Config) -> str:
    """The origin remote of the repository edgeci runs in, or '' when there is none."""
    from edgeci.tools import git

    try:
        done = git.cli(cfg.root, "remote", "get-url", "origin", check=False)
    except EdgeCIError:
        return ""
    return done.stdout.strip() if done.ok else ""


# ---------------------------------------------------------------------------------------------
# The job


def ensure_job(conn: Connection, spec: JobSpec) -> Change:
    """Create the job, or update it when a managed field differs; no POST when it already matches."""
    jenkinsapi = import_jenkinsapi()
    desired = job_config_xml(spec)
    what = f"job '{spec.name}'"
    with api_errors(conn, "the job list"):
        server = jenkinsapi.jenkins.Jenkins(conn.url, username=conn.user or "", password=conn.token or "",
                                            timeout=int(TIMEOUT), use_crumb=True)
        exists = server.has_job(spec.name)
    if not exists:
        with api_errors(conn, f"creating {what}"):
            server.create_job(spec.name, desired)
        return Change(what, "created", f"{spec.repo} {spec.branch}, {spec.script_path}")
    with api_errors(conn, what):
        job = server.get_job(spec.name)
        current = job.get_config()
    want, have = managed_fields(desired), managed_fields(current, where=f"{conn.job_url(spec.name)}/config.xml")
    if want == have:
        return Change(what, "unchanged")
    changed = sorted(k for k in want if want[k] != have.get(k))
    with api_errors(conn, f"updating {what}"):
        response = job.update_config(desired, full_response=True)
    if response.status_code >= 400:
        raise http_error(conn, f"updating {what}", response.status_code, response.text)
    return Change(what, "updated", ", ".join(changed))


# ---------------------------------------------------------------------------------------------
# Pending input (approve / abort)


class InputClient:
    """The pipeline input step's HTTP API, with the CSRF crumb Jenkins wants on POSTs."""

    def __init__(self, conn: Connection) -> None:
        import requests

        self.conn = conn
        self.session = requests.Session()
        if conn.user:
            self.session.auth = (conn.user, conn.token)
        self._crumb: dict[str, str] | None = None

    def close(self) -> None:
        self.session.close()

    def _request(self, method: str, url: str, what: str, **kwargs: Any) -> Any:
        import requests

        try:
            response = self.session.request(method, url, timeout=TIMEOUT, allow_redirects=False, **kwargs)
        except requests.RequestException as e:
            raise JenkinsError(f"cannot reach Jenkins for {what}: {type(e).__name__}", where=self.conn.url,
                               fix="check gate.jenkins.url and the network") from None
        if response.status_code >= 400:
            raise http_error(self.conn, what, response.status_code, response.text)
        return response

    def crumb(self) -> dict[str, str]:
        """{crumbRequestField: crumb}, or {} when CSRF protection is off (404)."""
        if self._crumb is None:
            import requests

            try:
                r = self.session.get(f"{self.conn.url}/crumbIssuer/api/json", timeout=TIMEOUT)
            except requests.RequestException as e:
                raise JenkinsError(f"cannot reach Jenkins for the CSRF crumb: {type(e).__name__}",
                                   where=self.conn.url, fix="check gate.jenkins.url and the network") from None
            if r.status_code == 404:
                self._crumb = {}
            elif r.status_code >= 400:
                raise http_error(self.conn, "the CSRF crumb", r.status_code, r.text)
            else:
                data = r.json()
                self._crumb = {str(data["crumbRequestField"]): str(data["crumb"])}
        return self._crumb

    def pending(self, job: str, build: int) -> list[dict[str, Any]]:
        what = f"build #{build} of '{job}'"
        r = self._request("GET", f"{self.conn.job_url(job)}/{build}/wfapi/pendingInputActions", what)
        try:
            data = r.json()
        except ValueError:
            raise JenkinsError(f"{what}: pendingInputActions is not JSON", where=self.conn.url,
                               fix="check that the Pipeline: Stage View plugin (wfapi) is installed") from None
        return list(data) if isinstance(data, list) else []

    def choose(self, job: str, build: int, input_id: str | None) -> dict[str, Any]:
        inputs = self.pending(job, build)
        if not inputs:
            raise JenkinsError(f"build #{build} of '{job}' is not waiting for input", where=self.conn.url,
                               fix="check the build number; it may have been approved, aborted or finished")
        if input_id:
            # Jenkins capitalises the first letter of an input id ('promote' → 'Promote')
            found = [i for i in inputs if str(i.get("id", "")).lower() == input_id.lower()]
            if not found:
                ids = ", ".join(str(i.get("id")) for i in inputs)
                raise JenkinsError(f"build #{build} of '{job}' has no pending input '{input_id}'",
                                   where=self.conn.url, fix=f"pending: {ids}")
            return found[0]
        if len(inputs) > 1:
            ids = ", ".join(str(i.get("id")) for i in inputs)
            raise JenkinsError(f"build #{build} of '{job}' waits for {len(inputs)} inputs", where=self.conn.url,
                               fix=f"pass --id, one of: {ids}")
        return inputs[0]

    def approve(self, job: str, build: int, input_id: str | None = None,
                params: Mapping[str, str] | None = None) -> Change:
        pending = self.choose(job, build, input_id)
        iid = str(pending["id"])
        base = f"{self.conn.job_url(job)}/{build}/input/{quote(iid, safe='')}"
        what = f"input '{iid}' of build #{build} of '{job}'"
        wanted = [str(p.get("name")) for p in pending.get("inputs") or []]
        unknown = sorted(set(params or {}) - set(wanted))
        if unknown:
            raise ConfigError(f"input '{iid}' has no parameter {', '.join(unknown)}", where="--param",
                              fix=f"its parameters: {', '.join(wanted) or 'none'}")
        if not wanted:
            self._request("POST", f"{base}/proceedEmpty", f"approving {what}", headers=self.crumb())
        else:
            values = []
            for p in pending.get("inputs") or []:
                name = str(p.get("name"))
                value = (params or {}).get(name)
                if value is None:
                    default = (p.get("definition") or {}).get("defaultParameterValue") or {}
                    value = default.get("value", "")
                values.append({"name": name, "value": value})
            form = {"json": json.dumps({"parameter": values}),
                    "proceed": str(pending.get("proceedText") or "Proceed")}
            self._request("POST", f"{base}/submit", f"approving {what}", data=form, headers=self.crumb())
        return Change(what, "approved", f"as {self.conn.user or 'anonymous'}")

    def abort(self, job: str, build: int, input_id: str | None = None) -> Change:
        pending = self.choose(job, build, input_id)
        iid = str(pending["id"])
        what = f"input '{iid}' of build #{build} of '{job}'"
        url = f"{self.conn.job_url(job)}/{build}/input/{quote(iid, safe='')}/abort"
        self._request("POST", url, f"aborting {what}", headers=self.crumb())
        return Change(what, "aborted", f"as {self.conn.user or 'anonymous'}")
