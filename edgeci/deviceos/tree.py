"""From a Debian root filesystem to an ostree commit tree that honours the blueprint.

`build_device_tree(root, rootfs_tar, …)` unpacks the cached mmdebstrap tar and reshapes it the way
rpm-ostree/osbuild shape an edge commit: /etc shipped as /usr/etc, /var empty (systemd-tmpfiles recreates it),
/home, /root, /opt, /srv, /mnt under /var, the kernel and the initramfs in /usr/lib/modules/<kver>/, no SSH
host keys and an empty machine-id. Then the blueprint: users and groups (Debian's own useradd/groupadd in the
tree), SSH keys (/etc/ssh/authorized_keys.d/<user>), services enabled/disabled/masked (`systemctl --root`; a
unit that does not exist is a compose error), files and directories, hostname, timezone, NTP servers, locale,
and the checks file as greenboot scripts.
The package list returned is dpkg's: what is really installed.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeci.checks import ChecksFile, render_scripts
from edgeci.deviceos import boot
from edgeci.errors import BlueprintError, ToolError
from edgeci.testos.tree import _write, apply_files
from edgeci.tools.run import run

# Kernel module trees a virtio VM (or a small x86 edge box) does not use: dropped to keep the commit lean.
DROP_MODULE_DIRS = ("drivers/gpu", "drivers/media", "drivers/net/wireless", "drivers/net/ethernet",
                    "drivers/infiniband", "drivers/staging", "drivers/iio", "drivers/comedi", "drivers/isdn",
                    "drivers/bluetooth", "net/bluetooth", "net/wireless", "net/mac80211", "sound")
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
# Units that only cost boot time on a test device.
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "e2scrub_reap.service",
                "fstrim.timer", "systemd-networkd-wait-online.service", "NetworkManager-wait-online.service",
                "getty@tty1.service", "getty-static.service",
                "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount", "sys-kernel-debug.mount",
                "sys-kernel-tracing.mount", "dev-hugepages.mount", "dev-mqueue.mount", "man-db.timer")
UNHONOURED = ("firewall", "installation_device", "fdo", "ignition", "fips", "openscap", "partitioning_mode",
              "disk", "filesystem", "installer", "rhsm", "cacerts", "containers")


@dataclass
class DeviceTree:
    root: Path
    kver: str
    packages: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _run_in(root: Path, *argv: str) -> None:
    run(["chroot", str(root), *argv], timeout=300)


def _dpkg_packages(root: Path) -> list[dict[str, str]]:
    r = run(["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W",
             "-f=${Package}\t${Version}\t${Architecture}\t${db:Status-Status}\n"], timeout=120)
    out = []
    for line in r.stdout.splitlines():
        name, version, arch, status = ([*line.split("\t"), "", "", ""])[:4]
        if status != "installed":
            continue
        version = version.split(":", 1)[-1]
        upstream, _, release = version.rpartition("-") if "-" in version else (version, "", "")
        out.append({"name": name, "version": upstream, "release": release, "arch": arch})
    return sorted(out, key=lambda p: p["name"])


def _kernel_version(root: Path) -> str:
    versions = sorted(p.name for p in (root / "usr/lib/modules").iterdir() if p.is_dir())
    if len(versions) != 1:
        raise ToolError(f"the device OS tree has {len(versions)} kernels ({', '.join(versions) or 'none'}), "
                        "expected one", where=str(root / "usr/lib/modules"))
    return versions[0]


def _move_kernel(root: Path, kver: str) -> Path:
    mods = root / "usr/lib/modules" / kver
    src = root / "boot" / f"vmlinuz-{kver}"
    if not src.is_file():
        raise ToolError(f"no kernel image boot/vmlinuz-{kver} in the device OS tree", where=str(root))
    shutil.move(src, mods / "vmlinuz")
    for p in list((root / "boot").iterdir()):
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for name in ("vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"):
        p = root / name
        if p.is_symlink() or p.exists():
            p.unlink()
    for d in DROP_MODULE_DIRS:
        shutil.rmtree(mods / "kernel" / d, ignore_errors=True)
    _run_in(root, "depmod", kver)
    return mods


def _tree_file(root: Path, rel: str) -> Path:
    """`rel` inside the tree with every symlink resolved inside the tree (the usr-merged /lib → usr/lib)."""
    from edgeci.checks import resolve_in_tree

    p = resolve_in_tree(root, "/" + rel.lstrip("/"))
    if not p.is_file():
        raise ToolError(f"/{rel.lstrip('/')} is missing from the device OS tree", where=str(root))
    return p


def _initramfs(root: Path, kver: str, busybox: Path) -> bytes:
    """busybox + modules + ostree-prepare-root and the libraries it links, all from this tree."""
    from edgeci.testos.initramfs import Entry, _dir, _file, write_cpio
    from edgeci.testos.kernel import resolve_modules

    mods = root / "usr/lib/modules" / kver
    order = resolve_modules(mods, INITRAMFS_MODULES)
    prepare = "usr/lib/ostree/ostree-prepare-root"
    r = run(["chroot", str(root), "ldd", f"/{prepare}"], timeout=60)
    libs = sorted(set(re.findall(r"(/\S+\.so[.\d]*)\s", r.stdout + " ")))
    entries: list[Entry] = []
    dirs: set[str] = set()

    def add_dirs(rel: str) -> None:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                entries.append(_dir(d))

    for d in ("bin", "dev", "etc", "proc", "sys", "sysroot", "run", "tmp"):
        add_dirs(f"{d}/x")
    entries.append(Entry("dev/console", 0o020600, rdev=(5, 1)))
    entries.append(_file("init", boot.INITRAMFS_INIT.encode(), 0o755))
    entries.append(_file("bin/busybox", busybox.read_bytes(), 0o755))
    entries.append(_file("etc/modules.order", "".join(f"{kver}/{m}\n" for m in order).encode()))
    for m in order:
        rel = f"lib/modules/{kver}/{m}"
        add_dirs(rel)
        entries.append(_file(rel, (mods / m).read_bytes()))
    for rel in [prepare, *[lib.lstrip("/") for lib in libs]]:
        add_dirs(rel)
        entries.append(_file(rel, _tree_file(root, rel).read_bytes(), 0o755))
    return write_cpio(entries)


def _accounts(root: Path, cust: Mapping[str, Any]) -> None:
    existing_groups = {line.split(":")[0] for line in (root / "etc/group").read_text().splitlines() if line}
    for i, grp in enumerate(cust.get("group") or []):
        if not isinstance(grp, Mapping) or not grp.get("name"):
            raise BlueprintError(f"customizations.group[{i}] has no name")
        argv = ["groupadd"]
        if grp.get("gid") is not None:
            argv += ["-g", str(int(grp["gid"]))]
        if str(grp["name"]) not in existing_groups:
            _run_in(root, *argv, str(grp["name"]))
            existing_groups.add(str(grp["name"]))
    keys_dir = root / "etc/ssh/authorized_keys.d"
    for i, user in enumerate(cust.get("user") or []):
        if not isinstance(user, Mapping) or not user.get("name"):
            raise BlueprintError(f"customizations.user[{i}] has no name")
        name = str(user["name"])
        groups = [str(g) for g in user.get("groups") or []]
        for g in groups:
            if g not in existing_groups:  # wheel, say: RHEL has it, Debian does not
                _run_in(root, "groupadd", g)
                existing_groups.add(g)
        home = str(user.get("home") or f"/var/home/{name}").rstrip("/")
        if home.startswith("/home/"):
            home = "/var" + home
        argv = ["useradd", "-M", "-d", home, "-s", str(user.get("shell") or "/bin/bash")]
        if user.get("uid") is not None:
            argv += ["-u", str(int(user["uid"]))]
        if user.get("gid") is not None:
            argv += ["-g", str(int(user["gid"]))]
        if user.get("description"):
            argv += ["-c", str(user["description"])]
        if groups:
            argv += ["-G", ",".join(groups)]
        if user.get("password"):
            password = str(user["password"])
            if not password.startswith("$"):
                raise BlueprintError(f"customizations.user[{i}].password must be a crypt hash",
                                     fix="generate one with openssl passwd -6")
            argv += ["-p", password]
        _run_in(root, *argv, name)
        _write(root / "usr/lib/tmpfiles.d" / f"edgeci-home-{name}.conf",
               f"d {home} 0700 {name} {name} -\n")
        if user.get("key"):
            keys_dir.mkdir(parents=True, exist_ok=True)
            _write(keys_dir / name, str(user["key"]).strip() + "\n", 0o644)
    if "wheel" in existing_groups and (root / "etc/sudoers.d").is_dir():
        _write(root / "etc/sudoers.d/edgeci-wheel", "%wheel ALL=(ALL:ALL) ALL\n", 0o440)


def _unit_file_name(root: Path, unit: str) -> str:
    """The unit file an enable acts on: aliases (Debian's sshd.service → ssh.service) resolved."""
    name = unit if "." in unit else f"{unit}.service"
    for d in ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"):
        p = root / d / name
        if p.is_symlink() and not os.readlink(p).startswith("/dev/null"):
            return os.path.basename(os.readlink(p))
        if p.exists():
            return name
    return name


def _systemctl(root: Path, verb: str, units: list[str], what: str) -> None:
    for unit in units:
        if "/" in unit or not unit or unit.startswith("-"):
            raise BlueprintError(f"{what}: '{unit}' is not a unit name")
        r = run(["systemctl", f"--root={root}", verb, _unit_file_name(root, unit)], timeout=60, check=False)
        if r.returncode != 0:
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise BlueprintError(f"{what}: the device OS has no unit '{unit}' "
                                 f"({msg[-1] if msg else 'systemctl failed'})",
                                 fix="install the package that ships it ([[packages]]) or correct the name")


def _services(root: Path, cust: Mapping[str, Any]) -> None:
    services = cust.get("services")
    if not isinstance(services, Mapping):
        return
    enabled = [str(s) for s in services.get("enabled") or []]
    disabled = [str(s) for s in services.get("disabled") or []]
    masked = [str(s) for s in services.get("masked") or []]
    _systemctl(root, "enable", [s for s in enabled if s not in disabled], "customizations.services.enabled")
    _systemctl(root, "disable", disabled, "customizations.services.disabled")
    _systemctl(root, "mask", masked, "customizations.services.masked")


def _identity(root: Path, name: str, version: str, cust: Mapping[str, Any], warnings: list[str]) -> None:
    etc = root / "etc"
    _write(etc / "hostname", f"{cust.get('hostname') or name}\n")
    tz = cust.get("timezone") if isinstance(cust.get("timezone"), Mapping) else {}
    assert isinstance(tz, Mapping)
    zone = str(tz.get("timezone") or "UTC")
    if tz.get("timezone") and not (root / "usr/share/zoneinfo" / zone).is_file():
        raise BlueprintError(f"customizations.timezone.timezone: no zone '{zone}' in the device OS",
                             fix="use a name from /usr/share/zoneinfo such as Europe/Berlin")
    (etc / "localtime").unlink(missing_ok=True)
    os.symlink(f"/usr/share/zoneinfo/{zone}", etc / "localtime")
    _write(etc / "timezone", f"{zone}\n")
    ntp = [str(s) for s in tz.get("ntpservers") or []]
    if ntp:
        if (etc / "chrony").is_dir():
            _write(etc / "chrony/sources.d/edgeci.sources", "".join(f"server {s} iburst\n" for s in ntp))
        _write(etc / "systemd/timesyncd.conf.d/edgeci.conf", f"[Time]\nNTP={' '.join(ntp)}\n")
    locale = cust.get("locale") if isinstance(cust.get("locale"), Mapping) else {}
    assert isinstance(locale, Mapping)
    if locale.get("languages"):
        _write(etc / "default/locale", f"LANG={locale['languages'][0]}\n")
        _write(etc / "locale.conf", f"LANG={locale['languages'][0]}\n")
    if locale.get("keyboard"):
        _write(etc / "vconsole.conf", f"KEYMAP={locale['keyboard']}\n")
    kernel = cust.get("kernel") if isinstance(cust.get("kernel"), Mapping) else {}
    assert isinstance(kernel, Mapping)
    if kernel.get("name"):
        warnings.append(f"customizations.kernel.name ({kernel['name']}) not honoured: the device OS runs "
                        "Debian's linux-image-amd64")
    # os-release: Debian's own, plus the image's name and version (IMAGE_ID / IMAGE_VERSION)
    osr = root / "usr/lib/os-release"
    text = "".join(line + "\n" for line in osr.read_text().splitlines()
                   if not line.startswith(("IMAGE_ID=", "IMAGE_VERSION=")))
    osr.write_text(text + f"IMAGE_ID={name}\nIMAGE_VERSION={version}\n")


def _device_files(root: Path) -> None:
    etc = root / "etc"
    for rel in ("ssh_host_rsa_key", "ssh_host_ecdsa_key", "ssh_host_ed25519_key"):
        for suffix in ("", ".pub"):
            (etc / "ssh" / f"{rel}{suffix}").unlink(missing_ok=True)
    _write(etc / "machine-id", "")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    _write(etc / "fstab", f"LABEL={boot.BOOT_LABEL} /boot ext4 defaults 0 2\n")
    _write(etc / "ssh/sshd_config.d/edgeci.conf", boot.SSHD_CONFIG)
    (etc / "ssh/authorized_keys.d").mkdir(parents=True, exist_ok=True)
    _write(etc / "default/grub", boot.DEFAULT_GRUB)
    for script in (etc / "grub.d").iterdir():
        if script.is_file() and script.name != "15_ostree":
            script.chmod(0o644)  # grub-mkconfig runs only the executable ones
    _write(etc / "greenboot/greenboot.conf", boot.GREENBOOT_CONF)
    for d in ("check/required.d", "check/wanted.d", "green.d", "red.d"):
        (etc / "greenboot" / d).mkdir(parents=True, exist_ok=True)
    libexec = root / "usr/libexec/greenboot"
    _write(libexec / "greenboot", boot.GREENBOOT, 0o755)
    _write(libexec / "greenboot-rpm-ostree-grub2-check-fallback", boot.CHECK_FALLBACK, 0o755)
    _write(libexec / "greenboot-grub2-set-counter", boot.SET_COUNTER, 0o755)
    for unit, text in boot.UNITS.items():
        _write(root / "usr/lib/systemd/system" / unit, text)
    _write(root / "usr/lib/systemd/network/80-edgeci-dhcp.network", boot.NETWORK)
    has_nm = (root / "usr/lib/systemd/system/NetworkManager.service").is_file()
    units = [*boot.UNITS, "ssh.service"] + ([] if has_nm else ["systemd-networkd.service"])
    _systemctl(root, "enable", units, "device OS base units")
    for unit in MASKED_UNITS:
        if (root / "usr/lib/systemd/system" / unit).exists() or (root / "lib/systemd/system" / unit).exists():
            run(["systemctl", f"--root={root}", "mask", unit], timeout=60)
    _write(root / "usr/lib/tmpfiles.d/edgeci-ostree.conf",
           "d /var/home 0755 root root -\nd /var/roothome 0700 root root -\nd /var/opt 0755 root root -\n"
           "d /var/srv 0755 root root -\nd /var/mnt 0755 root root -\nd /var/lib/dbus 0755 root root -\n"
           "L /var/lib/dbus/machine-id - - - - /etc/machine-id\n")


def _ostree_layout(root: Path) -> None:
    """/etc → /usr/etc, an empty /var, the toplevel links an ostree deployment has."""
    shutil.move(root / "etc", root / "usr/etc")
    var = root / "var"
    shutil.rmtree(var)
    var.mkdir()
    for name, target in (("home", "var/home"), ("root", "var/roothome"), ("opt", "var/opt"), ("srv", "var/srv"),
                         ("mnt", "var/mnt"), ("media", "run/media"), ("ostree", "sysroot/ostree")):
        p = root / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.is_symlink() or p.exists():
            p.unlink()
        os.symlink(target, p)
    (root / "sysroot").mkdir(exist_ok=True)
    for d in ("boot", "proc", "sys", "dev", "run", "tmp"):
        (root / d).mkdir(exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    for p in [*(root / "tmp").iterdir(), *(root / "run").iterdir(), *(root / "dev").iterdir()]:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def build_device_tree(root: Path, rootfs_tar: Path, *, name: str, version: str, data: Mapping[str, Any],
                      checks: ChecksFile | None, busybox: Path) -> DeviceTree:
    """Write the device OS tree for a blueprint into `root` (must not exist)."""
    root.mkdir(parents=True)
    run(["tar", "-xf", str(rootfs_tar), "-C", str(root), "--numeric-owner", "--xattrs", "--xattrs-include=*"],
        timeout=900)
    cust_any = data.get("customizations")
    cust: Mapping[str, Any] = cust_any if isinstance(cust_any, Mapping) else {}
    result = DeviceTree(root=root, kver=_kernel_version(root))
    for key in sorted(cust):
        if key in UNHONOURED:
            result.warnings.append(f"customizations.{key} not honoured by the local composer's device OS")
    result.packages = _dpkg_packages(root)
    mods = _move_kernel(root, result.kver)
    _accounts(root, cust)
    _services(root, cust)
    _identity(root, name, version, cust, result.warnings)
    _device_files(root)
    if checks is not None:
        for rel, text in render_scripts(checks, version).items():
            _write(root / "etc/greenboot/check" / rel, text, 0o755)
    _write(mods / "initramfs.img", _initramfs(root, result.kver, busybox))
    _ostree_layout(root)
    apply_files(root, cust)
    return result
