"""edgeci.version: one semver rule, so lint and the gate's anti-rollback check never disagree on a version."""

from __future__ import annotations

import pytest

from edgeci import policy
from edgeci.production import Production
from edgeci.version import compare_versions, next_patch, next_version, parse_semver


def test_versions_order_by_semver_precedence() -> None:
    assert compare_versions("1.10.0", "1.9.9") == 1
    assert compare_versions("1.2.0-rc.1", "1.2.0") == -1
    assert compare_versions("1.2.0-rc.2", "1.2.0-rc.10") == -1
    assert compare_versions("2.0.0+build5", "1.99.0") == 1
    assert compare_versions("1.0.0+a", "1.0.0+b") == 0


@pytest.mark.parametrize("text", ["1.2", "v2.0.0", "latest", "9.4", "1.2.3.4", "01.2.3"])
def test_what_lint_refuses_the_gate_cannot_order_either(text: str) -> None:
    assert parse_semver(text) is None
    with pytest.raises(ValueError):
        compare_versions(text, "1.0.0")
    verdict = policy.check_version("1.0.1", Production("rhel/9/x86_64/edge", "a" * 64, text))
    assert verdict.outcome == policy.FAILED and "cannot compare versions" in verdict.reason


def test_rebuild_and_rollback_versions() -> None:
    assert next_patch("1.4.9") == "1.4.10"
    assert next_version("1.3.0") == "1.3.1"
    assert next_version("1.3.0-rc.1") == "1.3.1"
    with pytest.raises(ValueError):
        next_version("latest")
