"""The device backend: a real device in qemu — installed from the stage URL, booted by UEFI + GRUB from its own
disk, updating and rolling itself back. The boot test talks to it only over SSH (ssh_device.SSHDevice, the same
driver as the libvirt backend), as root with a throwaway key written into the install's /etc.

install  — edgeci.deviceos.disk.install(): the disk's sysroot is pulled from the URL and deployed (host side, in a
           private mount namespace); qemu boots the disk (OVMF → GRUB → the BLS menu ostree wrote).
update   — inside the VM: the remote pointed at the URL as the VM reaches it (127.0.0.1 → qemu's 10.0.2.2),
           `ostree pull` (a static delta when the repo has one from the booted commit), `ostree admin upgrade
           --deploy-only --override-commit`, greenboot's boot counter; then `systemctl reboot`.
rollback — a failing required check in the running candidate's /etc, the boot counter set, a reboot: greenboot
           marks the boot red and reboots, GRUB's counter runs out and boots the previous deployment, greenboot's
           fallback service makes it the default. The red boot's results are read back from the device.
SSH is forwarded from 127.0.0.1 only; the VM is killed by its PID and its disk removed in every case.

A reboot is a power cycle: qemu runs with -no-reboot, so the guest's reset ends the qemu process, and a watcher
starts qemu again on the same disk and port at once. Under TCG, OVMF's warm reset on q35 hangs in the firmware
for 80 s to over 9 minutes (measured; the guest's shutdown watchdog ends it at 10); a cold start reaches GRUB in
about 5 s. Everything the device keeps across a reboot is on its disk (GRUB's environment with the boot
counter, the deployments, greenboot's results), so the device cannot tell the difference; only a guest that
powers itself off ("reboot: Power down") stays off.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

from edgeci.boottest.guest import DeployResult, PullStats, sigterm_raises
from edgeci.boottest.qemu_guest import tail
from edgeci.boottest.ssh_device import OstreeAdmin, SSHDevice, SSHGuest
from edgeci.errors import BootTestError
from edgeci.tools import qemu as qemu_tool
from edgeci.tools.run import Process, run, start, which
from edgeci.tools.ssh import SSHTarget, close_master
from edgeci.wait import Waiting

# qemu's user network: the host is 10.0.2.2 from inside the VM
HOST_FROM_GUEST = "10.0.2.2"
# the kernel's last words before it resets the machine, and before it powers it off
RESET_LINE, POWER_DOWN_LINE = "reboot: Restarting system", "reboot: Power down"
MAX_POWER_CYCLES = 30  # a device that resets this often is looping: leave it off and say so


def guest_url(url: str) -> str:
    """The URL as the VM reaches it: loopback becomes the host's user-network address; files are unreachable."""
    p = urlparse(url)
    if p.scheme in ("", "file"):
        raise BootTestError(f"the device cannot reach '{url}': a VM has no access to this machine's files",
                            fix="serve the repository over HTTP (edgeci stage serve does)")
    if p.hostname in ("127.0.0.1", "localhost"):
        netloc = HOST_FROM_GUEST + (f":{p.port}" if p.port else "")
        return urlunparse(p._replace(netloc=netloc))
    return url


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DeviceGuest(SSHGuest):
    backend = "device"
    runs_system = True
    TOOLS = ("qemu-system-x86_64", "ssh", "ssh-keygen", "ostree", "unshare", "mke2fs", "mkfs.vfat", "mcopy",
             "sfdisk", "grub-editenv", "grub-mkstandalone")

    @classmethod
    def for_scenario(cls, cfg: Any, work_dir: Path, *, osname: str, candidate: Any, vm_name: str,
                     scripts: dict[str, str], **_: Any) -> DeviceGuest:
        from edgeci.testos.kernel import cache_dir

        bt = cfg.boot_test
        return cls(work_dir, osname=osname, vm_name=vm_name, candidate_commit=candidate.checksum,
                   version=candidate.version or "", scripts=scripts, memory_mb=bt.device_memory,
                   timeout=max(bt.timeout, 300.0), kvm=bt.kvm, cache=cache_dir(cfg.composer.cache_dir),
                   cpus=bt.device_cpus)

    def __init__(self, work_dir: Path, *, osname: str, vm_name: str, candidate_commit: str, version: str,
                 scripts: dict[str, str], cache: Path, memory_mb: int = 1024, timeout: float = 600.0,
                 kvm: str = "off", cpus: int = 2) -> None:
        self.work_dir = Path(work_dir)
        self.osname = osname
        self.vm_name = vm_name
        self.candidate_commit = candidate_commit
        self.version = version
        self.scripts = dict(scripts)
        self.cache = cache
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.settle_timeout = timeout
        self.kvm_mode = kvm
        self.proc: Process | None = None
        self.argv: list[str] = []
        self.power_cycles = 0
        self._serial_mark = 0  # the console's size when the running qemu started
        self._cycle_lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.port = 0
        self.disk = self.work_dir / "disk.img"
        self.key = self.work_dir / "id_ed25519"
        self.serial = self.work_dir / "serial.log"
        self.origin_remote = ""
        self._reboot_pending = False
        self.boots = []
        self.device = SSHDevice(self._address, OstreeAdmin(), vm_name, boot_timeout=timeout, waiting=self._waiting)

    # -- plumbing ---------------------------------------------------------------------------------------
    def _address(self) -> SSHTarget | None:
        if not self.port:
            return None
        # a unix socket path has 108 bytes and ssh adds a suffix while creating it: keep it short
        control = Path(tempfile.gettempdir()) / f"edgeci-ssh-{os.getpid()}-{self.port}"
        return SSHTarget("127.0.0.1", "root", str(self.key), port=self.port, connect_timeout=20,
                         control_path=str(control), alive_interval=15, alive_count=8)

    def _waiting(self, deadline: float, interval: float) -> Waiting[Any]:
        def sleep(seconds: float) -> None:
            if self.cancelled():
                raise KeyboardInterrupt("boot test cancelled")
            time.sleep(seconds)

        return Waiting(deadline=deadline, interval=min(interval, 2.0), backoff=1.3, max_interval=5.0, sleep=sleep)

    def alive(self) -> str:
        self._power_cycle_if_reset()
        if self.proc is None or not self.proc.alive():
            code = self.proc.popen.returncode if self.proc is not None else None
            why = " after too many resets" if self.power_cycles >= MAX_POWER_CYCLES else ""
            return f"stopped: the VM exited (code {code}){why}; console: {self.console_tail(800)}"
        return ""

    def _power_cycle_if_reset(self) -> bool:
        """qemu exited because the guest reset the machine (-no-reboot): start it again on the same disk."""
        with self._cycle_lock:
            proc = self.proc
            if proc is None or proc.alive() or self._stopping.is_set() or proc.popen.returncode != 0:
                return False
            try:
                with self.serial.open("rb") as f:
                    f.seek(self._serial_mark)
                    said = f.read().decode(errors="replace")
            except OSError:
                said = ""
            if POWER_DOWN_LINE in said or self.power_cycles >= MAX_POWER_CYCLES:
                return False
            self.power_cycles += 1
            self._launch()
            return True

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            self._power_cycle_if_reset()

    def console_tail(self, limit: int = 1500) -> str:
        text = self.serial.read_text(errors="replace") if self.serial.exists() else ""
        return tail(text, limit)

    def device_url(self, url: str, remote: str) -> str:
        return guest_url(url)

    def installed(self) -> bool:
        return self.proc is not None

    def _start_vm(self) -> None:
        from edgeci.deviceos.boot import ovmf_firmware

        self.port = free_port()
        kvm = self.kvm_mode == "on"  # a disk boot has no kernel to probe KVM with: TCG unless kvm: on
        self.argv = [which(qemu_tool.QEMU), "-machine", f"q35,accel={'kvm' if kvm else 'tcg'}",
                     # under TCG a CPU model without AVX boots ~20 % faster than "max" (x86-64-v2, enough for RHEL 9)
                     "-cpu", "host" if kvm else "Nehalem", "-m", str(self.memory_mb), "-smp", str(self.cpus),
                     "-nodefaults", "-display", "none", "-monitor", "none",
                     "-bios", str(ovmf_firmware()),
                     "-drive", f"file={self.disk},format=raw,if=virtio,cache=unsafe",
                     "-nic", f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{self.port}-:22",
                     # one console log across power cycles
                     "-chardev", f"file,id=console,path={self.serial},append=on", "-serial", "chardev:console",
                     "-no-reboot"]  # a reset ends qemu: the watcher powers the device on again (module doc)
        self._launch()
        self._stopping.clear()
        self._watcher = threading.Thread(target=self._watch, name=f"edgeci-power-{self.vm_name}", daemon=True)
        self._watcher.start()

    def _launch(self) -> None:
        self._serial_mark = self.serial.stat().st_size if self.serial.exists() else 0
        self.proc = start(self.argv, log_path=self.work_dir / "qemu.out")

    # -- Guest ------------------------------------------------------------------------------------------
    def start(self) -> None:
        from edgeci.boottest.sysroot_guest import remove_tree

        if self.work_dir.exists():
            remove_tree(self.work_dir)
        self.work_dir.mkdir(parents=True)
        run([which("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", f"edgeci boot test {self.vm_name}",
             "-f", str(self.key)], timeout=60)

    def install_device(self, remote: str, url: str, ref: str, commit: str | None) -> DeployResult:
        from edgeci.deviceos import boot, disk

        if not commit:
            raise BootTestError("the device install needs the commit checksum")
        installed = disk.install(self.disk, self.work_dir / "install", url=url, remote=remote, ref=ref,
                                 commit=commit, osname=self.osname, efi=boot.grub_efi_image(self.cache),
                                 authorized_key=self.key.with_suffix(".pub").read_text().strip())
        with sigterm_raises():
            self._start_vm()
            self.wait_settled()
        self.origin_remote = remote
        stats = PullStats(bytes=installed.sysroot_bytes,
                          text=f"installed from {url}: sysroot {installed.sysroot_bytes} bytes")
        return DeployResult(str(self.device.status()["checksum"]), stats)

    def boot(self) -> Any:
        with sigterm_raises():
            return super().boot()

    def prove_rollback(self) -> Any:
        with sigterm_raises():
            return super().prove_rollback()

    def stop(self) -> None:
        from edgeci.boottest.sysroot_guest import remove_tree

        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        if self.device.target is not None:
            close_master(self.device.target)
        with self._cycle_lock:
            if self.proc is not None:
                self.proc.stop(grace=2)
                self.proc = None
        if self.work_dir.exists():
            remove_tree(self.work_dir)
