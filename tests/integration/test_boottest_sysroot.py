"""The sysroot backend end to end: real ostree admin in a user namespace, a stage repo over HTTP on
127.0.0.1, a production archive repo, `edgeci boot-test --backend sysroot` through the CLI."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from edgeci.cli import main
from edgeci.record import BuildRecord, record_path
from edgeci.tools import ostree
from tests.fixtures.boottest import commit_tree, write_record, write_tree

pytestmark = pytest.mark.skipif(shutil.which("ostree") is None or shutil.which("unshare") is None,
                                reason="needs ostree and unshare")

REF = "rhel/9/x86_64/edge"
CHECKS = """\
checks:
  - name: hostname
    file_contains: {path: /etc/hostname, text: gateway}
  - name: core-user
    user_exists: core
  - name: wheel-group
    group_exists: wheel
  - name: sshd-enabled
    service_enabled: sshd.service
  - name: version
    os_release_version: true
  - name: booted-candidate
    booted_commit: true
  - name: kernel
    command: {run: "uname -s", exit: 0, output: Linux}
scripts:
  - name: var-writable
    required: true
    run: |
      #!/bin/sh
      touch /var/.probe
"""


def _project(tmp_path: Path, checks: str = CHECKS, version: str = "1.0.1") -> Path:
    bp = tmp_path / "blueprints"
    bp.mkdir()
    (bp / "gateway.toml").write_text(f'name = "gateway"\nversion = "{version}"\n')
    (bp / "gateway.checks.yaml").write_text(checks)
    return bp / "gateway.toml"


def _repos(tmp_path: Path, *, with_prod: bool, candidate_hostname: str = "gateway") -> dict[str, str]:
    stage = tmp_path / "stage-repo"
    prod_commit = commit_tree(stage, REF, write_tree(tmp_path / "t1", version="1.0.0"), "1.0.0")
    tree = write_tree(tmp_path / "t1", version="1.0.1", hostname=candidate_hostname)
    cand = commit_tree(stage, REF, tree, "1.0.1", parent=prod_commit)
    ostree.static_delta_generate(stage, cand, from_=prod_commit)
    ostree.summary_update(stage)
    if with_prod:
        prod = tmp_path / "build" / "prod" / "repo"
        ostree.init(prod, mode="archive")
        ostree.pull_local(prod, stage, [prod_commit])
        ostree.set_ref(prod, REF, prod_commit)
    return {"prod": prod_commit, "candidate": cand}


def _report(tmp_path: Path) -> ET.Element:
    return ET.parse(tmp_path / "reports" / "boot-test-gateway-x86_64.xml").getroot()


def _cases(root: ET.Element, suite: str) -> dict[str, ET.Element]:
    for s in root.iter("testsuite"):
        if s.get("name") == f"boot-test.{suite}":
            return {c.get("name") or "": c for c in s.iter("testcase")}
    raise AssertionError(f"no suite {suite}: {[s.get('name') for s in root.iter('testsuite')]}")


def _outcome(case: ET.Element) -> str:
    for tag in ("failure", "error", "skipped"):
        if case.find(tag) is not None:
            return tag
    return "passed"


def test_sysroot_backend_installs_upgrades_with_a_delta_and_rolls_back(tmp_path, monkeypatch, boottest_http, capsys):
    monkeypatch.chdir(tmp_path)
    bp = _project(tmp_path)
    commits = _repos(tmp_path, with_prod=True)
    url = boottest_http(tmp_path / "stage-repo")
    write_record(tmp_path / "build", "gateway", "x86_64", version="1.0.1", blueprint_path=bp,
                 commit=commits["candidate"], parent=commits["prod"], ref=REF, stage_url=url)

    assert main(["boot-test", "gateway", "--backend", "sysroot"]) == 0, capsys.readouterr()

    sec = BuildRecord.load(record_path(tmp_path / "build", "gateway", "x86_64")).section("boot_test")
    assert sec["status"] == "passed" and sec["backend"] == "sysroot"
    install, upgrade, rollback = (sec["scenarios"][n] for n in ("install", "upgrade", "rollback"))
    assert install["outcome"] == "passed" and install["booted"] == commits["candidate"]
    by_name = {c["name"]: c for c in install["checks"]}
    for name in ("hostname", "core-user", "wheel-group", "sshd-enabled", "version", "booted-candidate"):
        assert by_name[name]["outcome"] == "passed", by_name[name]
    assert by_name["kernel"]["outcome"] == "skipped"
    assert by_name["var-writable"]["outcome"] == "skipped"
    # the upgrade came from production's commit through the stage remote, as one static delta part
    assert upgrade["outcome"] == "passed" and upgrade["booted"] == commits["candidate"]
    assert upgrade["pull"]["used_delta"] is True and upgrade["pull"]["delta_parts"] >= 1
    assert sec["full_bytes"] > 0 and 0 < sec["delta_bytes"] < sec["full_bytes"]
    assert rollback["booted"] == commits["prod"]
    rb = {c["name"]: c["outcome"] for c in rollback["checks"]}
    assert rb == {"candidate-unhealthy": "skipped", "previous-booted": "passed", "previous-healthy": "skipped"}

    root = _report(tmp_path)
    cases = _cases(root, "install")
    assert _outcome(cases["kernel"]) == "skipped"
    assert cases["kernel"].find("skipped").get("message") == "needs a running system (sysroot backend)"
    assert cases["hostname"].get("classname") == "edgeci.boot-test.gateway.x86_64.install"
    assert _outcome(_cases(root, "rollback")["previous-booted"]) == "passed"
    # the throwaway sysroots are gone
    assert not list((tmp_path / "build" / "gateway" / "x86_64" / "boot-test").glob("*/sysroot"))


def test_first_release_skips_upgrade_and_rollback_with_the_reason(tmp_path, monkeypatch, boottest_http, capsys):
    monkeypatch.chdir(tmp_path)
    bp = _project(tmp_path)
    commits = _repos(tmp_path, with_prod=False)
    url = boottest_http(tmp_path / "stage-repo")
    write_record(tmp_path / "build", "gateway", "x86_64", version="1.0.1", blueprint_path=bp,
                 commit=commits["candidate"], ref=REF, stage_url=url)

    assert main(["boot-test", "gateway", "--backend", "sysroot"]) == 0, capsys.readouterr()

    sec = BuildRecord.load(record_path(tmp_path / "build", "gateway", "x86_64")).section("boot_test")
    for name in ("upgrade", "rollback"):
        sc = sec["scenarios"][name]
        assert sc["outcome"] == "skipped"
        assert sc["reason"] == "production is empty (first release)"
        assert {c["outcome"] for c in sc["checks"]} == {"skipped"}
    assert sec["delta_bytes"] is None and sec["full_bytes"] > 0
    skipped = _cases(_report(tmp_path), "upgrade")["boot"].find("skipped")
    assert skipped is not None and skipped.get("message") == "production is empty (first release)"


def test_a_failing_file_check_fails_the_run_and_names_the_check_and_its_output(tmp_path, monkeypatch,
                                                                                 boottest_http, capsys):
    monkeypatch.chdir(tmp_path)
    bp = _project(tmp_path)
    commits = _repos(tmp_path, with_prod=False, candidate_hostname="router")
    url = boottest_http(tmp_path / "stage-repo")
    write_record(tmp_path / "build", "gateway", "x86_64", version="1.0.1", blueprint_path=bp,
                 commit=commits["candidate"], ref=REF, stage_url=url)

    assert main(["boot-test", "gateway", "--backend", "sysroot"]) == 1
    out = capsys.readouterr().out
    assert "FAILED hostname" in out and "does not contain: gateway" in out

    failure = _cases(_report(tmp_path), "install")["hostname"].find("failure")
    assert failure is not None
    assert "check 'hostname' failed" in failure.get("message", "")
    assert "/etc/hostname does not contain: gateway" in (failure.text or "")
    sec = BuildRecord.load(record_path(tmp_path / "build", "gateway", "x86_64")).section("boot_test")
    assert sec["status"] == "failed"
    assert json.dumps(sec).count("does not contain: gateway") >= 1


def test_a_stage_serving_another_commit_is_refused_with_exit_1(tmp_path, monkeypatch, boottest_http, capsys):
    monkeypatch.chdir(tmp_path)
    bp = _project(tmp_path)
    commits = _repos(tmp_path, with_prod=False)
    write_record(tmp_path / "build", "gateway", "x86_64", version="1.0.1", blueprint_path=bp,
                 commit=commits["candidate"], ref=REF, stage_url="http://127.0.0.1:9/",
                 stage_commit=commits["prod"])
    assert main(["boot-test", "gateway", "--backend", "sysroot"]) == 1
    err = capsys.readouterr().err
    assert "stage serves" in err and commits["prod"] in err


def test_an_unreachable_stage_is_an_error_case_not_a_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bp = _project(tmp_path)
    commits = _repos(tmp_path, with_prod=False)
    write_record(tmp_path / "build", "gateway", "x86_64", version="1.0.1", blueprint_path=bp,
                 commit=commits["candidate"], ref=REF, stage_url="http://127.0.0.1:9/")
    assert main(["boot-test", "gateway", "--backend", "sysroot", "--scenario", "install"]) == 1
    cases = _cases(_report(tmp_path), "install")
    assert _outcome(cases["setup"]) == "error"
    assert _outcome(cases["hostname"]) == "error"


def test_production_is_read_from_its_url_when_there_is_no_local_repo(tmp_path, boottest_http):
    from edgeci.boottest.scenarios import resolve_production

    commits = _repos(tmp_path, with_prod=True)
    url = boottest_http(tmp_path / "build" / "prod")
    prod = resolve_production(tmp_path / "nowhere", f"{url}/repo", REF)
    assert prod.commit == commits["prod"] and prod.url == f"{url}/repo"
    empty = resolve_production(tmp_path / "nowhere", f"{url}/repo", "rhel/9/x86_64/edge/other")
    assert empty.empty and empty.commit is None
    local = resolve_production(tmp_path / "build" / "prod" / "repo", "", REF)
    assert local.commit == commits["prod"] and local.url.startswith("file://")
    assert resolve_production(tmp_path / "nowhere", "", REF).empty


def test_a_candidate_that_is_already_production_skips_the_upgrade(tmp_path, monkeypatch, boottest_http, capsys):
    monkeypatch.chdir(tmp_path)
    bp = _project(tmp_path)
    commits = _repos(tmp_path, with_prod=True)
    prod = tmp_path / "build" / "prod" / "repo"
    ostree.pull_local(prod, tmp_path / "stage-repo", [REF])  # promoted: production's ref is the candidate
    assert ostree.rev_parse(prod, REF) == commits["candidate"]
    url = boottest_http(tmp_path / "stage-repo")
    write_record(tmp_path / "build", "gateway", "x86_64", version="1.0.1", blueprint_path=bp,
                 commit=commits["candidate"], ref=REF, stage_url=url)
    assert main(["boot-test", "gateway", "--backend", "sysroot"]) == 0, capsys.readouterr()
    sec = BuildRecord.load(record_path(tmp_path / "build", "gateway", "x86_64")).section("boot_test")
    assert sec["scenarios"]["upgrade"]["outcome"] == "skipped"
    assert "production's current commit" in sec["scenarios"]["upgrade"]["reason"]


def test_the_real_test_os_passes_every_check_that_needs_no_running_system(composed_gateway_copy, tmp_path,
                                                                           monkeypatch, boottest_http, capsys):
    from tests.fixtures.composed import edgeci_cli, extract_container_repo

    project = composed_gateway_copy.dir
    assert edgeci_cli(["push", "gateway"], cwd=project).returncode == 0
    repo = extract_container_repo(composed_gateway_copy.artifact, tmp_path / "stage")
    rec = BuildRecord.load(composed_gateway_copy.record)
    rec.set("stage", {"url": boottest_http(repo), "commit": composed_gateway_copy.commit, "mode": "serve",
                      "dir": str(repo), "pid": 0})
    rec.save()
    monkeypatch.chdir(project)
    assert main(["boot-test", "gateway", "--backend", "sysroot"]) == 0, capsys.readouterr().out
    checks = BuildRecord.load(composed_gateway_copy.record).section("boot_test")["scenarios"]["install"]["checks"]
    outcomes = {c["name"]: c["outcome"] for c in checks}
    assert outcomes.pop("kernel") == "skipped" and outcomes.pop("root-writable-var") == "skipped"
    assert set(outcomes.values()) == {"passed"}, outcomes
    assert {"hostname", "sshd-enabled", "version", "booted-candidate"} <= set(outcomes)


def test_a_checks_file_changed_since_compose_is_refused(tmp_path, monkeypatch, boottest_http, capsys):
    """Deleting a failing check from the working tree must not make the boot test pass: the boot test runs
    exactly the checks file compose recorded (its sha256), or refuses."""
    import hashlib

    monkeypatch.chdir(tmp_path)
    bp = _project(tmp_path)
    commits = _repos(tmp_path, with_prod=False)
    url = boottest_http(tmp_path / "stage-repo")
    rec = write_record(tmp_path / "build", "gateway", "x86_64", version="1.0.1", blueprint_path=bp,
                       commit=commits["candidate"], ref=REF, stage_url=url)
    checks = bp.with_name("gateway.checks.yaml")
    recorded = hashlib.sha256(checks.read_bytes()).hexdigest()
    rec.sections["blueprint"]["checks_sha256"] = recorded
    rec.save()
    checks.write_text(CHECKS.replace("  - name: hostname\n    file_contains: {path: /etc/hostname, text: gateway}\n",
                                     ""))
    capsys.readouterr()
    assert main(["boot-test", "gateway", "--backend", "sysroot"]) == 2
    err = capsys.readouterr().err
    assert str(checks) in err and recorded[:12] in err
    assert "boot_test" not in BuildRecord.load(record_path(tmp_path / "build", "gateway", "x86_64")).sections


def test_the_upgrade_matrix_also_upgrades_a_device_on_an_older_release(tmp_path, monkeypatch, boottest_http,
                                                                        capsys):
    """boot_test.upgrade_from 2 (the default): production's current release and the one before it both upgrade
    to the candidate; the older device has no delta from its commit and pulls objects."""
    monkeypatch.chdir(tmp_path)
    bp = _project(tmp_path, version="1.0.2")
    stage = tmp_path / "stage-repo"
    old = commit_tree(stage, REF, write_tree(tmp_path / "t0", version="0.9.0"), "0.9.0")
    prod_commit = commit_tree(stage, REF, write_tree(tmp_path / "t1", version="1.0.0"), "1.0.0", parent=old)
    cand = commit_tree(stage, REF, write_tree(tmp_path / "t2", version="1.0.2"), "1.0.2", parent=prod_commit)
    ostree.static_delta_generate(stage, cand, from_=prod_commit)
    ostree.summary_update(stage)
    prod = tmp_path / "build" / "prod" / "repo"
    ostree.init(prod, mode="archive")
    ostree.pull_local(prod, stage, [old, prod_commit])
    ostree.set_ref(prod, REF, prod_commit)
    (prod / "releases.json").write_text(json.dumps({"schema": 1, "releases": [
        {"ref": REF, "checksum": old, "version": "0.9.0"}, {"ref": REF, "checksum": prod_commit, "version": "1.0.0"}]}))
    url = boottest_http(stage)
    write_record(tmp_path / "build", "gateway", "x86_64", version="1.0.2", blueprint_path=bp, commit=cand,
                 parent=prod_commit, ref=REF, stage_url=url)

    assert main(["boot-test", "gateway", "--backend", "sysroot"]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "upgrade matrix: also from 0.9.0" in out
    sc = BuildRecord.load(record_path(tmp_path / "build", "gateway", "x86_64")).section("boot_test")["scenarios"]
    assert set(sc) == {"install", "upgrade", "rollback", "upgrade-from-0.9.0"}
    older = sc["upgrade-from-0.9.0"]
    assert older["outcome"] == "passed" and older["booted"] == cand
    assert older["pull"]["used_delta"] is False and sc["upgrade"]["pull"]["used_delta"] is True
    # 1 counts production's current release only
    assert main(["boot-test", "gateway", "--backend", "sysroot", "--set", "boot_test.upgrade_from=1"]) == 0
    sc = BuildRecord.load(record_path(tmp_path / "build", "gateway", "x86_64")).section("boot_test")["scenarios"]
    assert "upgrade-from-0.9.0" not in sc
