"""CLI start-up: `edgeci --version` against `python -c pass`, median of 20 runs each (target <= 2x)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from _util import median, result, timed

RUNS = 20


def main() -> bool:
    exe = shutil.which("edgeci")
    argv = [exe, "--version"] if exe else [sys.executable, "-m", "edgeci", "--version"]
    base = median(timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), RUNS))
    ours = median(timed(lambda: subprocess.run(argv, check=True, capture_output=True), RUNS))
    print(f"python -c pass: {base * 1000:.1f} ms; edgeci --version: {ours * 1000:.1f} ms (median of {RUNS})")
    return result("cli-startup ratio", ours / base, 2.0, "x")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
