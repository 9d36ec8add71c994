"""The gate's inputs: what was built (a committed tree, its checks file bound by hash) and who wrote it (every
author, committer and co-author since production's release), with real git histories."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edgeci import policy
from edgeci.approvals import local_source as local
from edgeci.checks import ChecksError, file_sha256, load_checks
from edgeci.policy import Approval, Evidence
from edgeci.production import Production
from edgeci.record import BuildRecord, Candidate
from tests.fixtures.composed import edgeci_cli
from tests.fixtures.gitrepo import GitRepo

C = "a" * 64
PROD = "c" * 64
NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
BP = 'name = "edge"\nversion = "1.0.0"\n'
CHECKS = "checks:\n  - name: motd\n    file_exists: /etc/motd\n"


def person(name: str, email: str) -> dict[str, str]:
    return {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email}


DANA = person("Dana Developer", "dana@example.com")
EVE = person("Eve Editor", "eve@example.com")
FRANK = person("Frank Former", "frank@example.com")


def sections(backend: str = "qemu", scenarios: dict[str, Any] | None = None, **bp: Any) -> dict[str, Any]:
    scen = scenarios or {s: {"outcome": "passed"} for s in ("install", "upgrade", "rollback")}
    return {
        "blueprint": {"name": "edge", "version": "1.2.0", "status": "passed", **bp},
        "lint": {"status": "passed"},
        "compose": {"commit": C, "parent": PROD, "ref": "rhel/9/x86_64/edge", "status": "passed"},
        "push": {"digest": "sha256:" + "d" * 64, "status": "passed"},
        "stage": {"url": "http://127.0.0.1:1/repo", "commit": C, "status": "passed"},
        "boot_test": {"backend": backend, "scenarios": scen, "status": "passed"},
    }


def verdict(evidence: Evidence, secs: dict[str, Any] | None = None, prod: Production | None = None,
            **kw: Any) -> policy.Verdict:
    return policy.evaluate(Candidate.from_sections(secs or sections()),
                           prod or Production("rhel/9/x86_64/edge", PROD, "1.1.0"), evidence, now=NOON, **kw)


def evidence_for(bp: Path, approver: str, since: str | None = None) -> Evidence:
    a = local.authorship(bp, since=since)
    return Evidence(approvals=[Approval(approver, C)], people=a.people, notes=a.notes, authors_unknown=a.unknown)


# -- item 2: every author since production's release ---------------------------------------------------

def test_an_earlier_author_of_the_change_cannot_approve_when_someone_else_committed_last(git_repo: GitRepo) -> None:
    bp = git_repo.write("blueprints/edge.toml", BP)
    git_repo.commit("edge 1.0.0", env=DANA)
    git_repo.write("blueprints/edge.toml", BP.replace("1.0.0", "1.0.1"))
    git_repo.commit("edge 1.0.1", env=DANA)
    git_repo.write("blueprints/edge.toml", BP.replace("1.0.0", "1.0.1") + "# one more line\n")
    git_repo.commit("a one-line commit on top", env=EVE)

    v = verdict(evidence_for(bp, "dana"))
    assert v.decision == policy.DENIED
    assert "dana is the change author" in v.rule("no-self-approval").reason
    assert verdict(evidence_for(bp, "eve@example.com")).decision == policy.DENIED
    assert verdict(evidence_for(bp, "zoe")).decision == policy.APPROVED


def test_co_authors_and_checks_file_commits_are_change_authors(git_repo: GitRepo) -> None:
    bp = git_repo.write("blueprints/edge.toml", BP)
    git_repo.commit("edge", env=DANA)
    git_repo.write("blueprints/edge.checks.yaml", CHECKS)
    git_repo.commit("checks\n\nCo-authored-by: Gil Pair <gil@example.com>\n", env=EVE)
    ev = evidence_for(bp, "gil")
    assert verdict(ev).rule("no-self-approval").outcome == policy.FAILED
    assert "change co-author" in verdict(ev).rule("no-self-approval").reason
    assert verdict(evidence_for(bp, "eve")).decision == policy.DENIED  # only touched the checks file


def test_authors_before_productions_release_may_approve(git_repo: GitRepo) -> None:
    bp = git_repo.write("blueprints/edge.toml", BP)
    released = git_repo.commit("edge 1.0.0 (released)", env=FRANK)
    git_repo.write("blueprints/edge.toml", BP.replace("1.0.0", "1.0.1"))
    git_repo.commit("edge 1.0.1", env=DANA)
    git_repo.write("README", "unrelated\n")
    git_repo.commit("readme", env=EVE)  # HEAD's author stays an author (the pipeline's commit)

    assert verdict(evidence_for(bp, "frank", since=released)).decision == policy.APPROVED
    assert verdict(evidence_for(bp, "dana", since=released)).decision == policy.DENIED
    # unknown release: the whole history counts
    assert verdict(evidence_for(bp, "frank")).decision == policy.DENIED


# -- item 3: unknown authorship denies --------------------------------------------------------------------

def test_a_blueprint_symlinked_out_of_git_has_unknown_authors_and_denies(git_repo: GitRepo, tmp_path: Path) -> None:
    outside = tmp_path / "outside.toml"
    outside.write_text(BP)
    git_repo.write("README", "x\n")
    git_repo.commit("readme", env=DANA)
    (git_repo.path / "blueprints").mkdir()
    link = git_repo.path / "blueprints" / "edge.toml"
    link.symlink_to(outside)

    ev = evidence_for(link, "zoe")
    assert "symbolic link" in ev.authors_unknown
    v = verdict(ev)
    assert v.decision == policy.DENIED and v.counted == []
    assert "cannot be determined" in v.rule("no-self-approval").reason
    # no approval at all: still denied, with the reason (not pending)
    v = verdict(Evidence(authors_unknown=ev.authors_unknown))
    assert v.decision == policy.DENIED and "symbolic link" in v.rule("no-self-approval").reason


def test_a_blueprint_outside_git_or_never_committed_has_unknown_authors(tmp_path: Path, git_repo: GitRepo) -> None:
    loose = tmp_path / "loose" / "edge.toml"
    loose.parent.mkdir()
    loose.write_text(BP)
    assert "not in a git repository" in local.authorship(loose).unknown
    git_repo.write("README", "x\n")
    git_repo.commit("readme", env=DANA)
    new = git_repo.write("blueprints/edge.toml", BP)
    assert "not committed" in local.authorship(new).unknown


def test_lint_refuses_a_symlinked_blueprint_with_file_and_line(git_repo: GitRepo, tmp_path: Path) -> None:
    outside = tmp_path / "outside.toml"
    outside.write_text(BP)
    git_repo.write("edgeci.yaml", "project: {}\n")
    git_repo.commit("project", env=DANA)
    (git_repo.path / "blueprints").mkdir()
    (git_repo.path / "blueprints" / "edge.toml").symlink_to(outside)
    r = edgeci_cli(["lint", "blueprints/edge.toml"], cwd=git_repo.path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "blueprints/edge.toml:1: error: [location]" in r.stdout and "symbolic link" in r.stdout
    r = edgeci_cli(["compose", "edge"], cwd=git_repo.path)
    assert r.returncode == 2 and "symbolic link" in r.stderr and r.stderr.count("\n") == 1, r.stderr


# -- item 1: a gated build builds a committed tree ---------------------------------------------------------

def _project(repo: GitRepo) -> None:
    repo.write("edgeci.yaml", "project: {}\n")
    repo.write("blueprints/edge.toml", BP)
    repo.write("blueprints/edge.checks.yaml", CHECKS)
    repo.commit("edge 1.0.0", env=DANA)


def test_compose_refuses_uncommitted_blueprint_and_checks_naming_them(git_repo: GitRepo) -> None:
    _project(git_repo)
    git_repo.write("blueprints/edge.toml", BP + '\n[customizations]\nhostname = "edge"\n')
    git_repo.write("blueprints/edge.checks.yaml", CHECKS.replace("motd", "issue"))
    r = edgeci_cli(["compose", "edge"], cwd=git_repo.path)
    assert r.returncode == 2, r.stdout + r.stderr
    line = r.stderr.strip()
    assert "\n" not in line
    assert "blueprints/edge.toml has uncommitted changes" in line
    assert "blueprints/edge.checks.yaml has uncommitted changes" in line
    assert not (git_repo.path / "build" / "edge" / "x86_64" / "record.json").exists()


def test_compose_refuses_a_change_hidden_with_assume_unchanged_and_an_untracked_checks_file(git_repo: GitRepo) -> None:
    git_repo.write("edgeci.yaml", "project: {}\n")
    git_repo.write("blueprints/edge.toml", BP)
    git_repo.commit("edge", env=DANA)
    git_repo.write("blueprints/edge.toml", BP.replace("1.0.0", "1.0.9"))
    git_repo.git("update-index", "--assume-unchanged", "blueprints/edge.toml")
    assert git_repo.git("status", "--porcelain") == ""  # git itself no longer shows it
    git_repo.write("blueprints/edge.checks.yaml", CHECKS)
    git_repo.git("update-index", "--assume-unchanged", "blueprints/edge.toml")
    r = edgeci_cli(["compose", "edge"], cwd=git_repo.path)
    assert r.returncode == 2
    assert "blueprints/edge.toml has uncommitted changes" in r.stderr
    assert "blueprints/edge.checks.yaml is not committed" in r.stderr


def test_allow_uncommitted_is_refused_outside_local_gates(git_repo: GitRepo) -> None:
    _project(git_repo)
    git_repo.write("blueprints/edge.toml", BP.replace("1.0.0", "1.0.1"))
    r = edgeci_cli(["compose", "edge", "--allow-uncommitted"], cwd=git_repo.path,
                   env={"EDGECI_GATE_SOURCE": "gitlab"})
    assert r.returncode == 2 and "for local experiments" in r.stderr and "gitlab" in r.stderr, r.stderr


def test_a_candidate_built_from_uncommitted_files_is_denied() -> None:
    ev = Evidence(approvals=[Approval("zoe", C)])
    v = verdict(ev, sections(uncommitted=["blueprints/edge.toml"]))
    assert v.decision == policy.DENIED
    assert "blueprints/edge.toml" in v.rule("built-from-commit").reason
    assert verdict(ev, sections(git_sha="f" * 40)).decision == policy.APPROVED


# -- item 6: a failed compose invalidates its section --------------------------------------------------------

def test_a_failed_compose_after_a_version_bump_invalidates_the_older_passed_compose(git_repo: GitRepo) -> None:
    _project(git_repo)
    rec = BuildRecord(git_repo.path / "build" / "edge" / "x86_64" / "record.json")
    for name, values in sections().items():
        rec.set(name, {k: v for k, v in values.items() if k != "status"})
    rec.save()
    git_repo.write("blueprints/edge.toml", BP.replace("1.0.0", "1.0.1"))  # bumped, not committed
    r = edgeci_cli(["compose", "edge"], cwd=git_repo.path)
    assert r.returncode == 2
    data = json.loads(rec.path.read_text())["sections"]
    assert data["compose"]["status"] == "failed" and "uncommitted" in data["compose"]["error"]
    assert not {"push", "stage", "boot_test"} & set(data)
    r = edgeci_cli(["push", "edge"], cwd=git_repo.path)
    assert r.returncode == 2 and "'compose' stage failed" in r.stderr, r.stderr


# -- item 4: the checks file is bound to the record -----------------------------------------------------------

def test_boot_test_refuses_a_checks_file_that_differs_from_the_record(tmp_path: Path) -> None:
    checks = tmp_path / "edge.checks.yaml"
    checks.write_text(CHECKS + "  - name: failing\n    file_exists: /nope\n")
    recorded = file_sha256(checks)
    assert [c.name for c in load_checks(checks, expected_sha256=recorded).checks] == ["motd", "failing"]
    checks.write_text(CHECKS)  # the failing check deleted from the working tree
    with pytest.raises(ChecksError) as e:
        load_checks(checks, expected_sha256=recorded)
    assert recorded in str(e.value) and file_sha256(checks) in str(e.value)
    checks.unlink()
    with pytest.raises(ChecksError, match="is missing"):
        load_checks(checks, expected_sha256=recorded)


def test_lint_records_the_checks_files_hash(git_repo: GitRepo) -> None:
    _project(git_repo)
    r = edgeci_cli(["lint"], cwd=git_repo.path)
    assert r.returncode == 0, r.stdout + r.stderr
    bp = json.loads((git_repo.path / "build/edge/x86_64/record.json").read_text())["sections"]["blueprint"]
    assert bp["checks_path"] == "blueprints/edge.checks.yaml"
    assert bp["checks_sha256"] == file_sha256(git_repo.path / "blueprints/edge.checks.yaml")


# -- item 5: the boot test's coverage --------------------------------------------------------------------------

def test_production_requires_every_scenario_on_a_backend_that_boots() -> None:
    ev = Evidence(approvals=[Approval("zoe", C)])
    v = verdict(ev, sections(backend="sysroot"))
    assert v.decision == policy.DENIED and "sysroot" in v.rule("boot-test-coverage").reason
    skipped = {"install": {"outcome": "passed"},
               "upgrade": {"outcome": "skipped", "reason": "needs a running system (sysroot backend)"},
               "rollback": {"outcome": "passed"}}
    v = verdict(ev, sections(scenarios=skipped))
    assert v.decision == policy.DENIED and "'upgrade' was skipped" in v.rule("boot-test-coverage").reason
    # "first release" only excuses a skip when production really is empty
    first = {**skipped, "upgrade": {"outcome": "skipped", "reason": policy.FIRST_RELEASE},
             "rollback": {"outcome": "skipped", "reason": policy.FIRST_RELEASE}}
    assert verdict(ev, sections(scenarios=first)).decision == policy.DENIED
    empty = Production("rhel/9/x86_64/edge", None, None)
    secs = sections(scenarios=first)
    secs["compose"]["parent"] = None
    assert verdict(ev, secs, prod=empty).decision == policy.APPROVED


def test_gate_settings_choose_the_requirements() -> None:
    from edgeci.config import GateConfig

    assert policy.boot_requirements(GateConfig(source="gitlab")) == (("install", "upgrade", "rollback"),
                                                                      ("device", "qemu", "libvirt"))
    assert "sysroot" in policy.boot_requirements(GateConfig(source="local"))[1]
    ev = Evidence(approvals=[Approval("zoe", C)])
    scen, backends = policy.boot_requirements(GateConfig(source="local"))
    v = verdict(ev, sections(backend="sysroot"), required_scenarios=scen, accepted_backends=backends)
    assert v.decision == policy.APPROVED


def test_the_approver_sees_which_variables_changed_by_hash_only() -> None:
    old = {"CEPH_KEYRING": "1" * 64, "SSH_USER": "2" * 64, "GONE": "3" * 64}
    new = {"CEPH_KEYRING": "4" * 64, "SSH_USER": "2" * 64, "CA_CERT": "5" * 64}
    assert policy.variables_diff(old, new) == ["+ CA_CERT (sha256 555555555555)", "~ CEPH_KEYRING sha256 "
                                               "111111111111 -> 444444444444", "- GONE (sha256 333333333333)"]
    assert policy.variables_diff(new, new) == []


def test_gather_binds_the_evidence_to_the_gate_settings_of_its_source(git_repo: GitRepo) -> None:
    from edgeci.approvals import SourceContext, gather
    from edgeci.config import Config

    bp = git_repo.write("blueprints/edge.toml", BP)
    git_repo.commit("edge", env=DANA)
    cfg = Config(root=git_repo.path)
    local.write_approval(git_repo.path / "work", C, "zoe")
    ev = gather("local", SourceContext(cfg, git_repo.path / "work", bp, env={}),
                Candidate.from_sections(sections(backend="sysroot")))
    assert [a.user for a in ev.approvals] == ["zoe"] and ev.authors_unknown == ""
    assert ev.boot_requirements is not None and "sysroot" in ev.boot_requirements[1]
    assert verdict(ev, sections(backend="sysroot")).decision == policy.APPROVED
    assert "dana@example.com" in {i for p in ev.people for i in p.identities}
    cfg.gate.accepted_backends = ["qemu"]
    ev = gather("local", SourceContext(cfg, git_repo.path / "work", bp, env={}),
                Candidate.from_sections(sections(backend="sysroot")))
    assert verdict(ev, sections(backend="sysroot")).decision == policy.DENIED
