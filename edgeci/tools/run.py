"""The only place that starts external programs.

argv lists (never a shell), a timeout on every call, captured output, and secrets masked in every
log line, exception text and report. Failures raise ToolError with the command, exit code and the
tail of stderr. Long-running helpers (registries, VMs, servers) are started with `start()` and
stopped by PID with `Process.stop()`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeci.errors import ToolError

log = logging.getLogger("edgeci.run")

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
MASK = "***"
DEFAULT_TIMEOUT = 600.0

# apt package that provides each program, for the "how to fix" half of a missing-tool error.
PACKAGES = {
    "ostree": "ostree",
    "skopeo": "skopeo",
    "qemu-system-x86_64": "qemu-system-x86",
    "gpg": "gnupg",
    "busybox": "busybox-static",
    "docker-registry": "docker-registry",
    "mkfs.ext4": "e2fsprogs",
    "git": "git",
    "unshare": "util-linux",
    "htpasswd": "apache2-utils",
    "groovy": "groovy",
    "virt-install": "virtinst",
    "rpm": "rpm",
    "mmdebstrap": "mmdebstrap",
    "grub-mkstandalone": "grub-common grub-efi-amd64-bin",
    "grub-editenv": "grub-common",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "sfdisk": "fdisk",
    "mke2fs": "e2fsprogs",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


# Runs of base64 (standard or URL-safe alphabet) long enough to carry a secret: `Authorization: Basic <base64 of
# user:token>` echoed by a server, a token inside a JWT, … Each is decoded and masked when it holds a secret.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")


def _derived(value: str) -> set[str]:
    """The forms a secret travels in besides itself: URL-encoded (form bodies, query strings), base64 (standard,
    URL-safe, with and without padding) and hex. Base64 of the secret inside a longer string (user:token) is
    found by decoding (see mask)."""
    raw = value.encode()
    b64 = base64.b64encode(raw).decode()
    forms = {urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value), urllib.parse.quote(value),
             b64, b64.rstrip("="), base64.urlsafe_b64encode(raw).decode(),
             base64.urlsafe_b64encode(raw).decode().rstrip("="), raw.hex(), raw.hex().upper()}
    return {f for f in forms if len(f) >= 3}


def register_secret(value: str | None) -> None:
    """Mask `value` (and its URL-encoded, base64 and hex forms) from now on wherever edgeci prints, logs or
    records text."""
    if value and len(value) >= 3:
        with _SECRETS_LOCK:
            _SECRETS.add(value)
            _FORMS.add(value)
            _FORMS.update(_derived(value))


_FORMS: set[str] = set()


def _decodes_to_secret(run: str, secrets: list[str]) -> bool:
    body = run.rstrip("=")
    for altchars in (b"+/", b"-_"):
        for cut in range(0, 4):  # the run may start inside a larger base64 string: try each alignment
            part = body[cut:]
            part = part[: len(part) - len(part) % 4] if len(part) % 4 == 1 else part
            try:
                decoded = base64.b64decode(part + "=" * (-len(part) % 4), altchars=altchars, validate=False)
            except (ValueError, binascii.Error):
                continue
            text = decoded.decode("utf-8", errors="replace")
            if any(s in text for s in secrets):
                return True
    return False


def mask(text: str) -> str:
    """Replace every registered secret in `text`, and every encoded form of one, with ***."""
    if not text:
        return text
    with _SECRETS_LOCK:
        if not _SECRETS:
            return text
        secrets = sorted(_SECRETS, key=len, reverse=True)
        forms = sorted(_FORMS, key=len, reverse=True)
    text = _BASE64_RUN.sub(lambda m: MASK if _decodes_to_secret(m.group(0), secrets) else m.group(0), text)
    for s in forms:
        if s in text:
            text = text.replace(s, MASK)
    return text


def mask_argv(argv: Iterable[str]) -> list[str]:
    return [mask(a) for a in argv]


class MaskingFilter(logging.Filter):
    """A logging filter that masks secrets in the formatted message."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        masked = mask(msg)
        if masked != msg:
            record.msg, record.args = masked, None
        return True


