"""WeldrComposer against the test osbuild-composer over a real unix socket (tests/fixtures/weldr_server.py).

Every quirk of the real server is exercised through real sockets; requests is never patched.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from edgeci.composer import artifact as artifacts
from edgeci.composer import backend
from edgeci.composer.base import ComposeRequest, ComposeState
from edgeci.composer.weldr import (
    BlueprintNotBumped,
    ComposerUnreachable,
    DepsolveFailed,
    NoWorker,
    WeldrAPIError,
    WeldrComposer,
)
from edgeci.config import Config, load_config
from edgeci.errors import ComposerError
from edgeci.tools.run import run, which
from edgeci.wait import WaitTimeout
from tests.fixtures.httpserver import serve_directory
from tests.fixtures.weldr_server import REF, Behaviour, EdgeArtifacts, WeldrServer, running_weldr_server

TOML = """name = "gateway"
description = "edge gateway"
version = "1.0.1"

[[packages]]
name = "openssh-server"
version = "*"

[customizations]
hostname = "gateway"

[[customizations.user]]
name = "core"
groups = ["wheel"]
"""


def make_cfg(srv: WeldrServer, root: Path, **over: Any) -> Config:
    overrides = {"composer.backend": "weldr", "composer.socket": str(srv.socket_path),
                 "composer.poll_interval": "0.01", "composer.poll_max_interval": "0.05"}
    overrides.update({k.replace("__", "."): str(v) for k, v in over.items()})
    return load_config(env={}, root=root, overrides=overrides)


def request(image_type: str = "edge-container", **kw: Any) -> ComposeRequest:
    return ComposeRequest("gateway", TOML, image_type=image_type, ref=REF, blueprint_version="1.0.1", **kw)


def composer(srv: WeldrServer, root: Path, **over: Any) -> WeldrComposer:
    c = WeldrComposer(make_cfg(srv, root, **over))
    c.retry_delay = 0.01
    return c


class FakeClock:
    """Time that only moves when someone sleeps: shared by the client's Waiting and the server."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- happy paths ---------------------------------------------------------------------------------

def test_compose_to_finished_downloads_artifact_with_checksum_commit_and_parent(
        weldr_server: WeldrServer, weldr_artifacts: EdgeArtifacts, tmp_path: Path) -> None:
    c = composer(weldr_server, tmp_path)
    c.push_blueprint("gateway", TOML)
    compose_id = c.start(request())
    lines: list[str] = []
    st = c.wait(compose_id, progress=lambda state, elapsed: lines.append(state))
    assert st.state is ComposeState.FINISHED and st.blueprint_version == "1.0.1"
    assert lines == ["WAITING", "RUNNING"]  # one line per state change, not per poll

    res = c.result(compose_id, request(), tmp_path / "out")
    assert res.artifact == tmp_path / "out" / f"{compose_id}-container.tar"
    assert res.sha256 == sha256(weldr_artifacts.container_tar) == sha256(res.artifact)
    assert res.commit == weldr_artifacts.commit
    assert res.parent == weldr_artifacts.parent
    assert res.ref == REF
    assert {p["name"] for p in res.packages} == {"bash", "kernel", "openssh-server", "shadow-utils"}
    shadow = {"name": "shadow-utils", "version": "4.9", "release": "8.el9", "arch": "x86_64", "epoch": "2"}
    assert shadow in res.packages
    assert [p.name for p in (tmp_path / "out").iterdir()] == [res.artifact.name]  # no temp file left
    assert c.info(compose_id)["commit"] == weldr_artifacts.commit

    # What the server received: composer-cli's exact request shape.
    assert weldr_server.compose_content_types == ["application/json"]
    (body,) = weldr_server.compose_bodies
    assert body == {"blueprint_name": "gateway", "compose_type": "edge-container", "branch": "master", "size": 0,
                    "ostree": {"ref": REF, "parent": "", "url": ""}}
    assert weldr_server.blueprints["gateway"]["version"] == "1.0.1"
    assert weldr_server.count("GET status") == 1  # /api/status checked once


