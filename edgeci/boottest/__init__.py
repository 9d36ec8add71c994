"""Boot tests: the candidate installed, upgraded from production and rolled back on a guest.

Guests behind one interface (guest.Guest): sysroot_guest (no VM), qemu_guest (the busybox test OS, a VM per
boot, edgeci as the bootloader), device_guest (a real device in qemu: its own disk, GRUB, SSH), libvirt_guest
(virt-install + SSH on a KVM host); the last two share one SSH driver (ssh_device). scenarios.py runs
install/upgrade/rollback on any of them; edgeci.stages.boot_test is the stage's glue. Backends are chosen here by
name (BACKENDS); "auto" is device for the local device OS, else qemu when it is installed, else sysroot.

Add a backend: a Guest subclass with TOOLS and a for_scenario() constructor, registered in BACKENDS.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeci.boottest.guest import Guest
    from edgeci.record import Candidate

# name -> (module, Guest class); imported only when chosen
BACKENDS: dict[str, tuple[str, str]] = {
    "sysroot": ("edgeci.boottest.sysroot_guest", "SysrootGuest"),
    "device": ("edgeci.boottest.device_guest", "DeviceGuest"),
    "qemu": ("edgeci.boottest.qemu_guest", "QemuGuest"),
    "libvirt": ("edgeci.boottest.libvirt_guest", "LibvirtGuest"),
}


def guest_class(backend: str) -> Any:
    from edgeci.errors import ConfigError

    if backend not in BACKENDS:
        raise ConfigError(f"unknown boot-test backend '{backend}'", where="boot_test.backend",
                          fix=f"use auto or one of: {', '.join(BACKENDS)}")
    module, cls = BACKENDS[backend]
    return getattr(importlib.import_module(module), cls)


def choose_backend(requested: str, cfg: Any = None, *, composed_os: str | None = None) -> str:
    """The backend to run: `requested`, or for "auto": device when the candidate is the local composer's device OS
    (a commit with sshd and a bootloader: `composed_os`, from the compose record; without a record, what the config
    would build), else the first of qemu, sysroot whose tools are installed."""
    from edgeci.tools.run import have

    if requested != "auto":
        guest_class(requested)
        return requested
    if composed_os is None and cfg is not None and cfg.composer.backend == "local":
        composed_os = cfg.composer.os
    if composed_os == "device":
        return "device"
    return "qemu" if all(have(t) for t in guest_class("qemu").TOOLS) else "sysroot"


def require_tools(backend: str) -> None:
    """ToolError naming the first program the backend needs that is not installed."""
    from edgeci.tools.run import which

    for prog in guest_class(backend).TOOLS:
        which(prog)


def osname_for(distro: str) -> str:
    """The ostree stateroot a device of this distro uses (rhel-9 → rhel, fedora-40 → fedora-iot)."""
    base = distro.split("-")[0] or "rhel"
    return "fedora-iot" if base == "fedora" else base


def guest_factory(cfg: Any, backend: str, base_dir: Path, osname: str, candidate: Candidate, record_name: str,
                  scripts: dict[str, str]) -> Callable[[str], Guest]:
    """scenario name -> a fresh guest of `backend` working in base_dir/<scenario>."""
    cls = guest_class(backend)

    def factory(scenario: str) -> Guest:
        guest: Guest = cls.for_scenario(cfg, base_dir / scenario, osname=osname, candidate=candidate,
                                        vm_name=f"edgeci-{record_name}-{scenario}", scripts=scripts)
        return guest

    return factory
