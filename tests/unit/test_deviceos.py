"""The device OS's pieces that need no VM: the package mapping, the mirror error, the GRUB scripts, the disk layout,
the install's error line, the SSH driver's parsers, and the URL a VM reaches the host by."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from edgeci.boottest.device_guest import guest_url
from edgeci.boottest.ssh_device import OstreeAdmin, check_name, parse_ostree_admin_status
from edgeci.checks import evaluate_in_tree, parse_checks
from edgeci.deviceos import boot, disk
from edgeci.deviceos.packages import EDGECI, PACKAGE_MAP, blueprint_package_names, plan
from edgeci.errors import BlueprintError, BootTestError, ToolError

C1, C2 = "a" * 64, "b" * 64


def test_blueprint_packages_map_to_debian_names_and_unmapped_ones_are_named() -> None:
    data = {"packages": [{"name": "NetworkManager-wifi"}, {"name": "podman"}, {"name": "greenboot"},
                         {"name": "linux-firmware"}], "modules": [{"name": "chrony"}]}
    p = plan(blueprint_package_names(data))
    assert p.debian == ["chrony", "network-manager", "podman"]
    assert p.provided == ["greenboot"] and p.nothing == ["linux-firmware"]
    with pytest.raises(BlueprintError) as e:
        plan(["podman", "kernel-rt", "qt5-qtbase"], where="kiosk.toml")
    msg = str(e.value)
    assert "kernel-rt, qt5-qtbase" in msg and "kiosk.toml [[packages]]" in msg and "package_map" in msg
    # the project's own map adds names and overrides the table
    assert plan(["kernel-rt", "podman"], {"kernel-rt": "linux-image-rt-amd64", "podman": "podman-docker"}).debian \
        == ["linux-image-rt-amd64", "podman-docker"]
    assert PACKAGE_MAP["greenboot-default-health-checks"] == EDGECI


@pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="needs mmdebstrap")
def test_an_unreachable_mirror_is_an_infrastructure_error_naming_it(tmp_path: Path) -> None:
    from edgeci.deviceos.rootfs import ensure_rootfs

    with pytest.raises(ToolError) as e:
        ensure_rootfs([], cache_dir=tmp_path, mirror="http://127.0.0.1:9/debian", timeout=300)
    assert e.value.exit_code == 2
    text = str(e.value)
    assert "cannot reach the apt mirror http://127.0.0.1:9/debian" in text
    assert "no cached tree exists yet" in text and str(tmp_path / "deviceos") in text
    assert not list((tmp_path / "deviceos").glob("*.tar"))  # nothing half-written


@pytest.mark.skipif(shutil.which("grub-script-check") is None, reason="needs grub-common")
@pytest.mark.parametrize("script", [boot.GRUB_CFG, boot.GRUB_EARLY_CFG])
def test_the_grub_scripts_parse(script: str, tmp_path: Path) -> None:
    f = tmp_path / "grub.cfg"
    f.write_text(script)
    r = subprocess.run(["grub-script-check", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_boot_counting_is_fedoras_scheme() -> None:
    cfg = boot.GRUB_CFG
    # the counter is read after ostree's menu, falls back to entry 1 at 0, and is saved back
    assert cfg.index("source /loader/grub.cfg") < cfg.index("load_env -f /grub/grubenv")
    assert 'set default=1' in cfg and "save_env -f /grub/grubenv boot_counter" in cfg
    assert "grub-editenv /boot/grub/grubenv set boot_success=1" in boot.GREENBOOT
    assert "systemctl reboot" in boot.GREENBOOT and "ostree admin undeploy 0" in boot.CHECK_FALLBACK


@pytest.mark.skipif(shutil.which("sfdisk") is None, reason="needs fdisk")
def test_the_disk_is_a_gpt_with_the_three_images_at_their_partitions(tmp_path: Path) -> None:
    imgs = []
    for i, size in enumerate((3 * 1024 * 1024, 2 * 1024 * 1024 + 5, 4 * 1024 * 1024)):
        p = tmp_path / f"p{i}.img"
        p.write_bytes(bytes([65 + i]) * 4096 + bytes(size - 4096))
        imgs.append(p)
    total = disk.assemble(tmp_path / "disk.img", *imgs)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(tmp_path / "disk.img")], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    parts = table["partitions"]
    assert [p["name"] for p in parts] == ["ESP", "boot", "root"]
    assert parts[0]["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    with open(tmp_path / "disk.img", "rb") as f:
        for i, p in enumerate(parts):
            f.seek(p["start"] * 512)
            assert f.read(4096) == bytes([65 + i]) * 4096
    assert (tmp_path / "disk.img").stat().st_size == total


@pytest.mark.skipif(any(shutil.which(t) is None for t in disk.TOOLS), reason="needs the install tools")
def test_an_install_from_an_unreachable_url_names_it_and_leaves_nothing(tmp_path: Path) -> None:
    efi = tmp_path / "BOOTX64.EFI"
    efi.write_bytes(b"MZ")
    with pytest.raises(BootTestError) as e:
        disk.install(tmp_path / "disk.img", tmp_path / "work", url="http://127.0.0.1:9/repo", remote="edgeci-stage",
                     ref="rhel/9/x86_64/edge", commit=C1, osname="rhel", authorized_key="", efi=efi)
    assert "installing rhel/9/x86_64/edge@aaaaaaaaaaaa from http://127.0.0.1:9/repo failed" in str(e.value)
    assert not (tmp_path / "disk.img").exists()
    assert not [p for p in (tmp_path / "work").iterdir()]  # the tmpfs and images went with the namespace


def test_ostree_admin_status_gives_the_booted_and_the_default_deployment() -> None:
    text = (f"  rhel {C2}.0\n    Version: 1.0.1\n    origin refspec: edgeci-stage:rhel/9/x86_64/edge\n"
            f"* rhel {C1}.0 (rollback)\n    Version: 1.0.0\n    origin refspec: edgeci-prod:rhel/9/x86_64/edge\n")
    st = parse_ostree_admin_status(text)
    assert st == {"checksum": C1, "version": "1.0.0", "origin": "edgeci-prod:rhel/9/x86_64/edge", "count": 2,
                  "default": C2}
    with pytest.raises(BootTestError, match="no deployment"):
        parse_ostree_admin_status("")
    with pytest.raises(BootTestError, match="no booted deployment"):
        parse_ostree_admin_status(f"  rhel {C1}.0\n")


def test_the_device_updates_pinned_to_the_commit_from_what_it_runs() -> None:
    cmds = OstreeAdmin().update_commands("edgeci-stage", "http://10.0.2.2:8080", "rhel/9/x86_64/edge", C2,
                                         same_remote=False, booted=C1)
    joined = "\n".join(cmds)
    assert f"ostree refs --force --create=edgeci-stage:rhel/9/x86_64/edge {C1}" in joined  # delta from C1
    assert f"ostree pull edgeci-stage rhel/9/x86_64/edge@{C2}" in cmds
    assert f"ostree admin upgrade --deploy-only --override-commit={C2}" in cmds
    assert cmds[-1] == "/usr/libexec/greenboot/greenboot-grub2-set-counter"
    assert check_name("required.d/03-ntp-servers.sh") == "ntp-servers"


def test_a_vm_reaches_the_host_loopback_through_the_user_network() -> None:
    assert guest_url("http://127.0.0.1:8080/repo") == "http://10.0.2.2:8080/repo"
    assert guest_url("http://localhost/repo") == "http://10.0.2.2/repo"
    assert guest_url("https://stage.example.com/repo") == "https://stage.example.com/repo"
    with pytest.raises(BootTestError, match="cannot reach '/srv/repo'"):
        guest_url("/srv/repo")


def test_the_version_check_prefers_the_images_own_version(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "os-release").write_text('NAME="Debian GNU/Linux"\nVERSION="12 (bookworm)"\n'
                                                     "IMAGE_ID=sensor\nIMAGE_VERSION=1.0.1\n")
    check = parse_checks("checks:\n  - name: version\n    os_release_version: true\n").checks[0]
    assert evaluate_in_tree(check, root, "1.0.1") == (True, "version 1.0.1 (expected 1.0.1)")
    assert evaluate_in_tree(check, root, "1.0.2")[0] is False


def test_the_report_says_what_the_device_itself_received_for_the_update() -> None:
    from edgeci.releasepage import ReportData, render_html

    pull = {"bytes": 8192, "delta_parts": 1, "loose_objects": 3, "used_delta": True, "rx_bytes": 18548}
    html = render_html(ReportData(blueprint="sensor", arch="x86_64", version="1.0.1", commit=C2,
                                  boot_test={"scenarios": {"upgrade": {"outcome": "passed", "pull": pull}}},
                                  delta_bytes=8192, full_bytes=474_173_440))
    assert "it pulled the update itself through 1 static delta part(s) and 3 loose object(s)" in html
    assert "received 18.1 KiB during the update" in html


def test_auto_boots_the_device_only_for_a_device_os_candidate() -> None:
    from edgeci.boottest import choose_backend
    from edgeci.config import Config

    cfg = Config()
    assert cfg.composer.os == "device"
    assert choose_backend("auto", cfg, composed_os="device") == "device"
    # a busybox commit (or Image Builder's) never goes to the SSH device, whatever the config would build now
    assert choose_backend("auto", cfg, composed_os="busybox") in ("qemu", "sysroot")
    assert choose_backend("auto", cfg, composed_os="") in ("qemu", "sysroot")
    assert choose_backend("auto", cfg) == "device"  # no record yet (the demo's trust policy): the config's OS
    assert choose_backend("libvirt", cfg, composed_os="device") == "libvirt"


def test_a_device_that_accepts_but_never_answers_is_waited_for_not_an_error(tmp_path: Path) -> None:
    """qemu's port forwarder accepts the connection while the VM is still booting: real ssh then waits in the
    handshake. Each attempt is bounded, the half-made shared connection dropped, and the wait goes on to its
    deadline (a boot-test error naming the last reason), never a stray tool error mid-boot."""
    import socket
    import threading

    from edgeci.boottest.ssh_device import SSHDevice
    from edgeci.tools.ssh import SSHTarget
    from edgeci.wait import Waiting

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")  # then silence: no key exchange
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    control = str(tmp_path / "cm")
    target = SSHTarget("127.0.0.1", "root", port=srv.getsockname()[1], connect_timeout=2, control_path=control)
    device = SSHDevice(address=lambda: target, tooling=OstreeAdmin(), name="vm", attempt_timeout=1.5,
                       waiting=lambda deadline, interval: Waiting(deadline=deadline, interval=0.2))
    try:
        with pytest.raises(BootTestError, match=r"did not answer on SSH.*no answer within 1.5 s"):
            device.wait_for_ssh(deadline=5)
    finally:
        stop.set()
        thread.join()
        for c in held:
            c.close()
        srv.close()
    assert len(held) >= 2  # it tried again after the first attempt hung
    assert not Path(control).exists()
