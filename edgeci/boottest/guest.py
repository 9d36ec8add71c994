"""The one Guest interface every boot-test backend implements (sysroot, qemu, libvirt), and its values.

A guest is a throwaway device: start() it, deploy() commits into it (each becomes the default boot
entry, the one before it the rollback entry), boot() the default and read what the running system
reports, prove_rollback() with a required check made to fail, stop() it (always: also on errors and
Ctrl-C). Failing checks are results; only infrastructure problems raise (BootTestError / ToolError).
Also here: the EDGECI- serial console protocol parser (docs/testos.md) and the `ostree pull` statistics.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import signal
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeci.fmt import human_bytes

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
# The greenboot script the rollback scenario writes into the candidate deployment's /etc (docs/testos.md).
INJECTED_CHECK_FILE = "99-edgeci-injected-failure.sh"
INJECTED_CHECK_NAME = "edgeci-injected-failure"
INJECTED_CHECK_SCRIPT = (
    "#!/bin/sh\n"
    "# written by edgeci boot-test (rollback scenario): a required check that always fails\n"
    "echo 'edgeci: injected failure (rollback scenario)'\n"
    "exit 1\n"
)
OUTPUT_LIMIT = 4096


@dataclass
class CheckReport:
    """One health check's result as the running system reported it."""

    name: str
    kind: str  # required | wanted
    passed: bool
    output: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "passed": self.passed, "output": self.output}


CheckResult = CheckReport  # the name the Guest interface is described with


@dataclass
class BootResult:
    """What one boot of the default (or previous) deployment showed.

    `running` is False for the sysroot backend, which reads the deployment instead of booting it:
    then `status` is None and only checks that do not need a running system can be evaluated, against
    `tree` (the deployment's root directory).
    """

    commit: str | None  # the booted (or, sysroot: default) deployment's checksum
    version: str | None
    status: str | None  # healthy | unhealthy | None (did not finish, or not a running system)
    checks: list[CheckReport] = field(default_factory=list)
    running: bool = True
    tree: Path | None = None
    expected_commit: str | None = None  # what the boot entry points at (edgeci as the bootloader)
    entry: str = ""  # the boot entry used ("default", "previous", a BLS file name, …)
    seconds: float = 0.0
    error: str = ""  # why the boot did not finish (timeout, VM exited, protocol error)
    log: str = ""  # console tail / command transcript for reports

    @property
    def finished(self) -> bool:
        return self.status in (HEALTHY, UNHEALTHY)

    def report(self, name: str) -> CheckReport | None:
        for c in self.checks:
            if c.name == name:
                return c
        return None

    def summary(self) -> str:
        bits = [f"entry={self.entry or 'default'}", f"commit={self.commit or '?'}",
                f"version={self.version or '?'}"]
        if self.running:
            bits.append(f"status={self.status or 'did not finish'}")
            bits.append(f"{sum(c.passed for c in self.checks)} passed, "
                        f"{sum(not c.passed for c in self.checks)} failed")
        bits.append(f"{self.seconds:.1f}s")
        return " ".join(bits)


@dataclass
class PullStats:
    """What `ostree pull` reported fetching (bytes transferred, delta parts vs objects)."""

    bytes: int | None = None
    delta_parts: int = 0
    metadata_objects: int = 0
    content_objects: int = 0
    loose_objects: int = 0
    text: str = ""
    rx_bytes: int | None = None  # what the device's network interfaces received during the update (device-side)

    @property
    def used_delta(self) -> bool:
        return self.delta_parts > 0

    def describe(self) -> str:
        size = "unknown size" if self.bytes is None else human_bytes(self.bytes)
        if self.used_delta:
            return f"{size} via {self.delta_parts} static delta part(s) + {self.loose_objects} loose object(s)"
        if self.metadata_objects or self.content_objects:
            return f"{size} as {self.metadata_objects} metadata + {self.content_objects} content objects"
        return f"{size} (nothing to fetch)" if self.bytes == 0 else size

    def as_dict(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "delta_parts": self.delta_parts, "used_delta": self.used_delta,
                "metadata_objects": self.metadata_objects, "content_objects": self.content_objects,
                "loose_objects": self.loose_objects, "rx_bytes": self.rx_bytes}


