"""tools.run: captured output, ToolError details, masking, timeouts, missing programs, background processes."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import pytest

from edgeci.errors import ToolError
from edgeci.tools.run import MaskingFilter, have, mask, register_secret, run, start, which


def test_run_captures_stdout_stderr_and_duration() -> None:
    r = run(["sh", "-c", "echo out; echo err >&2"])
    assert (r.stdout, r.stderr, r.returncode, r.ok) == ("out\n", "err\n", 0, True)
    assert r.argv[0].startswith("/") and r.duration >= 0


def test_run_passes_input_env_and_cwd(tmp_path: Path) -> None:
    assert run(["cat"], input="hello").stdout == "hello"
    assert run(["sh", "-c", "echo $EDGECI_TEST_VAR"], env={"EDGECI_TEST_VAR": "v1"}).stdout == "v1\n"
    assert run(["pwd"], cwd=tmp_path).stdout.strip() == str(tmp_path.resolve())
    assert run(["printf", "\\377"], text=False).stdout == b"\xff"


def test_failure_raises_tool_error_with_command_code_and_stderr_tail() -> None:
    script = "for i in $(seq 1 20); do echo line$i >&2; done; exit 3"
    with pytest.raises(ToolError) as e:
        run(["sh", "-c", script])
    err = e.value
    assert err.returncode == 3 and "exited 3" in str(err) and "sh -c" in str(err)
    assert "line20" in str(err) and "line1\n" not in str(err)  # only the tail
    assert err.stderr.count("line") == 20 and err.exit_code == 2


def test_check_false_returns_the_failure() -> None:
    r = run(["sh", "-c", "exit 4"], check=False)
    assert r.returncode == 4 and not r.ok


def test_secrets_are_masked_in_exception_text_argv_and_stderr() -> None:
    secret = "run-secret-7c6b5a"
    register_secret(secret)
    with pytest.raises(ToolError) as e:
        run(["sh", "-c", f"echo token={secret} >&2; exit 1", "x", secret])
    err = e.value
    assert secret not in str(err) and secret not in err.stderr and secret not in " ".join(err.argv)
    assert "token=***" in str(err)


def test_timeout_raises_tool_error_quickly() -> None:
    t0 = time.monotonic()
    with pytest.raises(ToolError, match=r"did not finish within 0.3 s") as e:
        run(["sleep", "10"], timeout=0.3)
    assert time.monotonic() - t0 < 5 and e.value.fix and "timeout" in e.value.fix


def test_missing_program_names_the_apt_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolError) as e:
        which("qemu-system-x86_64")
    assert "'qemu-system-x86_64' is not installed" in str(e.value)
    assert "apt-get install qemu-system-x86" in str(e.value)
    with pytest.raises(ToolError, match="apt-get install ostree"):
        run(["ostree", "--version"])
    assert not have("ostree")


def test_unknown_program_falls_back_to_its_own_name() -> None:
    with pytest.raises(ToolError, match="apt-get install edgeci-no-such-program"):
        run(["edgeci-no-such-program"])


def test_mask_replaces_longest_secret_first_and_ignores_tiny_values() -> None:
    register_secret("mask-abc")
    register_secret("mask-abcdef")
    register_secret("ab")  # too short to mask safely
    register_secret(None)
    assert mask("x mask-abcdef y mask-abc z ab") == "x *** y *** z ab"
    assert mask("") == ""


def test_masking_filter_masks_log_records() -> None:
    register_secret("log-secret-123456")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskingFilter())
    logger = logging.getLogger("edgeci-test-masking")  # outside the "edgeci" tree that cli.main() configures
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("pushing with %s", "log-secret-123456")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "pushing with ***\n"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_start_runs_in_background_and_stop_kills_the_process_group(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    pidfile = tmp_path / "child.pid"
    register_secret("bg-secret-112233")
    with start(["sh", "-c", f"echo started bg-secret-112233; sleep 60 & echo $! > {pidfile}; wait"],
               log_path=log) as proc:
        deadline = time.monotonic() + 5
        while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.alive() and proc.pid > 0
        child = int(pidfile.read_text())
        assert _state(child) not in ("gone", "Z")
    assert not proc.alive()
    deadline = time.monotonic() + 5
    while _state(child) not in ("gone", "Z") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _state(child) in ("gone", "Z")  # the grandchild died with its group
    assert proc.output() == "started ***\n"


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    proc = start(["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"])
    time.sleep(0.2)
    t0 = time.monotonic()
    code = proc.stop(grace=0.3)
    assert code == -9 and time.monotonic() - t0 < 5  # SIGTERM ignored, so SIGKILL after the grace period
    assert not proc.alive()
