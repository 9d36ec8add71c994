"""One version rule for lint, compose (rebuilds), the gate's anti-rollback check and rollback: semver 2.0.0.

osbuild-composer itself requires blueprint versions to be semver (MAJOR.MINOR.PATCH[-pre][+build]), so lint and
the gate order versions the same way; anything else is refused, never guessed at.
"""

from __future__ import annotations

import re

# semver.org 2.0.0, as osbuild-composer (coreos/go-semver) requires: MAJOR.MINOR.PATCH[-pre][+build]
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


def parse_semver(value: str) -> tuple[int, int, int, tuple[str, ...]] | None:
    """(major, minor, patch, prerelease identifiers) or None when `value` is not semver."""
    m = SEMVER_RE.match(value) if isinstance(value, str) else None
    if not m:
        return None
    pre = tuple(m.group(4).split(".")) if m.group(4) else ()
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), pre


def _pre_key(pre: tuple[str, ...]) -> tuple[int, tuple[tuple[int, int, str], ...]]:
    # A release sorts after its pre-releases; numeric identifiers sort numerically, before alphanumerics.
    if not pre:
        return (1, ())
    return (0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre))


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 by semver precedence (build metadata ignored). ValueError when one is not semver."""
    pa, pb = parse_semver(a), parse_semver(b)
    if pa is None or pb is None:
        raise ValueError(f"not semver: {a if pa is None else b!r}")
    ka = (pa[:3], _pre_key(pa[3]))
    kb = (pb[:3], _pre_key(pb[3]))
    return (ka > kb) - (ka < kb)


def next_patch(version: str) -> str:
    p = parse_semver(version)
    return f"{p[0]}.{p[1]}.{p[2] + 1}" if p and not p[3] else (f"{p[0]}.{p[1]}.{p[2]}" if p else "1.0.0")


def next_version(version: str) -> str:
    """The version a rollback commit carries: the patch number + 1, pre-release dropped ("1.3.0-rc.1" ->
    "1.3.1"), so production's version still only goes up. ValueError when `version` is not semver."""
    p = parse_semver(version)
    if p is None:
        raise ValueError(f"not semver: {version!r}")
    return f"{p[0]}.{p[1]}.{p[2] + 1}"
