"""Pinned promotion with real ostree repos over HTTP, real GnuPG signatures, and a real client pull.

Every test starts from a project whose stage and production repos are served on 127.0.0.1; the client is
a bare-user repo with gpg-verify=true (and gpg-verify-summary) trusting the production key.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgeci.record import BuildRecord
from edgeci.tools import ostree
from edgeci.tools.run import run
from tests.fixtures.promote import PROMOTE_BP, PROMOTE_REF, PromoteLab, delta_parts


def fsck_ok(repo: Path) -> None:
    r = ostree.fsck(repo)
    assert r.ok and "no errors found" in (r.stdout + r.stderr)


def content_checksum(repo: Path, commit: str | None) -> str:
    assert commit
    out = ostree.cli(repo, "show", commit).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("ContentChecksum:"))


def test_promotes_the_pinned_checksum_even_when_the_stage_ref_advanced(promote_lab: PromoteLab) -> None:
    lab = promote_lab
    a = lab.candidate("1.0.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    b = lab.candidate("1.1.0")
    # after the boot test, someone else's build moves the stage ref on (and its summary with it)
    newer = lab.stage_commit("1.2.0", parent=b)
    assert ostree.rev_parse(lab.stage_repo, PROMOTE_REF) == newer
    assert lab.cli("promote", PROMOTE_BP) == 0
    assert lab.prod_commit() == b
    assert not ostree.has_commit(lab.prod_repo, newer)
    assert [r["checksum"] for r in lab.releases()] == [a, b]
    rec = BuildRecord.load(lab.record_path).section("promote")
    assert rec["checksum"] == b and rec["previous"] == a and rec["version"] == "1.1.0" and rec["signed"] is True
    assert rec["status"] == "passed"
    fsck_ok(lab.prod_repo)


def test_stage_object_replaced_after_the_boot_test_is_refused_and_production_unchanged(
        promote_lab: PromoteLab, capsys: pytest.CaptureFixture[str]) -> None:
    lab = promote_lab
    a = lab.candidate("1.0.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    b = lab.candidate("1.1.0")
    # replace the content of one object that 1.1.0 added (os-release) with another object's bytes
    file_csum = ostree.cli(lab.stage_repo, "ls", "-C", b, "/usr/etc/os-release").stdout.split()[4]
    victim = lab.stage_repo / "objects" / file_csum[:2] / f"{file_csum[2:]}.filez"
    donor_csum = ostree.cli(lab.stage_repo, "ls", "-C", b, "/usr/share/edge/f039.txt").stdout.split()[4]
    shutil.copyfile(lab.stage_repo / "objects" / donor_csum[:2] / f"{donor_csum[2:]}.filez", victim)
    before = (lab.prod_repo / "summary").read_bytes()
    capsys.readouterr()
    assert lab.cli("promote", PROMOTE_BP) == 1
    err = capsys.readouterr().err
    assert "no longer matches its checksum" in err and "production is unchanged" in err
    assert lab.prod_commit() == a
    assert [r["checksum"] for r in lab.releases()] == [a]
    assert (lab.prod_repo / "summary").read_bytes() == before
    assert BuildRecord.load(lab.record_path).section("promote")["status"] == "failed"
    fsck_ok(lab.prod_repo)


def test_stage_that_no_longer_serves_the_tested_commit_is_refused(
        promote_lab: PromoteLab, capsys: pytest.CaptureFixture[str]) -> None:
    lab = promote_lab
    a = lab.candidate("1.0.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    lab.candidate("1.1.0")
    # the stage host auto-updated to a newer image: a fresh repo with only the newer commit
    shutil.rmtree(lab.stage_repo)
    ostree.init(lab.stage_repo, "archive")
    lab.stage_commit("1.2.0", parent=None)
    capsys.readouterr()
    assert lab.cli("promote", PROMOTE_BP) == 1
    assert "the stage no longer serves the boot-tested commit" in capsys.readouterr().err
    assert lab.prod_commit() == a
    fsck_ok(lab.prod_repo)


def test_client_verifies_signatures_and_summary_and_uses_static_deltas(promote_lab: PromoteLab) -> None:
    lab = promote_lab
    a = lab.candidate("1.0.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    client = lab.client()
    r = lab.client_pull(client)
    assert r.ok, r.stderr
    assert delta_parts(r.stdout) == 0  # first install: no earlier commit, objects only
    # the summary is signed by the production key
    assert run(["ostree", f"--repo={client}", "remote", "summary", "prod"], check=False).ok

    b = lab.candidate("1.1.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    r = lab.client_pull(client)
    assert r.ok, r.stderr
    assert delta_parts(r.stdout) >= 1, r.stdout
    assert ostree.rev_parse(client, f"prod:{PROMOTE_REF}") == b
    shown = ostree.cli(client, "show", b).stdout
    assert "Good signature" in shown

    # deltas from the last N releases: a client still on 1.0.0 jumps to 1.2.0 through a delta
    lagging = lab.client("lagging")
    assert lab.client_pull(lagging, f"{PROMOTE_REF}@{a}").ok
    ostree.cli(lagging, "refs", "--force", f"--create=prod:{PROMOTE_REF}", a)
    c = lab.candidate("1.2.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    deltas = ostree.static_delta_list(lab.prod_repo)
    assert f"{a}-{c}" in deltas and f"{b}-{c}" in deltas
    r = lab.client_pull(lagging)
    assert r.ok, r.stderr
    assert delta_parts(r.stdout) >= 1, r.stdout
    assert ostree.rev_parse(lagging, f"prod:{PROMOTE_REF}") == c


def test_client_refuses_an_unsigned_production_commit(promote_lab: PromoteLab) -> None:
    lab = promote_lab
    lab.write_config(gpg_key="", gpg_homedir="")
    lab.trust.write_policy(signed=False)  # a production host that does not sign
    lab.candidate("1.0.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    assert lab.releases()[-1]["signed"] is False
    r = lab.client_pull(lab.client())
    assert not r.ok
    assert "signature" in r.stderr.lower() or "gpg" in r.stderr.lower()
    # even without summary verification the commit itself is refused
    r = lab.client_pull(lab.client("nosummary", verify_summary=False))
    assert not r.ok and "signature" in r.stderr.lower()


def test_client_refuses_a_commit_signed_by_another_key(promote_lab: PromoteLab) -> None:
    lab = promote_lab
    lab.write_config(gpg_key=lab.keys.other_key, gpg_homedir=str(lab.keys.other_home))
    lab.trust.write_policy(gpg_key=lab.keys.other_key, gpg_homedir=str(lab.keys.other_home))  # the host's key
    c = lab.candidate("1.0.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    assert lab.prod_commit() == c
    r = lab.client_pull(lab.client("strict", verify_summary=False))
    assert not r.ok
    assert "signature" in r.stderr.lower() or "public key not found" in r.stderr.lower()
    # the same commit is accepted by a client that trusts that key (the signature itself is sound)
    assert lab.client_pull(lab.client("trusting", key=lab.keys.other_public, verify_summary=False)).ok


def test_promoting_the_same_checksum_again_is_a_noop(promote_lab: PromoteLab,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    lab = promote_lab
    c = lab.candidate("1.0.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    summary = (lab.prod_repo / "summary").stat().st_mtime_ns
    releases = (lab.prod_repo / "releases.json").read_bytes()
    capsys.readouterr()
    assert lab.cli("promote", PROMOTE_BP) == 0
    assert "already in production" in capsys.readouterr().out
    assert lab.prod_commit() == c
    assert (lab.prod_repo / "summary").stat().st_mtime_ns == summary
    assert (lab.prod_repo / "releases.json").read_bytes() == releases
    assert BuildRecord.load(lab.record_path).section("promote")["checksum"] == c


def test_promotion_without_the_gates_approval_is_refused(promote_lab: PromoteLab,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    lab = promote_lab
    lab.candidate("1.0.0", approve=False)
    capsys.readouterr()
    # promote decides from signed approvals alone, whether or not the gate has run
    assert lab.cli("promote", PROMOTE_BP) == 1
    assert "approvals: 0 of 1 required approvals" in capsys.readouterr().err
    assert lab.cli("gate", PROMOTE_BP) == 1  # pending: nobody approved yet
    assert lab.cli("promote", PROMOTE_BP) == 1
    assert "approvals: 0 of 1 required approvals" in capsys.readouterr().err
    assert lab.prod_commit() is None
    # an approval by the author does not open the gate
    assert lab.approve("dev") == 0
    assert lab.cli("gate", PROMOTE_BP) == 1
    assert lab.cli("promote", PROMOTE_BP) == 1
    assert lab.prod_commit() is None


def test_production_moved_after_the_gate_refuses_the_stale_candidate(promote_lab: PromoteLab,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    lab = promote_lab
    a = lab.candidate("1.0.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    b = lab.candidate("1.1.0")
    approved_b = lab.record_path.read_text()
    evidence_b = (lab.record_path.parent / "evidence.json").read_text()
    c = lab.candidate("1.2.0", parent=a)  # a sibling of b, also built on a, promoted first
    assert lab.cli("promote", PROMOTE_BP) == 0
    lab.record_path.write_text(approved_b)
    (lab.record_path.parent / "evidence.json").write_text(evidence_b)
    capsys.readouterr()
    assert lab.cli("promote", PROMOTE_BP) == 1
    assert "version-increases" in capsys.readouterr().err
    assert lab.prod_commit() == c
    assert [r["checksum"] for r in lab.releases()] == [a, c]
    assert not (lab.prod_repo / "refs" / "heads" / PROMOTE_REF).read_text().startswith(b)


def test_dry_run_prints_the_plan_and_changes_nothing(promote_lab: PromoteLab,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    lab = promote_lab
    a = lab.candidate("1.0.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    b = lab.candidate("1.1.0")
    listing = sorted(str(p.relative_to(lab.prod_repo)) for p in lab.prod_repo.rglob("*"))
    capsys.readouterr()
    assert lab.cli("promote", PROMOTE_BP, "--dry-run") == 0
    out = capsys.readouterr().out
    for step in range(1, 10):
        assert f"  {step} " in out
    assert f"pull --mirror --depth=1 edgeci-stage {b}" in out
    assert f"--from={a} --to={b}" in out
    assert sorted(str(p.relative_to(lab.prod_repo)) for p in lab.prod_repo.rglob("*")) == listing
    assert lab.prod_commit() == a


def test_rollback_publishes_a_new_commit_with_the_old_tree(promote_lab: PromoteLab,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    lab = promote_lab
    a = lab.candidate("1.0.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    client = lab.client()
    assert lab.client_pull(client).ok
    b = lab.candidate("1.1.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    assert lab.client_pull(client).ok
    assert lab.cli("rollback", PROMOTE_BP, "--to", "1.0.0", "--as", "oncall") == 0
    new = lab.prod_commit()
    assert new not in (a, b)
    assert ostree.parent(lab.prod_repo, new) == b
    assert ostree.diff(lab.prod_repo, a, new) == []
    assert ostree.metadata(lab.prod_repo, new, "version") == "1.1.1"
    assert ostree.metadata(lab.prod_repo, new, "edgeci.rollback-of") == "1.0.0"
    entry = lab.releases()[-1]
    assert entry["rollback_of"] == "1.0.0" and entry["by"] == "oncall" and entry["previous"] == b
    # the client (running 1.1.0) accepts it: newer timestamp, signed, via a delta
    r = lab.client_pull(client)
    assert r.ok, r.stderr
    assert delta_parts(r.stdout) >= 1
    assert ostree.rev_parse(client, f"prod:{PROMOTE_REF}") == new
    # and versions keep going up: a 1.1.0 rebuild is now refused by the gate
    lab.candidate("1.1.0", approve=False)
    assert lab.approve("alice") == 0
    capsys.readouterr()
    assert lab.cli("gate", PROMOTE_BP) == 1
    assert "1.1.0 is not greater than production's 1.1.1" in capsys.readouterr().out
    assert lab.cli("history", PROMOTE_BP) == 0
    out = capsys.readouterr().out
    assert "rollback of 1.0.0" in out and "current" in out


def test_prune_keeps_what_is_needed(promote_lab: PromoteLab, capsys: pytest.CaptureFixture[str]) -> None:
    lab = promote_lab
    lab.write_config(retention=2)
    released = []
    for version in ("2.0.0", "2.1.0", "2.2.0", "2.3.0"):
        released.append(lab.candidate(version))
        assert lab.cli("promote", PROMOTE_BP) == 0
    present = [ostree.has_commit(lab.prod_repo, c) for c in released]
    assert present == [False, False, True, True]
    keep = sorted(p.name for p in (lab.prod_repo / "refs" / "remotes" / "edgeci-keep" / "release").iterdir())
    assert keep == sorted(released[2:])
    fsck_ok(lab.prod_repo)
    # keep refs are not published: a client sees only the production ref
    client = lab.client()
    refs = run(["ostree", f"--repo={client}", "remote", "refs", "prod"]).stdout.split()
    assert refs == [f"prod:{PROMOTE_REF}"]
    assert lab.client_pull(client).ok
    capsys.readouterr()
    assert lab.cli("rollback", PROMOTE_BP, "--to", "2.0.0") == 2
    assert "was pruned" in capsys.readouterr().err
    tree_of_220 = content_checksum(lab.prod_repo, released[2])
    assert lab.cli("rollback", PROMOTE_BP, "--to", "2.2.0") == 0
    assert content_checksum(lab.prod_repo, lab.prod_commit()) == tree_of_220
    # retention 2 now keeps 2.3.0 and the rollback commit; 2.2.0's commit went, its tree stays
    assert not ostree.has_commit(lab.prod_repo, released[2])
    fsck_ok(lab.prod_repo)
    assert json.loads((lab.prod_repo / "releases.json").read_text())["releases"][0]["version"] == "2.0.0"


def test_prune_leaves_refs_it_does_not_manage(promote_lab: PromoteLab) -> None:
    lab = promote_lab
    lab.write_config(retention=1)
    lab.candidate("1.0.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    # someone else's ref in the same repo, two commits deep
    t = lab.root / "foreign"
    t.mkdir()
    (t / "x").write_text("1")
    f1 = ostree.commit(lab.prod_repo, "other/tools", tree_dir=t)
    (t / "x").write_text("2")
    f2 = ostree.commit(lab.prod_repo, "other/tools", tree_dir=t)
    for v in ("1.1.0", "1.2.0"):
        lab.candidate(v)
        assert lab.cli("promote", PROMOTE_BP) == 0
    assert ostree.has_commit(lab.prod_repo, f1) and ostree.has_commit(lab.prod_repo, f2)
    assert [ostree.has_commit(lab.prod_repo, r["checksum"]) for r in lab.releases()] == [False, False, True]
    fsck_ok(lab.prod_repo)


def test_fsck_commit_finds_corrupted_and_missing_objects(promote_lab: PromoteLab) -> None:
    from edgeci.errors import ToolError

    lab = promote_lab
    a = lab.candidate("1.0.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    b = lab.candidate("1.1.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    repo = lab.prod_repo
    changed = ostree.cli(repo, "ls", "-C", b, "/usr/etc/os-release").stdout.split()[4]
    same = ostree.cli(repo, "ls", "-C", b, "/usr/share/edge/f039.txt").stdout.split()[4]
    assert ostree.fsck_commit(repo, b, since=a) < ostree.fsck_commit(repo, b)
    obj = repo / "objects" / changed[:2] / f"{changed[2:]}.filez"
    good = obj.read_bytes()
    obj.write_bytes(good[:-8] + b"corrupt!")
    with pytest.raises(ToolError, match=f"fsck content object {changed}"):
        ostree.fsck_commit(repo, b, since=a)
    obj.unlink()
    with pytest.raises(ToolError, match="Couldn't find file object"):
        ostree.fsck_commit(repo, b, since=a)
    obj.write_bytes(good)
    # an object shared with the previous release is only checked by the full verification
    shared = repo / "objects" / same[:2] / f"{same[2:]}.filez"
    shared.write_bytes(shared.read_bytes()[:-8] + b"corrupt!")
    assert ostree.fsck_commit(repo, b, since=a) > 0
    with pytest.raises(ToolError):
        ostree.fsck_commit(repo, b)


def test_gate_report_has_one_testcase_per_rule_and_approve_refuses_a_stale_review(
        promote_lab: PromoteLab, capsys: pytest.CaptureFixture[str]) -> None:
    import xml.etree.ElementTree as ET

    from edgeci.policy import RULES

    lab = promote_lab
    lab.gate.update({"freeze": ["2026-12-20..2027-01-05"]})
    lab.write_config()
    c = lab.stage_commit("1.0.0")
    lab.write_record(c, "1.0.0", boot="failed")
    capsys.readouterr()
    assert lab.approve("carol", checksum="f" * 64) == 2
    assert "but the candidate of edge x86_64 is now" in capsys.readouterr().err
    assert lab.approve("dev") == 0
    assert "dev is the commit author" in capsys.readouterr().err  # warned at once
    assert lab.cli("gate", PROMOTE_BP, env={"EDGECI_TEST_NOW": "2026-12-24T10:00:00+00:00"}) == 1
    xml = ET.parse(lab.project / "reports" / "gate-edge-x86_64.xml")
    cases = {tc.get("name"): tc for tc in xml.iter("testcase")}
    assert list(cases) == list(RULES)
    assert {tc.get("classname") for tc in cases.values()} == {"edgeci.gate.edge.x86_64"}
    failed = {name for name, tc in cases.items() if tc.find("failure") is not None}
    # the failed upgrade fails the stages and the required boot-test coverage alike
    assert failed == {"stages-passed", "boot-test-coverage", "no-self-approval", "approvals-required", "freeze"}
    assert "boot-test scenario 'upgrade' failed" in cases["stages-passed"].find("failure").get("message")
    section = BuildRecord.load(lab.record_path).section("gate")
    assert section["decision"] == "denied" and section["status"] == "failed" and section["checksum"] == c


def test_history_and_gate_read_production_over_http(promote_lab: PromoteLab,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    lab = promote_lab
    a = lab.candidate("1.0.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    # a CI job without the production repo on disk: prod.url only
    lab.write_config(repo=str(lab.root / "not-here"), url=lab.prod_url)
    capsys.readouterr()
    assert lab.cli("history", PROMOTE_BP) == 0
    out = capsys.readouterr().out
    assert f"1.0.0        {a[:12]}" in out and "[current]" in out
    lab.stage_commit("0.9.0", parent=a)
    lab.write_record(ostree.rev_parse(lab.stage_repo, "rhel/9/x86_64/edge") or "", "0.9.0")
    assert lab.approve("carol") == 0
    assert lab.cli("gate", PROMOTE_BP) == 1
    assert "0.9.0 is not greater than production's 1.0.0" in capsys.readouterr().out


def edge_container_image(lab: PromoteLab, checksum: str, tag: str) -> str:
    """An edge-container image (OCI layout build/oci/edge) whose repo holds `checksum`, like a compose's."""
    from edgeci.oci import LayerEntry, write_layout

    repo = lab.root / f"image-{tag}" / "repo"
    ostree.init(repo, "archive")
    ostree.pull_local(repo, lab.stage_repo, [checksum])
    ostree.set_ref(repo, PROMOTE_REF, checksum)
    layout = lab.project / "build" / "oci" / f"edge-{tag}"
    digest = write_layout(layout, [[LayerEntry(repo, "usr/share/nginx/html/repo")]], ref_name=tag)
    return f"oci:build/oci/edge-{tag}@{digest}"


