"""The qemu backend end to end with the local composer's real test OS, under TCG.

Production holds a first compose (1.0.0); the candidate (1.0.1, parent = production's commit) is pushed,
its repo served over HTTP on 127.0.0.1 with a static delta from production, and
`edgeci boot-test gateway --backend qemu` must install it, upgrade production to it through the delta and
prove that a failing required check rolls the device back to production.
"""

from __future__ import annotations

import re
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from edgeci.cli import main
from edgeci.record import BuildRecord
from edgeci.tools import ostree
from tests.fixtures.composed import ComposedProject, edgeci_cli, extract_container_repo

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
]

# The whole install + upgrade + rollback under TCG must stay well under two minutes on a 2-core machine.
BUDGET_SECONDS = 90


def _compose(project: Path, *args: str) -> dict:
    r = edgeci_cli(["compose", "gateway", *args], cwd=project)
    assert r.returncode == 0, f"compose failed:\n{r.stdout}\n{r.stderr}"
    r = edgeci_cli(["push", "gateway"], cwd=project)
    assert r.returncode == 0, f"push failed:\n{r.stdout}\n{r.stderr}"
    return BuildRecord.load(project / "build" / "gateway" / "x86_64" / "record.json").section("compose")


def _stage(project: Path, compose: dict, work: Path, serve, prod_repo: Path | None = None,
           prod_commit: str | None = None) -> str:
    """Extract the pushed candidate's repo, add the static delta from production, serve it, record it."""
    repo = extract_container_repo(project / compose["artifact"], work)
    if prod_repo is not None and prod_commit is not None:
        ostree.pull_local(repo, prod_repo, [prod_commit])
        ostree.static_delta_generate(repo, compose["commit"], from_=prod_commit)
        ostree.summary_update(repo)
    url = serve(repo)
    rec = BuildRecord.load(project / "build" / "gateway" / "x86_64" / "record.json")
    rec.set("stage", {"url": url, "commit": compose["commit"], "mode": "serve", "dir": str(work), "pid": 0})
    rec.save()
    return url


def _suites(project: Path) -> dict[str, dict[str, ET.Element]]:
    root = ET.parse(project / "reports" / "boot-test-gateway-x86_64.xml").getroot()
    return {s.get("name", "").split(".", 1)[1]: {c.get("name", ""): c for c in s.iter("testcase")}
            for s in root.iter("testsuite")}


def test_qemu_installs_upgrades_through_a_delta_and_rolls_back_under_tcg(composed_gateway_copy: ComposedProject,
                                                                         tmp_path, monkeypatch, boottest_http,
                                                                         capsys):
    project = composed_gateway_copy.dir
    prod_commit = composed_gateway_copy.commit
    # production: an archive repo holding the first compose on the ref
    prod = project / "build" / "prod" / "repo"
    ostree.init(prod, mode="archive")
    ostree.pull_local(prod, extract_container_repo(composed_gateway_copy.artifact, tmp_path / "first"),
                      [prod_commit])
    ostree.set_ref(prod, composed_gateway_copy.ref, prod_commit)
    ostree.summary_update(prod)
    # the candidate: version 1.0.1 on top of production
    toml = project / "blueprints" / "gateway.toml"
    toml.write_text(re.sub(r'(?m)^version = ".*"$', 'version = "1.0.1"', toml.read_text()))
    compose = _compose(project, "--parent", prod_commit)
    assert compose["parent"] == prod_commit
    _stage(project, compose, tmp_path / "stage", boottest_http, prod, prod_commit)

    monkeypatch.chdir(project)
    started = time.monotonic()
    code = main(["boot-test", "gateway", "--backend", "qemu", "--set", "boot_test.kvm=off"])
    took = time.monotonic() - started
    out = capsys.readouterr().out
    print(f"\nqemu boot-test (install + upgrade + rollback, TCG): {took:.1f}s")
    assert code == 0, out

    sec = BuildRecord.load(project / "build" / "gateway" / "x86_64" / "record.json").section("boot_test")
    assert sec["backend"] == "qemu" and sec["status"] == "passed"
    cand = compose["commit"]
    sc = sec["scenarios"]
    assert sc["install"]["outcome"] == "passed" and sc["install"]["booted"] == cand
    assert sc["upgrade"]["outcome"] == "passed" and sc["upgrade"]["booted"] == cand
    assert sc["rollback"]["outcome"] == "passed" and sc["rollback"]["booted"] == prod_commit
    # the upgrade used the static delta; a fresh install fetched the whole tree
    assert sc["upgrade"]["pull"]["used_delta"] is True
    assert 0 < sec["delta_bytes"] < sec["full_bytes"]

    suites = _suites(project)
    assert set(suites) == {"install", "upgrade", "rollback"}
    for name in ("install", "upgrade"):
        cases = suites[name]
        # every check ran in the guest (command and script checks too) and passed
        for check in ("hostname", "core-user", "sshd-enabled", "version", "booted-candidate", "kernel",
                      "root-writable-var"):
            assert check in cases, (name, sorted(cases))
            assert list(cases[check]) == [] or cases[check].find("system-out") is not None, check
            assert cases[check].find("failure") is None and cases[check].find("error") is None, check
    kernel_out = suites["install"]["kernel"].find("system-out")
    assert kernel_out is not None and "Linux" in (kernel_out.text or "")
    rb = suites["rollback"]
    for case in ("candidate-unhealthy", "previous-booted", "previous-healthy"):
        assert rb[case].find("failure") is None and rb[case].find("error") is None, case
    assert took < BUDGET_SECONDS, f"install + upgrade + rollback took {took:.1f}s (budget {BUDGET_SECONDS}s)"
    # the VMs are gone and their disk images removed
    assert not list((project / "build" / "gateway" / "x86_64" / "boot-test").rglob("disk.img"))


