"""virsh and virt-install wrappers (libvirt boot-test backend), one function per subcommand."""

from __future__ import annotations

import re
from collections.abc import Callable

from edgeci.tools.run import Completed, run

Runner = Callable[..., Completed]


def virsh_argv(uri: str, *args: str) -> list[str]:
    return ["virsh", "--connect", uri, *args]


def domstate(uri: str, name: str, *, runner: Runner = run) -> str | None:
    """'running', 'shut off', … or None when no such domain is defined."""
    r = runner(virsh_argv(uri, "domstate", name), timeout=60, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def destroy(uri: str, name: str, *, runner: Runner = run) -> Completed:
    """Power the domain off at once (not an error when it is not running)."""
    return runner(virsh_argv(uri, "destroy", name), timeout=120, check=False)


def undefine(uri: str, name: str, *, runner: Runner = run) -> Completed:
    """Remove the domain and every disk it owns (and its UEFI vars, if any)."""
    return runner(virsh_argv(uri, "undefine", name, "--remove-all-storage", "--nvram"), timeout=300,
                  check=False)


_IPV4_RE = re.compile(r"\bipv4\s+(\d+\.\d+\.\d+\.\d+)/\d+")


def parse_domifaddr(text: str) -> str | None:
    """The first IPv4 address in `virsh domifaddr` output."""
    m = _IPV4_RE.search(text)
    return m.group(1) if m else None


def domifaddr(uri: str, name: str, *, runner: Runner = run) -> str | None:
    r = runner(virsh_argv(uri, "domifaddr", name, "--source", "lease"), timeout=60, check=False)
    return parse_domifaddr(r.stdout) if r.returncode == 0 else None


def virt_install(argv: list[str], *, timeout: float, runner: Runner = run) -> Completed:
    return runner(argv, timeout=timeout, check=True)
