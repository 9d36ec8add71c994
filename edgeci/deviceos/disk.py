"""Install the device: a GPT disk image whose sysroot comes from a repository URL, the way an edge-raw-image or a
kickstart `ostreesetup` install makes one — then qemu boots the disk through UEFI and GRUB, not a kernel handed
to it.

Partitions: 1 ESP (FAT, GRUB as BOOTX64.EFI), 2 /boot (ext4, LABEL=edgeci-boot: ostree's kernels, BLS entries,
the GRUB menu ostree generates, grubenv), 3 the sysroot (ext4, LABEL=edgeci-root: /ostree/repo and the
deployments). The install runs as root inside a private mount namespace on tmpfs (never on the machine's own
filesystems: `ostree admin deploy` freezes the filesystem holding /boot), pulls REF@COMMIT over HTTP, deploys it,
writes the boot test's throwaway SSH key into the deployment's /etc, and
turns the two trees into filesystems with `mke2fs -d` (no loop device, no mount of an image).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgeci.deviceos import boot
from edgeci.errors import BootTestError
from edgeci.tools.run import run, which

MiB = 1024 * 1024
ESP_MB = 16
BOOT_MB = 256
ALIGN_MB = 1
TOOLS = ("ostree", "unshare", "mke2fs", "mkfs.vfat", "mcopy", "mmd", "sfdisk", "grub-editenv", "grub-mkstandalone")

INSTALL_SCRIPT = r"""
set -eu
S="$WORK/sysroot"
mkdir -p "$S"
mount -t tmpfs -o size=16g,mode=0755 edgeci-install "$S"
ostree admin init-fs "$S"
mount -t tmpfs -o size=2g,mode=0755 edgeci-boot "$S/boot"
ostree admin os-init --sysroot="$S" "$OSNAME"
R="$S/ostree/repo"
ostree --repo="$R" config set sysroot.bootloader none
ostree --repo="$R" remote add $GPG_OPT "$REMOTE" "$URL"
[ -z "$GPG_KEY" ] || ostree --repo="$R" remote gpg-import "$REMOTE" -k "$GPG_KEY"
ostree --repo="$R" pull "$REMOTE" "$REF@$COMMIT"
ostree admin deploy --sysroot="$S" --os="$OSNAME" --karg=root=LABEL=$ROOT_LABEL --karg=rw \
    --karg=console=ttyS0,115200 "$REMOTE:$REF"
D=$(ls -d "$S/ostree/deploy/$OSNAME/deploy/$COMMIT".*[0-9] | head -n 1)
[ -d "$D" ] || { echo "edgeci: the deployment of $COMMIT is missing" >&2; exit 1; }
if [ -n "$AUTHORIZED_KEY" ]; then
    mkdir -p "$D/etc/ssh/authorized_keys.d"
    printf '%s\n' "$AUTHORIZED_KEY" > "$D/etc/ssh/authorized_keys.d/root"
    chmod 0644 "$D/etc/ssh/authorized_keys.d/root"
fi
BV=$(readlink "$S/boot/loader" | sed -n 's/^loader\.\([01]\)$/\1/p')
[ -n "$BV" ] || { echo "edgeci: no boot loader entries were written" >&2; exit 1; }
GRUB2_BOOT_DEVICE_ID="$BOOT_LABEL" GRUB2_PREPARE_ROOT_CACHE="search --no-floppy --label --set=root $BOOT_LABEL" \
    ostree admin instutil grub2-generate --sysroot="$S" "$BV" > "$S/boot/loader.$BV/grub.cfg"
