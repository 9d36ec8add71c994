"""Shared pytest set-up: every module in tests/fixtures/ is loaded as a fixture plugin.

Each area keeps its fixtures in its own module there (registry.py, composed.py, …), so fixtures
that start real servers (docker-registry, stage HTTP, qemu) are defined once and always stopped.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# The suite composes the busybox test OS (seconds) unless a test asks for the Debian device OS
# (tests/integration/test_device_*.py set composer.os: device themselves); make demo uses the device.
os.environ.setdefault("EDGECI_COMPOSER_OS", "busybox")

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if p.stem != "__init__"
)


@pytest.fixture(autouse=True)
def _secrets_do_not_leak_between_tests() -> Iterator[None]:
    """A value a test registers as a secret (edgeci.tools.run masks it everywhere) is forgotten after that test:
    under xdist a later test in the same worker would otherwise see its own text masked ("Edge ***istrator")."""
    from edgeci.tools import run

    before = set(run._SECRETS)
    yield
    with run._SECRETS_LOCK:
        run._SECRETS.intersection_update(before)
