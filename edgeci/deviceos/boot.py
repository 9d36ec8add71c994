"""How the real-package device boots, updates and falls back: the files the device OS carries.

- The initramfs: busybox (static), the virtio/ext4 modules, and Debian's own `ostree-prepare-root` with the
  libraries it links; /init mounts the root partition (LABEL=edgeci-root), runs ostree-prepare-root on it and
  switches root to systemd.
- GRUB (Debian's grub-efi-amd64, a standalone EFI image on the ESP) reads the boot partition: a static
  /grub/grub.cfg that sources the menu ostree generates on every deployment change (/loader/grub.cfg, written
  by grub-mkconfig through ostree-boot's 15_ostree, as on RHEL 9) and implements greenboot's boot counter the
  way Fedora's grub2 does (boot_counter / boot_success in grubenv): a deployment that does not reach a green
  boot within the counted tries falls back to the previous deployment (default=1).
- edgeci's greenboot stand-in (greenboot is not packaged for Debian): the unit and script names are
  greenboot's (greenboot-healthcheck.service runs /etc/greenboot/check/required.d and wanted.d, then
  green.d or red.d; a red boot with a boot counter set reboots; after a fallback,
  greenboot-rpm-ostree-grub2-check-fallback.service makes the running deployment the default, as
  `rpm-ostree rollback` does, here by undeploying the failed deployment), so the SSH driver reads the same units
  on this device and on RHEL.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from edgeci.tools.run import run, which

BOOT_LABEL = "edgeci-boot"
ROOT_LABEL = "edgeci-root"
ESP_LABEL = "EDGECI-ESP"
GRUBENV = "/boot/grub/grubenv"
# greenboot's default is 3 tries; the device OS boots the candidate once before falling back (boot time
# under emulation); GREENBOOT_MAX_BOOT_ATTEMPTS in /etc/greenboot/greenboot.conf changes it per device.
MAX_BOOT_ATTEMPTS = 1
RESULTS_DIR = "/var/lib/greenboot/boots"  # <boot_id>/{status,<kind>.<script>}: kept across reboots

INITRAMFS_INIT = r"""#!/bin/busybox sh
# edgeci device OS initramfs: load the disk drivers, mount the root partition, let ostree-prepare-root
# set up the deployment named by ostree=, switch to systemd.
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "edgeci-initramfs: error: $*"; sleep 2; poweroff -f; }
while read -r module; do
    [ -n "$module" ] && { insmod "/lib/modules/$module" || fail "insmod $module failed"; }
