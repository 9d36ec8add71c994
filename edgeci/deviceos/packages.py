"""Blueprint package names (RHEL/Fedora) → Debian 12 package names, for the real-package device OS.

The device OS is built from Debian packages, so a blueprint's `[[packages]]` must be translated. The table
is explicit: a name that is not in it (or in the project's `composer.local.package_map`) is a compose error
that names it, never a silent skip — the record's package list must be what the blueprint asked for.

A value of EDGECI means the device OS already carries edgeci's own equivalent (greenboot: edgeci ships a
greenboot stand-in, docs/testos.md); None means the name is an RHEL-only meta package with nothing to
install on Debian (its function is in the base, e.g. the kernel's firmware).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from edgeci.errors import BlueprintError

EDGECI = "@edgeci"

# RHEL/Fedora name -> Debian name (str), EDGECI, or None (nothing to install on Debian).
PACKAGE_MAP: dict[str, str | None] = {
    # networking
    "NetworkManager": "network-manager",
    "NetworkManager-wifi": "network-manager",
    "NetworkManager-wwan": "modemmanager",
    "firewalld": "firewalld",
    "iptables": "iptables",
    "nftables": "nftables",
    "iproute": "iproute2",
    "iputils": "iputils-ping",
    "openssh-server": "openssh-server",
    "openssh-clients": "openssh-client",
    "chrony": "chrony",
    "curl": "curl",
    "wget": "wget",
    "bind-utils": "bind9-dnsutils",
    "tcpdump": "tcpdump",
    "wpa_supplicant": "wpasupplicant",
    # containers
    "podman": "podman",
    "buildah": "buildah",
    "skopeo": "skopeo",
    "container-selinux": None,
    "containernetworking-plugins": "containernetworking-plugins",
    # system
    "sudo": "sudo",
    "bash-completion": "bash-completion",
    "vim-minimal": "vim-tiny",
    "vim-enhanced": "vim",
    "nano": "nano",
    "less": "less",
    "jq": "jq",
    "rsync": "rsync",
    "tar": "tar",
    "gzip": "gzip",
    "zstd": "zstd",
    "python3": "python3",
    "cockpit": "cockpit",
    "cockpit-ws": "cockpit-ws",
    "tmux": "tmux",
    "htop": "htop",
    "lvm2": "lvm2",
    "cryptsetup": "cryptsetup",
    "e2fsprogs": "e2fsprogs",
    "xfsprogs": "xfsprogs",
    "dosfstools": "dosfstools",
    "policycoreutils": None,
    "selinux-policy-targeted": None,
    "linux-firmware": None,
    "microcode_ctl": None,
    "rpm-ostree": None,
    "greenboot": EDGECI,
    "greenboot-default-health-checks": EDGECI,
    "redhat-release": None,
    "fedora-release-iot": None,
    # kiosk
    "cage": "cage",
    "firefox": "firefox-esr",
    "google-noto-sans-fonts": "fonts-noto-core",
    "dejavu-sans-fonts": "fonts-dejavu-core",
    "mesa-dri-drivers": "libgl1-mesa-dri",
}


@dataclass
class PackagePlan:
    """What the device OS installs for a blueprint."""

    debian: list[str] = field(default_factory=list)  # sorted, unique
    provided: list[str] = field(default_factory=list)  # blueprint names edgeci's own base provides
    nothing: list[str] = field(default_factory=list)  # RHEL-only names with nothing to install
    mapping: dict[str, str] = field(default_factory=dict)  # blueprint name -> what stands for it


def blueprint_package_names(data: Mapping[str, object]) -> list[str]:
    """The names of [[packages]] and [[modules]] (modules are package names to osbuild too)."""
    out: list[str] = []
    for section in ("packages", "modules"):
        items = data.get(section)
        for item in items if isinstance(items, list) else []:
            if isinstance(item, Mapping) and item.get("name"):
                out.append(str(item["name"]))
    return out


def plan(names: Iterable[str], extra: Mapping[str, str | None] | None = None, *,
         where: str = "blueprint") -> PackagePlan:
    """Map every blueprint package name; BlueprintError naming every unmapped one."""
    table = {**PACKAGE_MAP, **(extra or {})}
    result = PackagePlan()
    unmapped = []
    debian: set[str] = set()
    for name in names:
        if name not in table:
            unmapped.append(name)
            continue
        value = table[name]
        if value == EDGECI:
            result.provided.append(name)
            result.mapping[name] = "edgeci greenboot stand-in"
        elif value is None or value == "":
            result.nothing.append(name)
            result.mapping[name] = "(nothing on Debian)"
        else:
            debian.add(value)
            result.mapping[name] = value
    if unmapped:
        raise BlueprintError(
            f"no Debian package is known for {', '.join(sorted(set(unmapped)))} "
            "(the local composer builds a Debian 12 device OS)", where=f"{where} [[packages]]",
            fix="add the Debian name under composer.local.package_map in edgeci.yaml "
                "(e.g. package_map: {NAME: debian-name}), or use an Image Builder backend")
    result.debian = sorted(debian)
    return result