def test_downloaded_container_is_a_real_oci_archive(weldr_server: WeldrServer, tmp_path: Path) -> None:
    which("skopeo")
    c = composer(weldr_server, tmp_path)
    c.push_blueprint("gateway", TOML)
    cid = c.start(request())
    c.wait(cid)
    path = c.download(cid, tmp_path)
    out = run(["skopeo", "inspect", f"oci-archive:{path}"], timeout=60)
    assert json.loads(out.stdout)["Labels"]["org.osbuild.ostree.commit"] == c.info(cid)["commit"]


def test_edge_commit_reads_compose_json_and_parent(weldr_server: WeldrServer, weldr_artifacts: EdgeArtifacts,
                                                   tmp_path: Path) -> None:
    c = composer(weldr_server, tmp_path)
    c.push_blueprint("gateway", TOML)
    cid = c.start(request("edge-commit"))
    assert c.wait(cid).state is ComposeState.FINISHED
    res = c.result(cid, request("edge-commit"), tmp_path)
    assert res.artifact.name == f"{cid}-commit.tar"
    assert (res.commit, res.parent, res.ref) == (weldr_artifacts.commit, weldr_artifacts.parent, REF)
    assert artifacts.inspect(res.artifact).compose == {"ref": REF, "ostree-commit": weldr_artifacts.commit}


def test_backend_factory_builds_the_weldr_backend(weldr_server: WeldrServer, tmp_path: Path) -> None:
    b = backend(make_cfg(weldr_server, tmp_path))
    assert isinstance(b, WeldrComposer) and b.name == "weldr"
    assert b.api_status()["backend"] == "osbuild-composer"


# -- failures ------------------------------------------------------------------------------------

def test_failed_compose_returns_failed_with_logs_and_metadata(weldr_server: WeldrServer, tmp_path: Path) -> None:
    weldr_server.b.outcome = "FAILED"
    c = composer(weldr_server, tmp_path)
    c.push_blueprint("gateway", TOML)
    cid = c.start(request())
    assert c.wait(cid).state is ComposeState.FAILED
    logs = c.logs(cid)
    assert "package kernel-rt not found" in logs
    assert "pipeline ostree-tree: org.osbuild.rpm, org.osbuild.users" in logs
    assert c.metadata(cid)["ostree"]["ref"] == REF
    saved = c.save_failure_files(cid, tmp_path / "failure")
    assert sorted(p.name for p in saved) == [f"{cid}-logs.tar", f"{cid}-metadata.tar"]
    with tarfile.open(saved[0]) as tar:
        assert tar.getnames() == ["logs/osbuild.log"]
    with pytest.raises(WeldrAPIError, match="BuildInWrongState"):
        c.download(cid, tmp_path / "dl")
    assert not list((tmp_path / "dl").iterdir())  # nothing half-written


def test_http_200_with_status_false_is_a_failure_with_id_and_msg(weldr_server: WeldrServer, tmp_path: Path) -> None:
    c = composer(weldr_server, tmp_path)
    c.push_blueprint("gateway", TOML)
    cid = c.start(request())
    weldr_server.b.errors_200["GET compose/status"] = [
        {"id": "ComposeStatusError", "msg": "Error getting status of compose: job does not exist"}]
    with pytest.raises(WeldrAPIError) as e:
        c.status(cid)
    assert e.value.http_status == 200
    assert "ComposeStatusError" in str(e.value) and "job does not exist" in str(e.value)
    # The same on a POST: the push is refused, not taken as done.
    weldr_server.b.errors_200["POST blueprints/new"] = [{"id": "BlueprintsError", "msg": "commit failed: disk full"}]
    with pytest.raises(WeldrAPIError, match="BlueprintsError: commit failed: disk full"):
        c.push_blueprint("gateway", TOML.replace("1.0.1", "1.0.2"))


def test_log_of_a_waiting_compose_is_200_with_status_false(weldr_server: WeldrServer, tmp_path: Path) -> None:
    weldr_server.b.waiting_polls = 100
    c = composer(weldr_server, tmp_path)
    c.push_blueprint("gateway", TOML)
    cid = c.start(request())
    assert c.status(cid).state is ComposeState.WAITING
    text = c.logs(cid)  # compose/logs refuses (400), compose/log answers 200 {"status": false}
    assert text.startswith("(no log: BuildInWrongState: Build ") and "has not started yet" in text
    assert weldr_server.count("GET compose/log") == 1


