"""The test composers behave like osbuild-composer, and the backends report what edgeci must record.

Real sockets and real ostree commits (tests/fixtures/weldr_server.py, cloud_server.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from edgeci.composer import artifact as artifacts
from edgeci.composer.base import ComposeRequest, ComposeState, compose_failed, first_error_line, save_compose_log
from edgeci.composer.cloud import CloudComposer
from edgeci.composer.weldr import WeldrComposer
from edgeci.config import load_config
from tests.fixtures.cloud_server import API, CloudBehaviour, CloudServer, running_cloud_server
from tests.fixtures.weldr_server import REF, EdgeArtifacts, WeldrServer

TOML = 'name = "gateway"\nversion = "1.0.1"\n\n[[packages]]\nname = "openssh-server"\n'
REPO = "https://cdn.example.com/rhel9/baseos/os/"


def request(image_type: str = "edge-commit", **kw: str) -> ComposeRequest:
    return ComposeRequest("gateway", TOML, image_type=image_type, ref=REF, blueprint_version="1.0.1", **kw)


def body(image_type: str = "edge-commit", **image_request: object) -> dict[str, object]:
    return {"distribution": "rhel-9.4", "image_request": {
        "architecture": "x86_64", "image_type": image_type, "repositories": [{"baseurl": REPO}],
        "upload_targets": [{"type": "local", "upload_options": {}}], **image_request}, "blueprint": {"name": "gw"}}


@pytest.fixture
def open_cloud(weldr_artifacts: EdgeArtifacts) -> CloudServer:
    with running_cloud_server(weldr_artifacts, CloudBehaviour(require_auth=False)) as srv:
        yield srv  # type: ignore[misc]


# -- item 5: the test Cloud API answers like composer ---------------------------------------------------

def test_iot_container_with_local_target_is_400_invalid_upload_target(open_cloud: CloudServer) -> None:
    r = requests.post(f"{open_cloud.base}/compose", json={**body("iot-container"), "distribution": "fedora-40"},
                      timeout=10)
    assert r.status_code == 400
    err = r.json()
    assert {k: err[k] for k in ("href", "id", "kind", "code", "reason")} == {
        "href": f"{API}/errors/38", "id": "38", "kind": "Error", "code": "IMAGE-BUILDER-COMPOSER-38",
        "reason": "Invalid upload target for image type"}
    assert err["operation_id"]


def test_blueprint_and_customizations_together_are_refused(open_cloud: CloudServer) -> None:
    r = requests.post(f"{open_cloud.base}/compose", json={**body(), "customizations": {"packages": ["tmux"]}},
                      timeout=10)
    assert r.status_code == 400 and r.json()["code"] == "IMAGE-BUILDER-COMPOSER-39"


def test_repository_with_only_a_mirrorlist_or_metalink_is_accepted(open_cloud: CloudServer) -> None:
    for repo in ({"mirrorlist": "https://mirrors.example/?repo=baseos"}, {"metalink": "https://mirrors.example/ml"}):
        r = requests.post(f"{open_cloud.base}/compose", json=body(repositories=[repo]), timeout=10)
        assert r.status_code == 201, r.text
    r = requests.post(f"{open_cloud.base}/compose", json=body(repositories=[{"rhsm": True}]), timeout=10)
    assert r.status_code == 400 and r.json()["code"] == "IMAGE-BUILDER-COMPOSER-7"


def test_missing_artifact_is_400_artifact_not_found_and_epoch_is_never_null(open_cloud: CloudServer) -> None:
    cid = requests.post(f"{open_cloud.base}/compose", json=body(), timeout=10).json()["id"]
    r = requests.get(f"{open_cloud.base}/composes/{cid}/download", timeout=10)  # still pending
    assert r.status_code == 400 and r.json()["code"] == "IMAGE-BUILDER-COMPOSER-1022"
    while requests.get(f"{open_cloud.base}/composes/{cid}", timeout=10).json()["status"] != "success":
        pass
    packages = requests.get(f"{open_cloud.base}/composes/{cid}/metadata", timeout=10).json()["packages"]
    assert all(isinstance(p.get("epoch", ""), str) for p in packages)  # PackageMetadata.epoch: a string
    assert [p["epoch"] for p in packages if "epoch" in p] == ["2"]


# -- issue 14 item 15: the release version is the blueprint's, never the commit's "version" ----------------

def test_weldr_result_version_is_the_blueprints_while_the_commit_carries_the_os_release(
        weldr_server: WeldrServer, weldr_prod_http: str, tmp_path: Path) -> None:
    cfg = load_config(env={}, root=tmp_path, overrides={
        "composer.socket": str(weldr_server.socket_path), "composer.poll_interval": "0.01",
        "prod.url": weldr_prod_http})
    c = WeldrComposer(cfg)
    c.push_blueprint("gateway", TOML)
    cid = c.start(request())
    assert c.wait(cid).state is ComposeState.FINISHED
    res = c.result(cid, request(), tmp_path)
    art = artifacts.inspect(res.artifact, "edge-commit", ref=REF)
    assert art.os_version == "9.4"  # osbuild stamps the OS release
    assert res.version == "1.0.1" and c.info(cid)["version"] == "1.0.1"


def test_cloud_result_version_and_a_requested_parent_are_honoured(
        open_cloud: CloudServer, weldr_artifacts: EdgeArtifacts, tmp_path: Path) -> None:
    cfg = load_config(env={}, root=tmp_path, overrides={
        "composer.backend": "cloud", "composer.url": open_cloud.url, "composer.repositories": REPO,
        "composer.poll_interval": "0.01", "composer.poll_max_interval": "0.05", "project.distro": "fedora-40"})
    c = CloudComposer(cfg)
    parent = "c" * 64  # composer takes an explicit parent as given: the commit names it
    cid = c.start(request(parent=parent))
    assert open_cloud.bodies[0]["image_request"]["image_type"] == "iot-commit"
    c.wait(cid)
    res = c.result(cid, request(parent=parent), tmp_path)
    assert (res.parent, res.version) == (parent, "1.0.1")
    assert res.commit != weldr_artifacts.commit
    assert artifacts.inspect(res.artifact, "edge-commit", ref=REF).os_version == "40"


def test_a_url_without_the_ref_fails_the_request_like_composer(open_cloud: CloudServer, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    from tests.fixtures.httpserver import serve_directory

    with serve_directory(empty) as url:
        r = requests.post(f"{open_cloud.base}/compose", json=body(ostree={"ref": REF, "url": url}), timeout=10)
    assert r.status_code == 400 and r.json()["code"] == "IMAGE-BUILDER-COMPOSER-10"


# -- issue 14 item 16: a FAILED compose names its first error and where the log is -------------------------

def test_failed_compose_error_names_the_first_error_line_and_the_saved_log(
        weldr_server: WeldrServer, tmp_path: Path) -> None:
    weldr_server.b.outcome = "FAILED"
    cfg = load_config(env={}, root=tmp_path, overrides={
        "composer.socket": str(weldr_server.socket_path), "composer.poll_interval": "0.01"})
    c = WeldrComposer(cfg)
    c.push_blueprint("gateway", TOML)
    cid = c.start(request())
    status = c.wait(cid)
    log = c.logs(cid)
    assert first_error_line(log) == "error: package kernel-rt not found"
    path = save_compose_log(cid, log, tmp_path / "build")
    assert path == tmp_path / "build" / f"{cid}-compose.log" and "kernel-rt" in path.read_text()
    err = compose_failed(status, log, path, tmp_path / "reports/compose-gateway-x86_64.xml")
    text = str(err)
    assert err.exit_code == 1 and "\n" not in text
    assert text.startswith(f"{path}: compose {cid} FAILED: error: package kernel-rt not found")
    assert f"Read the full compose log {path} (also in the report" in text


def test_first_error_line_prefers_the_cause_and_says_nothing_when_there_is_none() -> None:
    log = "Pipeline build\nstage org.osbuild.rpm failed\nerror: Status code: 404 for https://cdn/x.rpm\n"
    assert first_error_line(log) == "error: Status code: 404 for https://cdn/x.rpm"
    assert first_error_line("stage org.osbuild.rpm failed\n") == "stage org.osbuild.rpm failed"
    assert first_error_line("Pipeline build: success\n") == ""
