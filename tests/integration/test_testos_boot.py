"""The composed test OS really boots: qemu (TCG) from an ext4 virtio disk made of an ostree sysroot,
through the initramfs's ostree-prepare-root, to the EDGECI- console protocol and poweroff."""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgeci.checks import load_checks
from edgeci.tools.run import have, run
from tests.fixtures.composed import ComposedProject, composed_blueprints_dir, deploy_commit, extract_container_repo

QEMU = ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "512", "-nographic", "-no-reboot", "-net", "none"]
LINE_RE = re.compile(r"^(EDGECI-(?:BOOT|CHECK|DONE)) (.*)$")

needs_qemu = pytest.mark.skipif(not have("qemu-system-x86_64"), reason="qemu-system-x86 is not installed")


@dataclass
class Boot:
    console: str
    seconds: float
    boot: dict[str, str] = field(default_factory=dict)
    checks: list[dict[str, str]] = field(default_factory=list)
    done: dict[str, str] = field(default_factory=dict)


def parse_console(text: str) -> tuple[dict[str, str], list[dict[str, str]], dict[str, str]]:
    boot: dict[str, str] = {}
    checks: list[dict[str, str]] = []
    done: dict[str, str] = {}
    for raw in text.splitlines():
        m = LINE_RE.match(raw.rstrip("\r"))
        if not m:
            assert "EDGECI-" not in raw, f"protocol line not at the start of a line: {raw!r}"
            continue
        fields = dict(item.split("=", 1) for item in m.group(2).split(" "))
        if m.group(1) == "EDGECI-BOOT":
            boot = fields
        elif m.group(1) == "EDGECI-CHECK":
            checks.append(fields)
        else:
            done = fields
    return boot, checks, done


@dataclass
class Disk:
    image: Path
    sysroot: Path
    deployment: Path
    kernel: Path
    initrd: Path
    options: str


def make_disk(composed: ComposedProject, tmp: Path) -> Disk:
    repo = extract_container_repo(composed.artifact, tmp / "layer")
    sysroot = tmp / "sysroot"
    deployment = deploy_commit(repo, composed.ref, sysroot)
    (entry,) = (sysroot / "boot" / "loader" / "entries").glob("*.conf")
    bls = dict(line.split(" ", 1) for line in entry.read_text().splitlines() if " " in line)
    image = tmp / "disk.img"
    return Disk(image, sysroot, deployment, sysroot / "boot" / bls["linux"].lstrip("/"),
                sysroot / "boot" / bls["initrd"].lstrip("/"), bls["options"])


def mkfs(disk: Disk) -> None:
    if disk.image.exists():
        disk.image.unlink()
    run(["mkfs.ext4", "-q", "-d", disk.sysroot, disk.image, "256M"])


def boot(disk: Disk, kernel: Path | None = None) -> Boot:
    started = time.monotonic()
    r = run([*QEMU, "-kernel", kernel or disk.kernel, "-initrd", disk.initrd,
             "-append", f"console=ttyS0 panic=-1 root=/dev/vda {disk.options}",
             "-drive", f"file={disk.image},format=raw,if=virtio"], timeout=240, check=False)
    seconds = time.monotonic() - started
    assert r.returncode == 0, f"qemu exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr}"
    result = Boot(r.stdout, seconds)
    result.boot, result.checks, result.done = parse_console(r.stdout)
    return result


@pytest.fixture(scope="module")
def disk(composed_gateway: ComposedProject, tmp_path_factory: pytest.TempPathFactory) -> Disk:
    return make_disk(composed_gateway, tmp_path_factory.mktemp("testos-boot"))


def test_mkfs_ext4_d_keeps_hardlinks_and_root_ownership(disk: Disk) -> None:
    mkfs(disk)
    rel = (disk.deployment / "usr" / "bin" / "busybox").relative_to(disk.sysroot)
    assert (disk.deployment / "usr" / "bin" / "busybox").stat().st_nlink == 2  # checkout hard-links the repo
    out = run(["debugfs", "-R", f"stat /{rel}", disk.image]).stdout
    assert re.search(r"Links: 2\b", out), out
    assert re.search(r"User:\s+0\s+Group:\s+0", out), out
    shadow = run(["debugfs", "-R", f"stat /{rel.parent.parent / 'etc' / 'shadow'}", disk.image]).stdout
    assert "Mode:  0000" in shadow


