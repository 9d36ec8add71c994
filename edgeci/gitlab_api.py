"""The one GitLab client: python-gitlab (imported lazily) for gate.gitlab.url with EDGECI_GITLAB_TOKEN, transient
errors (5xx, connection resets) retried with backoff, every failure turned into one GitLabError line with the
token masked. Used by the CI set-up (edgeci.ci.gitlab_setup) and the approval source (approvals.gitlab_source).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from edgeci.errors import ConfigError, EdgeCIError
from edgeci.tools.run import mask


class GitLabError(EdgeCIError):
    """GitLab refused a request or could not be reached."""


def import_gitlab() -> Any:
    try:
        import gitlab
    except ImportError:
        raise EdgeCIError("python-gitlab is not installed",
                          fix="pip install 'edgeci[gitlab]' (or pip install python-gitlab)") from None
    return gitlab


@dataclass
class Connection:
    gl: Any  # gitlab.Gitlab
    url: str
    project_ref: str
    _members: dict[str, set[str]] = field(default_factory=dict, repr=False)

    def project(self, *, lazy: bool = False) -> Any:
        """The project (lazy: no request until an attribute is needed)."""
        with api_errors(self, f"project '{self.project_ref}'"):
            return self.gl.projects.get(self.project_ref, lazy=lazy)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs) with GitLab's errors turned into GitLabError about `what`."""
        with api_errors(self, what):
            return fn(*args, **kwargs)

    def members(self, group: str) -> set[str]:
        """Usernames (casefolded) of a group's members, inherited ones included; cached per connection."""
        if group not in self._members:
            g = self.gl.groups.get(group, lazy=True)
            users = self.call(f"the members of group {group}", g.members_all.list, get_all=True)
            self._members[group] = {str(u.username).casefold() for u in users}
        return self._members[group]

    def groups_of(self, username: str, wanted: list[str]) -> frozenset[str]:
        return frozenset(g for g in wanted if username.casefold() in self.members(g))


def connect(cfg: Any, env: Mapping[str, str] | None = None, *, token_required: bool = True) -> Connection:
    """A client for gate.gitlab.url (CI_SERVER_URL) and gate.gitlab.project (CI_PROJECT_ID) with
    EDGECI_GITLAB_TOKEN; without a token (token_required=False) it reads what anonymous users may."""
    env = os.environ if env is None else env
    gitlab = import_gitlab()
    url = (cfg.gate.gitlab.url or env.get("CI_SERVER_URL", "")).rstrip("/")
    project = cfg.gate.gitlab.project or env.get("CI_PROJECT_ID", "")
    if not url:
        raise ConfigError("no GitLab URL configured", where="gate.gitlab.url",
                          fix="set gate.gitlab.url in edgeci.yaml (inside GitLab CI, CI_SERVER_URL is used)")
    if not project:
        raise ConfigError("no GitLab project configured", where="gate.gitlab.project",
                          fix="set gate.gitlab.project to the project path or id (inside GitLab CI, CI_PROJECT_ID)")
    token = cfg.secret("GITLAB_TOKEN")
    if not token and token_required:
        raise ConfigError("no GitLab token", where="environment EDGECI_GITLAB_TOKEN",
                          fix="export EDGECI_GITLAB_TOKEN=<a project or personal access token with the api scope>")
    gl = gitlab.Gitlab(url, private_token=token or None, timeout=30, retry_transient_errors=True)
    return Connection(gl, url, str(project))


@contextmanager
def api_errors(conn: Connection, what: str) -> Iterator[None]:
    """Turn python-gitlab and connection errors into one GitLabError line (token masked)."""
    import requests

    gitlab = import_gitlab()
    try:
        yield
    except gitlab.exceptions.GitlabError as e:
        code = getattr(e, "response_code", None)
        text = str(getattr(e, "error_message", "") or e).strip()
        message = mask(text.splitlines()[0][:300] if text else "")  # a response body: first line only, masked
        if code == 401:
            raise GitLabError(f"GitLab refused the token (401) for {what}", where=conn.url,
                              fix="check EDGECI_GITLAB_TOKEN: it must be valid and have the api scope") from None
        if code == 403:
            raise GitLabError(f"GitLab forbids this for {what} (403: {message})", where=conn.url,
                              fix="use a token of a user with the Maintainer role on the project") from None
        if code == 404:
            raise GitLabError(f"{what} not found (404)", where=conn.url,
                              fix="check gate.gitlab.project or the name, and that the token's user can see it",
                              ) from None
        raise GitLabError(f"GitLab answered {code} for {what}: {message}", where=conn.url) from None
    except requests.RequestException as e:
        raise GitLabError(f"cannot reach GitLab for {what}: {type(e).__name__}", where=conn.url,
                          fix="check gate.gitlab.url and the network") from None
