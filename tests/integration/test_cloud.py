"""CloudComposer against the test Cloud API (tests/fixtures/cloud_server.py) over real TCP and unix sockets."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeci.composer import backend
from edgeci.composer.base import ComposeRequest, ComposeState
from edgeci.composer.cloud import CloudComposer
from edgeci.config import Config, load_config
from edgeci.errors import ComposerError, ConfigError
from tests.fixtures.cloud_server import CloudBehaviour, CloudServer, running_cloud_server
from tests.fixtures.httpserver import serve_directory
from tests.fixtures.weldr_server import REF, EdgeArtifacts

TOML = """name = "gateway"
version = "1.0.1"
architecture = "x86_64"

[[packages]]
name = "openssh-server"
version = "*"

[customizations]
hostname = "gateway"

[[customizations.user]]
name = "core"
groups = ["wheel"]
key = "ssh-ed25519 AAAA core@example"

[customizations.services]
enabled = ["sshd"]
disabled = []

[customizations.dnf]
config = "x"
"""
REPOS = "https://cdn.example.com/rhel9/baseos/os/"


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch, cloud_server: CloudServer) -> str:
    monkeypatch.setenv("EDGECI_COMPOSER_TOKEN", cloud_server.b.refresh_token)
    return cloud_server.b.refresh_token


@pytest.fixture
def edgeci_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture the "edgeci" logger at DEBUG even after a cli.main() elsewhere reconfigured it."""
    logger = logging.getLogger("edgeci")
    saved = (logger.handlers[:], logger.propagate, logger.level)
    logger.handlers[:] = []
    logger.propagate = True
    caplog.set_level(logging.DEBUG, logger="edgeci")
    try:
        yield caplog
    finally:
        logger.handlers[:], logger.propagate, logger.level = saved


def make_cfg(srv: CloudServer, root: Path, **over: Any) -> Config:
    overrides = {"composer.backend": "cloud", "composer.url": srv.url, "composer.token_url": f"{srv.url}/token",
                 "composer.repositories": REPOS, "composer.poll_interval": "0.01",
                 "composer.poll_max_interval": "0.05"}
    overrides.update({k.replace("__", "."): str(v) for k, v in over.items()})
    return load_config(env={}, root=root, overrides=overrides)


def composer(srv: CloudServer, root: Path, **over: Any) -> CloudComposer:
    c = CloudComposer(make_cfg(srv, root, **over))
    c.retry_delay = 0.01
    return c


def request(image_type: str = "edge-container", **kw: Any) -> ComposeRequest:
    return ComposeRequest("gateway", TOML, image_type=image_type, ref=REF, blueprint_version="1.0.1", **kw)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_compose_with_oauth_to_success_with_download_and_metadata(
        cloud_server: CloudServer, weldr_artifacts: EdgeArtifacts, token_env: str, tmp_path: Path) -> None:
    c = composer(cloud_server, tmp_path)
    assert isinstance(backend(make_cfg(cloud_server, tmp_path)), CloudComposer)
    c.push_blueprint("gateway", TOML)
    cid = c.start(request())
    lines: list[str] = []
    st = c.wait(cid, progress=lambda state, elapsed: lines.append(state))
    assert st.state is ComposeState.FINISHED
    assert lines == ["WAITING", "RUNNING (building)", "RUNNING (uploading)"]

    res = c.result(cid, request(), tmp_path / "out")
    assert res.artifact.name == f"{cid}-container.tar"
    assert res.sha256 == sha256(weldr_artifacts.container_tar)
    assert (res.commit, res.parent, res.ref) == (weldr_artifacts.commit, weldr_artifacts.parent, REF)
    shadow = {"name": "shadow-utils", "version": "4.9", "release": "8.el9", "arch": "x86_64", "epoch": "2"}
    assert shadow in res.packages
    # Keys the API's blueprint does not define are dropped loudly (the server refuses unknown keys).
    assert any("'customizations.dnf'" in w for w in res.warnings)
    assert any("'architecture'" in w for w in res.warnings)

    (body,) = cloud_server.bodies
    assert body["distribution"] == "rhel-9"
    assert body["image_request"] == {"architecture": "x86_64", "image_type": "edge-container",
                                     "repositories": [{"baseurl": REPOS, "rhsm": False}], "ostree": {"ref": REF},
                                     "upload_targets": [{"type": "local", "upload_options": {}}]}
    assert body["blueprint"] == {
        "name": "gateway", "version": "1.0.1", "packages": [{"name": "openssh-server", "version": "*"}],
        "customizations": {"hostname": "gateway", "services": {"enabled": ["sshd"]},
                           "user": [{"name": "core", "groups": ["wheel"], "key": "ssh-ed25519 AAAA core@example"}]}}
    assert cloud_server.token_requests == 1
    assert all(h.startswith("Bearer access-") for h in cloud_server.auth_headers)


