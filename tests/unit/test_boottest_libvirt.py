"""The libvirt backend without a KVM host: its kickstart and virt-install argv against golden files, and
its SSH check protocol against an injected command runner that answers like a RHEL for Edge VM
(rpm-ostree status --json in the shape rpm-ostree prints it, systemctl, greenboot, reboots, greenboot's
fallback after a failing required check). Set EDGECI_UPDATE_GOLDEN=1 to rewrite the golden files."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest

from edgeci.boottest.guest import INJECTED_CHECK_SCRIPT
from edgeci.boottest.libvirt_guest import (
    LibvirtGuest,
    check_reachable_url,
    greenboot_state,
    kickstart,
    parse_rpm_ostree_pull,
    parse_rpm_ostree_status,
    virt_install_argv,
)
from edgeci.boottest.scenarios import run_scenarios
from edgeci.checks import parse_checks, render_scripts
from edgeci.config import LibvirtConfig
from edgeci.errors import BootTestError
from edgeci.junit import Outcome
from edgeci.production import Production
from edgeci.record import Candidate
from edgeci.tools.run import Completed
from tests.fixtures.libvirt_host import FakeLibvirtHost

DATA = Path(__file__).resolve().parents[1] / "data" / "boottest"
REF = "rhel/9/x86_64/edge/gateway"
STAGE_URL = "http://192.168.122.1:8080/repo"
PROD_URL = "http://192.168.122.1:8090/prod"
PROD = "1" * 64
CAND = "2" * 64
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0zSxl7r3e1GQ2u1q1yZ8M2sL1yBz4pG8kQ4n6sWcXk edgeci-boot-test"


def golden(name: str, text: str) -> None:
    path = DATA / name
    if os.environ.get("EDGECI_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"missing golden file {path} (EDGECI_UPDATE_GOLDEN=1 writes it)"
    assert text == path.read_text(), f"{name} differs from the golden file"


@pytest.fixture
def cfg(tmp_path: Path) -> LibvirtConfig:
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n(test)\n-----END OPENSSH PRIVATE KEY-----\n")
    (tmp_path / "id_ed25519.pub").write_text(PUBKEY + "\n")
    return LibvirtConfig(location="http://mirror.example.com/rhel/9/BaseOS/x86_64/os/", ssh_key=str(key),
                         ssh_timeout=60)


def test_the_install_kickstart_matches_the_golden_file():
    golden("install.ks", kickstart(osname="rhel", remote="edgeci-stage", url=STAGE_URL, ref=REF, ssh_user="core",
                                   ssh_pubkey=PUBKEY, comment="edgeci boot-test edgeci-gateway-x86_64-install"))


def test_the_kickstart_pins_production_signatures_after_install_when_a_key_is_given():
    ks = kickstart(osname="rhel", remote="edgeci-prod", url=PROD_URL, ref=REF, ssh_user="core", ssh_pubkey=PUBKEY,
                   gpg_key="-----BEGIN PGP PUBLIC KEY BLOCK-----\nmDMEZ\n-----END PGP PUBLIC KEY BLOCK-----\n")
    assert f"ostreesetup --osname=rhel --remote=edgeci-prod --url={PROD_URL} --ref={REF} --nogpg" in ks
    assert "mDMEZ" in ks
    assert (f"ostree remote add --set=gpg-verify=true --set=gpgkeypath=/etc/pki/rpm-gpg/RPM-GPG-KEY-edgeci "
            f"edgeci-prod {PROD_URL}") in ks
    assert ks.index("%post") < ks.index("mDMEZ") < ks.index("%end")


def test_the_virt_install_argv_matches_the_golden_file(cfg, tmp_path):
    argv = virt_install_argv(cfg, name="edgeci-gateway-x86_64-install", ks_path=tmp_path / "ks.cfg")
    text = "\n".join(a.replace(str(tmp_path), "WORK") for a in argv) + "\n"
    golden("virt-install.argv", text)


def test_virt_install_needs_an_installer_location(tmp_path):
    with pytest.raises(BootTestError, match="location is empty"):
        virt_install_argv(LibvirtConfig(), name="x", ks_path=tmp_path / "ks.cfg")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/repo", "http://localhost/repo", "file:///srv/repo",
                                 "/srv/repo"])
def test_urls_a_vm_cannot_reach_are_refused_with_the_fix(url):
    with pytest.raises(BootTestError, match="cannot reach"):
        check_reachable_url(url, "stage")


def test_rpm_ostree_status_gives_the_booted_deployment_not_the_staged_one():
    doc = json.loads((DATA / "rpm-ostree-status.json").read_text())
    booted = parse_rpm_ostree_status(json.dumps(doc))
    assert booted["checksum"] == doc["deployments"][1]["checksum"]
    assert booted["version"] == "1.0.0" and booted["origin"] == f"edgeci-prod:{REF}"
    with pytest.raises(BootTestError, match="no booted deployment"):
        parse_rpm_ostree_status(json.dumps({"deployments": [{**doc["deployments"][0], "booted": False}]}))
    with pytest.raises(BootTestError, match="did not print JSON"):
        parse_rpm_ostree_status("error: Unit rpm-ostreed.service not found")


def test_greenboot_state_from_systemctl_show():
    assert greenboot_state("LoadState=loaded\nActiveState=active\nResult=success\n")[0] == "healthy"
    assert greenboot_state("LoadState=loaded\nActiveState=failed\nResult=exit-code\n")[0] == "unhealthy"
    assert greenboot_state("LoadState=not-found\nActiveState=inactive\nResult=success\n")[0] is None


def test_rpm_ostree_progress_gives_bytes_and_delta_use():
    s = parse_rpm_ostree_pull("Receiving delta parts: 0/1 0 bytes/s 0 bytes/5.2 MB\n"
                              "Receiving delta parts: 1/1 2.1 MB/s 5.2 MB/5.2 MB\nStaging deployment...done\n")
    assert s.used_delta and s.bytes == 5_200_000


# -- the SSH protocol against a runner that answers like a RHEL for Edge VM ---------------------------

class EdgeVM(FakeLibvirtHost):
    """Answers virt-install, virsh and ssh argv the way a libvirt host with one RHEL for Edge VM does."""

    def __init__(self, repos: dict[str, str], check_results: dict[str, tuple[int, str]] | None = None,
                 install_fails: bool = False) -> None:
        self.repos = repos  # URL -> the commit its ref serves
        self.check_results = check_results or {}
        self.install_fails = install_fails
        super().__init__()
        self.boot_id = 0
        self.deployments: list[dict] = []  # boot order: [0] is the default
        self.booted = 0
        self.remotes: dict[str, str] = {}
        self.injected: set[str] = set()  # deployment checksums with the failing greenboot check
        self.rx = 0
        self.counter_set = False

    def _virt_install(self, argv) -> Completed:
        assert "--initrd-inject" in argv and "--noautoconsole" in argv and "--wait" in argv
        self.defined = True
        if self.install_fails:
            from edgeci.errors import ToolError

            raise ToolError("'virt-install …' exited 1: ERROR    Couldn't find kernel for install tree")
        ks = Path(argv[argv.index("--initrd-inject") + 1]).read_text()
        m = re.search(r"^ostreesetup --osname=(\S+) --remote=(\S+) --url=(\S+) --ref=(\S+)", ks, re.MULTILINE)
        assert m, ks
        osname, remote, url, ref = m.groups()
        self.remotes[remote] = url
        self.deployments = [self._deployment(self.repos[url], f"{remote}:{ref}", osname)]
        self.booted, self.boot_id = 0, 1
        return self._done(argv, 0, "Domain creation completed.\n")

    def _deployment(self, checksum: str, origin: str, osname: str = "rhel") -> dict:
        version = {PROD: "1.0.0", CAND: "1.0.1"}.get(checksum, "0")
        return {"id": f"{osname}-{checksum}.0", "osname": osname, "serial": 0, "checksum": checksum,
                "version": version, "timestamp": 1764100000, "origin": origin, "booted": False, "staged": False,
                "pinned": False, "unlocked": "none", "requested-packages": [], "packages": [],
                "base-removals": [], "gpg-enabled": False}

    def _status(self) -> str:
        deps = [{**d, "booted": i == self.booted} for i, d in enumerate(self.deployments)]
        return json.dumps({"deployments": deps, "transaction": None, "cached-update": None,
                           "update-driver": None})

    def _reboot(self) -> None:
        self.boot_id += 1
        self.booted = 0
        if self.deployments[0]["checksum"] in self.injected and len(self.deployments) > 1 and self.counter_set:
            # greenboot: the required check fails on every try; when the boot counter runs out the
            # bootloader boots the other entry and greenboot's fallback makes it the default.
            self.boot_id += 2
            self.deployments = [self.deployments[1], self.deployments[0]]

    def _ssh(self, argv, cmd: str, input: str | None) -> Completed:
        booted = self.deployments[self.booted]
        if cmd == "cat /proc/sys/kernel/random/boot_id":
            return self._done(argv, 0, f"boot-{self.boot_id}\n")
        if cmd == "rpm-ostree status --json":
            return self._done(argv, 0, self._status())
        if cmd.startswith("cat /sys/class/net/*/statistics/rx_bytes"):
            self.rx += 190_000  # what the interfaces received since the last look
            return self._done(argv, 0, f"{self.rx}\n")
        if cmd == "systemctl is-system-running --wait":
            return self._done(argv, 0, "running\n")
        if cmd == "systemctl show --property=ActiveState greenboot-healthcheck.service; sudo grub2-editenv list":
            # settled: greenboot finished; its counter was cleared by the green boot
            return self._done(argv, 0, "ActiveState=active\nsaved_entry=0\nboot_success=1\n")
        if cmd == "sudo /usr/libexec/greenboot/greenboot-grub2-set-counter":
            self.counter_set = True
            return self._done(argv, 0, "")
        if cmd.startswith("d=") and "/var/lib/greenboot/boots" in cmd:
            return self._done(argv, 0, "")  # RHEL's greenboot keeps no per-boot results
        if cmd.startswith("systemctl show --property=LoadState,ActiveState,Result greenboot-healthcheck.service"):
            failed = booted["checksum"] in self.injected
            return self._done(argv, 0, f"LoadState=loaded\nActiveState={'failed' if failed else 'active'}\n"
                                       f"Result={'exit-code' if failed else 'success'}\n")
        if cmd == "sudo sh -s":
            name = re.search(r"# edgeci check '([^']+)'", input or "")
            key = name.group(1) if name else "script"
            rc, out = self.check_results.get(key, (0, f"{key} ok\n"))
            return self._done(argv, rc, out)
        words = shlex.split(cmd.replace("&&", " ; "))
        if words[:4] == ["sudo", "ostree", "remote", "delete"]:
            add = cmd.split("&&")[1].split()
            self.remotes[add[-2]] = add[-1]
            return self._done(argv, 0, "")
        if words[:3] == ["sudo", "rpm-ostree", "rebase"] or words[:3] == ["sudo", "rpm-ostree", "upgrade"]:
            origin = words[3] if words[2] == "rebase" else booted["origin"]
            remote = origin.split(":", 1)[0]
            new = self._deployment(self.repos[self.remotes[remote]], origin)
            self.deployments = [new, *[d for d in self.deployments]][:2]
            self.booted = 1
            return self._done(argv, 0, "Receiving delta parts: 1/1 2.1 MB/s 180.2 kB/180.2 kB\n"
                                       "Staging deployment... done\nRun \"systemctl reboot\" to start a reboot\n")
        if words[:3] == ["sudo", "install", "-D"]:
            assert input == INJECTED_CHECK_SCRIPT
            assert words[-1] == "/etc/greenboot/check/required.d/99-edgeci-injected-failure.sh"
            self.injected.add(booted["checksum"])
            return self._done(argv, 0, "")
        if cmd == "sudo systemctl reboot":
            self._reboot()
            return self._done(argv, 255, "", f"Connection to {self.ip} closed by remote host.\n")
        raise AssertionError(f"unexpected command {cmd!r}")


CHECKS = parse_checks("""\
checks:
  - name: hostname
    file_contains: {path: /etc/hostname, text: gateway}
  - name: booted-candidate
    booted_commit: true
  - name: kernel
    command: {run: "uname -s", exit: 0, output: Linux}