def test_promotes_from_the_pushed_image_by_digest(promote_lab: PromoteLab,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    lab = promote_lab
    a = lab.candidate("1.0.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    b = lab.candidate("1.1.0")
    other = lab.stage_commit("1.1.1", parent=a)
    rec = BuildRecord.load(lab.record_path)
    rec.sections["stage"]["url"] = "http://127.0.0.1:9/repo"  # the stage is gone: only the image remains
    rec.sections["push"]["image_ref"] = edge_container_image(lab, other, "wrong")
    rec.save()
    capsys.readouterr()
    assert lab.cli("promote", PROMOTE_BP, "--from", "image") == 1
    assert "does not hold the boot-tested commit" in capsys.readouterr().err
    assert lab.prod_commit() == a
    rec = BuildRecord.load(lab.record_path)
    rec.sections["push"]["image_ref"] = edge_container_image(lab, b, "good")
    rec.save()
    assert lab.cli("promote", PROMOTE_BP, "--from", "image", "--dry-run") == 0
    assert "extract the ostree repo from oci:build/oci/edge-good@sha256:" in capsys.readouterr().out
    assert lab.cli("promote", PROMOTE_BP, "--from", "image") == 0
    assert "imported from oci:build/oci/edge-good@sha256:" in capsys.readouterr().out
    assert lab.prod_commit() == b
    assert not list(lab.prod_repo.parent.glob(".edgeci-image-*"))
    client = lab.client()
    r = lab.client_pull(client)
    assert r.ok, r.stderr
    fsck_ok(lab.prod_repo)
