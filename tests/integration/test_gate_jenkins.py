"""`edgeci gate --source jenkins` with jenkinsapi against a local server speaking Jenkins' build API
(/api/python: causes, parameters, change sets) and the Pipeline REST API (wfapi/pendingInputActions)."""

from __future__ import annotations

import pytest

from edgeci.record import BuildRecord
from tests.fixtures.jenkins_server import JENKINS_TOKEN, JENKINS_USER, Build, FakeJenkins, PendingInput
from tests.fixtures.promote import PROMOTE_BP, PromoteLab

JOB = "fleet/edge-promote"
BUILD = 42
ENV = {"EDGECI_JENKINS_TOKEN": JENKINS_TOKEN, "BUILD_NUMBER": str(BUILD)}


def use_jenkins(lab: PromoteLab, srv: FakeJenkins, **gate: object) -> None:
    lab.gate.update({"source": "jenkins", "jenkins": {"url": srv.url, "job": JOB, "user": JENKINS_USER}, **gate})
    lab.write_config()


def answered(build: Build, user: str) -> Build:
    """Jenkins records who answered the build's input (the approver edgeci reads back from the build)."""
    build.outcomes.append({"input": "Promote", "action": "proceedEmpty", "user": user, "parameters": {}})
    return build


def gate(lab: PromoteLab, *args: str, env: dict[str, str] | None = None) -> int:
    return lab.cli("gate", PROMOTE_BP, *args, env={**ENV, **(env or {})})


def test_input_submitter_with_the_shown_checksum_approves_and_promotes(
        promote_lab: PromoteLab, jenkins_server: FakeJenkins, capsys: pytest.CaptureFixture[str]) -> None:
    lab, srv = promote_lab, jenkins_server
    use_jenkins(lab, srv)
    c = lab.candidate("1.0.0", approve=False)
    srv.add_build(JOB, BUILD - 1, triggered_by=("dev", "Dev Eloper"))
    answered(srv.add_build(JOB, BUILD, triggered_by=("dev", "Dev Eloper"), authors=[("Dev Eloper", "dev@example.com")]),
             "carol")
    capsys.readouterr()
    assert gate(lab, "--approver", "carol", "--approved-checksum", c) == 0
    out = capsys.readouterr().out
    section = BuildRecord.load(lab.record_path).section("gate")
    assert section["decision"] == "approved"
    assert section["approvals"][0]["user"] == "carol"
    assert section["approvals"][0]["source"] == f"jenkins input {JOB} #{BUILD}"
    assert f"/job/fleet/job/edge-promote/{BUILD}/wfapi/pendingInputActions" in srv.requests
    assert any(r.startswith(f"/job/fleet/job/edge-promote/{BUILD}/api/python") and "depth=1" in r
               for r in srv.requests)
    assert JENKINS_TOKEN not in out + lab.record_path.read_text()
    # the same build's promote step (the library binds the checksum its input showed): its approver read again
    assert lab.cli("promote", PROMOTE_BP, env={**ENV, "EDGECI_APPROVED_CHECKSUM": c}) == 0
    assert lab.prod_commit() == c


def test_the_user_who_started_the_build_cannot_approve(
        promote_lab: PromoteLab, jenkins_server: FakeJenkins, capsys: pytest.CaptureFixture[str]) -> None:
    lab, srv = promote_lab, jenkins_server
    use_jenkins(lab, srv)
    c = lab.candidate("1.0.0", approve=False)
    answered(srv.add_build(JOB, BUILD, triggered_by=("erin", "Erin Operator")), "erin")
    capsys.readouterr()
    assert gate(lab, "--approver", "erin", "--approved-checksum", c) == 1
    assert "erin is the pipeline triggerer (erin, Erin Operator)" in capsys.readouterr().out


def test_an_author_of_the_builds_changes_cannot_approve(
        promote_lab: PromoteLab, jenkins_server: FakeJenkins, capsys: pytest.CaptureFixture[str]) -> None:
    lab, srv = promote_lab, jenkins_server
    use_jenkins(lab, srv)
    c = lab.candidate("1.0.0", approve=False)
    answered(srv.add_build(JOB, BUILD, triggered_by=None, authors=[("Frank Writer", "frank@example.com")]), "frank")
    capsys.readouterr()
    assert gate(lab, "--approver", "frank", "--approved-checksum", c) == 1
    assert "frank is the commit author (frank@example.com, Frank Writer)" in capsys.readouterr().out


