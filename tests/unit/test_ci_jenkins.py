"""edgeci.ci.jenkins_setup and `edgeci jenkins …`: the job's config.xml, jenkinsapi and the pending-input API
against a real HTTP server on 127.0.0.1 that speaks Jenkins' endpoints (tests/fixtures/jenkins_server.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from edgeci.ci.jenkins_setup import JobSpec, job_config_xml, managed_fields
from edgeci.cli import main
from tests.fixtures.composed import edgeci_cli
from tests.fixtures.gitrepo import GitRepo, blueprint_text
from tests.fixtures.jenkins_server import (
    CRUMB_FIELD,
    JENKINS_TOKENS,
    FakeJenkins,
    PendingInput,
    jenkins_normalise,
)

REPO = "https://git.example.com/platform/edge.git"


def test_config_xml_is_a_pipeline_from_scm_job() -> None:
    spec = JobSpec(name="edge-images", repo=REPO, branch="main", script_path="Jenkinsfile", credentials_id="git-ro")
    fields = managed_fields(job_config_xml(spec))
    assert fields == {
        "type": "flow-definition",
        "description": spec.description,
        "definition": "org.jenkinsci.plugins.workflow.cps.CpsScmFlowDefinition",
        "scm": "hudson.plugins.git.GitSCM",
        "urls": [REPO],
        "credentials": ["git-ro"],
        "branches": ["*/main"],
        "script_path": "Jenkinsfile",
        "lightweight": "false",
        "disabled": "false",
    }


def test_managed_fields_ignore_how_jenkins_reserialises_the_config() -> None:
    xml = job_config_xml(JobSpec(repo=REPO, description="a & b <c>"))
    stored = jenkins_normalise(xml)
    assert stored != xml  # XML 1.1 header, plugin versions, <actions/>: a text compare would always differ
    assert managed_fields(stored) == managed_fields(xml)
    assert managed_fields(xml)["description"] == "a & b <c>"


@pytest.fixture
def jk_cli(jenkins_server: FakeJenkins, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
           capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JENKINS_URL", raising=False)

    def run(user: str, *args: str) -> tuple[int, str]:
        monkeypatch.setenv("EDGECI_JENKINS_TOKEN", JENKINS_TOKENS[user])
        rc = main(["--set", f"gate.jenkins.url={jenkins_server.url}", "jenkins", *args, "--as", user])
        out = capsys.readouterr()
        return rc, out.out + out.err

    return run


def test_job_is_created_then_a_second_run_posts_nothing(jenkins_server: FakeJenkins, jk_cli) -> None:  # type: ignore[no-untyped-def]
    rc, out = jk_cli("admin", "job", "--name", "edge-images", "--repo", REPO)
    assert rc == 0, out
    (create,) = jenkins_server.writes()
    assert create.path == "/createItem" and create.query == {"name": ["edge-images"]}
    assert create.headers[CRUMB_FIELD] == jenkins_server.crumb
    assert "xml" in create.headers["Content-Type"]
    assert managed_fields(jenkins_server.jobs["edge-images"]["config"])["urls"] == [REPO]
    # what jenkinsapi does on connect: poll the base API
    assert jenkins_server.log[0].path == "/api/python"

    jenkins_server.clear_log()
    rc, out = jk_cli("admin", "job", "--name", "edge-images", "--repo", REPO)
    assert rc == 0 and "unchanged" in out
    assert jenkins_server.writes() == []
    assert any(r.path == "/job/edge-images/config.xml" and r.method == "GET" for r in jenkins_server.log)


def test_job_update_posts_the_config_once(jenkins_server: FakeJenkins, jk_cli) -> None:  # type: ignore[no-untyped-def]
    jenkins_server.add_job("edge-images", job_config_xml(JobSpec(repo=REPO, branch="main")))
    rc, out = jk_cli("admin", "job", "--repo", REPO, "--branch", "release", "--script-path", "ci/Jenkinsfile")
    assert rc == 0, out
    assert "updated (branches, script_path)" in out
    (post,) = jenkins_server.writes()
    assert post.path == "/job/edge-images/config.xml"
    fields = managed_fields(jenkins_server.jobs["edge-images"]["config"])
    assert (fields["branches"], fields["script_path"]) == (["*/release"], "ci/Jenkinsfile")
    jenkins_server.clear_log()
    assert jk_cli("admin", "job", "--repo", REPO, "--branch", "release", "--script-path", "ci/Jenkinsfile")[0] == 0
    assert jenkins_server.writes() == []


def test_job_needs_a_repository(jenkins_server: FakeJenkins, jk_cli) -> None:  # type: ignore[no-untyped-def]
    rc, out = jk_cli("admin", "job")
    assert rc == 2 and "--repo" in out
    assert jenkins_server.log == []


def _promote_input(**kw: object) -> PendingInput:
    return PendingInput("Promote", "Promote to production?\nedgeci-approve " + "a" * 64,
                        submitter="release-managers", ok="Promote", **kw)  # type: ignore[arg-type]


def test_approve_answers_the_pending_input_as_the_approver(jenkins_server: FakeJenkins, jk_cli) -> None:  # type: ignore[no-untyped-def]
    jenkins_server.add_job("edge-images", job_config_xml(JobSpec(repo=REPO)))
    build = jenkins_server.add_build("edge-images", 12, _promote_input())
    rc, out = jk_cli("alice", "approve", "12", "--id", "promote")  # Jenkins capitalised the id
    assert rc == 0, out
    assert "input 'Promote' of build #12 of 'edge-images': approved (as alice)" in out
    assert build.outcomes == [{"input": "Promote", "action": "proceedEmpty", "user": "alice", "parameters": {}}]
    gets = [r.path for r in jenkins_server.log if r.method == "GET"]
    assert "/job/edge-images/12/wfapi/pendingInputActions" in gets and "/crumbIssuer/api/json" in gets
    (post,) = jenkins_server.writes()
    assert post.path == "/job/edge-images/12/input/Promote/proceedEmpty"
    assert post.headers[CRUMB_FIELD] == jenkins_server.crumb
    # nothing pending any more: a second approval is a clear error, not a silent success
    rc, out = jk_cli("alice", "approve", "12")
    assert rc == 2 and "is not waiting for input" in out


def test_approve_by_someone_outside_the_submitters_is_refused(jenkins_server: FakeJenkins, jk_cli) -> None:  # type: ignore[no-untyped-def]
    jenkins_server.add_job("edge-images", job_config_xml(JobSpec(repo=REPO)))
    build = jenkins_server.add_build("edge-images", 3, _promote_input())
    rc, out = jk_cli("bob", "approve", "3")
    assert rc == 2
    assert "forbids approving input 'Promote'" in out and "user 'bob'" in out and "submitter" in out
    assert build.outcomes == [] and len(build.inputs) == 1


def test_abort_and_several_inputs_need_an_id(jenkins_server: FakeJenkins, jk_cli) -> None:  # type: ignore[no-untyped-def]
    jenkins_server.add_job("folder/edge-images", job_config_xml(JobSpec(repo=REPO)))
    build = jenkins_server.add_build("folder/edge-images", 5, _promote_input(),
                                     PendingInput("Smoke", "Smoke test done?"))
    rc, out = jk_cli("alice", "abort", "5", "--job", "folder/edge-images")
    assert rc == 2 and "waits for 2 inputs" in out and "Promote, Smoke" in out
    rc, out = jk_cli("alice", "abort", "5", "--job", "folder/edge-images", "--id", "Promote")
    assert rc == 0, out
    assert build.outcomes == [{"input": "Promote", "action": "abort", "user": "alice", "parameters": {}}]
    rc, out = jk_cli("alice", "approve", "5", "--job", "folder/edge-images", "--id", "Deploy")
    assert rc == 2 and "no pending input 'Deploy'" in out


def test_approve_an_input_with_parameters_submits_them(jenkins_server: FakeJenkins, jk_cli) -> None:  # type: ignore[no-untyped-def]
    jenkins_server.add_job("edge-images", job_config_xml(JobSpec(repo=REPO)))
    build = jenkins_server.add_build("edge-images", 8, _promote_input(parameters=[
        {"name": "REASON", "default": "routine"}, {"name": "TICKET", "default": ""}]))
    rc, out = jk_cli("alice", "approve", "8", "--param", "TICKET=CHG-1234")
    assert rc == 0, out
    (post,) = jenkins_server.writes()
    assert post.path == "/job/edge-images/8/input/Promote/submit"
    assert build.outcomes[0]["parameters"] == {"REASON": "routine", "TICKET": "CHG-1234"}
    rc, out = jk_cli("alice", "approve", "8", "--param", "NOPE=1")
    assert rc == 2


def test_unknown_build_wrong_token_and_no_crumb_issuer(jenkins_server: FakeJenkins, jk_cli,  # type: ignore[no-untyped-def]
                                                       tmp_path: Path) -> None:
    jenkins_server.add_job("edge-images", job_config_xml(JobSpec(repo=REPO)))
    rc, out = jk_cli("alice", "approve", "99")
    assert rc == 2 and "not found (404)" in out
    canary = "11deadbeef0canary0token"
    r = edgeci_cli(["--set", f"gate.jenkins.url={jenkins_server.url}", "jenkins", "approve", "1", "--as", "alice"],
                   tmp_path, env={"EDGECI_JENKINS_TOKEN": canary})
    assert r.returncode == 2 and "refused the credentials (401)" in r.stderr
    assert canary not in r.stdout + r.stderr
    jenkins_server.csrf = False  # crumbs off: the issuer answers 404 and POSTs go without one
    jenkins_server.add_build("edge-images", 2, _promote_input())
    rc, out = jk_cli("alice", "approve", "2")
    assert rc == 0, out
    assert CRUMB_FIELD not in jenkins_server.writes()[-1].headers


def test_unreachable_jenkins_and_missing_url(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = edgeci_cli(["--set", f"gate.jenkins.url=http://127.0.0.1:{port}", "jenkins", "job", "--repo", REPO,
                    "--as", "admin"], tmp_path, env={"EDGECI_JENKINS_TOKEN": JENKINS_TOKENS["admin"]})
    assert r.returncode == 2 and "cannot reach Jenkins" in r.stderr
    r = edgeci_cli(["jenkins", "abort", "1"], tmp_path)
    assert r.returncode == 2 and "gate.jenkins.url" in r.stderr


def test_targets_and_candidates_for_the_shared_library(git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    git_repo.write("blueprints/gateway.toml", blueprint_text("gateway", "1.0.0"))
    git_repo.write("blueprints/kiosk.toml", blueprint_text("kiosk", "1.0.0"))
    base = git_repo.commit("two")
    git_repo.write("blueprints/kiosk.checks.yaml", "checks: []\n")
    git_repo.commit("kiosk checks")
    monkeypatch.chdir(git_repo.path)
    assert main(["jenkins", "targets", "--base", base]) == 0
    assert capsys.readouterr().out == "kiosk x86_64 -\n"  # nothing in production yet: no parent
    assert main(["jenkins", "targets", "--all"]) == 0
    assert capsys.readouterr().out == "gateway x86_64 -\nkiosk x86_64 -\n"
    assert main(["--set", "prod.url=https://ostree.example.com/repo", "jenkins", "targets", "--base", ""]) == 0
    out = capsys.readouterr()
    assert out.out == ("gateway x86_64 https://ostree.example.com/repo\n"
                       "kiosk x86_64 https://ostree.example.com/repo\n")
    assert "every blueprint" in out.err
    # an image-mode blueprint is a target like the others, without an ostree parent URL (it builds FROM its base)
    git_repo.write("blueprints/gateway-bootc/Containerfile", "FROM localhost/base@sha256:" + "0" * 64 + "\n")
    git_repo.commit("an image")
    assert main(["--set", "prod.url=https://ostree.example.com/repo", "jenkins", "targets", "--all"]) == 0
    assert capsys.readouterr().out == ("gateway x86_64 https://ostree.example.com/repo\n"
                                       "gateway-bootc x86_64 -\n"
                                       "kiosk x86_64 https://ostree.example.com/repo\n")

    record = git_repo.path / "build" / "kiosk" / "x86_64" / "record.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"schema": 1, "sections": {
        "blueprint": {"name": "kiosk", "version": "1.0.0", "status": "passed"},
        "compose": {"commit": "c" * 64, "status": "passed"}}}))
    assert main(["jenkins", "candidates", "kiosk/x86_64"]) == 0
    assert capsys.readouterr().out == f"kiosk x86_64 {'c' * 64} 1.0.0\n"
    assert main(["jenkins", "candidates", "gateway/x86_64"]) == 2  # no record: one clear error
    assert "no build record" in capsys.readouterr().err


def test_the_gate_reads_the_approver_back_from_the_build_never_from_a_name_it_is_given(
        jenkins_server: FakeJenkins, jk_cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from edgeci.approvals.jenkins_source import collect
    from edgeci.config import load_config

    jenkins_server.add_job("edge-images", job_config_xml(JobSpec(repo=REPO)))
    jenkins_server.add_build("edge-images", 7, _promote_input())
    env = {"EDGECI_JENKINS_TOKEN": JENKINS_TOKENS["admin"]}  # the gate's own token: it reads, never answers
    monkeypatch.setenv("EDGECI_JENKINS_TOKEN", JENKINS_TOKENS["admin"])
    cfg = load_config(env=env, overrides={"gate.jenkins.url": jenkins_server.url, "gate.jenkins.job": "edge-images",
                                          "gate.jenkins.user": "admin"})
    checksum = "a" * 64
    # waiting: nobody approved, and a name passed on the command line is not an approval
    ev = collect(cfg, checksum, approver="mallory", approved_checksum=checksum, build=7, env=env)
    assert ev.approvals == [] and ev.pending
    assert any("--approver mallory: Jenkins recorded no input" in n for n in ev.notes)
    # alice (in release-managers, the input's submitter) answers it; Jenkins records her on the build
    rc, out = jk_cli("alice", "approve", "7")
    assert rc == 0, out
    monkeypatch.setenv("EDGECI_JENKINS_TOKEN", JENKINS_TOKENS["admin"])
    ev = collect(cfg, checksum, approved_checksum=checksum, build=7, env=env)
    assert [(a.user, a.checksum) for a in ev.approvals] == [("alice", checksum)] and not ev.pending
    # read through the build API, the ApproverAction Jenkins exports with the user id
    assert any(r.path == "/job/edge-images/7/api/python" for r in jenkins_server.log)
    ev = collect(cfg, checksum, approver="mallory", approved_checksum=checksum, build=7, env=env)
    assert [a.user for a in ev.approvals] == ["alice"]
