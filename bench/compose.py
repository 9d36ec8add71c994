"""One `edgeci compose gateway` of the test OS with the kernel already cached (target: < 10 s on 2 cores).

Warms the kernel cache first (a first run downloads Debian's kernel once), then times the whole CLI
call — lint, tree, initramfs, ostree commit, OCI archive, download, record — in a fresh project,
three times, and reports the median. The per-step split comes from the compose's own log.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _util import median, result, sh

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 10.0
RUNS = 3


def blueprints() -> Path:
    return ROOT / "blueprints"


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from edgeci.testos.kernel import ensure_kernel

    t0 = time.perf_counter()
    kernel = ensure_kernel()
    print(f"kernel {kernel.kver} ready in {time.perf_counter() - t0:.2f} s ({kernel.vmlinuz.parent})")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECI_")}
    times = []
    with tempfile.TemporaryDirectory(prefix="edgeci-bench-compose-") as tmp:
        for i in range(RUNS):
            project = Path(tmp) / f"p{i}"
            shutil.copytree(blueprints(), project / "blueprints")
            t = time.perf_counter()
            sh([sys.executable, "-m", "edgeci", "compose", "gateway"], cwd=project, env=env)
            times.append(time.perf_counter() - t)
            rec = json.loads((project / "build" / "gateway" / "x86_64" / "record.json").read_text())
            compose = rec["sections"]["compose"]
            size = (project / compose["artifact"]).stat().st_size
            log = (project / "build" / "composer" / "composes" / compose["id"] / "log").read_text()
            print(f"run {i + 1}: {times[-1]:.2f} s, commit {compose['commit'][:12]}, artifact {size / 1e6:.1f} MB")
        steps = [line for line in log.splitlines() if line[9:].split(" ")[0] in ("kernel", "tree", "commit",
                                                                                   "artifact")]
        print("last run's steps:\n  " + "\n  ".join(steps))
    return 0 if result("compose (test OS, kernel cached, median of 3)", median(times), TARGET_S, "s") else 1


if __name__ == "__main__":
    sys.exit(main())
