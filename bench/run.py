"""Run every benchmark (`make bench`) and print their RESULT lines together at the end.

Each benchmark measures its ratio side by side in one run and prints `RESULT name: value (target …)
PASS|MISS`. Exit 0 when every target is met.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["cli_startup", "lint", "compose", "client_delta", "promote", "pipeline", "device_boot"]


def main(argv: list[str]) -> int:
    names = argv or [n for n in ORDER if (HERE / f"{n}.py").exists()]
    results: list[str] = []
    failed = False
    for name in names:
        print(f"==> bench/{name}.py", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(HERE / f"{name}.py")], cwd=HERE, capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        if proc.returncode not in (0, 1) or not any(line.startswith("RESULT") for line in proc.stdout.splitlines()):
            sys.stdout.write(proc.stderr[-3000:])
            results.append(f"RESULT {name}: ERROR (exit {proc.returncode})")
            failed = True
        else:
            results += [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
            failed |= proc.returncode != 0
        print(f"<== bench/{name}.py ({time.perf_counter() - t0:.1f}s)", flush=True)
    print("\nSummary")
    for line in results:
        print("  " + line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