def test_unparsable_body_answered_404_is_reported_as_such(weldr_server: WeldrServer, tmp_path: Path) -> None:
    c = composer(weldr_server, tmp_path)
    c.api_status()
    resp = c._send("POST", "/api/v1/compose", data=b'{"blueprint_name": "gateway", "size": "big"',
                   headers={"Content-Type": "application/json"})
    assert resp.status_code == 404
    with pytest.raises(WeldrAPIError) as e:
        c._check(resp, "POST", "/api/v1/compose")
    assert "HTTP 404" in str(e.value) and "HTTPError: Not Found" in str(e.value)
    assert "cannot parse the request body" in str(e.value)
    assert weldr_server.composes == {}


def test_content_type_must_be_exactly_json(weldr_server: WeldrServer, tmp_path: Path) -> None:
    c = composer(weldr_server, tmp_path)
    c.api_status()
    resp = c._send("POST", "/api/v1/compose", data=b"{}", headers={"Content-Type": "application/json; charset=utf-8"})
    with pytest.raises(WeldrAPIError, match="MissingPost: blueprint must be json"):
        c._check(resp, "POST", "/api/v1/compose")


def test_no_worker_for_arch_reported_as_such(weldr_server: WeldrServer, tmp_path: Path) -> None:
    weldr_server.b.no_worker = True
    c = composer(weldr_server, tmp_path)
    c.push_blueprint("gateway", TOML)
    with pytest.raises(NoWorker) as e:
        c.start(request())
    assert "no worker for arch 'x86_64'" in str(e.value) and "No worker for arch 'x86_64'" in str(e.value)
    assert "osbuild-worker" in str(e.value) and e.value.exit_code == 2


def test_depsolve_error_reported_as_such(weldr_server: WeldrServer, tmp_path: Path) -> None:
    weldr_server.b.depsolve_error = "DNF error occurred: MarkingErrors: Error occurred when marking packages: nope-1"
    c = composer(weldr_server, tmp_path)
    c.push_blueprint("gateway", TOML)
    with pytest.raises(DepsolveFailed) as e:
        c.start(request())
    assert "DepsolveError" in str(e.value) and "MarkingErrors" in str(e.value)
    assert e.value.exit_code == 1  # the candidate cannot be built
    with pytest.raises(DepsolveFailed, match="nope-1"):
        c.depsolve("gateway")


def test_unknown_image_type_lists_what_the_composer_builds(weldr_server: WeldrServer, tmp_path: Path) -> None:
    c = composer(weldr_server, tmp_path)
    c.push_blueprint("gateway", TOML)
    with pytest.raises(WeldrAPIError, match="this composer builds: edge-commit, edge-container"):
        c.start(request("edge-vhd"))


def test_unknown_compose_id_is_a_clear_error(weldr_server: WeldrServer, tmp_path: Path) -> None:
    c = composer(weldr_server, tmp_path)
    with pytest.raises(WeldrAPIError, match="knows no compose 4b9b3e4e"):
        c.status("4b9b3e4e-0000-4000-8000-000000000000")
    with pytest.raises(WeldrAPIError, match="UnknownUUID"):
        c.status("not-a-uuid")


# -- the POST compose timeout -------------------------------------------------------------------

def test_post_compose_timeout_finds_the_compose_in_the_queue_without_duplicate(
        weldr_server: WeldrServer, tmp_path: Path) -> None:
    c = composer(weldr_server, tmp_path, composer__request_timeout=0.3)
    c.push_blueprint("gateway", TOML)
    earlier = c.start(request())  # an older compose of the same blueprint version must not be mistaken
    c.wait(earlier)
    weldr_server.b.post_compose_delay = 1.0  # depsolving outlasts the client's timeout
    cid = c.start(request())
    assert cid != earlier
    assert weldr_server.count("POST compose") == 2  # one per start(): the timed-out one was not resubmitted
    assert set(weldr_server.composes) == {earlier, cid}
    assert any("found the compose it started" in w for w in c.warnings)
    assert c.wait(cid).state is ComposeState.FINISHED


