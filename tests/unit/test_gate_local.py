"""edgeci.approvals.local_source: approval files bound to a checksum, and who counts as an author."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeci.approvals import local_source as local
from edgeci.errors import GateError
from edgeci.policy import Person
from edgeci.tools.run import run

C = "1" * 64
D = "2" * 64


def test_an_approval_is_stored_under_its_checksum_and_read_back(tmp_path: Path) -> None:
    path = local.write_approval(tmp_path, C, "carol", comment="boot test looks fine", when="2026-11-23T10:00:00Z")
    assert path == tmp_path / "approvals" / C / "carol.json"
    local.write_approval(tmp_path, D, "dave/../x", when="2026-11-23T09:00:00Z")  # odd names stay inside
    assert (tmp_path / "approvals" / D / "dave_.._x.json").is_file()
    got = local.read_approvals(tmp_path)
    assert [(a.user, a.checksum) for a in got] == [("dave/../x", D), ("carol", C)]  # oldest first
    assert got[1].comment == "boot test looks fine" and got[1].source == "local"


def test_approvals_of_earlier_candidates_are_history_not_evidence(tmp_path: Path) -> None:
    local.write_approval(tmp_path, C, "carol")  # approved and released last month
    local.write_approval(tmp_path, D, "dave")
    assert [a.user for a in local.read_approvals(tmp_path, candidate=D)] == ["dave"]
    assert local.read_approvals(tmp_path, candidate="3" * 64) == []
    moved = tmp_path / "approvals" / D / "carol.json"  # a file moved under the candidate still shows up
    (tmp_path / "approvals" / C / "carol.json").rename(moved)
    assert sorted((a.user, a.checksum) for a in local.read_approvals(tmp_path, candidate=D)) == [
        ("carol", ""), ("dave", D)]


def test_a_file_moved_to_another_checksum_binds_to_nothing(tmp_path: Path) -> None:
    path = local.write_approval(tmp_path, C, "carol")
    moved = tmp_path / "approvals" / D / "carol.json"
    moved.parent.mkdir(parents=True)
    path.rename(moved)
    (a,) = local.read_approvals(tmp_path)
    assert a.checksum == ""


def test_bad_input_is_a_gate_error(tmp_path: Path) -> None:
    with pytest.raises(GateError, match="not a commit checksum"):
        local.write_approval(tmp_path, "abc", "carol")
    with pytest.raises(GateError, match="--as NAME"):
        local.write_approval(tmp_path, C, "  ")
    bad = tmp_path / "approvals" / C / "x.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    with pytest.raises(GateError) as e:
        local.read_approvals(tmp_path)
    assert str(bad) in str(e.value) and "approve again" in str(e.value)


def test_authors_come_from_git_and_ci_variables(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    (repo / "blueprints").mkdir(parents=True)
    bp = repo / "blueprints" / "edge.toml"
    bp.write_text('name = "edge"\n')
    env = {"GIT_AUTHOR_NAME": "Ann Author", "GIT_AUTHOR_EMAIL": "ann@example.com",
           "GIT_COMMITTER_NAME": "Cid Committer", "GIT_COMMITTER_EMAIL": "cid@example.com"}
    run(["git", "init", "-q", str(repo)])
    run(["git", "-C", str(repo), "add", "-A"], env=env)
    run(["git", "-C", str(repo), "commit", "-q", "-m", "bp"], env=env)
    (repo / "README").write_text("x")
    env2 = {**env, "GIT_AUTHOR_NAME": "Hal Head", "GIT_AUTHOR_EMAIL": "hal@example.com"}
    run(["git", "-C", str(repo), "add", "-A"], env=env2)
    run(["git", "-C", str(repo), "commit", "-q", "-m", "readme"], env=env2)
    people, notes = local.git_people(bp)
    assert notes == []
    assert Person("commit author", ("hal@example.com", "Hal Head")) in people
    assert Person("blueprint's last committer", ("ann@example.com", "Ann Author")) in people
    assert Person("blueprint's last committer", ("cid@example.com", "Cid Committer")) in people
    ev = local.collect(tmp_path / "work", bp, env={"GITLAB_USER_LOGIN": "gl-user", "BUILD_USER_ID": "jk"})
    assert Person("pipeline triggerer", ("gl-user",)) in ev.people
    assert Person("pipeline triggerer", ("jk",)) in ev.people
    assert local.head_author(bp, env={}) == "hal@example.com"
    assert local.head_author(bp, env={"EDGECI_AUTHOR": "me"}) == "me"


def test_outside_git_the_authors_are_unknown_and_said_so(tmp_path: Path) -> None:
    bp = tmp_path / "edge.toml"
    bp.write_text('name = "edge"\n')
    people, notes = local.git_people(bp)
    assert people == [] and "not in a git repository" in notes[0]
