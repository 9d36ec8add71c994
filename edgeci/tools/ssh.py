"""ssh wrapper: one command on a test VM, non-interactive, throwaway host keys accepted.

The VM under test is created a minute earlier and destroyed after the test: its host key cannot be
known in advance, so it is accepted and never stored (UserKnownHostsFile=/dev/null).
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from edgeci.tools.run import Completed, run

Runner = Callable[..., Completed]


@dataclass
class SSHTarget:
    host: str
    user: str
    key: str = ""  # private key file; "" = the user's default keys / agent
    port: int = 22
    connect_timeout: int = 10
    # a control socket: the first command opens one connection, the next ones reuse it (a handshake costs
    # seconds on an emulated CPU). Close it with close_master() when the device goes away.
    control_path: str = ""
    # keepalives: the connection is given up after alive_interval × alive_count seconds without an answer (a VM
    # under emulation on a busy host answers late: give it more)
    alive_interval: int = 5
    alive_count: int = 3

    def argv(self, command: str) -> list[str]:
        args = ["ssh", "-p", str(self.port),
                "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR",
                "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", f"ServerAliveInterval={self.alive_interval}", "-o", f"ServerAliveCountMax={self.alive_count}"]
        if self.key:
            args += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        if self.control_path:
            args += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_path}", "-o", "ControlPersist=120"]
        return [*args, f"{self.user}@{self.host}", "--", command]


def ssh(target: SSHTarget, command: str | list[str], *, input: str | None = None, timeout: float = 300,
        check: bool = False, runner: Runner = run) -> Completed:
    """Run one command on the target (a list is shell-quoted for the remote shell)."""
    text = command if isinstance(command, str) else shlex.join(command)
    return runner(target.argv(text), input=input, timeout=timeout, check=check)


def close_master(target: SSHTarget, runner: Runner = run) -> None:
    """End the control master of `target` (ssh -O exit), if one runs."""
    import os

    from edgeci.errors import ToolError

    if target.control_path and os.path.exists(target.control_path):
        try:
            runner(["ssh", "-o", f"ControlPath={target.control_path}", "-O", "exit", f"{target.user}@{target.host}"],
                   timeout=30, check=False)
        except ToolError:
            pass  # a wedged master: the socket goes below and the next command opens a fresh connection
        with contextlib.suppress(OSError):
            os.unlink(target.control_path)
