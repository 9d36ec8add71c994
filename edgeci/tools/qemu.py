"""qemu-system-x86_64 and mkfs.ext4 wrappers for the boot test: argv building, disk images, the KVM probe.

Every program runs through edgeci.tools.run; a VM is a background Process stopped by its PID. On the
machines this is built on /dev/kvm exists but guests hang under it (docs/lab.md), so KVM is used only after a
short probe boot shows the kernel actually runs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgeci.tools.run import Process, run, start, which

QEMU = "qemu-system-x86_64"
# Kernel arguments edgeci appends to every boot: serial console, and a panic becomes a reboot that
# -no-reboot turns into qemu exiting (so a broken initramfs ends the VM instead of hanging it).
CONSOLE_ARGS = ("console=ttyS0", "panic=-1")

_KVM_PROBES: dict[str, bool] = {}
_KVM_LOCK = threading.Lock()


@dataclass
class VMSpec:
    """What to boot: a kernel, its initramfs and command line, one raw virtio disk."""

    kernel: Path
    initrd: Path | None
    cmdline: str
    disk: Path | None
    serial_log: Path
    memory_mb: int = 512
    kvm: bool = False
    smp: int = 1
    extra: list[str] = field(default_factory=list)


def argv(spec: VMSpec, qemu: str = QEMU) -> list[str]:
    """The qemu command line for `spec`: no display, no reboot, serial console to a file."""
    accel = "kvm" if spec.kvm else "tcg"
    args = [
        qemu,
        "-machine", f"q35,accel={accel}",
        "-cpu", "host" if spec.kvm else "max",
        "-m", str(spec.memory_mb),
        "-smp", str(spec.smp),
        "-nodefaults", "-display", "none", "-monitor", "none",
        "-no-reboot",
        "-serial", f"file:{spec.serial_log}",
        "-kernel", str(spec.kernel),
    ]
    if spec.initrd is not None:
        args += ["-initrd", str(spec.initrd)]
    args += ["-append", spec.cmdline]
    if spec.disk is not None:
        args += ["-drive", f"file={spec.disk},format=raw,if=virtio"]
    return args + list(spec.extra)


def start_vm(spec: VMSpec, *, log_path: Path) -> Process:
    """Start the VM in the background (its own process group); stop it with Process.stop()."""
    return start(argv(spec, which(QEMU)), log_path=log_path)


def kernel_cmdline(options: str, extra: Sequence[str] = CONSOLE_ARGS) -> str:
    """The BLS entry's options plus edgeci's console arguments (not repeated when already present)."""
    words = options.split()
    for arg in extra:
        key = arg.split("=", 1)[0]
        if not any(w == arg or w.startswith(key + "=") for w in words):
            words.append(arg)
    return " ".join(words)


# -- disk images ----------------------------------------------------------------------------------

def tree_bytes(root: Path) -> int:
    """Apparent size of a directory tree, hard links counted once (ostree checkouts hard-link the repo)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        total += 4096
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            st = os.lstat(os.path.join(dirpath, name))
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += ((st.st_size + 4095) // 4096) * 4096
    return total


def make_ext4_image(image: Path, source_dir: Path, *, label: str = "edgeci-root",
                    min_mb: int = 64, timeout: float = 300) -> int:
    """Write a raw ext4 image holding `source_dir` (mkfs.ext4 -d: no root, no loop device).

    The size is the tree plus room for the journal, inode tables and what the guest writes; returns bytes.
    """
    need = tree_bytes(source_dir)
    size_mb = max(min_mb, int(need * 1.5 / 2**20) + 48)
    tmp = image.with_name(image.name + ".tmp")
    with open(tmp, "wb") as f:
        f.truncate(size_mb * 2**20)
    try:
        run(["mkfs.ext4", "-q", "-F", "-L", label, "-E", "root_owner=0:0", "-d", str(source_dir), str(tmp)],
            timeout=timeout)
        os.replace(tmp, image)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size_mb * 2**20


# -- KVM --------------------------------------------------------------------------------------------

def kvm_device_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def probe_kvm(kernel: Path, work_dir: Path, *, timeout: float = 5.0, memory_mb: int = 256) -> bool:
    """True when a KVM guest really runs: the kernel prints its banner on the serial console in time.

    No initramfs: a working guest panics on the missing root (panic=-1 + -no-reboot ends it); a guest
    that hangs under KVM prints nothing past the firmware. The answer is kept for this process.
    """
    key = "kvm"  # a property of this host, whichever kernel asks
    with _KVM_LOCK:  # two devices booting at once probe once
        if key not in _KVM_PROBES:
            _KVM_PROBES[key] = _probe(kernel, work_dir, timeout, memory_mb)
        return _KVM_PROBES[key]


def _probe(kernel: Path, work_dir: Path, timeout: float, memory_mb: int) -> bool:
    if not kvm_device_usable():
        return False
    work_dir.mkdir(parents=True, exist_ok=True)
    serial = work_dir / "kvm-probe.serial"
    out = work_dir / "kvm-probe.out"
    spec = VMSpec(kernel=kernel, initrd=None, cmdline="console=ttyS0 panic=-1", disk=None,
                  serial_log=serial, memory_mb=memory_mb, kvm=True)
    ok = False
    proc = start_vm(spec, log_path=out)
    try:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if serial.exists() and b"Linux version" in serial.read_bytes():
                ok = True
                break
            if not proc.alive():
                break
            time.sleep(0.1)
    finally:
        proc.stop(grace=2)
        serial.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
    return ok
