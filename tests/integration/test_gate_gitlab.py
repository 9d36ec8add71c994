"""`edgeci gate --source gitlab` with python-gitlab against a local server speaking GitLab's REST API:
deployment approvals of the protected environment, merge-request approvals and notes, pipelines and
their variables, group members. Each approval counts only for the checksum it names, never an author's."""

from __future__ import annotations

import pytest

from edgeci.record import BuildRecord
from tests.fixtures.gitlab_server import GITLAB_TOKEN, FakeGitLab, gl_approval, gl_user
from tests.fixtures.promote import PROMOTE_BP, PromoteLab

DEV = gl_user(3, "dev", "Dev Eloper")
CAROL = gl_user(5, "carol", "Carol Approver")
BOB = gl_user(6, "bob", "Bob Reviewer")
ERIN = gl_user(7, "erin", "Erin Operator")
MALLORY = gl_user(8, "mallory", "Mallory")
JOB, PIPELINE, DEPLOYMENT = 555, 900, 101
ENV = {"EDGECI_GITLAB_TOKEN": GITLAB_TOKEN, "CI_JOB_ID": str(JOB)}


def use_gitlab(lab: PromoteLab, server: FakeGitLab, **gate: object) -> None:
    lab.gate.update({"source": "gitlab", "gitlab": {"url": server.url, "project": server.project_path}, **gate})
    lab.write_config()


def gate(lab: PromoteLab, *args: str, env: dict[str, str] | None = None) -> int:
    return lab.cli("gate", PROMOTE_BP, *args, env={**ENV, **(env or {})})


def test_deployment_approval_naming_the_checksum_approves_and_promotes(
        promote_lab: PromoteLab, gate_gitlab_server: FakeGitLab, capsys: pytest.CaptureFixture[str]) -> None:
    lab, srv = promote_lab, gate_gitlab_server
    use_gitlab(lab, srv)
    c = lab.candidate("1.0.0", approve=False)
    srv.add_deployment(DEPLOYMENT, JOB, PIPELINE, DEV, [gl_approval(CAROL, f"Looks good.\nedgeci-approve {c}")],
                       status="created")
    srv.add_deployment(DEPLOYMENT + 1, JOB + 1, PIPELINE + 1, DEV, [])  # another job's deployment
    srv.add_deployment(DEPLOYMENT + 2, JOB + 2, PIPELINE + 2, DEV, [])
    capsys.readouterr()
    assert gate(lab) == 0
    out = capsys.readouterr().out
    assert "gate approved" in out
    section = BuildRecord.load(lab.record_path).section("gate")
    assert section["decision"] == "approved"
    assert section["approvals"] == [{"user": "carol", "checksum": c, "time": "2026-11-23T10:00:00.000Z",
                                     "source": f"gitlab deployment {DEPLOYMENT}", "comment": section["approvals"][0][
                                         "comment"]}]
    # the deployment was found through the list (paginated) and read in full
    assert f"/api/v4/projects/{srv.project_path.replace('/', '%2F')}/deployments/{DEPLOYMENT}" in srv.requests
    assert any("/deployments?" in r and "page=2" in r for r in srv.requests)
    assert lab.cli("promote", PROMOTE_BP, env=ENV) == 0  # the same protected job: approvals read again
    assert lab.prod_commit() == c
    assert lab.releases()[-1]["approvers"] == ["carol"]
    # the token is masked everywhere edgeci writes
    for text in (out, lab.record_path.read_text(), (lab.project / "reports" / "gate-edge-x86_64.xml").read_text()):
        assert GITLAB_TOKEN not in text


def test_deployment_approval_of_another_checksum_is_denied(
        promote_lab: PromoteLab, gate_gitlab_server: FakeGitLab, capsys: pytest.CaptureFixture[str]) -> None:
    lab, srv = promote_lab, gate_gitlab_server
    use_gitlab(lab, srv)
    old = lab.candidate("1.0.0", approve=False)
    c = lab.candidate("1.0.1", approve=False, parent=None)
    srv.add_deployment(DEPLOYMENT, JOB, PIPELINE, DEV, [gl_approval(CAROL, f"edgeci-approve {old}")])
    capsys.readouterr()
    assert gate(lab) == 1
    out = capsys.readouterr().out
    assert f"carol approved {old[:12]}, not this candidate {c[:12]}" in out
    assert BuildRecord.load(lab.record_path).section("gate")["decision"] == "denied"
    assert lab.cli("promote", PROMOTE_BP, env=ENV) == 1