def test_expired_access_token_is_refreshed_once_on_401(cloud_server: CloudServer, token_env: str,
                                                       tmp_path: Path) -> None:
    cloud_server.b.token_uses = 2
    c = composer(cloud_server, tmp_path)
    cid = c.start(request())
    assert c.wait(cid).state is ComposeState.FINISHED
    assert cloud_server.token_requests >= 3  # refreshed each time the server answered 401
    assert cloud_server.auth_headers.count("") == 0


def test_refused_refresh_token_is_one_clear_error_without_the_token(
        cloud_server: CloudServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        edgeci_log: pytest.LogCaptureFixture) -> None:
    caplog = edgeci_log
    monkeypatch.setenv("EDGECI_COMPOSER_TOKEN", "wrong-offline-token-123")
    c = composer(cloud_server, tmp_path)
    with pytest.raises(ComposerError) as e:
        c.start(request())
    assert "refused the refresh token: Invalid refresh token" in str(e.value)
    assert "wrong-offline-token-123" not in str(e.value) + caplog.text
    assert cloud_server.bodies == []


def test_tokens_never_reach_the_logs(cloud_server: CloudServer, token_env: str, tmp_path: Path,
                                     edgeci_log: pytest.LogCaptureFixture) -> None:
    caplog = edgeci_log
    cloud_server.b.token_uses = 3
    c = composer(cloud_server, tmp_path)
    cid = c.start(request())
    c.wait(cid)
    c.result(cid, request(), tmp_path)
    assert "obtained an access token" in caplog.text and "401: refreshing" in caplog.text
    for secret in [token_env, *cloud_server.tokens]:
        assert secret not in caplog.text


def test_failed_compose_logs_carry_the_error(cloud_server: CloudServer, token_env: str, tmp_path: Path) -> None:
    cloud_server.b.outcome = "failure"
    c = composer(cloud_server, tmp_path)
    cid = c.start(request())
    assert c.wait(cid).state is ComposeState.FAILED
    logs = c.logs(cid)
    assert "error 10: osbuild build failed" in logs and "kernel-rt not found" in logs
    assert "org.osbuild.rpm FAILED" in logs


def test_bad_request_reports_code_reason_and_details(cloud_server: CloudServer, token_env: str,
                                                     tmp_path: Path) -> None:
    c = composer(cloud_server, tmp_path, composer__repositories="")
    c.cfg.composer.repositories = [""]
    with pytest.raises(ComposerError) as e:
        c.start(request())
    # errors.go: ErrorInvalidRepository (7) when a repository has none of baseurl, mirrorlist, metalink
    assert "HTTP 400" in str(e.value)
    assert "IMAGE-BUILDER-COMPOSER-7: Must specify baseurl, mirrorlist, or metalink" in str(e.value)
    resp = c._send("POST", "/compose", json={"distribution": "rhel-9", "image_request": {}, "koji2": 1})
    assert resp.status_code == 400
    assert "IMAGE-BUILDER-COMPOSER-30: Request could not be validated (\"property koji2 is unsupported\")" in str(
        c._error(resp, "POST", "/compose"))


