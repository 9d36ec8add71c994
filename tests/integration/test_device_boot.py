"""The real device end to end, under TCG: the local composer's Debian device OS (real packages, systemd, sshd, GRUB)
installed from the stage URL onto its own GPT disk, booted by OVMF + GRUB, updated from inside the VM through a
static delta, and rolled back by its own greenboot boot counting — checks over SSH.

One module, one pair of composes (1.0.0 promoted to a production repo, 1.0.1 staged with a delta from it):
- `edgeci boot-test sensor --backend device --scenario install`: the candidate installed from the stage URL,
  booted by OVMF + GRUB, every check of the blueprint over SSH;
- the libvirt backend's SSH sequence (LibvirtGuest: wait for SSH, update, reboot and settle, the check protocol)
  against the same kind of device, virt-install and virsh answered by the test (the install writes the disk
  from the kickstart's ostreesetup line and starts qemu; domifaddr answers 127.0.0.1): its candidate carries a
  broken required check, so the device rolls itself back by its own boot counting and the upgrade fails naming
  the check and its output.

The second test's device updates itself through the static delta (the same SSHGuest update as the device
backend's upgrade scenario) and rolls itself back by its own boot counting. The device backend's upgrade and
rollback scenarios with a healthy candidate cost four more emulated boots, so the suite leaves them to
`make demo`, which runs all three scenarios on this device, and to the libvirt backend's unit tests, which run
the same sequence against a simulated VM.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeci.boottest.device_guest import guest_url
from edgeci.boottest.scenarios import run_scenarios
from edgeci.cli import main
from edgeci.junit import Outcome
from edgeci.production import Production
from edgeci.record import BuildRecord, Candidate
from edgeci.tools import ostree
from tests.fixtures.device import REF, Staged, stage_two_releases
from tests.fixtures.httpserver import serve_directory

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("device"),  # one worker boots the devices while the other runs the rest
    pytest.mark.skipif(any(shutil.which(p) is None for p in ("qemu-system-x86_64", "mmdebstrap", "grub-mkstandalone",
                                                             "mkfs.vfat", "sfdisk"))
                       or not os.path.exists("/usr/share/ovmf/OVMF.fd"),
                       reason="needs qemu, mmdebstrap, GRUB's EFI image tools and OVMF (make test installs them)"),
]

BROKEN_CHECK = "#!/bin/sh\necho 'sensor-app: /etc/sensor/app.conf is missing'\nexit 1\n"


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Staged]:
    with contextlib.ExitStack() as stack:
        yield stage_two_releases(tmp_path_factory.mktemp("device"), lambda d: stack.enter_context(serve_directory(d)))


def test_the_device_os_is_real_packages_honouring_the_blueprint(staged: Staged) -> None:
    compose = BuildRecord.load(staged.project / "build" / "sensor" / "x86_64" / "record.json").section("compose")
    assert compose["os"] == "device"
    names = {p["name"] for p in staged.packages}
    # dpkg's own list: the blueprint's chrony, and what a device needs
    assert {"chrony", "systemd", "openssh-server", "ostree", "grub-common"} <= names
    assert any(n.startswith("linux-image-") for n in names)
    assert all(p.get("version") for p in staged.packages)
    files = set(ostree.ls(staged.stage_repo, staged.candidate, "/usr/etc/ssh/authorized_keys.d"))
    assert any(f.endswith("/core") for f in files), files
    assert "IMAGE_VERSION=1.0.1" in ostree.cat(staged.stage_repo, staged.candidate, "/usr/lib/os-release").decode()
    # no SSH host keys baked into the commit (every device makes its own)
    assert not [f for f in ostree.ls(staged.stage_repo, staged.candidate, "/usr/etc/ssh") if "ssh_host_" in f]


def test_the_candidate_installed_from_the_stage_url_passes_every_check_over_ssh(
        staged: Staged, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(staged.project)
    monkeypatch.setenv("EDGECI_COMPOSER_OS", "device")
    code = main(["boot-test", "sensor", "--backend", "device", "--scenario", "install"])
    out = capsys.readouterr().out
    sec = BuildRecord.load(staged.project / "build" / "sensor" / "x86_64" / "record.json").section("boot_test")
    assert code == 0, out + json.dumps(sec, indent=1)[-6000:]
    assert sec["backend"] == "device" and sec["status"] == "passed"
    sc = sec["scenarios"]
    assert set(sc) == {"install"} and sc["install"]["booted"] == staged.candidate
    assert sc["install"]["pull"]["bytes"] > 5_000_000  # the whole sysroot, pulled from the stage URL
    checks = {c["name"]: c for c in sc["install"]["checks"]}
    for name in ("system-running", "greenboot-healthcheck", "hostname", "core-user", "sshd-enabled",
                 "chronyd-enabled", "version", "booted-candidate", "kernel-args", "timezone", "ntp-servers"):
        assert checks[name]["outcome"] == "passed", (name, checks[name])
    assert "UnitFileState=enabled" in checks["chronyd-enabled"]["output"]  # systemd's answer, not a symlink
    assert not list((staged.project / "build").rglob("disk.img"))  # every VM and disk is gone


# -- the libvirt backend's sequence against the real device ------------------------------------------------------

class LibvirtHost:
    """Answers virt-install and virsh for LibvirtGuest with a real device: virt-install writes the disk from the
    kickstart's ostreesetup line (edgeci.deviceos.disk) and starts qemu; ssh is the real ssh, sent to the
    forwarded port. Everything else of the sequence is LibvirtGuest's own."""

    def __init__(self, work: Path, key: Path) -> None:
        from edgeci.boottest.device_guest import DeviceGuest

        self.work = work
        self.key = key
        self.guest = DeviceGuest(work / "vm", osname="rhel", vm_name="libvirt-seq", candidate_commit="",
                                 version="", scripts={}, cache=Path.home() / ".cache" / "edgeci")
        self.guest.start()
        shutil.copy(key, self.guest.key)
        shutil.copy(key.with_suffix(".pub"), self.guest.key.with_suffix(".pub"))
        self.calls: list[list[str]] = []

    def __call__(self, argv, *, timeout=None, input=None, check=True, **kw):  # type: ignore[no-untyped-def]
        from edgeci.tools.run import Completed, run

        self.calls.append(list(argv))
        prog = os.path.basename(argv[0])
        if prog == "virt-install":
            ks = Path(argv[argv.index("--initrd-inject") + 1]).read_text()
            m = re.search(r"^ostreesetup --osname=(\S+) --remote=(\S+) --url=(\S+) --ref=(\S+)", ks, re.MULTILINE)
            assert m, ks
            _, remote, url, ref = m.groups()
            commit = _remote_commit(url, ref)
            self.guest.install_device(remote, url, ref, commit)
            return Completed(list(argv), 0, "Domain creation completed.\n", "", 0.1)
        if prog == "virsh":
            sub = argv[3]
            if sub == "domifaddr":
                return Completed(list(argv), 0, " vnet0  52:54:00:6b:3c:58  ipv4  127.0.0.1/8\n", "", 0.01)
            self.guest.stop() if sub == "undefine" else None
            return Completed(list(argv), 0, "", "", 0.01)
        assert prog == "ssh", argv
        args = list(argv)
        args[args.index("-p") + 1] = str(self.guest.port)
        return run(args, timeout=timeout, input=input, check=check)


