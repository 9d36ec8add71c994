"""The EDGECI- console protocol parser, ostree pull statistics, BLS entries, and how a boot becomes cases."""

from __future__ import annotations

import base64

import pytest

from edgeci.boottest.guest import (
    BootResult,
    CheckReport,
    parse_console,
    parse_pull_output,
    read_bls_entries,
)
from edgeci.boottest.scenarios import boot_case, check_cases
from edgeci.checks import parse_checks
from edgeci.junit import Outcome
from edgeci.tools.qemu import VMSpec, argv, kernel_cmdline

C1 = "a" * 64
C2 = "b" * 64


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def console(*lines: str) -> str:
    noise = ("\x1bc\x1b[?7l\x1b[2JSeaBIOS (version 1.16.2-debian-1.16.2-1)\r\nBooting from ROM...\r\n"
             "[    0.000000] Linux version 6.1.0-56-amd64\r\n[    3.6] Run /init as init process\r\n")
    return noise + "".join(line + "\r\n" for line in lines) + "[    7.77] reboot: Power down\r\n"


def test_a_healthy_boot_is_parsed_with_decoded_outputs():
    hostname_out, uname_out = b64("/etc/hostname contains the text\n"), b64("Darwin\n")
    rep = parse_console(console(
        f"EDGECI-BOOT commit={C1} version=1.0.1",
        f"EDGECI-CHECK name=hostname kind=required result=pass output={hostname_out}",
        f"EDGECI-CHECK name=uname kind=wanted result=fail output={uname_out}",
        "EDGECI-CHECK name=silent kind=required result=pass output=",
        "EDGECI-DONE status=healthy passed=2 failed=1",
    ))
    assert rep.commit == C1 and rep.version == "1.0.1"
    assert rep.status == "healthy" and rep.done and rep.errors == []
    assert [(c.name, c.kind, c.passed) for c in rep.checks] == [
        ("hostname", "required", True), ("uname", "wanted", False), ("silent", "required", True)]
    assert rep.checks[0].output == "/etc/hostname contains the text\n"
    assert rep.checks[2].output == ""


def test_a_boot_that_never_finished_is_not_done():
    rep = parse_console(console(f"EDGECI-BOOT commit={C1} version=1.0.1"))
    assert rep.booted and not rep.done and rep.status is None


def test_nothing_but_kernel_noise_means_no_boot():
    rep = parse_console("edgeci-initramfs: error: no root device /dev/vda\r\n[ 2.0] reboot: Power down\r\n")
    assert not rep.booted and not rep.done and rep.errors == []


@pytest.mark.parametrize("line, fragment", [
    ("EDGECI-CHECK name=x kind=required result=maybe output=", "malformed EDGECI-CHECK"),
    ("EDGECI-CHECK name=x kind=optional result=pass output=", "malformed EDGECI-CHECK"),
    ("EDGECI-CHECK kind=required result=pass output=", "malformed EDGECI-CHECK"),
    ("EDGECI-CHECK name=x kind=required result=pass output=%%%notbase64", "output= is not base64"),
    ("EDGECI-DONE status=fine passed=1 failed=0", "malformed EDGECI-DONE"),
    ("EDGECI-BOOT version=1.0.0", "EDGECI-BOOT without commit="),
    ("EDGECI-HELLO world", "unknown protocol line"),
])
def test_protocol_violations_are_reported_not_guessed(line, fragment):
    rep = parse_console(console(line))
    assert any(fragment in e for e in rep.errors), rep.errors


def test_done_counts_that_disagree_with_the_check_lines_are_an_error():
    rep = parse_console(console(
        f"EDGECI-BOOT commit={C1} version=1",
        f"EDGECI-CHECK name=a kind=required result=pass output={b64('ok')}",
        "EDGECI-DONE status=healthy passed=2 failed=0",
    ))
    assert rep.done and any("passed=2" in e for e in rep.errors)


def test_only_the_first_boot_and_done_lines_count():
    rep = parse_console(console(f"EDGECI-BOOT commit={C1} version=1", "EDGECI-DONE status=healthy passed=0 failed=0",
                                f"EDGECI-BOOT commit={C2} version=2", "EDGECI-DONE status=unhealthy passed=0 failed=0"))
    assert rep.commit == C1 and rep.status == "healthy"


def test_output_is_capped_at_4_kib():
    rep = parse_console(console(f"EDGECI-CHECK name=big kind=required result=fail output={b64('x' * 9000)}"))
    assert len(rep.checks[0].output) == 4096


# -- ostree pull statistics -----------------------------------------------------------------------

def test_a_full_pull_is_counted_in_objects_and_bytes():
    s = parse_pull_output("11 metadata, 53 content objects fetched; 449 KiB transferred in 0 seconds; "
                          "502.7 kB content written\n")
    assert s.bytes == 449 * 1024 and not s.used_delta
    assert (s.metadata_objects, s.content_objects) == (11, 53)


def test_a_delta_pull_is_counted_in_parts():
    s = parse_pull_output("1 delta parts, 4 loose fetched; 1.4 MiB transferred in 1 seconds; 0 bytes content written")
    assert s.used_delta and s.delta_parts == 1 and s.loose_objects == 4
    assert s.bytes == round(1.4 * 1024 * 1024)
    assert "static delta" in s.describe()


def test_a_pull_with_nothing_to_fetch_transfers_zero_bytes():
    assert parse_pull_output("").bytes == 0


# -- BLS entries and the kernel command line -------------------------------------------------------