def which(program: str) -> str:
    """Absolute path of `program`, or ToolError naming the package to install."""
    path = shutil.which(program)
    if path is None:
        pkg = PACKAGES.get(program, program)
        raise ToolError(
            f"required program '{program}' is not installed",
            fix=f"install it: apt-get install {pkg}",
        )
    return path


def have(program: str) -> bool:
    return shutil.which(program) is not None


@dataclass
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _prepare(
    argv: Sequence[str | os.PathLike[str]], env: Mapping[str, str] | None
) -> tuple[list[str], dict[str, str] | None, str]:
    """(argv with the program resolved on PATH, os.environ merged with env or None, the masked command line)."""
    args = [os.fspath(a) for a in argv]
    if not args:
        raise ValueError("empty argv")
    if os.sep not in args[0]:
        args[0] = which(args[0])
    full_env = None
    if env is not None:
        full_env = {**os.environ, **env}
    return args, full_env, " ".join(mask_argv([os.path.basename(args[0]), *args[1:]]))


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    input: str | bytes | None = None,
    check: bool = True,
    text: bool = True,
) -> Completed:
    """Run argv, capture its output, raise ToolError on failure (unless check=False).

    `env` is merged over os.environ. Output is decoded as UTF-8 with replacement when text=True.
    """
    args, full_env, shown = _prepare(argv, env)
    log.debug("run: %s", shown)
    started = time.monotonic()
    data = input.encode() if isinstance(input, str) else input
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=full_env,
            input=data,
            stdin=None if data is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise ToolError(
            f"'{shown}' did not finish within {timeout:g} s",
            argv=mask_argv(args),
            stderr=mask(_decode(e.stderr)),
            fix="raise the timeout or check why the program hangs",
            timed_out=True,
        ) from None
    except OSError as e:
        raise ToolError(f"cannot start '{shown}': {e.strerror}", argv=mask_argv(args)) from None
    duration = time.monotonic() - started
    out = _decode(proc.stdout) if text else proc.stdout
    err = _decode(proc.stderr)
    result = Completed(args, proc.returncode, out, err, duration)  # type: ignore[arg-type]
    log.debug("exit %d after %.2fs: %s", proc.returncode, duration, shown)
    if check and proc.returncode != 0:
        tail = mask(_tail(err or (out if isinstance(out, str) else "")))
        raise ToolError(
            f"'{shown}' exited {proc.returncode}" + (f": {tail}" if tail else ""),
            argv=mask_argv(args),
            returncode=proc.returncode,
            stderr=mask(err),
        )
    return result


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")


class Process:
    """A background program started by edgeci; always stopped by its PID."""

    def __init__(self, popen: subprocess.Popen[bytes], argv: list[str], log_path: Path | None) -> None:
        self.popen = popen
        self.argv = argv
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        if self.log_path and self.log_path.exists():
            return mask(self.log_path.read_text(errors="replace"))
        return ""

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL after `grace` seconds; returns the exit code."""
        if self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.popen.pid, signal.SIGKILL)
                self.popen.wait(grace)
        return self.popen.returncode

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def start(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_path: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: int | None = subprocess.DEVNULL,
) -> Process:
    """Start argv in the background in its own process group; output goes to log_path."""
    args, full_env, shown = _prepare(argv, env)
    log.debug("start: %s", shown)
    lp = Path(log_path) if log_path else None
    out = open(lp, "wb") if lp else subprocess.DEVNULL
    try:
        popen = subprocess.Popen(
            args, cwd=cwd, env=full_env, stdin=stdin, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as e:
        raise ToolError(f"cannot start '{shown}': {e.strerror}", argv=mask_argv(args)) from None
    finally:
        if lp:
            out.close()  # type: ignore[union-attr]
    return Process(popen, mask_argv(args), lp)