def test_build_parameter_binds_the_input_and_another_checksum_is_denied(
        promote_lab: PromoteLab, jenkins_server: FakeJenkins, capsys: pytest.CaptureFixture[str]) -> None:
    lab, srv = promote_lab, jenkins_server
    use_jenkins(lab, srv)
    c = lab.candidate("1.0.0", approve=False)
    answered(srv.add_build(JOB, BUILD, triggered_by=("dev", "Dev Eloper"), parameters={"EDGECI_CHECKSUM": c}), "carol")
    assert gate(lab, "--approver", "carol") == 0
    answered(srv.add_build(JOB, BUILD, triggered_by=("dev", "Dev Eloper"), parameters={"EDGECI_CHECKSUM": "f" * 64}),
             "carol")
    capsys.readouterr()
    assert gate(lab, "--approver", "carol") == 1
    assert f"carol approved {'f' * 12}, not this candidate {c[:12]}" in capsys.readouterr().out
    answered(srv.add_build(JOB, BUILD, triggered_by=("dev", "Dev Eloper")), "carol")
    assert gate(lab, "--approver", "carol") == 1
    assert "names no commit checksum" in capsys.readouterr().out


def test_pending_input_without_an_approver_is_pending(
        promote_lab: PromoteLab, jenkins_server: FakeJenkins, capsys: pytest.CaptureFixture[str]) -> None:
    lab, srv = promote_lab, jenkins_server
    use_jenkins(lab, srv)
    c = lab.candidate("1.0.0", approve=False)
    srv.add_build(JOB, BUILD, PendingInput("Promote", f"Promote edge 1.0.0? edgeci-approve {c}", ok="Promote"),
                  triggered_by=("dev", "Dev Eloper"))
    capsys.readouterr()
    assert gate(lab) == 1
    out = capsys.readouterr().out
    assert "waiting for: Jenkins input 'Promote edge 1.0.0?" in out
    assert BuildRecord.load(lab.record_path).section("gate")["decision"] == "pending"


def test_groups_cannot_be_resolved_in_jenkins_so_allowed_users_decide(
        promote_lab: PromoteLab, jenkins_server: FakeJenkins, capsys: pytest.CaptureFixture[str]) -> None:
    lab, srv = promote_lab, jenkins_server
    use_jenkins(lab, srv, allowed_groups=["release"])
    c = lab.candidate("1.0.0", approve=False)
    answered(srv.add_build(JOB, BUILD, triggered_by=("dev", "Dev Eloper")), "carol")
    srv.wfapi = False  # a controller without the Pipeline: Stage View plugin
    capsys.readouterr()
    assert gate(lab, "--approver", "carol", "--approved-checksum", c) == 1
    captured = capsys.readouterr()
    assert "cannot tell group membership" in captured.out
    assert "pending inputs not checked" in captured.err
    use_jenkins(lab, srv, allowed_groups=["release"], allowed_users=["carol"])
    assert gate(lab, "--approver", "carol", "--approved-checksum", c) == 0


def test_wrong_token_is_an_error(
        promote_lab: PromoteLab, jenkins_server: FakeJenkins, capsys: pytest.CaptureFixture[str]) -> None:
    lab, srv = promote_lab, jenkins_server
    use_jenkins(lab, srv)
    c = lab.candidate("1.0.0", approve=False)
    srv.add_build(JOB, BUILD, triggered_by=("dev", "Dev Eloper"))
    capsys.readouterr()
    assert gate(lab, "--approver", "carol", "--approved-checksum", c,
                env={"EDGECI_JENKINS_TOKEN": "wrong-token-value"}) == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "EDGECI_JENKINS_TOKEN" in err and "wrong-token-value" not in err


def test_an_input_answered_by_someone_outside_the_approvers_does_not_promote(
        promote_lab: PromoteLab, jenkins_server: FakeJenkins, capsys: pytest.CaptureFixture[str]) -> None:
    """The build's input was answered by mallory, who is not among the approvers: neither a name on the
    command line nor the record makes the promotion count her."""
    lab, srv = promote_lab, jenkins_server
    use_jenkins(lab, srv, allowed_users=["carol"])
    c = lab.candidate("1.0.0", approve=False)
    answered(srv.add_build(JOB, BUILD, triggered_by=("dev", "Dev Eloper"), parameters={"EDGECI_CHECKSUM": c}),
             "mallory")
    capsys.readouterr()
    assert gate(lab, "--approver", "carol") == 1  # a name Jenkins never recorded does not count
    capsys.readouterr()
    assert lab.cli("promote", PROMOTE_BP, env=ENV) == 1
    err = capsys.readouterr().err
    assert "approvals: 0 of 1 required" in err and lab.prod_commit() is None