""")


def _factory(cfg: LibvirtConfig, vm: EdgeVM, tmp_path: Path, guests: list[LibvirtGuest]):
    def make(scenario: str) -> LibvirtGuest:
        g = LibvirtGuest(cfg, tmp_path / scenario, osname="rhel", vm_name=f"edgeci-gateway-x86_64-{scenario}",
                         candidate_commit=CAND, version="1.0.1", boot_timeout=30,
                         scripts=render_scripts(CHECKS, "1.0.1"), runner=vm, sleep=lambda s: None)
        guests.append(g)
        return g

    return make


CANDIDATE = Candidate(blueprint="gateway", version="1.0.1", arch="x86_64", ref=REF, checksum=CAND, stage_url=STAGE_URL)


def _run(cfg, vm, tmp_path, production: Production | None = None):
    production = production or Production(url=PROD_URL, commit=PROD)
    guests: list[LibvirtGuest] = []
    result = run_scenarios("libvirt", _factory(cfg, vm, tmp_path, guests), CANDIDATE, production, CHECKS.checks)
    return result, guests


def test_install_upgrade_and_rollback_over_ssh(cfg, tmp_path):
    vm = EdgeVM({STAGE_URL: CAND, PROD_URL: PROD})
    result, _ = _run(cfg, vm, tmp_path)
    by = {s.name: s for s in result.scenarios}
    for name in ("install", "upgrade", "rollback"):
        assert by[name].outcome is Outcome.PASSED, [(c.name, c.outcome, c.message) for c in by[name].cases]
    install = {c.name: c for c in by["install"].cases}
    assert {"boot", "hostname", "booted-candidate", "kernel", "system-running", "greenboot-healthcheck"} <= set(install)
    assert install["kernel"].output == "kernel ok\n"
    assert by["install"].booted == CAND and by["upgrade"].booted == CAND and by["rollback"].booted == PROD
    assert by["upgrade"].pull is not None and by["upgrade"].pull.used_delta and by["upgrade"].pull.bytes == 180_200
    assert by["upgrade"].pull.rx_bytes == 190_000  # read from the device's interfaces around the update
    ssh_cmds = [c[-1] for c in vm.calls if os.path.basename(c[0]) == "ssh"]
    assert f"sudo rpm-ostree rebase edgeci-stage:{REF}" in ssh_cmds
    assert ssh_cmds.count("sudo systemctl reboot") == 2  # into the candidate, then with the injected failure
    rb = {c.name: c for c in by["rollback"].cases}
    assert rb["candidate-unhealthy"].outcome is Outcome.PASSED
    assert "greenboot rolled" in rb["candidate-unhealthy"].message
    # every VM is destroyed and undefined with its storage
    for name in ("edgeci-gateway-x86_64-install", "edgeci-gateway-x86_64-upgrade"):
        assert ["virsh", "--connect", "qemu:///system", "destroy", name] in vm.calls
        assert ["virsh", "--connect", "qemu:///system", "undefine", name, "--remove-all-storage", "--nvram"] in vm.calls
    assert not vm.defined


def test_a_check_failing_over_ssh_fails_with_its_output(cfg, tmp_path):
    vm = EdgeVM({STAGE_URL: CAND}, {"hostname": (1, "/etc/hostname does not contain:\ngateway\n")})
    result, _ = _run(cfg, vm, tmp_path, Production(url="", commit=None))
    install = {c.name: c for c in result.scenarios[0].cases}
    assert install["hostname"].outcome is Outcome.FAILED
    assert install["hostname"].message == "check 'hostname' failed: /etc/hostname does not contain:"
    assert "gateway" in install["hostname"].output
    assert [s.outcome for s in result.scenarios[1:]] == [Outcome.SKIPPED, Outcome.SKIPPED]
    assert not result.ok


def test_the_stage_serving_another_commit_fails_booted_commit(cfg, tmp_path):
    vm = EdgeVM({STAGE_URL: PROD})  # ostreesetup installs the ref's tip: here not the candidate
    result, _ = _run(cfg, vm, tmp_path, Production(url="", commit=None))
    install = {c.name: c for c in result.scenarios[0].cases}
    assert install["boot"].outcome is Outcome.FAILED and install["booted-candidate"].outcome is Outcome.FAILED


def test_a_failed_install_is_an_error_and_the_vm_is_still_removed(cfg, tmp_path):
    vm = EdgeVM({STAGE_URL: CAND}, install_fails=True)
    result, guests = _run(cfg, vm, tmp_path, Production(url="", commit=None))
    install = {c.name: c for c in result.scenarios[0].cases}
    assert install["setup"].outcome is Outcome.ERROR and "Couldn't find kernel" in install["setup"].message
    assert install["hostname"].outcome is Outcome.ERROR
    assert vm.calls[-1][:4] == ["virsh", "--connect", "qemu:///system", "undefine"]
    assert not vm.defined and not (guests[0].work_dir / "ks.cfg").exists()


def test_a_loopback_stage_url_is_refused_before_anything_is_created(cfg, tmp_path):
    vm = EdgeVM({})
    guests: list[LibvirtGuest] = []
    bad = Candidate(blueprint="gateway", version="1.0.1", arch="x86_64", ref=REF, checksum=CAND,
                    stage_url="http://127.0.0.1:8080/repo")
    result = run_scenarios("libvirt", _factory(cfg, vm, tmp_path, guests), bad, Production(url="", commit=None),
                           CHECKS.checks)
    setup = result.scenarios[0].cases[0]
    assert setup.outcome is Outcome.ERROR and "loopback" in setup.message
    assert vm.calls == []


def test_the_os_release_stamp_in_rpm_ostree_status_is_not_taken_as_the_release(cfg, tmp_path):
    """Image Builder stamps every commit's version metadata with the OS release: rpm-ostree shows 9.4 for the
    candidate and for production alike. The boot results name the candidate's release version, or none."""

    class RealStamps(EdgeVM):
        def _deployment(self, checksum: str, origin: str, osname: str = "rhel") -> dict:
            return {**super()._deployment(checksum, origin, osname), "version": "9.4"}

    result, _ = _run(cfg, RealStamps({STAGE_URL: CAND, PROD_URL: PROD}), tmp_path)
    by = {s.name: s for s in result.scenarios}
    assert all(by[n].outcome is Outcome.PASSED for n in ("install", "upgrade", "rollback"))
    outputs = "\n".join(c.output for s in result.scenarios for c in s.cases if c.output)
    assert f"commit={CAND} version=1.0.1" in outputs
    assert "version=9.4" not in outputs
    assert f"commit={PROD} version=?" in outputs  # production booted after the rollback: not the candidate