def test_the_default_entry_is_the_highest_version(tmp_path):
    entries = tmp_path / "loader" / "entries"
    entries.mkdir(parents=True)
    (entries / "ostree-1-rhel.conf").write_text(
        "title old (ostree:1)\nversion 1\noptions ostree=/ostree/boot.1/rhel/x/1\nlinux /ostree/rhel-x/vmlinuz\n"
        "initrd /ostree/rhel-x/initramfs.img\n")
    (entries / "ostree-2-rhel.conf").write_text(
        "title new (ostree:0)\nversion 2\noptions root=/dev/vda ostree=/ostree/boot.1/rhel/x/0 quiet\n"
        "linux /ostree/rhel-x/vmlinuz\ninitrd /ostree/rhel-x/initramfs.img\n")
    default, previous = read_bls_entries(tmp_path)
    assert default.version == 2 and default.ostree_target == "/ostree/boot.1/rhel/x/0"
    assert previous.version == 1 and previous.ostree_target == "/ostree/boot.1/rhel/x/1"


def test_console_arguments_are_added_once():
    assert kernel_cmdline("ostree=/x/0 console=tty0") == "ostree=/x/0 console=tty0 panic=-1"
    assert kernel_cmdline("ostree=/x/0") == "ostree=/x/0 console=ttyS0 panic=-1"


def test_the_vm_never_reboots_and_writes_the_serial_console_to_a_file(tmp_path):
    spec = VMSpec(kernel=tmp_path / "k", initrd=tmp_path / "i", cmdline="c", disk=tmp_path / "d.img",
                  serial_log=tmp_path / "s.log", memory_mb=384, kvm=False)
    a = argv(spec)
    assert "-no-reboot" in a and a[a.index("-machine") + 1] == "q35,accel=tcg"
    assert a[a.index("-serial") + 1] == f"file:{tmp_path / 's.log'}"
    assert a[a.index("-drive") + 1] == f"file={tmp_path / 'd.img'},format=raw,if=virtio"
    assert a[a.index("-m") + 1] == "384"


# -- from a boot to cases ------------------------------------------------------------------------------

CHECKS = parse_checks("""\
checks:
  - name: hostname
    file_contains: {path: /etc/hostname, text: gateway}
  - name: booted-candidate
    booted_commit: true
  - name: uname
    command: {run: "uname -s", exit: 0, output: Linux}
    wanted: true
  - name: motd
    file_exists: /etc/motd
scripts:
  - name: disk
    required: true
    run: "df /"
""").checks


def booted(*checks: CheckReport, commit: str = C1, status: str | None = "healthy", error: str = "") -> BootResult:
    return BootResult(commit=commit, version="1.0.1", status=status, checks=list(checks), running=True,
                      error=error)


def test_cases_follow_the_reported_results():
    boot = booted(CheckReport("hostname", "required", True, "ok\n"),
                  CheckReport("uname", "wanted", False, "Darwin\n"),
                  CheckReport("motd", "required", False, "/etc/motd does not exist\n"),
                  CheckReport("disk", "required", True, "/dev/vda 10%\n"),
                  CheckReport("from-the-tree", "required", False, "boom\n"), status="unhealthy")
    cases = {c.name: c for c in check_cases(CHECKS, boot, C1, "1.0.1")}
    assert cases["hostname"].outcome is Outcome.PASSED
    assert cases["booted-candidate"].outcome is Outcome.PASSED  # host-side: booted == candidate
    assert cases["uname"].outcome is Outcome.PASSED and "greenboot only warns" in cases["uname"].message
    assert cases["motd"].outcome is Outcome.FAILED
    assert cases["motd"].message == "check 'motd' failed: /etc/motd does not exist"
    assert cases["motd"].output == "/etc/motd does not exist\n"
    assert cases["disk"].outcome is Outcome.PASSED
    assert cases["from-the-tree"].outcome is Outcome.FAILED  # reported by the system, not in the file


def test_a_check_that_did_not_run_is_an_error_not_a_skip():
    cases = {c.name: c for c in check_cases(CHECKS, booted(CheckReport("hostname", "required", True)), C1, "1")}
    assert cases["motd"].outcome is Outcome.ERROR and "reported no result" in cases["motd"].message
    unfinished = booted(status=None, error="the VM did not finish booting within 120 s (boot_test.timeout)")
    cases = {c.name: c for c in check_cases(CHECKS, unfinished, C1, "1")}
    assert cases["hostname"].outcome is Outcome.ERROR and "within 120 s" in cases["hostname"].message


def test_booting_another_commit_fails_the_boot_and_the_booted_commit_check():
    boot = booted(commit=C2)
    assert boot_case(boot, C1).outcome is Outcome.FAILED
    cases = {c.name: c for c in check_cases(CHECKS, boot, C1, "1")}
    assert cases["booted-candidate"].outcome is Outcome.FAILED
    assert C2 in cases["booted-candidate"].message


def test_a_boot_that_did_not_finish_fails_the_boot_case_with_the_reason():
    case = boot_case(booted(status=None, error="the VM exited before EDGECI-DONE (exit code 0)"), C1)
    assert case.outcome is Outcome.FAILED and "exited before EDGECI-DONE" in case.message
    assert boot_case(booted(), C1).outcome is Outcome.PASSED


def test_the_sysroot_backend_skips_what_needs_a_running_system(tmp_path):
    tree = tmp_path / "deploy" / f"{C1}.0"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("gateway\n")
    boot = BootResult(commit=C1, version="1.0.1", status=None, running=False, tree=tree)
    cases = {c.name: c for c in check_cases(CHECKS, boot, C1, "1.0.1")}
    assert cases["hostname"].outcome is Outcome.PASSED
    assert cases["motd"].outcome is Outcome.FAILED
    assert cases["uname"].outcome is Outcome.SKIPPED
    assert cases["uname"].message == "needs a running system (sysroot backend)"
    assert cases["disk"].outcome is Outcome.SKIPPED
    assert cases["booted-candidate"].outcome is Outcome.PASSED