def test_post_compose_timeout_with_nothing_in_queue_resubmits_once_then_fails(
        weldr_server: WeldrServer, tmp_path: Path) -> None:
    weldr_server.b.post_compose_delay = 0.5
    weldr_server.b.depsolve_error = "gave up"  # the server never creates a compose
    c = composer(weldr_server, tmp_path, composer__request_timeout=0.2)
    c.push_blueprint("gateway", TOML)
    import edgeci.composer.weldr as weldr_mod

    grace, weldr_mod.LOOKUP_GRACE_MIN = weldr_mod.LOOKUP_GRACE_MIN, 0.5
    try:
        with pytest.raises(ComposerUnreachable, match="timed out twice"):
            c.start(request())
    finally:
        weldr_mod.LOOKUP_GRACE_MIN = grace
    assert weldr_server.count("POST compose") == 2 and weldr_server.composes == {}


# -- server restarts ----------------------------------------------------------------------------

def test_server_restart_mid_poll_is_retried_until_success(weldr_server: WeldrServer, tmp_path: Path) -> None:
    weldr_server.b.restart_on_status = 2
    weldr_server.b.down_for = 0.3
    c = composer(weldr_server, tmp_path)
    c.push_blueprint("gateway", TOML)
    cid = c.start(request())
    lines: list[str] = []
    st = c.wait(cid, deadline=30, progress=lambda state, elapsed: lines.append(state))
    assert st.state is ComposeState.FINISHED
    assert weldr_server.restarted == 1
    unreachable = [line for line in lines if line.startswith("unreachable")]
    assert unreachable and len(unreachable) == 1  # one line for the whole outage
    assert "cannot connect to osbuild-composer" in unreachable[0]
    assert c.result(cid, request(), tmp_path).commit  # the state survived the restart


def test_server_that_never_comes_back_fails_at_the_deadline(weldr_server: WeldrServer, tmp_path: Path) -> None:
    weldr_server.b.restart_on_status = 1
    weldr_server.b.down_for = math.inf
    c = composer(weldr_server, tmp_path)
    c.push_blueprint("gateway", TOML)
    cid = c.start(request())
    with pytest.raises(WaitTimeout) as e:
        c.wait(cid, deadline=0.5)
    assert "after 0.5 s" in str(e.value)
    assert f"unreachable (cannot connect to osbuild-composer at {weldr_server.socket_path})" in str(e.value)
    assert e.value.exit_code == 2


def test_unreachable_socket_is_one_clear_error(tmp_path: Path) -> None:
    cfg = load_config(env={}, root=tmp_path, overrides={"composer.socket": str(tmp_path / "none.socket")})
    with pytest.raises(ComposerUnreachable) as e:
        WeldrComposer(cfg).status("x")
    assert str(tmp_path / "none.socket") in str(e.value) and "osbuild-composer.socket" in str(e.value)


# -- downloads ------------------------------------------------------------------------------------

@pytest.mark.parametrize("ranges", [True, False], ids=["resumed-with-range", "restarted-without-range"])
def test_interrupted_download_is_retried(weldr_server: WeldrServer, weldr_artifacts: EdgeArtifacts,
                                         tmp_path: Path, ranges: bool) -> None:
    weldr_server.b.interrupt_downloads = 2
    weldr_server.b.range_support = ranges
    c = composer(weldr_server, tmp_path)
    c.push_blueprint("gateway", TOML)
    cid = c.start(request())
    c.wait(cid)
    path = c.download(cid, tmp_path / "out")
    assert c.sha256(cid) == sha256(path) == sha256(weldr_artifacts.container_tar)
    assert weldr_server.count("GET compose/image") == 3
    assert [p.name for p in (tmp_path / "out").iterdir()] == [path.name]


