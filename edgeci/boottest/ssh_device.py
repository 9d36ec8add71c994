"""One SSH driver for a booted ostree device, shared by the qemu device backend (here) and libvirt (KVM hosts).

Everything the boot test asks a running device goes through `SSHDevice`: its boot id, the booted deployment,
`systemctl is-system-running --wait`, greenboot's health-check unit, the blueprint's checks piped to `sh -s`,
an update from a remote (pull, deploy, boot counter), a reboot (waiting for a new boot id), and greenboot's
rollback. What differs between a RHEL for Edge VM and edgeci's Debian device is only the update tool, behind
`Tooling`: `RpmOstree` (rpm-ostree status --json / upgrade / rebase, with sudo as the kickstart's user),
`OstreeAdmin` (ostree admin status / set-origin / upgrade --override-commit, as root) and `Bootc` (a RHEL 10
image-mode device: bootc status --format=json / switch by digest / upgrade, with sudo; the candidate is the
image's manifest digest).
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeci.boottest.guest import (
    HEALTHY,
    INJECTED_CHECK_FILE,
    INJECTED_CHECK_SCRIPT,
    UNHEALTHY,
    BootResult,
    CheckReport,
    DeployResult,
    Guest,
    PullStats,
    RollbackResult,
    parse_pull_output,
    parse_size,
)
from edgeci.errors import BootTestError, ToolError
from edgeci.tools.run import Completed, run
from edgeci.tools.ssh import SSHTarget, close_master, ssh
from edgeci.wait import Waiting, WaitTimeout

Runner = Callable[..., Completed]
GREENBOOT_UNIT = "greenboot-healthcheck.service"
GREENBOOT_RESULTS = "/var/lib/greenboot/boots"
INJECTED_PATH = f"/etc/greenboot/check/required.d/{INJECTED_CHECK_FILE}"
_HEX64 = re.compile(r"[0-9a-f]{64}")


# -- parsers -------------------------------------------------------------------------------------------------

def parse_rpm_ostree_status(text: str) -> dict[str, Any]:
    """The booted deployment of `rpm-ostree status --json`: {checksum, version, origin, count}."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BootTestError(f"rpm-ostree status --json did not print JSON ({e.msg})") from None
    deployments = data.get("deployments") if isinstance(data, dict) else None
    if not isinstance(deployments, list):
        raise BootTestError("rpm-ostree status --json has no deployments list")
    for d in deployments:
        if isinstance(d, dict) and d.get("booted"):
            return {"checksum": d.get("checksum"), "version": d.get("version"), "origin": d.get("origin"),
                    "count": len(deployments), "default": deployments[0].get("checksum")}
    raise BootTestError("rpm-ostree status --json shows no booted deployment")


_ADMIN_DEPLOY_RE = re.compile(r"^([* ]) (\S+) ([0-9a-f]{64})\.(\d+)(?:\s+\((.*)\))?\s*$")


def parse_ostree_admin_status(text: str) -> dict[str, Any]:
    """The booted deployment of `ostree admin status` (ostree 2022.7 has no JSON):
    '* rhel <checksum>.0' (booted, marked *) with 'Version:' and 'origin refspec:' lines under it."""
    deployments: list[dict[str, Any]] = []
    for line in text.splitlines():
        m = _ADMIN_DEPLOY_RE.match(line)
        if m:
            deployments.append({"booted": m.group(1) == "*", "osname": m.group(2), "checksum": m.group(3),
                                "serial": int(m.group(4)), "flags": m.group(5) or "", "version": None,
                                "origin": None})
            continue
        if deployments:
            key, _, value = line.strip().partition(":")
            if key == "Version":
                deployments[-1]["version"] = value.strip()
            elif key == "origin refspec":
                deployments[-1]["origin"] = value.strip()
    if not deployments:
        raise BootTestError(f"ostree admin status shows no deployment: {text.strip()[:200] or '(nothing)'}")
    for d in deployments:
        if d["booted"]:
            return {"checksum": d["checksum"], "version": d["version"], "origin": d["origin"],
                    "count": len(deployments), "default": deployments[0]["checksum"]}
    raise BootTestError("ostree admin status shows no booted deployment (not an ostree-booted system?)")


