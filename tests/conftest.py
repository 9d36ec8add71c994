"""Shared pytest set-up: every module in tests/fixtures/ is loaded as a fixture plugin.

Each area keeps its fixtures in its own module there (registry.py, composed.py, …), so fixtures
that start real servers (docker-registry, stage HTTP, qemu) are defined once and always stopped.
"""

import os
from pathlib import Path

# The suite composes the busybox test OS (seconds) unless a test asks for the Debian device OS
# (tests/integration/test_device_*.py set composer.os: device themselves); make demo uses the device.
os.environ.setdefault("EDGECI_COMPOSER_OS", "busybox")

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if p.stem != "__init__"
)