@dataclass
class DeployResult:
    commit: str
    pull: PullStats


@dataclass
class RollbackResult:
    """The rollback scenario's evidence.

    `candidate` is the boot with the injected failure (None when the backend cannot boot, or when the
    device handled it on its own: greenboot's reboots under libvirt); `previous` is the system running
    afterwards.
    """

    candidate: BootResult | None
    previous: BootResult
    detail: str = ""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While guests run, SIGTERM (a cancelled CI job) unwinds like Ctrl-C, so every finally-block that
    kills a VM runs. Only the main thread can install a handler: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class Guest(ABC):
    """One throwaway device under test. Use as a context manager so stop() always runs."""

    backend: str = ""
    # False: boot() reads the deployment instead of running it (sysroot)
    runs_system: bool = True
    # Set by the scenario runner: when it is set, long waits stop (their VM is killed) with KeyboardInterrupt.
    cancel: threading.Event | None = None

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    @abstractmethod
    def start(self) -> None:
        """Create the empty device (a fresh sysroot, or nothing until the first deploy)."""

    @abstractmethod
    def deploy(self, remote: str, url: str, ref: str, commit: str | None) -> DeployResult:
        """Pull `ref` (pinned to `commit` when given) from `url` through remote `remote` and make it the
        default deployment (the previous default becomes the rollback entry). Static deltas are used
        when the remote has one from what the device already holds."""

    @abstractmethod
    def boot(self) -> BootResult:
        """(Re)boot into the default deployment and collect what the system reports."""

    @abstractmethod
    def prove_rollback(self) -> RollbackResult:
        """Make a required check fail on the default deployment (without changing its commit), let the
        failure roll the device back, and report the boot(s)."""

    @abstractmethod
    def stop(self) -> None:
        """Kill whatever runs and remove every file the guest made. Safe to call twice."""

    def __enter__(self) -> Guest:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the serial console protocol (docs/testos.md) --------------------------------------------------------

_LINE_RE = re.compile(r"EDGECI-(BOOT|CHECK|DONE)(?:\s+(.*))?$")


@dataclass
class ConsoleReport:
    """Everything the EDGECI- lines of one boot said."""

    commit: str | None = None
    version: str | None = None
    checks: list[CheckReport] = field(default_factory=list)
    status: str | None = None
    passed: int | None = None
    failed: int | None = None
    errors: list[str] = field(default_factory=list)  # malformed protocol lines

    @property
    def booted(self) -> bool:
        return self.commit is not None

    @property
    def done(self) -> bool:
        return self.status is not None


def _fields(rest: str) -> dict[str, str]:
    out = {}
    for token in rest.split():
        key, sep, value = token.partition("=")
        if sep:
            out[key] = value
    return out


def _decode_output(value: str) -> str:
    data = base64.b64decode(value.encode("ascii"), validate=True) if value else b""
    return data[:OUTPUT_LIMIT].decode("utf-8", errors="replace")


