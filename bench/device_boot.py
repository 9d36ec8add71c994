"""Boot times of the real device (the device OS in qemu, UEFI + GRUB, TCG unless boot_test.kvm is on).

Composes sensor 1.0.0 and 1.0.1 with the local composer's device OS (the root filesystem is cached after the first
run), stages 1.0.1 with a static delta from 1.0.0, then runs install, upgrade and rollback on the device backend
as the boot-test stage does (install on one device beside upgrade + rollback on another). Prints each boot's
seconds from power-on or reboot until the boot settled (systemd done, greenboot's verdict), each scenario's time,
and the bytes an install and an update fetched.

Target: the three scenarios under 150 s (docs/device.md says where the time goes).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.fixtures.device: the same two releases the integration test stages

from _util import result  # noqa: E402

from edgeci.boottest.device_guest import DeviceGuest  # noqa: E402
from edgeci.boottest.scenarios import run_scenarios  # noqa: E402
from edgeci.checks import parse_checks, render_scripts  # noqa: E402
from edgeci.production import Production  # noqa: E402
from edgeci.record import Candidate  # noqa: E402
from tests.fixtures.device import CHECKS, REF, stage_two_releases  # noqa: E402
from tests.fixtures.httpserver import serve_directory  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="edgeci-bench-device-") as tmp, contextlib.ExitStack() as stack:
        t0 = time.perf_counter()
        staged = stage_two_releases(Path(tmp), lambda d: stack.enter_context(serve_directory(d)))
        print(f"two device composes and the stage: {time.perf_counter() - t0:.1f} s", flush=True)
        checks = parse_checks(CHECKS, "sensor.checks.yaml")
        scripts = render_scripts(checks, "1.0.1")
        candidate = Candidate(blueprint="sensor", version="1.0.1", arch="x86_64", ref=REF, checksum=staged.candidate,
                              stage_url=staged.stage_url)
        production = Production(url=staged.prod_url, commit=staged.prod_commit)
        guests: dict[str, DeviceGuest] = {}

        def make(scenario: str) -> DeviceGuest:
            g = DeviceGuest(Path(tmp) / "bt" / scenario, osname="rhel", vm_name=f"bench-{scenario}",
                            candidate_commit=staged.candidate, version="1.0.1", scripts=scripts,
                            cache=Path.home() / ".cache" / "edgeci")
            guests[scenario] = g
            return g

        t0 = time.perf_counter()
        res = run_scenarios("device", make, candidate, production, checks.checks, parallel=True)
        stage_s = time.perf_counter() - t0
        boots = {name: list(g.boots) for name, g in guests.items()}
        bad = [(s.name, s.outcome.value) for s in res.scenarios if s.outcome.value != "passed"]
        if bad:
            print(f"scenarios did not pass: {bad}")
            return 2
        up = res.scenario("upgrade")
        inst = res.scenario("install")
        assert up is not None and inst is not None and up.pull is not None and inst.pull is not None
        print(f"install: {inst.seconds:.1f} s (disk written from the stage URL, then booted: "
              f"{boots['install'][0]:.1f} s to settle)")
        print(f"upgrade device: production boot {boots['upgrade'][0]:.1f} s, candidate boot after the update "
              f"{boots['upgrade'][1]:.1f} s, rollback (red boot + fallback boot) {boots['upgrade'][2]:.1f} s")
        print(f"bytes: install {inst.pull.bytes} (sysroot), update {up.pull.bytes} via {up.pull.delta_parts} delta "
              f"part(s), the device's interfaces received {up.pull.rx_bytes}")
        print(f"the three scenarios as the stage runs them (two devices at once): {stage_s:.1f} s")
        result("device_first_boot_s", boots["install"][0], 90.0, "s")
        result("device_upgrade_boot_s", boots["upgrade"][1], 90.0, "s")
        result("device_rollback_s", boots["upgrade"][2], 180.0, "s")
        return 0 if result("device_boot_test_stage_s", stage_s, 150.0, "s") else 1


if __name__ == "__main__":
    sys.exit(main())
