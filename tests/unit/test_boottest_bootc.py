"""The libvirt backend for image mode (RHEL 10, bootc) without a KVM host: the Bootc tooling's parsers against
bootc's documented JSON (a golden `bootc status --format=json`), the image kickstart against a golden file, and the
SSH sequence against an injected command runner that answers like a RHEL 10 image-mode VM with real bootc
(Anaconda's ostreecontainer, bootc status/switch/upgrade, reboots that apply the staged deployment, greenboot's
fallback after a failing required check). Nothing here runs a real bootc binary. Set EDGECI_UPDATE_GOLDEN=1 to
rewrite the golden files."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from edgeci.boottest.guest import INJECTED_CHECK_SCRIPT
from edgeci.boottest.libvirt_guest import LibvirtGuest, check_reachable_url, kickstart
from edgeci.boottest.scenarios import run_scenarios
from edgeci.boottest.ssh_device import (
    Bootc,
    image_reference,
    parse_bootc_pull,
    parse_bootc_status,
)
from edgeci.checks import render_scripts
from edgeci.config import Config, LibvirtConfig
from edgeci.errors import BootTestError, ConfigError, ToolError
from edgeci.junit import Outcome
from edgeci.production import Production
from edgeci.record import Candidate
from edgeci.tools.run import Completed
from tests.fixtures.libvirt_host import FakeLibvirtHost
from tests.unit.test_boottest_libvirt import CHECKS  # the same three checks, over SSH

DATA = Path(__file__).resolve().parents[1] / "data" / "boottest"
GOLDEN_STATUS = json.loads((DATA / "bootc-status.json").read_text())
REGISTRY = "registry.example.com:5000"
STAGE_REPO = f"{REGISTRY}/fleet/gateway-bootc"
PROD_REPO = f"{REGISTRY}/prod/gateway-bootc"
STAGE_URL = f"docker://{STAGE_REPO}"
PROD_URL = f"docker://{PROD_REPO}"
REF = f"{PROD_REPO}:stable"  # what image-mode devices follow: the candidate's "ref"
# the golden file's digests: the staged candidate 1.0.1, the booted production 1.0.0, the rollback 0.9.0
CAND = GOLDEN_STATUS["status"]["staged"]["image"]["imageDigest"].removeprefix("sha256:")
PROD = GOLDEN_STATUS["status"]["booted"]["image"]["imageDigest"].removeprefix("sha256:")
OLD = GOLDEN_STATUS["status"]["rollback"]["image"]["imageDigest"].removeprefix("sha256:")
VERSIONS = {CAND: "1.0.1", PROD: "1.0.0", OLD: "0.9.0"}
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0zSxl7r3e1GQ2u1q1yZ8M2sL1yBz4pG8kQ4n6sWcXk edgeci-boot-test"
SWITCH_OUTPUT = ("layers already present: 65; layers needed: 3 (46.1 MB)\n"
                 "Fetched layers: 43.97 MiB in 6 seconds (7.03 MiB/s)\n"
                 "  Deploying: done (3 seconds)\n")


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
    return LibvirtConfig(location="http://mirror.example.com/rhel/10/BaseOS/x86_64/os/", ssh_key=str(key),
                         ssh_timeout=60)


# -- bootc status --format=json ----------------------------------------------------------------------------

def _status(**changes: Any) -> str:
    doc = json.loads(json.dumps(GOLDEN_STATUS))
    doc["status"].update(changes.pop("status", {}))
    doc.update(changes)
    return json.dumps(doc)


def test_bootc_status_gives_the_booted_image_digest_and_the_staged_one_as_next():
    s = parse_bootc_status((DATA / "bootc-status.json").read_text())
    assert s == {"checksum": PROD, "version": "1.0.0", "origin": f"{PROD_REPO}@sha256:{PROD}", "count": 3,
                 "default": CAND}


def test_the_default_is_the_booted_image_without_a_staged_one_and_the_rollback_when_queued():
    assert parse_bootc_status(_status(status={"staged": None}))["default"] == PROD
    assert parse_bootc_status(_status(status={"staged": None}))["count"] == 2
    assert parse_bootc_status(_status(status={"staged": None, "rollback": None}))["count"] == 1
    # bootc rollback queues the rollback entry for the next boot: it wins over a staged one
    assert parse_bootc_status(_status(status={"rollbackQueued": True}))["default"] == OLD
    spec = {**GOLDEN_STATUS["spec"], "bootOrder": "rollback"}
    assert parse_bootc_status(_status(spec=spec))["default"] == OLD
    # queued, but nothing to roll back to: the staged image is next
    assert parse_bootc_status(_status(status={"rollbackQueued": True, "rollback": None}))["default"] == CAND


def test_bootc_status_errors_are_one_line():
    with pytest.raises(BootTestError, match=r"did not print JSON .*: error: Status: Opening sysroot") as e:
        parse_bootc_status("error: Status: Opening sysroot: No such file or directory (os error 2)\n")
    assert "\n" not in str(e.value.message)
    with pytest.raises(BootTestError, match="no booted deployment"):
        parse_bootc_status(_status(status={"booted": None}))
    with pytest.raises(BootTestError, match="no status object"):
        parse_bootc_status(json.dumps({"apiVersion": "org.containers.bootc/v1", "kind": "BootcHost"}))


def test_a_host_booted_from_an_ostree_commit_is_not_an_image_mode_host():
    """bootc on a RHEL for Edge (ostree) host shows the booted deployment with image null (bootc's own fixture
    spec-rfe-ostree-deployment.yaml has that shape); a missing imageDigest is refused the same way."""
    booted = {**GOLDEN_STATUS["status"]["booted"], "image": None, "store": None}
    with pytest.raises(BootTestError, match="booted from an ostree commit, not an image") as e:
        parse_bootc_status(_status(spec={"image": None, "bootOrder": "default"}, status={"booted": booted}))
    assert "d4a7c1b46c10" in e.value.message  # the ostree checksum it booted
    image = {k: v for k, v in GOLDEN_STATUS["status"]["booted"]["image"].items() if k != "imageDigest"}
    with pytest.raises(BootTestError, match="not an image"):
        parse_bootc_status(_status(status={"booted": {**GOLDEN_STATUS["status"]["booted"], "image": image}}))
    with pytest.raises(BootTestError, match="not sha256:<64 hex>"):
        parse_bootc_status(_status(status={"booted": {**GOLDEN_STATUS["status"]["booted"],
                                                      "image": {**image, "imageDigest": "sha256:abc"}}}))


def test_bootc_progress_gives_the_bytes_fetched_and_the_layers_needed():
    s = parse_bootc_pull("layers already present: 65; layers needed: 3 (46.1 MB)\n"
                         "Fetched layers: 43.97 MiB in 6 seconds (7.03 MiB/s)\n")
    assert s.bytes == round(43.97 * 1024**2) and s.content_objects == 3 and not s.used_delta
    assert "Fetched layers" in s.text
    s = parse_bootc_pull("layers already present: 65; layers needed: 3 (46.1 MB)\n")
    assert s.bytes == 46_100_000 and s.content_objects == 3
    assert parse_bootc_pull("No changes in: docker://x/y@sha256:…\n").bytes is None


def test_the_bootc_update_commands_pin_the_digest_or_follow_the_tracked_repository():
    b = Bootc()
    assert b.status_command == "sudo bootc status --format=json"
    assert b.set_counter_command == "sudo /usr/libexec/greenboot/greenboot-grub2-set-counter"
    assert b.update_commands("edgeci-stage", STAGE_URL, REF, CAND, same_remote=False, booted=PROD) == [
        f"sudo bootc switch --transport registry {STAGE_REPO}@sha256:{CAND}"]
    assert b.update_commands("edgeci-stage", STAGE_URL, REF, None, same_remote=False, booted=PROD) == [
        f"sudo bootc switch --transport registry {STAGE_REPO}"]
    assert b.update_commands("edgeci-prod", PROD_URL, REF, PROD, same_remote=True, booted=OLD) == [
        "sudo bootc upgrade --check", "sudo bootc upgrade"]
    with pytest.raises(BootTestError, match="not an image repository"):
        b.update_commands("edgeci-stage", "http://192.168.122.1:8080/repo", REF, CAND, same_remote=False,
                          booted=PROD)
    with pytest.raises(BootTestError, match="not an image digest"):
        image_reference(STAGE_URL, "stage")


# -- the kickstart --------------------------------------------------------------------------------------------

def test_the_image_install_kickstart_matches_the_golden_file():
    ks = kickstart(osname="rhel", remote="edgeci-stage", url=STAGE_URL, ref=REF, ssh_user="core", ssh_pubkey=PUBKEY,
                   comment="edgeci boot-test edgeci-gateway-bootc-x86_64-install", container=True, digest=CAND)
    assert (f"\nostreecontainer --url={STAGE_REPO}@sha256:{CAND} --transport=registry "
            "--no-signature-verification\n") in ks
    assert "ostreesetup" not in ks
    golden("install-bootc.ks", ks)


def test_an_image_kickstart_refuses_an_ostree_gpg_key():
    with pytest.raises(BootTestError, match="ostree remote"):
        kickstart(osname="rhel", remote="edgeci-stage", url=STAGE_URL, ref=REF, ssh_user="core", ssh_pubkey=PUBKEY,
                  gpg_key="-----BEGIN PGP PUBLIC KEY BLOCK-----\n", container=True, digest=CAND)


@pytest.mark.parametrize("url", ["docker://127.0.0.1:5000/fleet/gateway-bootc", "docker://localhost:5000/fleet/gw",
                                 "docker://[::1]:5000/fleet/gw", "docker://127.0.1.1/fleet/gw"])
def test_loopback_registries_are_refused_with_the_fix(url):
    with pytest.raises(BootTestError, match="loopback") as e:
        check_reachable_url(url, "stage")
    assert "registry.image" in (e.value.fix or "")


def test_a_registry_on_the_bridge_is_reachable():
    check_reachable_url("docker://192.168.122.1:5000/fleet/gateway-bootc", "stage")
    check_reachable_url(STAGE_URL, "stage")


# -- the SSH sequence against a runner that answers like a RHEL 10 image-mode VM -------------------------------

def _ostree_checksum(digest: str) -> str:
    return hashlib.sha256(f"ostree commit of {digest}".encode()).hexdigest()


class BootcVM(FakeLibvirtHost):
    """Answers virt-install, virsh and ssh argv the way a libvirt host with one RHEL 10 image-mode VM (real bootc,
    greenboot) does. `images`: repository -> the digests its registry holds; `tags`: REPO:TAG -> digest;
    `serves`: repository -> the digest the VM actually ends up with for any reference of it (a broken mirror)."""

    ip = "192.168.122.46"

    def __init__(self, images: dict[str, set[str]], tags: dict[str, str] | None = None,
                 check_results: dict[str, tuple[int, str]] | None = None,
                 serves: dict[str, str] | None = None) -> None:
        self.images = images
        self.tags = tags or {}
        self.serves = serves or {}
        self.check_results = check_results or {}
        super().__init__()
        self.kickstarts: list[str] = []
        self.boot_id = 0
        self.staged: dict | None = None
        self.booted: dict | None = None
        self.rollback: dict | None = None
        self.rollback_queued = False
        self.injected: set[str] = set()  # digests whose /etc has the failing greenboot check
        self.counter_set = False
        self.rx = 0

    # -- the registry --------------------------------------------------------------------------------------
    def resolve(self, ref: str) -> str:
        """The digest a pull of `ref` (HOST/REPO@sha256:D, HOST/REPO:TAG or HOST/REPO) gets, or ValueError."""
        repo, _, digest = ref.partition("@sha256:")
        if not digest:
            last = ref.rsplit("/", 1)[-1]
            repo, tag = (ref.rsplit(":", 1) if ":" in last else (ref, "latest"))
            digest = self.tags.get(f"{repo}:{tag}", "")
            if not digest:
                raise ValueError(f"reading manifest {tag} in {repo}: manifest unknown")
        if repo in self.serves:
            return self.serves[repo]
        if digest not in self.images.get(repo, set()):
            raise ValueError(f"reading manifest sha256:{digest} in {repo}: manifest unknown")
        return digest

    def _entry(self, ref: str, digest: str) -> dict:
        return {"ref": ref, "digest": digest, "checksum": _ostree_checksum(digest)}

    # -- bootc status --format=json, built from the state ------------------------------------------------
    @staticmethod
    def _entry_doc(e: dict | None) -> dict | None:
        if e is None:
            return None
        return {"image": {"image": {"image": e["ref"], "transport": "registry"},
                          "version": VERSIONS.get(e["digest"], "0.0.1"), "timestamp": "2025-11-25T19:22:15Z",
                          "imageDigest": f"sha256:{e['digest']}", "architecture": "amd64"},
                "cachedUpdate": None, "incompatible": False, "pinned": False, "store": "ostreeContainer",
                "ostree": {"checksum": e["checksum"], "deploySerial": 0, "stateroot": "default"}}

    def status_doc(self) -> dict:
        spec = self.staged or self.booted
        return {"apiVersion": "org.containers.bootc/v1", "kind": "BootcHost", "metadata": {"name": "host"},
                "spec": {"image": {"image": spec["ref"], "transport": "registry"} if spec else None,
                         "bootOrder": "rollback" if self.rollback_queued else "default"},
                "status": {"staged": self._entry_doc(self.staged), "booted": self._entry_doc(self.booted),
                           "rollback": self._entry_doc(self.rollback), "rollbackQueued": self.rollback_queued,
                           "type": "bootcHost"}}

    # -- the VM (FakeLibvirtHost dispatches the runner's argv) -------------------------------------------
    def _virt_install(self, argv) -> Completed:
        assert "--initrd-inject" in argv and "--noautoconsole" in argv and "--wait" in argv
        self.defined = True
        ks = Path(argv[argv.index("--initrd-inject") + 1]).read_text()
        self.kickstarts.append(ks)
        assert "ostreesetup" not in ks, ks
        m = re.search(r"^ostreecontainer --url=(\S+) --transport=registry --no-signature-verification$", ks,
                      re.MULTILINE)
        assert m, ks
        try:
            digest = self.resolve(m.group(1))
        except ValueError as e:  # Anaconda stops; virt-install reports the failed install
            raise ToolError(f"'virt-install …' exited 1: the installation was stopped: ostreecontainer: {e}") from None
        self.booted, self.staged, self.rollback = self._entry(m.group(1), digest), None, None
        self.boot_id = 1
        return self._done(argv, 0, "Domain creation completed.\n")

    def _stage(self, argv, ref: str) -> Completed:
        try:
            digest = self.resolve(ref)
        except ValueError as e:
            return self._done(argv, 1, "", f"error: Switching: Pulling: Creating importer: failed to invoke "
                                           f"method OpenImage: {e}\n")
        self.staged = self._entry(ref, digest)
        return self._done(argv, 0, SWITCH_OUTPUT + f"Queued for next boot: {ref}\n  Version: "
                                                   f"{VERSIONS.get(digest, '0.0.1')}\n  Digest: sha256:{digest}\n")

    def _reboot(self) -> None:
        self.boot_id += 1
        if self.staged is not None:
            self.rollback, self.booted, self.staged = self.booted, self.staged, None
        elif self.rollback_queued and self.rollback is not None:
            self.booted, self.rollback, self.rollback_queued = self.rollback, self.booted, False
        assert self.booted is not None
        if self.booted["digest"] in self.injected and self.rollback is not None and self.counter_set:
            # greenboot: the required check fails on every try; when the boot counter runs out the bootloader
            # boots the rollback entry and greenboot's fallback makes it the default (bootc rollback)
            self.boot_id += 2
            self.booted, self.rollback = self.rollback, self.booted
            self.counter_set = False

    def _ssh(self, argv, cmd: str, input: str | None) -> Completed:
        assert self.booted is not None
        booted = self.booted
        if cmd == "cat /proc/sys/kernel/random/boot_id":
            return self._done(argv, 0, f"boot-{self.boot_id}\n")
        if cmd == "sudo bootc status --format=json":
            return self._done(argv, 0, json.dumps(self.status_doc(), indent=2))
        if cmd.startswith("cat /sys/class/net/*/statistics/rx_bytes"):
            self.rx += 46_500_000  # what the interfaces received since the last look
            return self._done(argv, 0, f"{self.rx}\n")
        if cmd == "systemctl is-system-running --wait":
            return self._done(argv, 0, "running\n")
        if cmd == "systemctl show --property=ActiveState greenboot-healthcheck.service; sudo grub2-editenv list":
            return self._done(argv, 0, "ActiveState=active\nsaved_entry=0\nboot_success=1\n")
        if cmd == "sudo /usr/libexec/greenboot/greenboot-grub2-set-counter":
            self.counter_set = True
            return self._done(argv, 0, "")
        if cmd.startswith("d=") and "/var/lib/greenboot/boots" in cmd:
            return self._done(argv, 0, "")  # RHEL's greenboot keeps no per-boot results
        if cmd.startswith("systemctl show --property=LoadState,ActiveState,Result greenboot-healthcheck.service"):
            failed = booted["digest"] in self.injected
            return self._done(argv, 0, f"LoadState=loaded\nActiveState={'failed' if failed else 'active'}\n"
                                       f"Result={'exit-code' if failed else 'success'}\n")
        if cmd == "sudo sh -s":
            name = re.search(r"# edgeci check '([^']+)'", input or "")
            key = name.group(1) if name else "script"
            rc, out = self.check_results.get(key, (0, f"{key} ok\n"))
            return self._done(argv, rc, out)
        words = shlex.split(cmd)
        if words[:5] == ["sudo", "bootc", "switch", "--transport", "registry"] and len(words) == 6:
            return self._stage(argv, words[5])
        tracked = (self.staged or booted)["ref"]
        if words == ["sudo", "bootc", "upgrade", "--check"]:
            try:
                digest = self.resolve(tracked)
            except ValueError as e:
                return self._done(argv, 1, "", f"error: Upgrading: {e}\n")
            if digest in (booted["digest"], (self.staged or {}).get("digest")):
                return self._done(argv, 0, f"No changes in: docker://{tracked}\n")
            return self._done(argv, 0, f"Update available for: docker://{tracked}\n  Version: "
                                       f"{VERSIONS.get(digest, '0.0.1')}\n  Digest: sha256:{digest}\n")
        if words == ["sudo", "bootc", "upgrade"]:
            if self.resolve(tracked) == booted["digest"]:
                return self._done(argv, 0, "No update available.\n")
            return self._stage(argv, tracked)
        if words[:3] == ["sudo", "install", "-D"]:
            assert input == INJECTED_CHECK_SCRIPT
            assert words[-1] == "/etc/greenboot/check/required.d/99-edgeci-injected-failure.sh"
            self.injected.add(booted["digest"])
            return self._done(argv, 0, "")
        if cmd == "sudo systemctl reboot":
            self._reboot()
            return self._done(argv, 255, "", f"Connection to {self.ip} closed by remote host.\n")
        raise AssertionError(f"unexpected command {cmd!r}")


CANDIDATE = Candidate(blueprint="gateway-bootc", version="1.0.1", arch="x86_64", ref=REF, checksum=CAND,
                      stage_url=STAGE_URL)
PRODUCTION = Production(ref=REF, url=PROD_URL, commit=PROD, version="1.0.0")


class FakeTime:
    """The guests' clock: sleeping advances it, so a wait that never ends times out at once (and idle)."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def clock(self) -> float:
        return self.now