def test_a_failing_check_in_the_guest_exits_1_and_names_the_check_and_its_output(
        composed_gateway_copy: ComposedProject, tmp_path, monkeypatch, boottest_http, capsys):
    project = composed_gateway_copy.dir
    checks = project / "blueprints" / "gateway.checks.yaml"
    checks.write_text(checks.read_text().replace(
        "scripts:",
        "  - name: app-config\n    command: {run: \"cat /etc/app/config.toml\", exit: 0}\nscripts:", 1))
    compose = _compose(project)
    _stage(project, compose, tmp_path / "stage", boottest_http)

    monkeypatch.chdir(project)
    code = main(["boot-test", "gateway", "--backend", "qemu", "--set", "boot_test.kvm=off",
                 "--scenario", "install"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "FAILED app-config" in out

    failure = _suites(project)["install"]["app-config"].find("failure")
    assert failure is not None
    assert "check 'app-config' failed" in failure.get("message", "")
    assert "/etc/app/config.toml" in (failure.text or "")  # cat's own error, from the guest
    sec = BuildRecord.load(project / "build" / "gateway" / "x86_64" / "record.json").section("boot_test")
    assert sec["status"] == "failed"
    app = next(c for c in sec["scenarios"]["install"]["checks"] if c["name"] == "app-config")
    assert app["outcome"] == "failed" and "/etc/app/config.toml" in app["output"]
    # the other checks still ran and passed: one failure does not hide the rest
    ok = [c["name"] for c in sec["scenarios"]["install"]["checks"] if c["outcome"] == "passed"]
    assert {"hostname", "kernel", "booted-candidate"} <= set(ok)


# -- the VM is always killed and its files removed ------------------------------------------------------

@pytest.fixture
def qemu_guest_on_gateway(composed_gateway: ComposedProject, tmp_path, monkeypatch):
    """A QemuGuest with the composed gateway deployed, and the list of VM processes it starts."""
    from edgeci.boottest import qemu_guest as bq
    from edgeci.tools import qemu as qemu_tool

    started: list = []
    real_start = qemu_tool.start_vm

    def recording_start(spec, *, log_path):
        proc = real_start(spec, log_path=log_path)
        started.append(proc)
        return proc

    monkeypatch.setattr(qemu_tool, "start_vm", recording_start)
    repo = extract_container_repo(composed_gateway.artifact, tmp_path / "repo")
    guest = bq.QemuGuest(tmp_path / "guest", "rhel", kvm="off", timeout=3)
    guest.start()
    guest.deploy("edgeci-stage", repo.resolve().as_uri(), composed_gateway.ref, composed_gateway.commit)
    try:
        yield guest, started
    finally:
        guest.stop()
        for proc in started:
            proc.stop(grace=1)


def test_a_boot_past_its_deadline_is_killed_and_reported(qemu_guest_on_gateway):
    guest, started = qemu_guest_on_gateway
    result = guest.boot()
    assert result.status is None and "did not finish booting within 3 s" in result.error
    assert len(started) == 1 and not started[0].alive()
    assert not (guest.work_dir / "disk.img").exists() and not (guest.work_dir / "serial.log").exists()


def test_ctrl_c_during_a_boot_kills_the_vm_and_removes_its_files(qemu_guest_on_gateway, monkeypatch):
    guest, started = qemu_guest_on_gateway

    def interrupted(proc, serial):
        time.sleep(0.5)
        assert proc.alive()
        raise KeyboardInterrupt

    monkeypatch.setattr(guest, "_watch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        guest.boot()
    assert len(started) == 1 and not started[0].alive()
    assert not (guest.work_dir / "disk.img").exists()
    guest.stop()
    assert not guest.work_dir.exists()


def test_cancelling_a_parallel_run_stops_the_other_devices_vm(qemu_guest_on_gateway):
    import threading

    guest, started = qemu_guest_on_gateway
    guest.timeout = 60
    guest.cancel = threading.Event()
    timer = threading.Timer(1.0, guest.cancel.set)  # what run_scenarios does when the other device fails
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            guest.boot()
    finally:
        timer.cancel()
    assert len(started) == 1 and not started[0].alive()
    assert not (guest.work_dir / "disk.img").exists()


def test_a_deployment_that_cannot_boot_fails_the_boot_with_the_initramfs_reason(qemu_guest_on_gateway):
    from edgeci.boottest.guest import read_bls_entries
    from edgeci.boottest.scenarios import boot_case

    guest, started = qemu_guest_on_gateway
    guest.timeout = 60
    entry = read_bls_entries(guest.sysroot / "boot")[0]
    text = entry.path.read_text()
    entry.path.write_text(text.replace(entry.ostree_target, "/ostree/boot.9/nowhere/0"))
    result = guest.boot()
    assert result.commit is None and result.status is None
    assert "exited before EDGECI-DONE" in result.error and "edgeci-initramfs: error:" in result.error
    case = boot_case(result, "0" * 64)
    assert case.outcome.value == "failed" and "did not boot" in case.message
    assert "edgeci-initramfs: error:" in case.output
    assert not started[0].alive()
