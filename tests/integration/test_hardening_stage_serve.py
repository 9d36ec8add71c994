"""`edgeci stage serve` run three times at once for one stage directory: one server at the end, the one the
record names; the others were replaced, none is left running untracked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from edgeci.reposerver import serve_lock_path
from edgeci.stagehost import fetch_ref
from tests.fixtures.registry import EdgeProject


def stage_servers(directory: Path) -> list[int]:
    """PIDs of every live edgeci.reposerver process serving a directory below `directory`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and b"edgeci.reposerver" in args and any(a.startswith(str(directory).encode())
                                                                for a in args):
            pids.append(int(proc.name))
    return pids


def test_three_concurrent_serves_leave_one_tracked_server(edge_project: EdgeProject) -> None:
    stage_root = edge_project.root / "build" / "stage"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECI_") or k == "EDGECI_COMPOSER_OS"}
    procs = [subprocess.Popen([sys.executable, "-m", "edgeci", "-c", str(edge_project.config), "stage", "serve",
                               "edge"], cwd=edge_project.root, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    try:
        assert [p.returncode for p in procs] == [0, 0, 0], outs
        stage = edge_project.load_record()["sections"]["stage"]
        running = stage_servers(stage_root)
        assert running == [stage["pid"]], (running, stage, outs)
        assert fetch_ref(stage["url"], edge_project.ref) == edge_project.commit
        said = "".join(o for o, _ in outs)
        assert said.count("stopped the previous stage server") == 2  # each later serve replaced the one before
        assert serve_lock_path(Path(stage["dir"])).parent == Path(stage["dir"]).resolve().parent
    finally:
        for pid in stage_servers(stage_root):
            os.killpg(pid, signal.SIGTERM)