done < /etc/modules.order
root=
for arg in $(cat /proc/cmdline); do
    case "$arg" in root=*) root=${arg#root=} ;; esac
done
[ -n "$root" ] || root=LABEL=@ROOT_LABEL@
i=0
while :; do
    dev=$(findfs "$root" 2>/dev/null) && [ -b "$dev" ] && break
    i=$((i + 1)); [ $i -gt 100 ] && fail "no root device $root"
    sleep 0.1
done
mkdir -p /sysroot
mount -t ext4 -o rw "$dev" /sysroot || fail "cannot mount $dev"
/usr/lib/ostree/ostree-prepare-root /sysroot || fail "ostree-prepare-root failed"
umount /sys /dev 2>/dev/null
mount --move /proc /sysroot/proc 2>/dev/null || umount /proc
exec switch_root /sysroot /sbin/init
""".replace("@ROOT_LABEL@", ROOT_LABEL)

# The ESP's GRUB (embedded in the standalone image): find the boot partition, read its grub.cfg.
GRUB_EARLY_CFG = f"""search --no-floppy --label --set=root {BOOT_LABEL}
set prefix=($root)/grub
configfile ($root)/grub/grub.cfg
"""

# The boot partition's static /grub/grub.cfg. The counting is Fedora's 08_fallback_counting (GRUB has no
# arithmetic: the counter is decremented by cases), run after ostree's menu is read so that its entries exist.
GRUB_CFG = """# edgeci device OS: written at install, never regenerated. ostree writes the menu (/loader/grub.cfg).
set timeout=0
set default=0
insmod ext2
insmod loadenv
# ostree's menu entries call load_video (grub-mkconfig's 00_header defines it): a serial-console device has none
function load_video {
  set gfxpayload=text
}
if [ -f /loader/grub.cfg ]; then
  source /loader/grub.cfg
fi
if [ -f /grub/grubenv ]; then
  load_env -f /grub/grubenv
  if [ -n "${boot_counter}" -a "${boot_success}" = "0" ]; then
    if [ "${boot_counter}" = "0" -o "${boot_counter}" = "-1" ]; then
      set default=1
      set boot_counter=-1
    elif [ "${boot_counter}" = "1" ]; then set boot_counter=0
    elif [ "${boot_counter}" = "2" ]; then set boot_counter=1
    elif [ "${boot_counter}" = "3" ]; then set boot_counter=2
    else set boot_counter=3
    fi
    save_env -f /grub/grubenv boot_counter
  fi
  set boot_success=0
  save_env -f /grub/grubenv boot_success
fi
"""

GREENBOOT_CONF = f"""# edgeci device OS: greenboot stand-in settings (the names are greenboot's)
GREENBOOT_MAX_BOOT_ATTEMPTS={MAX_BOOT_ATTEMPTS}
"""

# /usr/libexec/greenboot/greenboot: run the checks, record each result, then green.d or red.d.
GREENBOOT = r"""#!/bin/sh
# edgeci's stand-in for greenboot (not packaged for Debian): same directories, same exit semantics.
# Each check's result is also kept in /var/lib/greenboot/boots/<boot id>/<kind>.<script> (exit code, then
# output) and the verdict in .../status (green | red), so a boot that was rolled back can still be read.
set -u
boot_id=$(cat /proc/sys/kernel/random/boot_id)
results=@RESULTS@/$boot_id
mkdir -p "$results"
rm -f "$results"/*
failed=0
for kind in required wanted; do
    for script in /etc/greenboot/check/$kind.d/*; do
        [ -f "$script" ] && [ -x "$script" ] || continue
        name=$(basename "$script")
        out=$("$script" 2>&1); rc=$?
        printf '%s\n%s\n' "$rc" "$out" | head -c 4200 > "$results/$kind.$name"
        if [ "$rc" -ne 0 ]; then
            echo "greenboot: $kind check $name FAILED (exit $rc): $out" | head -c 600
            [ "$kind" = required ] && failed=1
        else
            echo "greenboot: $kind check $name passed"
        fi
    done
done
if [ "$failed" -eq 0 ]; then
    for script in /etc/greenboot/green.d/*; do [ -x "$script" ] && "$script"; done
    grub-editenv @GRUBENV@ set boot_success=1
    grub-editenv @GRUBENV@ unset boot_counter
    echo green > "$results/status"
    echo "greenboot: boot is GREEN"
    exit 0
fi
for script in /etc/greenboot/red.d/*; do [ -x "$script" ] && "$script"; done
echo red > "$results/status"
sync
echo "greenboot: boot is RED"
if grub-editenv @GRUBENV@ list | grep -q '^boot_counter='; then
    echo "greenboot: boot counter set: rebooting"
    systemctl reboot --no-block
fi
exit 1
""".replace("@RESULTS@", RESULTS_DIR).replace("@GRUBENV@", GRUBENV)

# After GRUB fell back (boot_counter=-1): make the running deployment the default, as greenboot's
# greenboot-rpm-ostree-grub2-check-fallback does with `rpm-ostree rollback`. ostree 2022.7 has no rollback verb:
# the failed deployment (the default, index 0, which is not the booted one) is undeployed, so the running one
# becomes the default (rpm-ostree would keep the failed one as the rollback entry instead).
CHECK_FALLBACK = r"""#!/bin/sh
set -eu
grub-editenv @GRUBENV@ list | grep -q '^boot_counter=-1$' || exit 0
echo "greenboot: the bootloader fell back to the previous deployment: making it the default"
if ostree admin status | head -n 1 | grep -q '^\* '; then
    echo "greenboot: the booted deployment is already the default"
else
    ostree admin undeploy 0
    echo "greenboot: undeployed the failed deployment; the running one is the default"
fi
grub-editenv @GRUBENV@ unset boot_counter
""".replace("@GRUBENV@", GRUBENV)

# Set by the device's update step (greenboot-grub2-set-counter does it when an update is staged).
SET_COUNTER = r"""#!/bin/sh
set -eu
. /etc/greenboot/greenboot.conf
grub-editenv @GRUBENV@ set boot_counter="${GREENBOOT_MAX_BOOT_ATTEMPTS:-3}" boot_success=0
""".replace("@GRUBENV@", GRUBENV)

UNITS = {
    "greenboot-healthcheck.service": """[Unit]
Description=greenboot Health Checks Runner (edgeci stand-in)
After=multi-user.target greenboot-rpm-ostree-grub2-check-fallback.service
Wants=greenboot-rpm-ostree-grub2-check-fallback.service
RequiresMountsFor=/boot

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/libexec/greenboot/greenboot

[Install]
WantedBy=multi-user.target
""",
    "greenboot-rpm-ostree-grub2-check-fallback.service": """[Unit]
Description=greenboot: make the fallback deployment the default (edgeci stand-in)
RequiresMountsFor=/boot /sysroot
After=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/libexec/greenboot/greenboot-rpm-ostree-grub2-check-fallback

[Install]
WantedBy=multi-user.target
""",
    # Debian's openssh-server generates host keys in its postinst: the device OS ships none (every device
    # would share them) and makes its own on first boot.
    "edgeci-ssh-keygen.service": """[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key

[Install]
WantedBy=multi-user.target
""",
}

NETWORK = """[Match]
Name=en* eth*

[Network]
DHCP=yes
"""

SSHD_CONFIG = """# edgeci device OS: keys from the blueprint (and the boot test's throwaway key) live in /etc
AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys.d/%u
# one host key, made on first boot (RSA key generation costs seconds on a small device)
HostKey /etc/ssh/ssh_host_ed25519_key
"""

DEFAULT_GRUB = """# edgeci device OS: only 15_ostree writes the menu (the boot partition's static grub.cfg sources it)
GRUB_TIMEOUT=0
GRUB_DISABLE_OS_PROBER=true
GRUB_DISABLE_RECOVERY=true
"""


def grub_efi_image(cache_dir: Path) -> Path:
    """BOOTX64.EFI: Debian's GRUB as one standalone EFI binary with GRUB_EARLY_CFG embedded, cached by the
    GRUB package version and the config."""
    mkstandalone = which("grub-mkstandalone")
    modules = Path("/usr/lib/grub/x86_64-efi")
    if not (modules / "linux.mod").is_file():
        from edgeci.errors import ToolError

        raise ToolError("GRUB's x86_64-efi modules are missing", where=str(modules),
                        fix="apt-get install grub-efi-amd64-bin")
    stamp = hashlib.sha256(GRUB_EARLY_CFG.encode() + (modules / "linux.mod").read_bytes()).hexdigest()[:16]
    out = cache_dir / "deviceos" / f"BOOTX64-{stamp}.EFI"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    early = out.with_suffix(".cfg")
    early.write_text(GRUB_EARLY_CFG)
    part = out.with_name(out.name + ".part")
    run([mkstandalone, "-O", "x86_64-efi", "--locales=", "--themes=", "--fonts=",
         "--modules=part_gpt ext2 fat search search_label loadenv linux test echo configfile normal gzio",
         "-o", str(part), f"boot/grub/grub.cfg={early}"], timeout=120)
    os.replace(part, out)
    early.unlink(missing_ok=True)
    return out


def ovmf_firmware() -> Path:
    for p in ("/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd"):
        if Path(p).is_file():
            return Path(p)
    from edgeci.errors import ToolError

    raise ToolError("no UEFI firmware for qemu (OVMF.fd)", fix="apt-get install ovmf")