def _factory(cfg: LibvirtConfig, vm: BootcVM, tmp_path: Path, guests: list[LibvirtGuest]):
    def make(scenario: str) -> LibvirtGuest:
        t = FakeTime()
        g = LibvirtGuest(cfg, tmp_path / scenario, osname="rhel", vm_name=f"edgeci-gateway-bootc-x86_64-{scenario}",
                         candidate_commit=CAND, version="1.0.1", boot_timeout=30,
                         scripts=render_scripts(CHECKS, "1.0.1"), runner=vm, sleep=t.sleep, clock=t.clock,
                         tooling=Bootc())
        guests.append(g)
        return g

    return make


def _run(cfg, vm, tmp_path, candidate: Candidate = CANDIDATE, production: Production = PRODUCTION):
    guests: list[LibvirtGuest] = []
    result = run_scenarios("libvirt", _factory(cfg, vm, tmp_path, guests), candidate, production, CHECKS.checks)
    return result, guests


def _ssh_commands(vm: BootcVM) -> list[str]:
    return [c[-1] for c in vm.calls if os.path.basename(c[0]) == "ssh"]


def test_the_vm_answers_bootc_status_in_the_golden_files_shape():
    """The fake's status is bootc's shape (the golden file's keys, all the way down), so the sequence below is
    tested against what bootc prints."""

    def keys(o: Any) -> Any:
        return {k: keys(v) for k, v in o.items()} if isinstance(o, dict) else None

    vm = BootcVM({STAGE_REPO: {CAND}, PROD_REPO: {PROD, OLD}})
    vm.booted = vm._entry(f"{PROD_REPO}@sha256:{PROD}", PROD)
    vm.staged = vm._entry(f"{STAGE_REPO}@sha256:{CAND}", CAND)
    vm.rollback = vm._entry(f"{PROD_REPO}@sha256:{OLD}", OLD)
    doc = vm.status_doc()
    assert keys(doc) == keys(GOLDEN_STATUS)
    assert parse_bootc_status(json.dumps(doc)) == parse_bootc_status(json.dumps(GOLDEN_STATUS))


