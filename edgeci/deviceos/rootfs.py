"""The Debian 12 root filesystem of the real-package device OS, built with mmdebstrap and cached by package set.

`ensure_rootfs(packages)` returns a tar of a bookworm tree with the device's base packages (systemd, openssh,
ostree, the kernel, GRUB's tools) plus the blueprint's mapped packages. The tar is cached under
`<cache>/deviceos/<key>.tar`, the key being the sha256 of the package set, the apt sources and BUILD_SCHEMA;
a second compose of the same package set costs nothing. An unreachable mirror is an infrastructure error
(exit 2) naming the mirror — and saying that a cached tree of the same package set would have been used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgeci.errors import ToolError
from edgeci.locks import held
from edgeci.tools.run import run, which

SUITE = "bookworm"
BUILD_SCHEMA = 1
# What every device has: init and services, SSH for the boot test, ostree (with its boot integration:
# ostree-prepare-root, ostree-remount, 15_ostree for grub-mkconfig), the kernel, GRUB's tools (grub-mkconfig,
# grub-editenv, for greenboot's boot counter).
BASE_PACKAGES = (
    "systemd-sysv", "udev", "dbus", "openssh-server", "ostree", "ostree-boot", "linux-image-amd64", "kmod",
    "grub-common", "grub2-common", "iproute2", "tzdata",
)
DEFAULT_SOURCES = "/etc/apt/sources.list.d/debian.sources"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
# dpkg path excludes: documentation, manuals and translations are not part of a device
DPKG_EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/info/*", "/usr/share/locale/*",
                 "/usr/share/lintian/*")
DPKG_INCLUDES = ("/usr/share/locale/locale.alias", "/usr/share/doc/*/copyright")


@dataclass
class Rootfs:
    tar: Path
    key: str
    packages: list[str]
    sources: str  # what mmdebstrap was given as its mirror (a URL or a sources file)
    cached: bool


def sources_for(mirror: str = "") -> str:
    """The mirror argument for mmdebstrap: the configured URL, else the machine's own apt sources."""
    if mirror:
        return mirror
    if Path(DEFAULT_SOURCES).is_file():
        return DEFAULT_SOURCES
    if Path("/etc/apt/sources.list").is_file() and Path("/etc/apt/sources.list").read_text().strip():
        return "/etc/apt/sources.list"
    return FALLBACK_MIRROR


def mirror_urls(sources: str) -> list[str]:
    """The http(s) URLs a sources argument names (for error messages)."""
    text = Path(sources).read_text(encoding="utf-8", errors="replace") if Path(sources).is_file() else sources
    return sorted(set(re.findall(r"https?://[^\s\]]+", text))) or [sources]


def cache_key(packages: list[str], sources: str) -> str:
    text = Path(sources).read_text(encoding="utf-8", errors="replace") if Path(sources).is_file() else sources
    blob = json.dumps({"schema": BUILD_SCHEMA, "suite": SUITE, "packages": sorted(set(packages)),
                       "sources": text}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def ensure_rootfs(extra_packages: list[str], *, cache_dir: Path, mirror: str = "",
                  timeout: float = 1800.0) -> Rootfs:
    """The cached tar for BASE_PACKAGES + extra_packages, built with mmdebstrap when missing."""
    packages = sorted(set(BASE_PACKAGES) | set(extra_packages))
    sources = sources_for(mirror)
    key = cache_key(packages, sources)
    directory = cache_dir / "deviceos"
    directory.mkdir(parents=True, exist_ok=True)
    tar = directory / f"rootfs-{key}.tar"
    with held(directory / f".rootfs-{key}.lock", timeout, on_timeout=lambda holder: ToolError(
            f"another compose has been building this device OS tree for {timeout:g} s ({holder})",
            where=str(directory))):
        if tar.is_file():
            return Rootfs(tar, key, packages, sources, cached=True)
        which("mmdebstrap")
        part = directory / f".rootfs-{key}.part.tar"  # mmdebstrap picks the format from the suffix
        argv = ["mmdebstrap", "--variant=apt", "--mode=root", "--quiet", f"--include={','.join(packages)}"]
        argv += [f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES]
        argv += [f"--dpkgopt=path-include={p}" for p in DPKG_INCLUDES]
        argv += [SUITE, str(part), sources]
        r = run(argv, timeout=timeout, check=False)
        if r.returncode != 0:
            part.unlink(missing_ok=True)
            text = r.stderr + r.stdout
            others = sorted(p.name for p in directory.glob("rootfs-*.tar"))
            cached_note = (f"; cached trees for other package sets: {', '.join(others)}" if others
                           else "; no cached tree exists yet")
            if re.search(r"Could not (resolve|connect)|Failed to fetch|Temporary failure|Connection refused|"
                         r"Unable to connect|no such host|Network is unreachable|apt-get update .*failed", text):
                raise ToolError(
                    f"cannot reach the apt mirror {', '.join(mirror_urls(sources))} to build the device OS"
                    + cached_note,
                    where="composer.local.apt_mirror",
                    fix="make the mirror reachable or set composer.local.apt_mirror; a tree built once for the "
                        f"same package set is reused from {directory} without the network")
            missing = re.findall(r"Unable to locate package (\S+)|Package '?(\S+?)'? has no installation candidate",
                                 text)
            if missing:
                names = sorted({a or b for a, b in missing})
                raise ToolError(f"the apt mirror has no package {', '.join(names)}", where=sources,
                                fix="correct composer.local.package_map (Debian names)")
            unmet = re.findall(r"^\s*(\S+ : (?:Depends|Conflicts|Breaks|PreDepends): .*)$", text, re.MULTILINE)
            if unmet:
                raise ToolError(f"apt cannot install this package set: {'; '.join(u.strip() for u in unmet[:4])}",
                                where="blueprint [[packages]]",
                                fix="remove one of the conflicting packages from the blueprint")
            tail = "\n".join(text.strip().splitlines()[-5:])
            raise ToolError(f"mmdebstrap failed (exit {r.returncode}): {tail}", where=sources)
        os.replace(part, tar)
    return Rootfs(tar, key, packages, sources, cached=False)
