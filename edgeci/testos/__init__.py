"""The local composer's test OS: a real, bootable busybox Linux built as an ostree commit.

It is what edgeci's embedded default composes (edgeci.composer.local) and what the boot test boots.
This docstring is the contract between the two sides (docs/testos.md describes it for maintainers).

Tree of a composed commit (no /etc at the top: usr/etc; ostree admin deploy makes /etc of it)
  usr/lib/modules/<kver>/vmlinuz         Debian's linux-image kernel (edgeci.testos.kernel)
  usr/lib/modules/<kver>/initramfs.img   gzip'd newc cpio: busybox-static, virtio/virtio_pci/virtio_blk,
                                         crc32c_generic, crc16, mbcache, jbd2, ext4 (computed from .modinfo)
                                         and /init = a minimal ostree-prepare-root (below)
  usr/bin/busybox + applet links in usr/bin and usr/sbin; bin -> usr/bin, sbin -> usr/sbin, lib -> usr/lib,
  ostree -> sysroot/ostree, home -> var/home, root -> var/roothome; empty sysroot/, var/, boot/, run/, …
  usr/sbin/init                          the test OS init (below)
  usr/lib/os-release                     NAME="edgeci test OS", ID=edgeci-testos, VERSION=<blueprint version>,
                                         IMAGE_ID=<blueprint name>, IMAGE_VERSION=<blueprint version> (unquoted)
  usr/etc/os-release -> ../lib/os-release
  usr/etc/passwd, group, shadow, gshadow base accounts (root, nobody; root, wheel, users … groups) plus
                                         [[customizations.user]] / [[customizations.group]], hashes kept
  usr/etc/hostname, timezone, localtime, locale.conf, vconsole.conf (from customizations)
  usr/etc/systemd/system/multi-user.target.wants/<unit>   symlinks for customizations.services.enabled
  usr/etc/greenboot/check/required.d/NN-<name>.sh and wanted.d/NN-<name>.sh
                                         one executable script per check of blueprints/<name>.checks.yaml
                                         (edgeci.checks.render_scripts; NN = position in the file, 01…98)
  [[customizations.files]] / [[customizations.directories]] under /etc or /usr (owned by root)
Everything is owned by root. Blueprint fields the busybox OS cannot honour (packages, modules, groups,
containers, repositories, user keys, file owners, …) become compose warnings that name them.

Boot (kernel command line: console=ttyS0 panic=-1 root=/dev/vda ostree=/ostree/boot.N/OS/BOOTCSUM/SERIAL;
optional rootfstype=ext4 and edgeci.check_timeout=SECONDS, default 60)
  initramfs /init: mounts proc, sys, devtmpfs; sets kernel printk to 1 (kernel messages stay off the
  console); insmods the modules in dependency order; waits up to 10 s for root= (default /dev/vda);
  mounts it (ext4, rw) at /sysroot; resolves the ostree= symlink to /sysroot/ostree/deploy/OS/deploy/CHECKSUM.SERIAL;
  bind-mounts that deployment at /newroot, the sysroot at /newroot/sysroot, /ostree/deploy/OS/var at
  /newroot/var, /newroot/usr read-only; mounts a tmpfs on /newroot/run and writes /run/edgeci/booted
  (CHECKSUM), /run/edgeci/deployment (/ostree/deploy/OS/deploy/CHECKSUM.SERIAL) and /run/ostree-booted;
  moves proc/sys/dev and switch_roots to /sbin/init.
  On any failure it prints one line "edgeci-initramfs: error: <reason>" and powers off (no EDGECI- line).

Console protocol (printed by /sbin/init on ttyS0, one line each; nothing else starts with EDGECI-)
  EDGECI-BOOT commit=<CHECKSUM from /run/edgeci/booted> version=<VERSION from /etc/os-release>
  EDGECI-CHECK name=<name> kind=<required|wanted> result=<pass|fail> output=<base64 of the first 4096 bytes
               of the script's combined stdout+stderr, no line wrapping; empty when there was no output>
  EDGECI-DONE status=<healthy|unhealthy> passed=<N> failed=<M>
  then `sync; poweroff -f` (with qemu -no-reboot, qemu exits). Lines end in "\\r\\n" on the serial port.
  Checks: every executable regular file in /etc/greenboot/check/required.d, in name order, then wanted.d;
  each runs with stdin /dev/null under `timeout` (edgeci.check_timeout); exit 0 = pass. name is the file
  name without a leading "NN-" and a trailing ".sh" (other characters than [A-Za-z0-9._-] become "_").
  status is unhealthy when a required check failed; failed counts required and wanted failures.
  The boot test injects a failure by writing an executable required.d/99-edgeci-injected-failure.sh into a
  deployment's /etc (it is reported as name=edgeci-injected-failure).

Booting it fast under TCG: qemu -kernel accepts the uncompressed kernel too (PVH entry), which skips the
in-guest xz decompression of the bzImage (~4.5 s of a ~10 s TCG boot): edgeci.testos.kernel.extract_vmlinux
(vmlinuz, dest) writes it (0.9 s, cache it by the vmlinuz's sha256). `-net none` spares the NIC option ROM.
Measured here (2 cores, TCG, q35, -m 512, other jobs running): bzImage 10-15 s, PVH vmlinux 5-6 s to poweroff.
A disk: mkfs.ext4 -d SYSROOT disk.img 256M keeps ownership (uid/gid 0) and the hard links of the checkout.

Check kinds that need no running system can be evaluated on a deployed tree: edgeci.checks.evaluate_in_tree.
"""

from __future__ import annotations

import struct
from pathlib import Path

from edgeci.errors import ToolError
from edgeci.tools.run import run, which


def find_busybox() -> Path:
    """The static busybox (busybox-static); a dynamically linked one cannot run in the initramfs or the
    edge-container image."""
    path = Path(which("busybox")).resolve()
    if not is_static(path):
        raise ToolError(f"busybox at {path} is dynamically linked", fix="install it: apt-get install busybox-static")
    return path


def is_static(path: Path) -> bool:
    """True for an ELF executable without a PT_INTERP program header (no dynamic loader)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff = struct.unpack_from("<Q", head, 0x20)[0]
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def applets(busybox: Path) -> list[str]:
    """Applet install paths as busybox lists them (usr/bin/[, sbin/ifconfig, bin/sh, …)."""
    out = run([str(busybox), "--list-full"], timeout=30).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]