def test_install_upgrade_and_rollback_with_bootc_over_ssh(cfg, tmp_path):
    vm = BootcVM({STAGE_REPO: {CAND}, PROD_REPO: {PROD}},
                 tags={f"{STAGE_REPO}:stage": CAND, f"{PROD_REPO}:stable": PROD})
    result, _ = _run(cfg, vm, tmp_path)
    by = {s.name: s for s in result.scenarios}
    for name in ("install", "upgrade", "rollback"):
        assert by[name].outcome is Outcome.PASSED, [(c.name, c.outcome, c.message) for c in by[name].cases]
    assert by["install"].booted == CAND and by["upgrade"].booted == CAND and by["rollback"].booted == PROD
    install = {c.name: c for c in by["install"].cases}
    assert {"boot", "hostname", "booted-candidate", "kernel", "system-running", "greenboot-healthcheck"} <= set(install)
    assert f"commit={CAND} version=1.0.1" in install["boot"].output
    # the installs are pinned by digest: the candidate from the stage, production from production
    assert [re.search(r"^ostreecontainer .*$", ks, re.MULTILINE).group(0) for ks in vm.kickstarts] == [
        f"ostreecontainer --url={STAGE_REPO}@sha256:{CAND} --transport=registry --no-signature-verification",
        f"ostreecontainer --url={PROD_REPO}@sha256:{PROD} --transport=registry --no-signature-verification"]
    # the upgrade switches to the tested digest, never a tag
    cmds = _ssh_commands(vm)
    bootc = [c for c in cmds if c.startswith("sudo bootc ") and c != "sudo bootc status --format=json"]
    assert bootc == [f"sudo bootc switch --transport registry {STAGE_REPO}@sha256:{CAND}"]
    assert not any(":stage" in c or ":stable" in c for c in cmds)
    assert cmds.count("sudo systemctl reboot") == 2  # into the candidate, then with the injected failure
    up = by["upgrade"].pull
    assert up is not None and up.bytes == round(43.97 * 1024**2) and up.content_objects == 3
    assert up.rx_bytes == 46_500_000
    rb = {c.name: c for c in by["rollback"].cases}
    assert rb["candidate-unhealthy"].outcome is Outcome.PASSED
    assert "greenboot rolled" in rb["candidate-unhealthy"].message
    assert f"from {CAND[:12]} to {PROD[:12]}" in rb["candidate-unhealthy"].message
    assert "the fallback is the default deployment: yes" in rb["candidate-unhealthy"].message
    assert rb["previous-booted"].outcome is Outcome.PASSED
    # after greenboot's fallback: production booted, the candidate is the rollback entry
    assert vm.booted["digest"] == PROD and vm.rollback["digest"] == CAND
    for name in ("edgeci-gateway-bootc-x86_64-install", "edgeci-gateway-bootc-x86_64-upgrade"):
        assert ["virsh", "--connect", "qemu:///system", "destroy", name] in vm.calls
        assert ["virsh", "--connect", "qemu:///system", "undefine", name, "--remove-all-storage", "--nvram"] in vm.calls
    assert not vm.defined


