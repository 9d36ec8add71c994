"""The qemu backend: a real VM boots each deployment of a throwaway sysroot, edgeci plays the bootloader.

The sysroot is built exactly as the sysroot backend builds it; before every boot it is written into a
raw ext4 disk image (mkfs.ext4 -d, no root or loop device), and qemu boots the chosen BLS entry's kernel
and initramfs with its options (+ console=ttyS0 panic=-1). The test OS reports on the serial console
(EDGECI- lines, docs/testos.md). Default entry = highest `version`; rollback boots the next one, as greenboot's
boot counter makes the bootloader do. Each boot has a deadline; the VM is killed by PID and its files are
removed in every case (also on Ctrl-C, and on SIGTERM while a VM runs).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from edgeci.boottest.guest import (
    INJECTED_CHECK_NAME,
    BootEntry,
    BootResult,
    ConsoleReport,
    RollbackResult,
    parse_console,
    read_bls_entries,
    sigterm_raises,
)
from edgeci.boottest.sysroot_guest import SysrootGuest
from edgeci.errors import BootTestError
from edgeci.tools import qemu as qemu_tool
from edgeci.wait import Waiting, WaitTimeout

_ANSI_RE = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c|\][^\x07]*\x07)")
LOG_TAIL = 4000


def clean_console(text: str) -> str:
    """Serial log text without terminal escapes (SeaBIOS clears the screen) and CRs."""
    return _ANSI_RE.sub("", text).replace("\r", "")


def tail(text: str, limit: int = LOG_TAIL) -> str:
    text = clean_console(text).strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def entry_commit(sysroot: Path, entry: BootEntry) -> str | None:
    """The deployment checksum an entry's ostree= karg leads to (/ostree/boot.N/OS/BOOTCSUM/SERIAL symlink)."""
    target = entry.ostree_target
    if not target:
        return None
    p = sysroot / target.lstrip("/")
    try:
        name = p.resolve(strict=True).name
    except OSError:
        return None
    checksum = name.split(".")[0]
    return checksum if re.fullmatch(r"[0-9a-f]{64}", checksum) else None


def entry_file(sysroot: Path, path: str) -> Path:
    """A BLS linux/initrd path: relative to the boot partition root (= sysroot/boot here)."""
    rel = path.lstrip("/")
    for candidate in (sysroot / "boot" / rel, sysroot / rel):
        if candidate.is_file():
            return candidate
    raise BootTestError(f"the boot entry names '{path}', which is not in the sysroot", where=str(sysroot / "boot"))


