"""Lint of 500 blueprints in one `edgeci lint` run (target under 2 s)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import result

ROOT = Path(__file__).resolve().parent.parent
COUNT = 500


def main() -> bool:
    template = (ROOT / "blueprints" / "gateway.toml").read_text()
    with tempfile.TemporaryDirectory(prefix="edgeci-bench-lint-") as tmp:
        d = Path(tmp) / "blueprints"
        d.mkdir()
        for i in range(COUNT):
            text = template.replace('name = "gateway"', f'name = "gateway{i:03d}"', 1)
            (d / f"gateway{i:03d}.toml").write_text(text)
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "edgeci", "lint", str(d)], cwd=tmp, capture_output=True, text=True)
        took = time.perf_counter() - t0
        if r.returncode != 0:
            print(r.stdout[-2000:], r.stderr[-2000:])
            raise SystemExit(f"lint of the generated blueprints failed with exit {r.returncode}")
    print(f"edgeci lint of {COUNT} blueprints: {took:.2f} s")
    return result("lint-500", took, 2.0, "s")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