def test_a_device_tracking_the_repository_upgrades_with_bootc_upgrade(cfg, tmp_path):
    """same remote (the device already follows the repository's tag): upgrade --check, then upgrade; the staged
    image is what the tag points at now."""
    vm = BootcVM({PROD_REPO: {PROD, OLD}}, tags={f"{PROD_REPO}:stable": OLD})
    g = _factory(cfg, vm, tmp_path, [])("upgrade")
    with g:
        g.install("edgeci-prod", f"{PROD_URL}:stable", REF, None)  # a device following the tag
        g.wait_settled()
        assert g.device.status()["checksum"] == OLD
        vm.tags[f"{PROD_REPO}:stable"] = PROD  # a release moves the tag
        dep = g.device.update("edgeci-prod", PROD_URL, REF, PROD, same_remote=True)
        assert g.device.status()["default"] == PROD and dep.pull.content_objects == 3
    assert [c for c in _ssh_commands(vm) if c.startswith("sudo bootc ") and "status" not in c] == [
        "sudo bootc upgrade --check", "sudo bootc upgrade"]
    assert f"ostreecontainer --url={PROD_REPO}:stable " in vm.kickstarts[0]


def test_a_stage_that_lacks_the_candidate_digest_fails_the_install(cfg, tmp_path):
    vm = BootcVM({STAGE_REPO: {PROD}}, tags={f"{STAGE_REPO}:stage": PROD})  # the stage serves another image
    result, guests = _run(cfg, vm, tmp_path, production=Production(url="", commit=None))
    install = {c.name: c for c in result.scenarios[0].cases}
    assert install["setup"].outcome is Outcome.ERROR and "manifest unknown" in install["setup"].message
    assert install["booted-candidate"].outcome is Outcome.ERROR
    assert not result.ok and not vm.defined and not (guests[0].work_dir / "ks.cfg").exists()


