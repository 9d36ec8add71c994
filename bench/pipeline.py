"""The whole local pipeline, wall time: lint → compose → push → stage → boot-test (qemu) → gate →
approve → promote, for a second release on top of a first (so upgrade and rollback really run).
Target: under 60 s on 2 cores. The first release is set-up and not timed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import result

ROOT = Path(__file__).resolve().parent.parent


def edgeci(cwd: Path, *args: str, ok: tuple[int, ...] = (0,)) -> None:
    r = subprocess.run([sys.executable, "-m", "edgeci", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode not in ok:
        sys.stdout.write(r.stdout[-3000:] + r.stderr[-3000:])
        raise SystemExit(f"edgeci {' '.join(args)} exited {r.returncode}")


def release(project: Path) -> None:
    edgeci(project, "run", "gateway", ok=(1,))  # stops at the gate
    edgeci(project, "approve", "gateway", "--as", "alex")
    edgeci(project, "run", "gateway", "--resume")


def main() -> bool:
    if not shutil.which("qemu-system-x86_64"):
        raise SystemExit("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    with tempfile.TemporaryDirectory(prefix="edgeci-bench-pipeline-") as tmp:
        project = Path(tmp)
        (project / "blueprints").mkdir()
        for name in ("gateway.toml", "gateway.checks.yaml"):
            shutil.copy(ROOT / "blueprints" / name, project / "blueprints" / name)
        env = {**os.environ, "GIT_AUTHOR_NAME": "Dana", "GIT_AUTHOR_EMAIL": "dana@example.com",
               "GIT_COMMITTER_NAME": "Dana", "GIT_COMMITTER_EMAIL": "dana@example.com"}
        git = ["git", "-C", str(project)]
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", "1.0.0"], check=True, env=env)
        release(project)
        toml = project / "blueprints" / "gateway.toml"
        toml.write_text(toml.read_text().replace('version = "1.0.0"', 'version = "1.0.1"')
                        + '\n[[customizations.files]]\npath = "/etc/motd"\ndata = "1.0.1\\n"\n')
        subprocess.run([*git, "commit", "-qam", "1.0.1"], check=True, env=env)
        t0 = time.perf_counter()
        release(project)
        took = time.perf_counter() - t0
    print(f"whole local pipeline (second release, qemu boot test: install, upgrade, rollback): {took:.1f} s "
          f"on {os.cpu_count()} cores")
    return result("pipeline wall time", took, 60.0, "s")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