def test_artifact_only_on_s3_is_fetched_without_the_token(cloud_server: CloudServer, weldr_artifacts: EdgeArtifacts,
                                                          token_env: str, tmp_path: Path) -> None:
    c = composer(cloud_server, tmp_path, composer__upload_target="aws.s3", composer__upload_region="us-east-1")
    cid = c.start(request("edge-commit"))
    assert cloud_server.bodies[0]["image_request"]["upload_options"] == {"region": "us-east-1"}
    c.wait(cid)
    res = c.result(cid, request("edge-commit"), tmp_path)
    assert res.sha256 == sha256(weldr_artifacts.commit_tar) and res.commit == weldr_artifacts.commit
    assert cloud_server.requests["GET /composes/{id}/download"] == 1  # tried first, 404
    assert cloud_server.s3_auth_headers == [""]
    with pytest.raises(ConfigError, match="cannot be uploaded to S3"):
        c.start(request("edge-container"))


def test_interrupted_download_is_restarted(cloud_server: CloudServer, weldr_artifacts: EdgeArtifacts,
                                           token_env: str, tmp_path: Path) -> None:
    cloud_server.b.interrupt_downloads = 1
    c = composer(cloud_server, tmp_path)
    cid = c.start(request())
    c.wait(cid)
    path = c.download(cid, tmp_path / "dl")
    assert sha256(path) == c.sha256(cid) == sha256(weldr_artifacts.container_tar)
    assert cloud_server.requests["GET /composes/{id}/download"] == 2
    assert [p.name for p in (tmp_path / "dl").iterdir()] == [path.name]


def test_artifact_commit_must_match_the_metadata(cloud_server: CloudServer, token_env: str, tmp_path: Path) -> None:
    cloud_server.b.metadata_commit = "b" * 64
    c = composer(cloud_server, tmp_path)
    cid = c.start(request())
    c.wait(cid)
    with pytest.raises(ComposerError, match=f"metadata says {'b' * 64}"):
        c.result(cid, request(), tmp_path)


def test_production_url_passed_as_ostree_url(cloud_server: CloudServer, weldr_artifacts: EdgeArtifacts,
                                             token_env: str, tmp_path: Path) -> None:
    with serve_directory(weldr_artifacts.prod_repo) as prod:
        c = composer(cloud_server, tmp_path, prod__url=prod)
        cid = c.start(request())
        c.wait(cid)
        res = c.result(cid, request(), tmp_path)
    assert cloud_server.bodies[0]["image_request"]["ostree"] == {"ref": REF, "url": prod}
    assert res.parent == weldr_artifacts.parent and res.warnings == [w for w in res.warnings if "dropped" in w]


def test_on_premises_cloud_api_over_a_unix_socket_without_auth(weldr_artifacts: EdgeArtifacts,
                                                               tmp_path: Path) -> None:
    d = tempfile.mkdtemp(prefix="cloudapi-", dir="/tmp")
    sock = f"{d}/api.socket"
    try:
        with running_cloud_server(weldr_artifacts, CloudBehaviour(require_auth=False), unix_socket=sock) as srv:
            cfg = load_config(env={}, root=tmp_path, overrides={
                "composer.backend": "cloud", "composer.socket": sock, "composer.repositories": REPOS,
                "composer.poll_interval": "0.01", "composer.poll_max_interval": "0.05"})
            c = CloudComposer(cfg)
            cid = c.start(request())
            assert c.wait(cid).state is ComposeState.FINISHED
            assert c.result(cid, request(), tmp_path).commit == weldr_artifacts.commit
            assert srv.token_requests == 0 and set(srv.auth_headers) == {""}
    finally:
        shutil.rmtree(d, ignore_errors=True)