def test_a_device_that_booted_another_digest_fails_booted_candidate(cfg, tmp_path):
    """Whatever the device did with the pinned reference (here a mirror that serves another image for the stage
    repository), the verdict is the digest bootc status reports booted, never the command edgeci issued."""
    vm = BootcVM({STAGE_REPO: {CAND}, PROD_REPO: {PROD}}, serves={STAGE_REPO: PROD})
    result, _ = _run(cfg, vm, tmp_path)
    by = {s.name: s for s in result.scenarios}
    for name in ("install", "upgrade"):
        cases = {c.name: c for c in by[name].cases}
        assert cases["boot"].outcome is Outcome.FAILED, (name, cases["boot"].message)
        assert cases["booted-candidate"].outcome is Outcome.FAILED
        assert f"booted {PROD}, not the candidate {CAND}" in cases["booted-candidate"].message
    # the rollback has nothing to leave: the device never ran the candidate
    assert by["rollback"].outcome is Outcome.ERROR and "never left" in by["rollback"].cases[0].message
    assert not result.ok


def test_a_failed_switch_is_an_error_naming_the_pinned_image(cfg, tmp_path):
    vm = BootcVM({STAGE_REPO: set(), PROD_REPO: {PROD}})
    g = _factory(cfg, vm, tmp_path, [])("upgrade")
    with g:
        g.deploy("edgeci-prod", PROD_URL, REF, PROD)
        with pytest.raises(BootTestError, match="manifest unknown") as e:
            g.deploy("edgeci-stage", STAGE_URL, REF, CAND)
    assert f"{STAGE_REPO}@sha256:{CAND}" in (e.value.fix or "")