mkdir -p "$S/boot/grub"
cp "$WORK/grub.cfg" "$S/boot/grub/grub.cfg"
grub-editenv "$S/boot/grub/grubenv" create
ostree --repo="$R" config set sysroot.bootloader grub2
mke2fs -q -F -t ext4 -L "$BOOT_LABEL" -d "$S/boot" "$WORK/boot.img" "${BOOT_MB}M"
umount "$S/boot"
mke2fs -q -F -t ext4 -L "$ROOT_LABEL" -d "$S" "$WORK/root.img" "${ROOT_MB}M"
du -sk "$S" | cut -f1 > "$WORK/sysroot.kb"
"""


@dataclass
class InstalledDisk:
    path: Path
    size: int
    sysroot_bytes: int


def _esp(work: Path, efi: Path) -> Path:
    esp = work / "esp.img"
    esp.unlink(missing_ok=True)
    run([which("mkfs.vfat"), "-n", boot.ESP_LABEL, "-C", str(esp), str(ESP_MB * 1024)], timeout=60)
    env = {"MTOOLS_SKIP_CHECK": "1"}
    run([which("mmd"), "-i", str(esp), "::/EFI", "::/EFI/BOOT"], timeout=60, env=env)
    run([which("mcopy"), "-i", str(esp), str(efi), "::/EFI/BOOT/BOOTX64.EFI"], timeout=60, env=env)
    return esp


def _copy_into(dst: Path, src: Path, offset: int) -> None:
    """Write src into dst at offset, leaving runs of zeros as holes (the images are mostly empty)."""
    block = 1024 * 1024
    zero = bytes(block)
    with open(src, "rb") as fi, open(dst, "r+b") as fo:
        pos = offset
        while True:
            data = fi.read(block)
            if not data:
                break
            if data != zero[: len(data)]:
                fo.seek(pos)
                fo.write(data)
            pos += len(data)


def assemble(disk: Path, esp: Path, boot_img: Path, root_img: Path) -> int:
    """A GPT disk with the three images as partitions 1–3; returns its size."""
    sizes = [os.path.getsize(p) for p in (esp, boot_img, root_img)]
    starts = []
    pos = ALIGN_MB * MiB
    for s in sizes:
        starts.append(pos)
        pos += -(-s // MiB) * MiB
    total = pos + MiB  # room for the backup GPT
    with open(disk, "wb") as f:
        f.truncate(total)
    layout = ["label: gpt"]
    types = ["C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "BC13C2FF-59E6-4262-A352-B275FD6F7172",
             "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"]
    names = ["ESP", "boot", "root"]
    for start, size, t, n in zip(starts, sizes, types, names, strict=True):
        layout.append(f"start={start // 512}, size={-(-size // MiB) * MiB // 512}, type={t}, name={n}")
    run([which("sfdisk"), "--quiet", str(disk)], input="\n".join(layout) + "\n", timeout=60)
    for start, img in zip(starts, (esp, boot_img, root_img), strict=True):
        _copy_into(disk, img, start)
    return total


def install(disk: Path, work: Path, *, url: str, remote: str, ref: str, commit: str, osname: str,
            authorized_key: str, efi: Path, root_mb: int = 4096, gpg_key: str = "") -> InstalledDisk:
    """Make `disk`: the commit pulled from `url` and deployed, GRUB on the ESP. Raises BootTestError with the
    install's own error line when a step fails (an unreachable URL says which)."""
    for tool in TOOLS:
        which(tool)
    work.mkdir(parents=True, exist_ok=True)
    (work / "grub.cfg").write_text(boot.GRUB_CFG)
    env = {"WORK": str(work), "OSNAME": osname, "REMOTE": remote, "URL": url, "REF": ref, "COMMIT": commit,
           "ROOT_LABEL": boot.ROOT_LABEL, "BOOT_LABEL": boot.BOOT_LABEL,
           "BOOT_MB": str(BOOT_MB), "ROOT_MB": str(root_mb), "AUTHORIZED_KEY": authorized_key,
           "GPG_OPT": "--set=gpg-verify=true" if gpg_key else "--no-gpg-verify", "GPG_KEY": gpg_key}
    r = run(["unshare", "--mount", "--propagation", "private", "sh", "-c", INSTALL_SCRIPT], env=env,
            timeout=1800, check=False)
    try:
        if r.returncode != 0:
            lines = [ln for ln in (r.stderr or r.stdout).strip().splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit {r.returncode}"
            raise BootTestError(f"installing {ref}@{commit[:12]} from {url} failed: {last}", where=url,
                                fix="check that the URL serves the repository and the commit")
        esp = _esp(work, efi)
        size = assemble(disk, esp, work / "boot.img", work / "root.img")
        kb = int((work / "sysroot.kb").read_text().strip() or 0)
    finally:
        for name in ("esp.img", "boot.img", "root.img", "grub.cfg", "sysroot.kb"):
            (work / name).unlink(missing_ok=True)
        (work / "sysroot").rmdir() if (work / "sysroot").is_dir() and not any((work / "sysroot").iterdir()) \
            else None
    return InstalledDisk(disk, size, kb * 1024)