def _remote_commit(url: str, ref: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{url}/refs/heads/{ref}", timeout=10) as f:
        return f.read().decode().strip()


def test_the_libvirt_sequence_on_a_real_device_rolls_back_a_broken_candidate_by_itself(
        staged: Staged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeci.boottest import libvirt_guest
    from edgeci.boottest.libvirt_guest import LibvirtGuest

    # a libvirt VM cannot reach the host's loopback, so the backend refuses such URLs; this device is qemu on the
    # user network, which reaches the host's 127.0.0.1 as 10.0.2.2 (the install itself runs on the host)
    monkeypatch.setattr(libvirt_guest, "check_reachable_url", lambda url, what: None)
    from edgeci.boottest.ssh_device import OstreeAdmin
    from edgeci.config import LibvirtConfig

    # the broken candidate: 1.0.1 plus a required check that fails, with a delta from production
    overlay = tmp_path / "overlay" / "usr" / "etc" / "greenboot" / "check" / "required.d"
    overlay.mkdir(parents=True)
    (overlay / "50-sensor-app.sh").write_text(BROKEN_CHECK)
    (overlay / "50-sensor-app.sh").chmod(0o755)
    broken_repo = tmp_path / "broken"
    ostree.init(broken_repo, mode="archive")
    ostree.pull_local(broken_repo, staged.stage_repo, [staged.candidate, staged.prod_commit])
    broken = ostree.commit(broken_repo, REF, tree_ref=staged.candidate, tree_dir=tmp_path / "overlay",
                           subject="sensor 1.0.2 (broken)", parent=staged.prod_commit, owner_root=False,
                           extra=["--add-metadata-string=version=1.0.2"])
    ostree.static_delta_generate(broken_repo, broken, from_=staged.prod_commit)
    ostree.summary_update(broken_repo)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    host = LibvirtHost(tmp_path / "host", key)
    cfg = LibvirtConfig(location="http://installer.example/rhel9", ssh_user="root", ssh_key=str(key),
                        ssh_timeout=600)
    guests: list[LibvirtGuest] = []

    def make(scenario: str) -> LibvirtGuest:
        g = LibvirtGuest(cfg, tmp_path / scenario, osname="rhel", vm_name=f"libvirt-{scenario}",
                         candidate_commit=broken, version="1.0.2", boot_timeout=600, runner=host,
                         tooling=OstreeAdmin())
        g.device_url = lambda url, remote: guest_url(url)  # type: ignore[method-assign]
        guests.append(g)
        return g

    with contextlib.ExitStack() as stack:
        stack.callback(host.guest.stop)
        broken_url = stack.enter_context(serve_directory(broken_repo))
        candidate = Candidate(blueprint="sensor", version="1.0.2", arch="x86_64", ref=REF, checksum=broken,
                              stage_url=broken_url)
        production = Production(url=staged.prod_url, commit=staged.prod_commit)
        result = run_scenarios("libvirt", make, candidate, production, [], only=("upgrade",))
    assert not result.ok  # what makes `edgeci boot-test` exit 1
    up = result.scenario("upgrade")
    assert up is not None and up.outcome is Outcome.FAILED
    cases = {c.name: c for c in up.cases}
    assert cases["upgrade-pull"].outcome is Outcome.PASSED and up.pull is not None and up.pull.used_delta
    # the device pulled the update itself through the static delta: its interfaces saw KiB, not the tree
    assert up.pull.delta_parts >= 1 and up.pull.rx_bytes is not None and 0 < up.pull.rx_bytes < 5_000_000
    boot = cases["boot"]
    assert boot.outcome is Outcome.FAILED
    assert "rolled itself back" in boot.message and "'sensor-app' failed" in boot.message
    assert "/etc/sensor/app.conf is missing" in boot.message
    assert up.booted == staged.prod_commit  # the device runs production again, by its own boot counting
    # what ran is LibvirtGuest's sequence: virt-install, domifaddr, and the SSH protocol
    progs = [os.path.basename(c[0]) for c in host.calls]
    assert progs[0] == "virt-install" and "virsh" in progs and progs.count("ssh") > 10
