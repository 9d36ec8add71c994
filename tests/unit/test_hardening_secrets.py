"""Secrets in every form they travel in: base64 of user:token (HTTP Basic), URL-encoded (form bodies), hex; and
through every way edgeci prints: error lines, response bodies, --debug tracebacks."""

from __future__ import annotations

import base64
import urllib.parse
from pathlib import Path

import pytest

from edgeci import cli
from edgeci.errors import ComposerError
from edgeci.tools.run import mask, register_secret
from tests.fixtures.composed import edgeci_cli
from tests.fixtures.gitrepo import GitRepo, blueprint_text
from tests.fixtures.httpserver import FakeHTTPServer, Request


def forms(secret: str, user: str = "alice") -> list[str]:
    basic = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return [secret, basic, basic.rstrip("="), urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret),
            base64.b64encode(secret.encode()).decode(), base64.urlsafe_b64encode(secret.encode()).decode(),
            secret.encode().hex()]


@pytest.mark.parametrize("user", ["a", "ab", "abc", "alice", "jenkins-admin", "svc.deployer@corp"])
def test_basic_auth_of_user_and_token_is_masked_whatever_the_alignment(user: str) -> None:
    token = "11f0e9d8c7b6a5canary-" + user.replace("@", "")
    register_secret(token)
    basic = base64.b64encode(f"{user}:{token}".encode()).decode()
    out = mask(f"<pre>Authorization: Basic {basic}\r\nHost: jenkins</pre>")
    assert basic not in out and basic.rstrip("=")[:-4] not in out and "Basic ***" in out


def test_url_encoded_base64_and_hex_forms_are_masked() -> None:
    secret = "offline/t0ken+with=sp ecial&chars"
    register_secret(secret)
    for form in forms(secret):
        assert mask(f"echo: {form} :end") == "echo: *** :end", form
    # text without a secret keeps its base64-looking words (checksums, digests)
    plain = "sha256:" + "ab" * 32 + " dGhpcyBpcyBub3QgYSBzZWNyZXQ="
    assert mask(plain) == plain


def test_jenkins_error_body_echoing_the_authorization_header_is_masked(git_repo: GitRepo) -> None:
    token = "11jenkins0canary0api0token"
    srv = FakeHTTPServer()

    @srv.route("GET", r"/crumbIssuer/api/json")
    def crumb(req: Request) -> None:
        req.json({"error": "no crumbs"}, 404)

    @srv.route("*", r"/job/.*")
    def echo(req: Request) -> None:  # a proxy's error page that dumps the request headers
        headers = "\n".join(f"{k}: {v}" for k, v in req.headers.items())
        req.text(f"Authorization: {req.headers.get('Authorization')} rejected by proxy\n{headers}\n", 502)

    with srv:
        r = edgeci_cli(["--set", f"gate.jenkins.url={srv.url}", "jenkins", "approve", "1", "--as", "alice"],
                       git_repo.path, env={"EDGECI_JENKINS_TOKEN": token})
        sent = [e.headers.get("Authorization", "") for e in srv.log if e.path.startswith("/job/")]
    assert sent and sent[0].startswith("Basic ")  # the request really carried user:token in base64
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Jenkins answered 502" in err[0] and "Basic ***" in err[0]
    for form in forms(token):
        assert form not in r.stdout + r.stderr


def test_debug_traceback_goes_through_the_mask(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeci.commands.history as history

    secret = "tr4ceback-canary-secret"
    register_secret(secret)

    def leaky(args: object, cfg: object) -> int:
        raise ComposerError(f"the server said: token={urllib.parse.quote(secret)}; raw {secret}")

    def buggy(args: object, cfg: object) -> int:
        raise RuntimeError(f"bug holding {secret}")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(history, "run", leaky)
    assert cli.main(["--debug", "history", "edge"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ComposerError" in err
    assert secret not in err and urllib.parse.quote(secret) not in err
    monkeypatch.setattr(history, "run", buggy)
    assert cli.main(["--debug", "history", "edge"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: bug holding ***" in err
    assert secret not in err


def test_cloud_token_endpoint_echoing_the_request_body_leaks_nothing(git_repo: GitRepo) -> None:
    refresh = "eyJhbGciOiJIUzI1NiJ9.offline/refresh+token=="
    srv = FakeHTTPServer()

    @srv.route("POST", r"/token")
    def token(req: Request) -> None:  # an OAuth2 endpoint that echoes the form it got in its error
        req.json({"error": "invalid_grant", "error_description": f"bad request body: {req.body().decode()}"}, 400)

    git_repo.write("blueprints/gateway.toml", blueprint_text("gateway", "1.0.0"))
    git_repo.commit("gateway 1.0.0")
    with srv:
        r = edgeci_cli(["--debug", "compose", "gateway", "--set", "composer.backend=cloud",
                        "--set", f"composer.url={srv.url}", "--set", f"composer.token_url={srv.url}/token",
                        "--set", "composer.repositories=https://cdn.example.com/rhel9/baseos/os/"],
                       git_repo.path, env={"EDGECI_COMPOSER_TOKEN": refresh})
        assert srv.hits("POST", r"/token") >= 1
    assert r.returncode == 2
    assert "refused the refresh token" in r.stderr and "Traceback" in r.stderr
    for form in forms(refresh):
        assert form not in r.stdout + r.stderr, form


def test_gitlab_error_bodies_are_one_masked_line() -> None:
    gitlab = pytest.importorskip("gitlab")
    from edgeci.gitlab_api import Connection, GitLabError, api_errors

    token = "glpat-11canary0gitlab0token"
    register_secret(token)
    conn = Connection(gl=None, url="https://gitlab.example.com", project_ref="platform/edge")
    body = f"500 Internal Server Error: PRIVATE-TOKEN {urllib.parse.quote(token)} not accepted\n<html>\n{token}\n"
    with pytest.raises(GitLabError) as e, api_errors(conn, "the environment"):
        raise gitlab.exceptions.GitlabHttpError(body, response_code=500)
    assert "\n" not in str(e.value) and "GitLab answered 500" in str(e.value)
    assert token not in str(e.value) and urllib.parse.quote(token) not in str(e.value)