def test_a_loopback_registry_is_refused_before_anything_is_created(cfg, tmp_path):
    vm = BootcVM({})
    bad = Candidate(blueprint="gateway-bootc", version="1.0.1", arch="x86_64", ref=REF, checksum=CAND,
                    stage_url="docker://127.0.0.1:5000/fleet/gateway-bootc")
    result, _ = _run(cfg, vm, tmp_path, candidate=bad, production=Production(url="", commit=None))
    setup = result.scenarios[0].cases[0]
    assert setup.outcome is Outcome.ERROR and "loopback" in setup.message
    assert vm.calls == []


# -- the stage glue (imagemode/stages.py) ----------------------------------------------------------------------

def test_image_mode_boot_backends():
    from edgeci.imagemode.device import STANDIN
    from edgeci.imagemode.stages import boot_backend, device_description

    c = Config()
    assert boot_backend(c, "auto") == "sysroot" and boot_backend(c, "sysroot") == "sysroot"
    assert boot_backend(c, "libvirt") == "libvirt"
    for other in ("qemu", "device"):
        with pytest.raises(ConfigError, match="sysroot or libvirt"):
            boot_backend(c, other)
    assert device_description("sysroot") == STANDIN
    assert device_description("libvirt").startswith("bootc on the libvirt VM")
    assert "stand-in" not in device_description("libvirt")


def test_the_libvirt_device_factory_builds_a_bootc_vm(tmp_path):
    from edgeci.imagemode.stages import device_factory

    c = Config()
    c.boot_test.libvirt = LibvirtConfig(location="http://mirror.example.com/rhel/10/", ssh_user="core")
    scripts = render_scripts(CHECKS, "1.0.1")
    make = device_factory(c, "gateway-bootc", tmp_path, "rhel", backend="libvirt", candidate=CANDIDATE,
                          record_name="gateway-bootc-x86_64", scripts=scripts)
    g = make("install")
    assert isinstance(g, LibvirtGuest) and isinstance(g.device.tooling, Bootc) and g.image_mode
    assert g.candidate_commit == CAND and g.version == "1.0.1" and g.scripts == scripts
    assert g.vm_name == "edgeci-gateway-bootc-x86_64-install" and g.work_dir == tmp_path / "install"
    assert g.cfg is c.boot_test.libvirt