def test_pipeline_variable_binds_deployment_approvals_without_a_comment(
        promote_lab: PromoteLab, gate_gitlab_server: FakeGitLab, capsys: pytest.CaptureFixture[str]) -> None:
    lab, srv = promote_lab, gate_gitlab_server
    use_gitlab(lab, srv)
    c = lab.candidate("1.0.0", approve=False)
    srv.add_deployment(DEPLOYMENT, JOB, PIPELINE, DEV, [gl_approval(CAROL, "LGTM")])
    capsys.readouterr()
    assert gate(lab) == 1
    assert "carol's approval (gitlab deployment 101) names no commit checksum" in capsys.readouterr().out
    srv.pipeline_variables[PIPELINE] = [{"variable_type": "env_var", "key": "EDGECI_CHECKSUM", "value": c}]
    assert gate(lab) == 0


def test_pipeline_triggerer_cannot_approve(
        promote_lab: PromoteLab, gate_gitlab_server: FakeGitLab, capsys: pytest.CaptureFixture[str]) -> None:
    lab, srv = promote_lab, gate_gitlab_server
    use_gitlab(lab, srv)
    c = lab.candidate("1.0.0", approve=False)
    srv.add_deployment(DEPLOYMENT, JOB, PIPELINE, ERIN, [gl_approval(ERIN, f"edgeci-approve {c}")])
    capsys.readouterr()
    assert gate(lab) == 1
    out = capsys.readouterr().out
    assert "erin is the pipeline triggerer" in out and "no one approves their own change" in out


def test_merge_request_approvals_bound_by_the_approvers_note(
        promote_lab: PromoteLab, gate_gitlab_server: FakeGitLab, capsys: pytest.CaptureFixture[str]) -> None:
    lab, srv = promote_lab, gate_gitlab_server
    use_gitlab(lab, srv, approvals_required=2)
    c = lab.candidate("1.0.0", approve=False)
    srv.merge_requests[12] = {"id": 1012, "iid": 12, "project_id": srv.project_id, "title": "edge 1.0.0",
                              "state": "opened", "author": DEV, "sha": "e" * 40}
    srv.mr_approvers[12] = [CAROL, BOB]
    note = {"noteable_type": "MergeRequest", "system": False, "created_at": "2026-11-23T10:00:00.000Z"}
    srv.notes[12] = [
        {**note, "id": 1, "body": "approved this merge request", "author": CAROL, "system": True},
        {**note, "id": 2, "body": "nice", "author": BOB},
        {**note, "id": 3, "body": "ship it", "author": DEV},
        {**note, "id": 4, "body": f"checked the boot test: edgeci-approve {c[:16]}", "author": CAROL},  # page 2
    ]
    capsys.readouterr()
    assert gate(lab, "--merge-request", "12", env={"CI_JOB_ID": ""}) == 1
    out = capsys.readouterr().out
    assert "bob's approval (gitlab merge request !12) names no commit checksum" in out
    assert "1 of 2 required approvals" in out
    srv.notes[12].append({**note, "id": 5, "body": f"edgeci-approve {c}", "author": BOB})
    assert gate(lab, "--merge-request", "12", env={"CI_JOB_ID": ""}) == 0
    approvers = {a["user"] for a in BuildRecord.load(lab.record_path).section("gate")["approvals"]}
    assert approvers == {"carol", "bob"}
    assert any("/merge_requests/12/notes?" in r and "page=2" in r for r in srv.requests)


def test_merge_request_author_cannot_approve(
        promote_lab: PromoteLab, gate_gitlab_server: FakeGitLab, capsys: pytest.CaptureFixture[str]) -> None:
    lab, srv = promote_lab, gate_gitlab_server
    use_gitlab(lab, srv)
    c = lab.candidate("1.0.0", approve=False)
    srv.merge_requests[13] = {"id": 1013, "iid": 13, "project_id": srv.project_id, "title": "edge",
                              "state": "opened", "author": MALLORY, "sha": "e" * 40}
    srv.mr_approvers[13] = [MALLORY]
    srv.notes[13] = [{"id": 1, "body": f"edgeci-approve {c}", "author": MALLORY, "system": False,
                         "created_at": "2026-11-23T10:00:00.000Z"}]
    capsys.readouterr()
    assert gate(lab, "--merge-request", "13", env={"CI_JOB_ID": ""}) == 1
    assert "mallory is the merge-request author" in capsys.readouterr().out