def parse_console(text: str) -> ConsoleReport:
    """Parse the EDGECI- lines of a serial console log (kernel noise and CRs are ignored).

    A line that starts with EDGECI- but breaks the protocol is kept in `errors`, never guessed at.
    Only the first EDGECI-BOOT/EDGECI-DONE count: one log is one boot.
    """
    rep = ConsoleReport()
    for raw in text.replace("\r", "\n").split("\n"):
        at = raw.find("EDGECI-")
        if at < 0:
            continue
        line = raw[at:].strip()
        m = _LINE_RE.match(line)
        if not m:
            rep.errors.append(f"unknown protocol line: {line[:120]}")
            continue
        kind, f = m.group(1), _fields(m.group(2) or "")
        if kind == "BOOT":
            if rep.commit is not None:
                continue
            if not f.get("commit"):
                rep.errors.append(f"EDGECI-BOOT without commit=: {line[:120]}")
                continue
            rep.commit = f["commit"]
            rep.version = f.get("version") or None
        elif kind == "CHECK":
            name, ckind, result = f.get("name"), f.get("kind"), f.get("result")
            if not name or ckind not in ("required", "wanted") or result not in ("pass", "fail"):
                rep.errors.append(f"malformed EDGECI-CHECK: {line[:120]}")
                continue
            try:
                output = _decode_output(f.get("output", ""))
            except (binascii.Error, ValueError):
                rep.errors.append(f"EDGECI-CHECK name={name}: output= is not base64")
                output = ""
            rep.checks.append(CheckReport(name, ckind, result == "pass", output))
        else:  # DONE
            if rep.status is not None:
                continue
            status = f.get("status")
            if status not in (HEALTHY, UNHEALTHY):
                rep.errors.append(f"malformed EDGECI-DONE: {line[:120]}")
                continue
            rep.status = status
            try:
                rep.passed = int(f.get("passed", ""))
                rep.failed = int(f.get("failed", ""))
            except ValueError:
                rep.errors.append(f"EDGECI-DONE without numeric passed=/failed=: {line[:120]}")
    if rep.done:
        if rep.passed is not None and rep.passed != sum(c.passed for c in rep.checks):
            rep.errors.append(f"EDGECI-DONE says passed={rep.passed} but {sum(c.passed for c in rep.checks)} "
                              "EDGECI-CHECK lines passed (lost console lines?)")
        if rep.failed is not None and rep.failed != sum(not c.passed for c in rep.checks):
            rep.errors.append(f"EDGECI-DONE says failed={rep.failed} but "
                              f"{sum(not c.passed for c in rep.checks)} EDGECI-CHECK lines failed")
    return rep


# -- ostree pull statistics -------------------------------------------------------------------------

_UNITS = {"B": 1, "bytes": 1, "byte": 1,
          "kB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
          "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
_TRANSFER_RE = re.compile(r"([\d.,]+)\s*(bytes?|B|kB|MB|GB|TB|KiB|MiB|GiB|TiB)\s+transferred")
_DELTA_RE = re.compile(r"(\d+)\s+delta parts?,\s*(\d+)\s+loose fetched")
_OBJECTS_RE = re.compile(r"(\d+)\s+metadata,\s*(\d+)\s+content objects fetched")


def parse_size(number: str, unit: str) -> int:
    return round(float(number.replace(",", "")) * _UNITS[unit])


def parse_pull_output(text: str) -> PullStats:
    """The summary line `ostree pull` prints when it is done, e.g.
    '11 metadata, 53 content objects fetched; 449 KiB transferred in 0 seconds; …' or
    '1 delta parts, 4 loose fetched; 15 KiB transferred in 0 seconds; …'. Nothing fetched: 0 bytes."""
    stats = PullStats(text=text.strip()[-2000:])
    m = _TRANSFER_RE.search(text)
    if m:
        stats.bytes = parse_size(m.group(1), m.group(2))
    m = _DELTA_RE.search(text)
    if m:
        stats.delta_parts, stats.loose_objects = int(m.group(1)), int(m.group(2))
    m = _OBJECTS_RE.search(text)
    if m:
        stats.metadata_objects, stats.content_objects = int(m.group(1)), int(m.group(2))
    if stats.bytes is None and not text.strip():
        stats.bytes = 0  # ostree prints nothing when every object is already there
    return stats


# -- BLS entries (edgeci as the bootloader) ---------------------------------------------------------

@dataclass
class BootEntry:
    path: Path
    title: str
    version: int
    options: str
    linux: str
    initrd: str

    @property
    def ostree_target(self) -> str:
        for word in self.options.split():
            if word.startswith("ostree="):
                return word[len("ostree="):]
        return ""


def read_bls_entries(boot_dir: Path) -> list[BootEntry]:
    """The loader entries under boot_dir/loader/entries, default first (highest `version`)."""
    entries_dir = boot_dir / "loader" / "entries"
    out = []
    for conf in sorted(entries_dir.glob("*.conf")) if entries_dir.is_dir() else []:
        keys: dict[str, str] = {}
        for line in conf.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, _, value = line.partition(" ")
            keys.setdefault(key, value.strip())
        try:
            version = int(keys.get("version", "0"))
        except ValueError:
            version = 0
        out.append(BootEntry(conf, keys.get("title", conf.stem), version, keys.get("options", ""),
                             keys.get("linux", ""), keys.get("initrd", "")))
    out.sort(key=lambda e: e.version, reverse=True)
    return out