@pytest.mark.slow
@needs_qemu
def test_testos_boots_to_healthy_with_the_commit(disk: Disk, composed_gateway: ComposedProject) -> None:
    mkfs(disk)
    result = boot(disk)
    print(f"\ntest OS boot (bzImage) to poweroff: {result.seconds:.1f} s")
    assert result.boot == {"commit": composed_gateway.commit, "version": "1.0.0"}, result.console[-3000:]
    checks = load_checks(composed_blueprints_dir() / "gateway.checks.yaml")
    expected = [c.name for c in checks.checks if c.required and c.kind != "booted_commit"] + \
               [c.name for c in checks.checks if not c.required and c.kind != "booted_commit"]
    assert [c["name"] for c in result.checks] == expected
    for c in result.checks:
        output = base64.b64decode(c["output"]).decode()
        assert c["result"] == "pass", f"{c['name']}: {output}"
        assert c["kind"] == "required"
    kernel = next(c for c in result.checks if c["name"] == "kernel")
    assert "Linux" in base64.b64decode(kernel["output"]).decode()
    assert result.done == {"status": "healthy", "passed": str(len(expected)), "failed": "0"}
    assert "edgeci-initramfs: error" not in result.console


@pytest.mark.slow
@needs_qemu
def test_required_failure_is_unhealthy_wanted_failure_is_not(disk: Disk, composed_gateway: ComposedProject,
                                                             tmp_path: Path) -> None:
    from edgeci.testos.kernel import extract_vmlinux

    checks_dir = disk.deployment / "etc" / "greenboot" / "check"
    wanted = checks_dir / "wanted.d" / "50-flaky.sh"
    injected = checks_dir / "required.d" / "99-edgeci-injected-failure.sh"
    wanted.write_text("#!/bin/sh\necho wanted but broken\nexit 3\n")
    wanted.chmod(0o755)
    try:
        mkfs(disk)
        healthy = boot(disk, extract_vmlinux(disk.kernel, tmp_path / "vmlinux"))
        injected.write_text("#!/bin/sh\necho injected\nexit 1\n")
        injected.chmod(0o755)
        mkfs(disk)
        unhealthy = boot(disk, extract_vmlinux(disk.kernel, tmp_path / "vmlinux"))
    finally:
        wanted.unlink()
        injected.unlink(missing_ok=True)
    print(f"\ntest OS boot (PVH vmlinux) to poweroff: {healthy.seconds:.1f} s, {unhealthy.seconds:.1f} s")
    flaky = next(c for c in healthy.checks if c["name"] == "flaky")
    assert flaky["kind"] == "wanted" and flaky["result"] == "fail"
    assert base64.b64decode(flaky["output"]) == b"wanted but broken\n"
    assert healthy.done["status"] == "healthy" and healthy.done["failed"] == "1"
    assert healthy.boot["commit"] == composed_gateway.commit
    inj = next(c for c in unhealthy.checks if c["name"] == "edgeci-injected-failure")
    assert inj == {"name": "edgeci-injected-failure", "kind": "required", "result": "fail",
                   "output": base64.b64encode(b"injected\n").decode()}
    assert [c["kind"] for c in unhealthy.checks][-1] == "wanted"  # required.d first, then wanted.d
    assert unhealthy.done["status"] == "unhealthy" and unhealthy.done["failed"] == "2"


@pytest.mark.slow
@needs_qemu
def test_initramfs_failure_is_one_line_and_a_poweroff(disk: Disk, tmp_path: Path) -> None:
    """A wrong ostree= karg must not hang until the boot-test deadline: one error line, then poweroff."""
    from edgeci.testos.kernel import extract_vmlinux

    mkfs(disk)
    bad = Disk(disk.image, disk.sysroot, disk.deployment, disk.kernel, disk.initrd, "ostree=/ostree/boot.1/nope/0")
    result = boot(bad, extract_vmlinux(disk.kernel, tmp_path / "vmlinux"))
    errors = [line for line in result.console.splitlines() if "edgeci-initramfs: error:" in line]
    assert len(errors) == 1 and "does not resolve to a deployment" in errors[0], result.console[-2000:]
    assert not result.boot and not result.done