def test_allowed_groups_are_resolved_through_group_members(
        promote_lab: PromoteLab, gate_gitlab_server: FakeGitLab, capsys: pytest.CaptureFixture[str]) -> None:
    lab, srv = promote_lab, gate_gitlab_server
    use_gitlab(lab, srv, allowed_groups=["fleet/release"])
    c = lab.candidate("1.0.0", approve=False)
    srv.group_members["fleet/release"] = [
        {**u, "access_level": 30, "expires_at": None} for u in (BOB, ERIN, CAROL)]  # carol on page 2
    srv.add_deployment(DEPLOYMENT, JOB, PIPELINE, DEV, [gl_approval(MALLORY, f"edgeci-approve {c}")])
    capsys.readouterr()
    assert gate(lab) == 1
    assert "mallory is neither in gate.allowed_users nor in the groups fleet/release" in capsys.readouterr().out
    srv.deployments[DEPLOYMENT]["approvals"] = [gl_approval(CAROL, f"edgeci-approve {c}")]
    assert gate(lab) == 0
    assert any(r.startswith("/api/v4/groups/fleet%2Frelease/members/all") and "page=2" in r for r in srv.requests)


def test_blocked_deployment_without_approvals_is_pending_and_a_rejection_denies(
        promote_lab: PromoteLab, gate_gitlab_server: FakeGitLab, capsys: pytest.CaptureFixture[str]) -> None:
    lab, srv = promote_lab, gate_gitlab_server
    use_gitlab(lab, srv)
    c = lab.candidate("1.0.0", approve=False)
    srv.add_deployment(DEPLOYMENT, JOB, PIPELINE, DEV, [], status="blocked", left=1)
    capsys.readouterr()
    assert gate(lab) == 1
    out = capsys.readouterr().out
    assert "GitLab deployment 101 is blocked waiting for 1 more approval(s)" in out
    assert BuildRecord.load(lab.record_path).section("gate")["decision"] == "pending"
    srv.deployments[DEPLOYMENT]["approvals"] = [gl_approval(CAROL, f"edgeci-approve {c}"),
                                                gl_approval(BOB, "VPN is broken on this one", status="rejected")]
    assert gate(lab) == 1
    assert "bob rejected" in capsys.readouterr().out
    assert BuildRecord.load(lab.record_path).section("gate")["decision"] == "denied"


def test_wrong_token_or_no_deployment_is_an_error(
        promote_lab: PromoteLab, gate_gitlab_server: FakeGitLab, capsys: pytest.CaptureFixture[str]) -> None:
    lab, srv = promote_lab, gate_gitlab_server
    use_gitlab(lab, srv)
    lab.candidate("1.0.0", approve=False)
    srv.add_deployment(DEPLOYMENT, JOB, PIPELINE, DEV, [])
    capsys.readouterr()
    assert gate(lab, env={"EDGECI_GITLAB_TOKEN": "glpat-wrong-token"}) == 2
    err = capsys.readouterr().err
    assert "GitLab refused the token" in err and "glpat-wrong-token" not in err
    assert gate(lab, env={"CI_JOB_ID": "777"}) == 2
    assert "no GitLab deployment or merge request" in capsys.readouterr().err


def test_a_deployment_approved_in_another_pipeline_does_not_promote(
        promote_lab: PromoteLab, gate_gitlab_server: FakeGitLab, capsys: pytest.CaptureFixture[str]) -> None:
    """Someone points the gate at another pipeline's approved deployment: the gate may be talked into it, but
    promote reads the approvals again from its own job's deployment, which nobody approved."""
    lab, srv = promote_lab, gate_gitlab_server
    use_gitlab(lab, srv)
    c = lab.candidate("1.0.0", approve=False)
    srv.add_deployment(DEPLOYMENT, JOB, PIPELINE, DEV, [], status="blocked")  # this pipeline's: not approved
    srv.add_deployment(DEPLOYMENT + 7, JOB + 7, PIPELINE + 7, DEV, [gl_approval(CAROL, f"edgeci-approve {c}")])
    assert gate(lab, "--deployment", str(DEPLOYMENT + 7)) == 0  # the gate reads what it is pointed at
    before = (lab.prod_commit(), lab.releases())
    capsys.readouterr()
    assert lab.cli("promote", PROMOTE_BP, env=ENV) == 1
    err = capsys.readouterr().err
    assert "approvals: 0 of 1 required" in err
    assert (lab.prod_commit(), lab.releases()) == before