def _bootc_digest(entry: Any) -> str | None:
    """The image digest (64 hex, no "sha256:") of one `bootc status` deployment entry, None when the entry was
    not deployed from an image (an ostree commit: `image` is null)."""
    image = entry.get("image") if isinstance(entry, dict) else None
    digest = image.get("imageDigest") if isinstance(image, dict) else None
    if not digest:
        return None
    hexd = str(digest).removeprefix("sha256:")
    if not _HEX64.fullmatch(hexd):
        raise BootTestError(f"bootc status --format=json: image digest '{digest}' is not sha256:<64 hex>")
    return hexd


def _bootc_id(entry: Any) -> str | None:
    """What identifies a deployment: its image digest, or its ostree checksum when it is not from an image."""
    digest = _bootc_digest(entry)
    if digest is not None or not isinstance(entry, dict):
        return digest
    ostree = entry.get("ostree")
    return str(ostree["checksum"]) if isinstance(ostree, dict) and ostree.get("checksum") else None


def parse_bootc_status(text: str) -> dict[str, Any]:
    """The booted image of `bootc status --format=json` (bootc's BootcHost, apiVersion org.containers.bootc/v1):
    {checksum: the booted image's manifest digest (hex), version, origin: the booted image reference, count: the
    deployments (staged, booted, rollback) present, default: the digest that boots next}. Next is the rollback
    entry when a rollback is queued (status.rollbackQueued, spec.bootOrder rollback), else the staged one, else
    the booted one."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "(nothing)")
        raise BootTestError(f"bootc status --format=json did not print JSON ({e.msg}): {first[:160]}") from None
    status = data.get("status") if isinstance(data, dict) else None
    if not isinstance(status, dict):
        raise BootTestError("bootc status --format=json has no status object (not a BootcHost?)")
    booted = status.get("booted")
    if not isinstance(booted, dict):
        raise BootTestError("bootc status --format=json shows no booted deployment (not a bootc-booted system?)")
    digest = _bootc_digest(booted)
    if digest is None:
        ostree = booted.get("ostree")
        ostree = ostree if isinstance(ostree, dict) else {}
        raise BootTestError("bootc status --format=json: the booted deployment has no image digest: booted from an "
                            f"ostree commit, not an image (ostree {str(ostree.get('checksum') or '?')[:12]})")
    image = booted["image"]
    ref = image.get("image")
    ref = ref if isinstance(ref, dict) else {}
    entries = {k: status.get(k) for k in ("staged", "booted", "rollback")}
    spec = data.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    rollback_next = bool(status.get("rollbackQueued")) or spec.get("bootOrder") == "rollback"
    if rollback_next and isinstance(entries["rollback"], dict):
        default = _bootc_id(entries["rollback"])
    elif isinstance(entries["staged"], dict):
        default = _bootc_id(entries["staged"])
    else:
        default = digest
    return {"checksum": digest, "version": image.get("version"), "origin": ref.get("image"),
            "count": sum(isinstance(e, dict) for e in entries.values()), "default": default}


def greenboot_state(text: str) -> tuple[str | None, str]:
    """(healthy | unhealthy | None when greenboot is not installed or not finished, detail) from systemctl show."""
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if props.get("LoadState") == "not-found":
        return None, f"{GREENBOOT_UNIT} is not installed"
    active, result = props.get("ActiveState", "?"), props.get("Result", "?")
    detail = f"{GREENBOOT_UNIT}: ActiveState={active} Result={result}"
    if active == "failed" or result not in ("success", "?"):
        return UNHEALTHY, detail
    if active == "active":
        return HEALTHY, detail
    return None, detail + " (not finished)"


_SIZE_RE = re.compile(r"([\d.]+)\s*(bytes|B|kB|MB|GB|KiB|MiB|GiB)(/s)?")


def parse_rpm_ostree_pull(text: str) -> PullStats:
    """Best effort: rpm-ostree's last 'Receiving …' progress line carries the bytes fetched, e.g.
    'Receiving delta parts: 1/1 6.0 MB/s 12.1 MB/12.1 MB' or 'Receiving objects: 100% (53/53) 1.1 MB/s 449 kB'
    (rates, followed by /s, are skipped; of 'fetched/total' the first is taken)."""
    stats = PullStats(text=text.strip()[-2000:])
    for line in text.replace("\r", "\n").splitlines():
        if "Receiving" not in line:
            continue
        sizes = [m for m in _SIZE_RE.finditer(line.split(":", 1)[-1]) if not m.group(3)]
        if sizes:
            stats.bytes = parse_size(sizes[0].group(1), sizes[0].group(2))
        if "delta parts" in line:
            m = re.search(r"delta parts:\s*(\d+)/(\d+)", line)
            stats.delta_parts = int(m.group(2)) if m else max(stats.delta_parts, 1)
    return stats


_BOOTC_NEEDED_RE = re.compile(r"layers already present:\s*(\d+);\s*layers needed:\s*(\d+)"
                              r"(?:\s*\(([\d.,]+)\s*(bytes?|B|kB|MB|GB|TB|KiB|MiB|GiB|TiB)\))?")
_BOOTC_FETCHED_RE = re.compile(r"Fetched layers:\s*([\d.,]+)\s*(bytes?|B|kB|MB|GB|TB|KiB|MiB|GiB|TiB)\b")


def parse_bootc_pull(text: str) -> PullStats:
    """Best effort, from bootc's progress lines (the last of each): 'layers already present: 65; layers needed: 3
    (46.1 MB)' (content_objects = the layers needed) and 'Fetched layers: 43.97 MiB in 6 seconds (7.03 MiB/s)'.
    Bytes: the fetched figure, else the size of the layers needed."""
    stats = PullStats(text=text.strip()[-2000:])
    flat = text.replace("\r", "\n")
    needed = list(_BOOTC_NEEDED_RE.finditer(flat))
    if needed:
        m = needed[-1]
        stats.content_objects = int(m.group(2))
        if m.group(3):
            stats.bytes = parse_size(m.group(3), m.group(4))
        elif stats.content_objects == 0:
            stats.bytes = 0
    fetched = list(_BOOTC_FETCHED_RE.finditer(flat))
    if fetched:
        stats.bytes = parse_size(fetched[-1].group(1), fetched[-1].group(2))
    return stats


def image_repository(url: str) -> str:
    """HOST/REPO[:TAG] of an image candidate's URL ("docker://HOST/REPO", as edgeci's image records carry it)."""
    repo = url.removeprefix("docker://").rstrip("/")
    if "://" in repo or "/" not in repo:
        raise BootTestError(f"'{url}' is not an image repository (docker://HOST/REPO)", where=url,
                            fix="image-mode candidates are pushed to registry.image (docker://HOST[:PORT]/REPO)")
    return repo


def image_reference(url: str, digest: str | None) -> str:
    """HOST/REPO@sha256:DIGEST (pinned to the tested image), or the repository (tag) as given without a digest."""
    repo = image_repository(url)
    if digest is None:
        return repo
    hexd = digest.removeprefix("sha256:")
    if not _HEX64.fullmatch(hexd):
        raise BootTestError(f"'{digest}' is not an image digest (64 hex characters)", where=url)
    return f"{repo}@sha256:{hexd}"


def check_name(script_path: str) -> str:
    """'required.d/03-hostname.sh' → 'hostname' (the checks file's name)."""
    return re.sub(r"^\d\d-", "", Path(script_path).name).removesuffix(".sh")


# -- the update tool on the device ------------------------------------------------------------------------------

class Tooling:
    """How a device reports its deployments and updates itself."""

    name = ""
    sudo = ""
    status_command = ""
    # what greenboot runs when an update is staged (the boot counter), and how to read GRUB's environment
    set_counter_command = "/usr/libexec/greenboot/greenboot-grub2-set-counter"
    grubenv_command = "grub2-editenv list"

    def parse_status(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def update_commands(self, remote: str, url: str, ref: str, commit: str | None, *, same_remote: bool,
                        booted: str) -> list[str]:
        raise NotImplementedError

    def parse_pull(self, text: str) -> PullStats:
        raise NotImplementedError

    def served(self, url: str, ref: str, commit: str | None) -> str:
        """What the device expects the URL to serve (for messages)."""
        return ref + (f" at {commit}" if commit else "")


class RpmOstree(Tooling):
    """A RHEL for Edge / Fedora IoT device (the kickstart's user, with sudo)."""

    name = "rpm-ostree"
    sudo = "sudo "
    status_command = "rpm-ostree status --json"
    set_counter_command = "sudo /usr/libexec/greenboot/greenboot-grub2-set-counter"
    grubenv_command = "sudo grub2-editenv list"

    def parse_status(self, text: str) -> dict[str, Any]:
        return parse_rpm_ostree_status(text)

    def update_commands(self, remote: str, url: str, ref: str, commit: str | None, *, same_remote: bool,
                        booted: str) -> list[str]:
        q = shlex.quote
        cmds = [f"sudo ostree remote delete --if-exists {q(remote)} && "
                f"sudo ostree remote add --no-gpg-verify {q(remote)} {q(url)}"]
        cmds.append("sudo rpm-ostree upgrade" if same_remote else f"sudo rpm-ostree rebase {q(f'{remote}:{ref}')}")
        return cmds

    def parse_pull(self, text: str) -> PullStats:
        return parse_rpm_ostree_pull(text)


class OstreeAdmin(Tooling):
    """edgeci's Debian device (root): the same steps with ostree's own CLI. The pull is its own step so that its
    summary line (delta parts, bytes) is read; the remote's ref is pointed at the booted commit first, so the
    pull looks for the static delta from what the device runs; the boot counter is set as greenboot does
    when an update is staged."""

    name = "ostree"
    sudo = ""
    status_command = "ostree admin status"
    grubenv_command = "grub-editenv /boot/grub/grubenv list"

    def parse_status(self, text: str) -> dict[str, Any]:
        return parse_ostree_admin_status(text)

    def update_commands(self, remote: str, url: str, ref: str, commit: str | None, *, same_remote: bool,
                        booted: str) -> list[str]:
        q = shlex.quote
        spec = f"{ref}@{commit}" if commit else ref
        override = f" --override-commit={q(commit)}" if commit else ""
        return [
            f"ostree remote delete --if-exists {q(remote)} && ostree remote add --no-gpg-verify {q(remote)} {q(url)}"
            f" && ostree admin set-origin --set=gpg-verify=false {q(remote)} {q(url)} {q(ref)}"
            f" && ostree refs --force --create={q(f'{remote}:{ref}')} {q(booted)}",
            f"ostree pull {q(remote)} {q(spec)}",
            f"ostree admin upgrade --deploy-only{override}",
            self.set_counter_command,
        ]

    def parse_pull(self, text: str) -> PullStats:
        return parse_pull_output(text)


class Bootc(Tooling):
    """A RHEL 10 image-mode device (the kickstart's user, with sudo): bootc, and greenboot's grub2 boot counter.

    A device on another repository (a fresh device installed from production, updated to the candidate) is
    switched to the tested digest, never a tag: `bootc switch --transport registry REPO@sha256:DIGEST`. A device
    already tracking the repository runs `bootc upgrade --check`, then `bootc upgrade` (what `--apply` does,
    without the reboot, which is the caller's). A device pinned by digest finds nothing new there: the booted
    digest, read back from `bootc status`, is what the verdict is made of either way."""

    name = "bootc"
    sudo = "sudo "
    status_command = "sudo bootc status --format=json"
    set_counter_command = "sudo /usr/libexec/greenboot/greenboot-grub2-set-counter"
    grubenv_command = "sudo grub2-editenv list"

    def parse_status(self, text: str) -> dict[str, Any]:
        return parse_bootc_status(text)

    def update_commands(self, remote: str, url: str, ref: str, commit: str | None, *, same_remote: bool,
                        booted: str) -> list[str]:
        if same_remote:
            image_repository(url)  # still only an image repository
            return ["sudo bootc upgrade --check", "sudo bootc upgrade"]
        return [f"sudo bootc switch --transport registry {shlex.quote(image_reference(url, commit))}"]

    def parse_pull(self, text: str) -> PullStats:
        return parse_bootc_pull(text)

    def served(self, url: str, ref: str, commit: str | None) -> str:
        return image_reference(url, commit)


# -- the driver ---------------------------------------------------------------------------------------------

@dataclass
class SSHDevice:
    """A running device reached over SSH. `address` returns the target once the device has one (None: not yet)."""

    address: Callable[[], SSHTarget | None]
    tooling: Tooling
    name: str
    runner: Runner = run
    waiting: Callable[[float, float], Waiting[Any]] = field(
        default=lambda deadline, interval: Waiting(deadline=deadline, interval=interval, backoff=1.5,
                                                   max_interval=10.0))
    boot_timeout: float = 600.0
    # one connection attempt while waiting for a (re)boot: a booting VM's forwarder accepts and then says nothing
    attempt_timeout: float = 30.0
    transcript: list[str] = field(default_factory=list)
    target: SSHTarget | None = None
    last_error: str = ""

    def ssh(self, command: str, *, input: str | None = None, timeout: float = 300) -> Completed:
        if self.target is None:
            self.target = self.address()
        if self.target is None:
            raise BootTestError(f"no SSH address for {self.name} yet")
        r = ssh(self.target, command, input=input, timeout=timeout, runner=self.runner)
        self.transcript.append(f"$ {command}\n[exit {r.returncode}]\n{(r.stdout + r.stderr).strip()[-1500:]}")
        return r

    def _try(self, command: str, timeout: float) -> Completed | None:
        """One attempt, no transcript: None when the device does not answer (yet); why is kept in last_error."""
        if self.target is None:
            self.target = self.address()
            if self.target is None:
                return None
        try:
            r = ssh(self.target, command, timeout=timeout, runner=self.runner)
        except ToolError as e:
            if not e.timed_out:
                raise
            # a booting VM: qemu's forwarder accepted the connection but nothing answered in time. The shared
            # connection (if one was half made) is dropped so that the next attempt starts afresh.
            self.last_error = f"no answer within {timeout:g} s"
            close_master(self.target, runner=self.runner)
            return None
        if r.returncode != 0:
            lines = [ln for ln in (r.stderr or r.stdout).strip().splitlines() if ln.strip()]
            self.last_error = lines[-1][:200] if lines else f"exit {r.returncode}"
            return None
        return r

    def wait_for_ssh(self, *, not_boot_id: str | None = None, deadline: float = 600.0,
                     alive: Callable[[], str] | None = None) -> str:
        """Wait for SSH (and a new boot id after a reboot); returns the boot id. `alive()` returns why the
        device can no longer come up ("" while it can), e.g. the VM process exited."""

        def check() -> tuple[str, str | None]:
            if alive is not None:
                why = alive()
                if why:
                    raise BootTestError(f"{self.name} {why}")
            r = self._try("cat /proc/sys/kernel/random/boot_id", self.attempt_timeout)
            boot_id = r.stdout.strip() if r else ""
            if not boot_id:
                return f"waiting for SSH ({self.last_error or 'no answer'})", None
            if not_boot_id is not None and boot_id == not_boot_id:
                return "waiting for the reboot", None
            return "up", boot_id

        try:
            return self.waiting(deadline, 2.0).wait(check, what=f"SSH on {self.name}")
        except WaitTimeout as e:
            raise BootTestError(f"{self.name} did not answer on SSH: {e.message}",
                                fix="see the console tail in the report; raise boot_test.timeout for slow hosts")\
                from None

    def boot_id(self) -> str:
        return self.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()

    def status(self) -> dict[str, Any]:
        return self.tooling.parse_status(self.ssh(self.tooling.status_command).stdout)

    def request_reboot(self) -> None:
        """`systemctl reboot` (the connection drops: its exit code means nothing); the shared connection is closed
        at once instead of waiting for it to time out."""
        self.ssh(f"{self.tooling.sudo}systemctl reboot", timeout=60)
        if self.target is not None:
            close_master(self.target, runner=self.runner)

    def update(self, remote: str, url: str, ref: str, commit: str | None, *, same_remote: bool) -> DeployResult:
        """Pull and deploy on the device; the reboot is the caller's. Bytes: the tool's own figure, and (when
        the device has /sys/class/net) what its network interfaces received during the update."""
        booted = self.status()["checksum"]
        rx = "cat /sys/class/net/*/statistics/rx_bytes 2>/dev/null | awk '{s+=$1} END {print s+0}'"
        before = self.ssh(rx).stdout.strip()
        outputs = []
        for command in self.tooling.update_commands(remote, url, ref, commit, same_remote=same_remote,
                                                    booted=booted):
            r = self.ssh(command, timeout=3600)
            outputs.append(r.stdout + "\n" + r.stderr)
            if r.returncode != 0:
                last = [ln for ln in (r.stderr or r.stdout).strip().splitlines() if ln.strip()]
                raise BootTestError(f"on {self.name}, '{command.split(' && ')[0][:80]}' failed while updating from "
                                    f"{url} (the URL as the device reaches it): "
                                    f"{last[-1][-300:] if last else f'exit {r.returncode}'}",
                                    where=url, fix="check that the device can reach that URL and that it serves "
                                                   + self.tooling.served(url, ref, commit))
        after = self.ssh(rx).stdout.strip()
        stats = self.tooling.parse_pull("\n".join(outputs))
        if before.isdigit() and after.isdigit():
            stats.rx_bytes = int(after) - int(before)
        return DeployResult(commit or "", stats)

    def collect(self, *, scripts: dict[str, str], candidate: str, version: str) -> BootResult:
        """The check protocol: booted deployment, system state, greenboot's verdict, each check over SSH."""
        self.transcript = []
        status = self.status()
        checks = []
        r = self.ssh("systemctl is-system-running --wait", timeout=self.boot_timeout)
        state = r.stdout.strip() or r.stderr.strip()
        checks.append(CheckReport("system-running", "required", state == "running",
                                  f"systemctl is-system-running: {state}"))
        g = self.ssh(f"systemctl show --property=LoadState,ActiveState,Result {GREENBOOT_UNIT}")
        green, detail = greenboot_state(g.stdout)
        if green is not None:
            if green == UNHEALTHY:
                failed = [c for c in self.greenboot_results() if not c.passed]
                detail += "".join(f"\n{c.kind} check {c.name} failed: {c.output.strip()[:500]}" for c in failed)
            checks.append(CheckReport("greenboot-healthcheck", "required", green == HEALTHY, detail))
        for path, text in sorted(scripts.items()):
            kind = "wanted" if path.startswith("wanted.d/") else "required"
            res = self.ssh(f"{self.tooling.sudo}sh -s", input=text, timeout=300)
            checks.append(CheckReport(check_name(path), kind, res.returncode == 0, (res.stdout + res.stderr)[-4096:]))
        healthy = all(c.passed for c in checks if c.kind == "required")
        booted = status["checksum"]
        # the commit's "version" metadata is the OS release Image Builder stamps (9.4), not the release:
        # the release version is the candidate's, when the candidate is what booted
        release = version if booted == candidate and version else None
        return BootResult(commit=booted, version=release, status=HEALTHY if healthy else UNHEALTHY, checks=checks,
                          running=True, entry=f"{self.name} booted deployment",
                          log="\n".join(self.transcript)[-6000:])

    def inject_failure(self) -> None:
        r = self.ssh(f"{self.tooling.sudo}install -D -m 0755 /dev/stdin {INJECTED_PATH}", input=INJECTED_CHECK_SCRIPT)
        if r.returncode != 0:
            raise BootTestError(f"cannot write {INJECTED_PATH} on {self.name}: {r.stderr.strip()[-200:]}")

    def wait_rolled_back(self, before: str, *, deadline: float, interval: float = 10.0,
                         alive: Callable[[], str] | None = None) -> dict[str, Any]:
        """Wait until the device runs something other than `before` (greenboot's reboots, then the fallback)."""

        def rolled_back() -> tuple[str, dict[str, Any] | None]:
            if alive is not None:
                why = alive()
                if why:
                    raise BootTestError(f"{self.name} {why} while greenboot was rolling it back")
            r = self._try(self.tooling.status_command, 60)
            if r is None:
                return "rebooting", None
            try:
                now = self.tooling.parse_status(r.stdout)
            except BootTestError:
                return "rebooting", None
            if now["checksum"] == before:
                return f"still on {str(now['checksum'])[:12]} (greenboot retries)", None
            return "rolled back", now

        try:
            return self.waiting(deadline, interval).wait(rolled_back, what="greenboot to roll back")
        except WaitTimeout as e:
            raise BootTestError(f"{self.name} never left {before[:12]} after the injected failure: {e.message}",
                                fix="check that greenboot (and its grub2 boot counter) is in the image") from None

    def greenboot_results(self, *, red_before: bool = False) -> list[CheckReport]:
        """The checks greenboot ran on this boot — or, with red_before, on the last red boot — as edgeci's device
        keeps them in /var/lib/greenboot/boots/<boot id>/ (exit code, then output); [] when the device does not
        keep them (RHEL's greenboot logs to the journal only)."""
        pick = ("d=$(grep -l '^red$' " + GREENBOOT_RESULTS + "/*/status 2>/dev/null | xargs -r ls -t | head -n 1); "
                "[ -n \"$d\" ] || exit 0; d=$(dirname \"$d\")") if red_before else \
            f"d={GREENBOOT_RESULTS}/$(cat /proc/sys/kernel/random/boot_id); [ -d \"$d\" ] || exit 0"
        cmd = (f"{pick}; for f in \"$d\"/required.* \"$d\"/wanted.*; do [ -f \"$f\" ] || continue; "
               "printf '==> %s\\n' \"$(basename \"$f\")\"; cat \"$f\"; done")
        r = self.ssh(cmd)
        reports = []
        for block in r.stdout.split("==> ")[1:]:
            head, _, body = block.partition("\n")
            kind, _, script = head.strip().partition(".")
            rc, _, output = body.partition("\n")
            reports.append(CheckReport(check_name(script), kind, rc.strip() == "0", output.strip()[-4096:]))
        return reports

    def red_boots(self) -> list[CheckReport]:
        """The failed checks of the last red boot (see greenboot_results)."""
        return [c for c in self.greenboot_results(red_before=True) if not c.passed]


# -- the boot-test sequence every SSH-reached device shares ------------------------------------------------

class SSHGuest(Guest):
    """install is the subclass's (a kickstart through virt-install, or a disk written here); everything after it
    — updates, reboots that wait for the boot to settle, the check protocol, greenboot's rollback — is this
    class's, so the device and libvirt backends run one sequence."""

    device: SSHDevice
    candidate_commit: str
    version: str
    scripts: dict[str, str]
    origin_remote: str = ""
    _reboot_pending: bool = False
    # seconds from a reboot (or the first power-on) until the boot settled, one entry per boot
    boots: list[float]

    # -- the subclass's ------------------------------------------------------------------------------
    def installed(self) -> bool:
        raise NotImplementedError

    def install_device(self, remote: str, url: str, ref: str, commit: str | None) -> DeployResult:
        raise NotImplementedError

    def device_url(self, url: str, remote: str) -> str:
        """The URL as the device reaches it (or BootTestError when it cannot)."""
        return url

    def alive(self) -> str:
        """Why the device can no longer come up ("" while it can)."""
        return ""

    def console_tail(self, limit: int = 1500) -> str:
        return ""

    settle_timeout: float = 600.0

    # -- shared ----------------------------------------------------------------------------------------
    def wait_settled(self, *, not_boot_id: str | None = None) -> None:
        """Wait for SSH, then for the boot to be over (systemd done, greenboot's verdict). A red boot with the
        boot counter set reboots by itself (greenboot): follow it until a boot settles."""
        t0 = time.monotonic()
        boot_id = self.device.wait_for_ssh(not_boot_id=not_boot_id, deadline=self.settle_timeout, alive=self.alive)
        for _ in range(6):  # greenboot's tries plus the fallback boot
            self.device.ssh("systemctl is-system-running --wait", timeout=self.settle_timeout)
            r = self.device.ssh(f"systemctl show --property=ActiveState {GREENBOOT_UNIT}; "
                                f"{self.device.tooling.grubenv_command}")
            if r.returncode == 0 and not ("ActiveState=failed" in r.stdout and "boot_counter=" in r.stdout):
                break
            # red with a boot counter set (or the connection dropped): the device is rebooting itself
            boot_id = self.device.wait_for_ssh(not_boot_id=boot_id, deadline=self.settle_timeout, alive=self.alive)
        self.boots.append(time.monotonic() - t0)

    def deploy(self, remote: str, url: str, ref: str, commit: str | None) -> DeployResult:
        if not self.installed():
            return self.install_device(remote, url, ref, commit)
        result = self.device.update(remote, self.device_url(url, remote), ref, commit,
                                    same_remote=remote == self.origin_remote)
        self.origin_remote = remote
        self._reboot_pending = True
        return DeployResult(commit or str(self.device.status()["default"]), result.pull)

    def boot(self) -> BootResult:
        if not self.installed():
            raise BootTestError("nothing is installed to boot")
        if self._reboot_pending:
            before = self.device.boot_id()
            self.device.request_reboot()
            self.wait_settled(not_boot_id=before)
            self._reboot_pending = False
        started = time.monotonic()
        result = self.device.collect(scripts=self.scripts, candidate=self.candidate_commit, version=self.version)
        if result.commit != self.candidate_commit:
            red = [c for c in self.device.red_boots() if c.kind == "required"]
            if red:
                result.error = "the device rolled itself back: " + "; ".join(
                    f"required check '{c.name}' failed: {c.output.strip()[:300]}" for c in red)
        took = self.boots[-1] if self.boots else 0.0
        result.entry = f"{self.device.name} booted deployment (boot {len(self.boots)}, {took:.0f} s to settle)"
        result.seconds = time.monotonic() - started + took
        tail = self.console_tail()
        if tail:
            result.log = f"{result.log}\n-- console tail --\n{tail}"
        return result

    def prove_rollback(self) -> RollbackResult:
        """A failing required check in the running candidate's /etc and the boot counter set (what greenboot
        does when an update is staged), then a reboot: greenboot marks the boot red and reboots, the bootloader's
        counter runs out and boots the previous deployment, greenboot's fallback makes it the default."""
        before = self.device.status()
        if int(before["count"]) < 2:
            raise BootTestError("rollback needs two deployments (production, then the candidate)")
        self.device.inject_failure()
        self.device.ssh(self.device.tooling.set_counter_command)
        t0 = time.monotonic()
        self.device.request_reboot()
        now = self.device.wait_rolled_back(str(before["checksum"]), deadline=self.settle_timeout * 4,
                                           interval=3.0, alive=self.alive)
        self.wait_settled()
        self.boots[-1] = time.monotonic() - t0
        red = self.device.red_boots()
        candidate: BootResult | None = None
        if red:  # edgeci's device keeps the red boot's results; RHEL's greenboot only logs them
            candidate = BootResult(commit=str(before["checksum"]), version=self.version, status=UNHEALTHY,
                                   checks=red, running=True,
                                   entry="the candidate's red boot (read back after the rollback)",
                                   log="\n".join(f"{c.name}: {c.output}" for c in red))
        # the previous deployment is judged by its own health checks (greenboot ran them at boot) and systemd's
        # state: the candidate's rendered checks expect the candidate's version and commit
        previous = self.device.collect(scripts={}, candidate=self.candidate_commit, version=self.version)
        previous.entry = f"{self.device.name} after greenboot's fallback ({self.boots[-1]:.0f} s)"
        tail = self.console_tail()
        if tail:
            previous.log = f"{previous.log}\n-- console tail --\n{tail}"
        default = str(self.device.status()["default"])
        detail = (f"greenboot rolled {self.device.name} back from {str(before['checksum'])[:12]} to "
                  f"{str(now['checksum'])[:12]} after the injected required check failed; the fallback is the "
                  f"default deployment: {'yes' if default == now['checksum'] else 'NO, ' + default[:12]}; "
                  f"{self.boots[-1]:.0f} s from the reboot to a settled fallback boot")
        return RollbackResult(candidate=candidate, previous=previous, detail=detail)
