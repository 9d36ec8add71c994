"""The one Jenkins client: connection settings (gate.jenkins.url / JENKINS_URL, user, EDGECI_JENKINS_TOKEN), job
URLs of folder paths, and jenkinsapi/requests failures as one JenkinsError line with the token masked. Used by the
CI set-up and approval commands (edgeci.ci.jenkins_setup) and the approval source (edgeci.approvals.jenkins_source).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from edgeci.errors import ConfigError, EdgeCIError
from edgeci.tools.run import mask


class JenkinsError(EdgeCIError):
    """Jenkins refused a request or could not be reached."""


def job_url(base: str, job: str) -> str:
    """folder/sub/name (or job/folder/job/name) → BASE/job/folder/job/sub/job/name."""
    parts = [p for p in job.strip("/").split("/") if p and p != "job"]
    return base.rstrip("/") + "".join(f"/job/{quote(p, safe='')}" for p in parts)


def import_jenkinsapi() -> Any:
    try:
        import jenkinsapi.jenkins
    except ImportError:
        raise EdgeCIError("jenkinsapi is not installed",
                          fix="pip install 'edgeci[jenkins]' (or pip install jenkinsapi)") from None
    return jenkinsapi


@dataclass
class Connection:
    url: str
    user: str
    token: str = field(repr=False)

    def job_url(self, job: str) -> str:
        return job_url(self.url, job)


def connect(cfg: Any, user: str | None = None, env: Mapping[str, str] | None = None) -> Connection:
    env = os.environ if env is None else env
    url = (cfg.gate.jenkins.url or env.get("JENKINS_URL", "")).rstrip("/")
    if not url:
        raise ConfigError("no Jenkins URL configured", where="gate.jenkins.url",
                          fix="set gate.jenkins.url in edgeci.yaml (inside Jenkins, JENKINS_URL is used)")
    token = cfg.secret("JENKINS_TOKEN")
    user = user or cfg.gate.jenkins.user or env.get("EDGECI_JENKINS_USER", "")
    if token and not user:
        raise ConfigError("EDGECI_JENKINS_TOKEN is set but no Jenkins user", where="gate.jenkins.user",
                          fix="set gate.jenkins.user (the token's owner), EDGECI_JENKINS_USER, or pass --as USER")
    return Connection(url, user or "", token)


@contextmanager
def api_errors(conn: Connection, what: str) -> Iterator[None]:
    """jenkinsapi / requests failures → one JenkinsError line, token masked."""
    import requests

    import_jenkinsapi()
    from jenkinsapi.custom_exceptions import JenkinsAPIException

    try:
        yield
    except requests.HTTPError as e:
        code = e.response.status_code if e.response is not None else None
        raise http_error(conn, what, code, e.response.text if e.response is not None else "") from None
    except requests.RequestException as e:
        raise JenkinsError(f"cannot reach Jenkins for {what}: {type(e).__name__}", where=conn.url,
                           fix="check gate.jenkins.url and the network") from None
    except JenkinsAPIException as e:
        raise JenkinsError(f"Jenkins refused {what}: {mask(_first_line(str(e)))}", where=conn.url) from None


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:limit]


def http_error(conn: Connection, what: str, code: int | None, body: str) -> JenkinsError:
    if code == 401:
        return JenkinsError(f"Jenkins refused the credentials (401) for {what}", where=conn.url,
                            fix="check gate.jenkins.user / --as and EDGECI_JENKINS_TOKEN (that user's API token)")
    if code == 403:
        return JenkinsError(f"Jenkins forbids {what} to user '{conn.user or 'anonymous'}' (403)", where=conn.url,
                            fix="use a user with the permission (for an approval: one listed in the input's "
                                "submitter)")
    if code == 404:
        return JenkinsError(f"{what} not found (404)", where=conn.url, fix="check the job name and build number")
    detail = _first_line(body)
    return JenkinsError(f"Jenkins answered {code} for {what}" + (f": {mask(detail)}" if detail else ""),
                        where=conn.url)
