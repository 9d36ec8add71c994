"""CLI start-up: `edgeci --version` against `python -c pass`, like with like (target <= 2x).

Both sides are started the same way: the same interpreter (sys.executable), the same flags, output captured
the same way, median of 20 runs each. `edgeci --version` is run as the console script does it (import
edgeci.cli, call main). The installed console script is timed too and printed for reference: its shebang may
name another interpreter (a pyenv shim, a venv), so it is not used for the ratio.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from _util import median, result, timed

RUNS = 20
ENTRY = "import sys; from edgeci.cli import main; sys.exit(main(['--version']))"


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def main() -> bool:
    base = median(timed(lambda: _run([sys.executable, "-c", "pass"]), RUNS))
    ours = median(timed(lambda: _run([sys.executable, "-c", ENTRY]), RUNS))
    print(f"{sys.executable} -c pass: {base * 1000:.1f} ms; the same interpreter running edgeci --version: "
          f"{ours * 1000:.1f} ms (median of {RUNS} each)")
    exe = shutil.which("edgeci")
    if exe:
        script = median(timed(lambda: _run([exe, "--version"]), RUNS))
        with open(exe, encoding="utf-8", errors="replace") as f:
            shebang = f.readline().strip()
        print(f"for reference, the console script {exe} ({shebang}): {script * 1000:.1f} ms")
    return result("cli-startup ratio", ours / base, 2.0, "x")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