def test_download_that_keeps_failing_leaves_nothing(weldr_server: WeldrServer, tmp_path: Path) -> None:
    weldr_server.b.interrupt_downloads = 100
    c = composer(weldr_server, tmp_path)
    c.push_blueprint("gateway", TOML)
    cid = c.start(request())
    c.wait(cid)
    with pytest.raises(ComposerUnreachable, match="interrupted 5 times"):
        c.download(cid, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


# -- API version and blueprint versions ------------------------------------------------------------

def test_api_other_than_1_is_refused_naming_the_backend(weldr_artifacts: EdgeArtifacts, tmp_path: Path) -> None:
    with running_weldr_server(weldr_artifacts, Behaviour(api="0", backend="lorax-composer", build="28.14")) as srv:
        c = composer(srv, tmp_path)
        with pytest.raises(ComposerError) as e:
            c.push_blueprint("gateway", TOML)
        assert "the server is lorax-composer 28.14 with Weldr API 0;" in str(e.value)
        assert "needs osbuild-composer with API 1" in str(e.value)
        assert srv.count("POST blueprints/new") == 0 and srv.count("GET blueprints/info") == 0


def test_changed_blueprint_with_same_version_is_refused(weldr_server: WeldrServer, tmp_path: Path) -> None:
    weldr_server.add_blueprint(TOML.replace('hostname = "gateway"', 'hostname = "old"'))
    c = composer(weldr_server, tmp_path)
    with pytest.raises(BlueprintNotBumped) as e:
        c.push_blueprint("gateway", TOML)
    assert "version 1.0.1 is already stored" in str(e.value) and "Bump 'version'" in str(e.value)
    assert "first difference: 'customizations.hostname'" in str(e.value)
    assert e.value.exit_code == 1
    assert weldr_server.count("POST blueprints/new") == 0
    assert weldr_server.blueprints["gateway"]["version"] == "1.0.1"


def test_server_bumps_silently_when_pushed_anyway(weldr_server: WeldrServer, tmp_path: Path) -> None:
    """The quirk itself, seen through the raw API: the reason push_blueprint refuses."""
    weldr_server.add_blueprint(TOML)
    c = composer(weldr_server, tmp_path)
    c.api_status()
    resp = c._send("POST", "/api/v1/blueprints/new", data=TOML.encode(), headers={"Content-Type": "text/x-toml"})
    assert c._check(resp, "POST", "/api/v1/blueprints/new") == {"status": True}
    assert c.blueprint_info("gateway")["version"] == "1.0.2"  # type: ignore[index]


def test_unchanged_blueprint_is_not_pushed_again(weldr_server: WeldrServer, tmp_path: Path) -> None:
    weldr_server.add_blueprint(TOML)
    c = composer(weldr_server, tmp_path)
    c.push_blueprint("gateway", TOML)  # the monthly rebuild: same blueprint, same version
    assert weldr_server.count("POST blueprints/new") == 0
    assert weldr_server.blueprints["gateway"]["version"] == "1.0.1"


def test_new_version_is_pushed_and_verified(weldr_server: WeldrServer, tmp_path: Path) -> None:
    weldr_server.add_blueprint(TOML.replace("1.0.1", "1.0.0"))
    c = composer(weldr_server, tmp_path)
    c.push_blueprint("gateway", TOML)
    assert weldr_server.count("POST blueprints/new") == 1
    assert weldr_server.blueprints["gateway"]["version"] == "1.0.1"
    assert c.freeze("gateway")["packages"][0]["version"] == "5.1.8-6.el9"
    assert {p["name"] for p in c.depsolve("gateway")} >= {"openssh-server"}


# -- polling is bounded ---------------------------------------------------------------------------

def test_ten_minute_compose_at_default_settings_makes_at_most_40_status_requests(
        weldr_artifacts: EdgeArtifacts, tmp_path: Path) -> None:
    clock = FakeClock()
    b = Behaviour(finish_after=600.0, waiting_for=45.0)
    with running_weldr_server(weldr_artifacts, b, clock=clock.now) as srv:
        cfg = load_config(env={}, root=tmp_path, overrides={"composer.socket": str(srv.socket_path)})
        assert (cfg.composer.poll_interval, cfg.composer.poll_max_interval, cfg.composer.deadline) == (10, 30, 3600)
        c = WeldrComposer(cfg, sleep=clock.sleep, clock=clock.now)
        c.push_blueprint("gateway", TOML)
        cid = c.start(request())
        started = clock.now()
        st = c.wait(cid)
        polls = srv.count("GET compose/status")
    assert st.state is ComposeState.FINISHED
    assert polls <= 40, polls
    assert clock.now() - started - 600 <= 30  # and it still notices the end within one max interval
    assert max(clock.sleeps) == 30 and clock.sleeps[0] == 10
    print(f"10-minute compose: {polls} status requests")


# -- lineage ------------------------------------------------------------------------------------

def test_production_url_is_passed_and_parent_matches_production(
        weldr_server: WeldrServer, weldr_artifacts: EdgeArtifacts, weldr_prod_http: str, tmp_path: Path) -> None:
    c = composer(weldr_server, tmp_path, prod__url=weldr_prod_http)
    c.push_blueprint("gateway", TOML)
    cid = c.start(request())
    assert weldr_server.compose_bodies[0]["ostree"] == {"ref": REF, "parent": "", "url": weldr_prod_http}
    c.wait(cid)
    res = c.result(cid, request(), tmp_path)
    assert res.parent == weldr_artifacts.parent  # = production's tip: what the gate compares against
    assert res.warnings == []


def test_first_build_without_production_ref_composes_without_url(weldr_server: WeldrServer, tmp_path: Path) -> None:
    empty = tmp_path / "empty-prod"
    (empty / "refs/heads").mkdir(parents=True)
    with serve_directory(empty) as url:
        c = composer(weldr_server, tmp_path, prod__url=url)
        c.push_blueprint("gateway", TOML)
        c.start(request())
    assert weldr_server.compose_bodies[0]["ostree"]["url"] == ""
    assert any("has no ref" in w for w in c.warnings)


def test_parent_differing_from_production_is_warned(weldr_server: WeldrServer, weldr_prod_http: str,
                                                    tmp_path: Path) -> None:
    # composer resolves the parent through its own mirror of production, which still has the old tip
    weldr_server.b.ostree_mirror = weldr_prod_http
    prod = tmp_path / "moved-prod"
    (prod / "refs/heads" / REF).parent.mkdir(parents=True)
    (prod / "refs/heads" / REF).write_text("a" * 64 + "\n")
    with serve_directory(prod) as url:
        c = composer(weldr_server, tmp_path, prod__url=url)
        c.push_blueprint("gateway", TOML)
        cid = c.start(request())
        c.wait(cid)
        res = c.result(cid, request(), tmp_path / "out")
    assert any(f"production's {REF} was {'a' * 64}" in w for w in res.warnings)


# -- cancel, delete, artifact checks ---------------------------------------------------------------

def test_cancel_and_delete(weldr_server: WeldrServer, tmp_path: Path) -> None:
    weldr_server.b.waiting_polls = 100
    c = composer(weldr_server, tmp_path)
    c.push_blueprint("gateway", TOML)
    cid = c.start(request())
    with pytest.raises(WeldrAPIError, match="BuildInWrongState"):
        c.delete(cid)
    c.cancel(cid)
    assert c.status(cid).state is ComposeState.FAILED
    c.delete(cid)
    assert weldr_server.composes == {}


def test_tampered_commit_object_is_detected(weldr_artifacts: EdgeArtifacts, tmp_path: Path) -> None:
    root = tmp_path / "x"
    shutil.copytree(weldr_artifacts.root / "compose", root)
    c = weldr_artifacts.commit
    obj = root / "repo/objects" / c[:2] / f"{c[2:]}.commit"
    obj.chmod(0o644)
    obj.write_bytes(obj.read_bytes()[:-1] + b"\x01")
    bad = tmp_path / "commit.tar"
    with tarfile.open(bad, "w") as tar:
        tar.add(root / "repo", arcname="repo")
    with pytest.raises(ComposerError, match="does not match its checksum"):
        artifacts.inspect(bad, "edge-commit", ref=REF)
    with pytest.raises(ComposerError, match="not the requested edge-container"):
        artifacts.inspect(bad, "edge-container")


# -- the command line -----------------------------------------------------------------------------

def _project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import logging
    import os

    # cli.main() points the "edgeci" logger at this test's stderr: put it back afterwards.
    logger = logging.getLogger("edgeci")
    monkeypatch.setattr(logger, "handlers", logger.handlers[:])
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    monkeypatch.setattr(logger, "level", logger.level)
    proj = tmp_path / "project"
    (proj / "blueprints").mkdir(parents=True)
    (proj / "blueprints/gateway.toml").write_text(TOML)
    monkeypatch.chdir(proj)
    for key in list(os.environ):
        if key.startswith("EDGECI_") and key != "EDGECI_COMPOSER_OS":
            monkeypatch.delenv(key)
    return proj


def _cli(srv: WeldrServer) -> list[str]:
    return ["compose", "gateway", "--backend", "weldr", "--socket", str(srv.socket_path),
            "--set", "composer.poll_interval=0.01", "--set", "composer.poll_max_interval=0.05"]


def test_cli_compose_weldr_goes_compose_download_record_junit(
        weldr_server: WeldrServer, weldr_artifacts: EdgeArtifacts, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import xml.etree.ElementTree as ET

    from edgeci.cli import main

    proj = _project(tmp_path, monkeypatch)
    assert main(_cli(weldr_server)) == 0
    out = capsys.readouterr().out
    assert ": WAITING (" in out and ": RUNNING (" in out

    rec = json.loads((proj / "build/gateway/x86_64/record.json").read_text())
    compose = rec["sections"]["compose"]
    assert compose["status"] == "passed" and compose["backend"] == "weldr"
    assert compose["id"] in weldr_server.composes
    assert (compose["commit"], compose["parent"], compose["ref"]) == (weldr_artifacts.commit, weldr_artifacts.parent,
                                                                      REF)
    artifact = proj / compose["artifact"]
    assert artifact.name == f"{compose['id']}-container.tar"
    assert compose["artifact_sha256"] == sha256(artifact) == sha256(weldr_artifacts.container_tar)
    assert len(compose["packages"]) == 4
    assert rec["sections"]["blueprint"]["version"] == "1.0.1"
    assert weldr_server.blueprints["gateway"]["version"] == "1.0.1"

    suite = ET.parse(proj / "reports/compose-gateway-x86_64.xml").getroot()
    (case,) = suite.iter("testcase")
    assert case.get("classname") == "edgeci.compose.gateway.x86_64" and case.get("name") == "compose"
    assert case.find("failure") is None and weldr_artifacts.commit in (case.findtext("system-out") or "")


def test_cli_compose_weldr_failed_compose_exits_1_with_log_in_junit(
        weldr_server: WeldrServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import xml.etree.ElementTree as ET

    from edgeci.cli import main

    weldr_server.b.outcome = "FAILED"
    proj = _project(tmp_path, monkeypatch)
    assert main(_cli(weldr_server)) == 1
    rec = json.loads((proj / "build/gateway/x86_64/record.json").read_text())
    assert rec["sections"]["compose"]["status"] == "failed"
    (case,) = ET.parse(proj / "reports/compose-gateway-x86_64.xml").getroot().iter("testcase")
    failure = case.find("failure")
    assert failure is not None and "FAILED" in (failure.get("message") or "")
    assert "package kernel-rt not found" in (failure.text or "") + (case.findtext("system-out") or "")


def test_cli_compose_weldr_unreachable_socket_exits_2_with_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeci.cli import main

    _project(tmp_path, monkeypatch)
    assert main(["compose", "gateway", "--backend", "weldr", "--socket", str(tmp_path / "gone.socket")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot connect to osbuild-composer" in err[0] and "gone.socket" in err[0]


# -- upload profile and TCP ---------------------------------------------------------------------------

def test_upload_profile_is_sent_with_the_compose(weldr_server: WeldrServer, tmp_path: Path) -> None:
    profile = tmp_path / "aws.toml"
    profile.write_text('provider = "aws"\n[settings]\naws_region = "us-east-1"\naws_bucket = "edge-images"\n')
    c = composer(weldr_server, tmp_path, composer__upload_profile=str(profile))
    c.push_blueprint("gateway", TOML)
    c.start(request())
    assert weldr_server.compose_bodies[0]["upload"] == {
        "provider": "aws", "image_name": "gateway-1.0.1",
        "settings": {"aws_region": "us-east-1", "aws_bucket": "edge-images"}}


def test_weldr_over_tcp_url(weldr_artifacts: EdgeArtifacts, tmp_path: Path) -> None:
    srv = WeldrServer(tmp_path / "unused.socket", weldr_artifacts)
    url = srv.serve_tcp()
    try:
        cfg = load_config(env={}, root=tmp_path, overrides={
            "composer.url": url, "composer.poll_interval": "0.01"})
        c = WeldrComposer(cfg)
        c.push_blueprint("gateway", TOML)
        cid = c.start(request())
        assert c.wait(cid).state is ComposeState.FINISHED
        assert c.result(cid, request(), tmp_path / "out").commit == weldr_artifacts.commit
    finally:
        srv.stop()