class QemuGuest(SysrootGuest):
    backend = "qemu"
    runs_system = True
    TOOLS = ("ostree", "unshare", "qemu-system-x86_64", "mkfs.ext4")

    @classmethod
    def for_scenario(cls, cfg: Any, work_dir: Path, *, osname: str, **_: Any) -> QemuGuest:
        bt = cfg.boot_test
        return cls(work_dir, osname, memory_mb=bt.memory, timeout=bt.timeout, kvm=bt.kvm,
                   kvm_probe_timeout=bt.kvm_probe_timeout)

    def __init__(self, work_dir: Path, osname: str, *, memory_mb: int = 512, timeout: float = 120.0,
                 kvm: str = "auto", kvm_probe_timeout: float = 5.0) -> None:
        super().__init__(work_dir, osname)
        self.memory_mb = memory_mb
        self.timeout = timeout
        self.kvm_mode = kvm
        self.kvm_probe_timeout = kvm_probe_timeout
        self.accel: str | None = None  # decided at the first boot: kvm | tcg

    def _use_kvm(self, kernel: Path) -> bool:
        if self.accel is None:
            if self.kvm_mode == "on":
                if not qemu_tool.kvm_device_usable():
                    raise BootTestError("boot_test.kvm is 'on' but /dev/kvm is not usable",
                                        where="boot_test.kvm", fix="set boot_test.kvm to auto or off")
                self.accel = "kvm"
            elif self.kvm_mode == "off":
                self.accel = "tcg"
            else:
                ok = qemu_tool.probe_kvm(kernel, self.work_dir / "probe", timeout=self.kvm_probe_timeout)
                self.accel = "kvm" if ok else "tcg"
        return self.accel == "kvm"

    def _uncompressed(self, kernel: Path) -> Path:
        """Under TCG the kernel's own xz decompression costs ~4.5 s a boot: hand qemu the ELF inside the
        bzImage instead (PVH entry), once per kernel. Kernels packed otherwise boot as they are."""
        import hashlib

        from edgeci.testos.kernel import KernelError, extract_vmlinux

        dest = self.work_dir / f"vmlinux-{hashlib.sha256(kernel.read_bytes()).hexdigest()[:16]}"
        try:
            return extract_vmlinux(kernel, dest)
        except (KernelError, OSError):
            return kernel

    def boot(self, entry_index: int = 0) -> BootResult:
        """Boot BLS entry `entry_index` (0 = the default, 1 = the previous one) until EDGECI-DONE."""
        entries = read_bls_entries(self.sysroot / "boot")
        if len(entries) <= entry_index:
            raise BootTestError(f"the sysroot has {len(entries)} boot entries, entry {entry_index} was asked for",
                                where=str(self.sysroot / "boot" / "loader" / "entries"))
        entry = entries[entry_index]
        kernel = entry_file(self.sysroot, entry.linux)
        initrd = entry_file(self.sysroot, entry.initrd) if entry.initrd else None
        expected = entry_commit(self.sysroot, entry)
        label = f"{entry.path.name} ({'default' if entry_index == 0 else 'previous'} entry)"
        kvm = self._use_kvm(kernel)
        disk = self.work_dir / "disk.img"
        serial = self.work_dir / "serial.log"
        out = self.work_dir / "qemu.out"
        serial.unlink(missing_ok=True)
        qemu_tool.make_ext4_image(disk, self.sysroot)
        boot_kernel = kernel if kvm else self._uncompressed(kernel)
        spec = qemu_tool.VMSpec(kernel=boot_kernel, initrd=initrd, cmdline=qemu_tool.kernel_cmdline(entry.options),
                                disk=disk, serial_log=serial, memory_mb=self.memory_mb, kvm=kvm)
        started = time.monotonic()
        error = ""
        text = ""
        try:
            with sigterm_raises():
                proc = qemu_tool.start_vm(spec, log_path=out)
                try:
                    _, error = self._watch(proc, serial)
                finally:
                    proc.stop(grace=3)
                    text = serial.read_text(errors="replace") if serial.exists() else ""
                    if error and not text.strip():
                        error += f"; qemu said: {tail(proc.output(), 500) or '(nothing)'}"
        finally:
            for f in (disk, serial, out):
                f.unlink(missing_ok=True)
        report = parse_console(text)  # the whole log, after the VM is gone
        initramfs = re.search(r"edgeci-initramfs: error: [^\r\n]*", text)
        if error and initramfs:
            error += f" ({initramfs.group(0)})"
        if report.errors and not error:
            error = "; ".join(report.errors)
        return BootResult(
            commit=report.commit, version=report.version, status=report.status, checks=report.checks,
            running=True, tree=None, expected_commit=expected, entry=label,
            seconds=time.monotonic() - started, error=error,
            log=f"qemu accel={'kvm' if kvm else 'tcg'} append={spec.cmdline!r}\n{tail(text)}")

    def _watch(self, proc: qemu_tool.Process, serial: Path) -> tuple[ConsoleReport, str]:
        """Follow the console until EDGECI-DONE, the VM exiting, or the deadline."""
        done_at: list[float] = []

        def check() -> tuple[str, ConsoleReport | None]:
            if self.cancelled():
                raise KeyboardInterrupt("boot test cancelled")
            rep = parse_console(serial.read_text(errors="replace") if serial.exists() else "")
            if rep.done:
                # poweroff -f follows DONE at once; give the VM a moment to exit by itself.
                if not done_at:
                    done_at.append(time.monotonic())
                if not proc.alive() or time.monotonic() - done_at[0] > 2.0:
                    return "done", rep
                return "powering off", None
            if not proc.alive():
                return "exited", rep
            if rep.booted:
                return f"running checks ({len(rep.checks)} reported)", None
            return "booting", None

        try:
            rep = Waiting[ConsoleReport](deadline=self.timeout, interval=0.1, backoff=1.3, max_interval=0.5).wait(
                check, what="the test OS to report EDGECI-DONE")
        except WaitTimeout:
            return parse_console(serial.read_text(errors="replace") if serial.exists() else ""), (
                f"the VM did not finish booting within {self.timeout:g} s (boot_test.timeout)")
        if not rep.done:
            return rep, f"the VM exited before EDGECI-DONE (exit code {proc.popen.returncode})"
        return rep, ""

    def prove_rollback(self) -> RollbackResult:
        if len(read_bls_entries(self.sysroot / "boot")) < 2:
            raise BootTestError("rollback needs two boot entries (deploy production, then the candidate)",
                                where=str(self.sysroot))
        self.inject_failure()
        candidate = self.boot(0)
        # greenboot: a required check failed, the boot counter runs out, the bootloader falls back to
        # the previous entry. edgeci is the bootloader here.
        previous = self.boot(1)
        failed = candidate.report(INJECTED_CHECK_NAME)
        detail = (f"candidate boot: {candidate.summary()}; injected check "
                  f"{'failed as intended' if failed and not failed.passed else 'not reported as failed'}; "
                  f"fallback boot: {previous.summary()}")
        return RollbackResult(candidate=candidate, previous=previous, detail=detail)


def qemu_available() -> bool:
    from edgeci.tools.run import have

    return have(qemu_tool.QEMU)
