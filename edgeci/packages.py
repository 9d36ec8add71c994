"""Installed-package lists as compose records them, and the difference between two of them (gate and report)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def package_map(packages: Iterable[Any]) -> dict[str, str]:
    """name → version-release from compose.packages entries ("name-1.2-3.el9.x86_64" strings or dicts)."""
    out: dict[str, str] = {}
    for p in packages or []:
        if isinstance(p, Mapping):
            name = str(p.get("name", ""))
            evr = str(p.get("version", ""))
            if p.get("release"):
                evr += f"-{p['release']}"
            if p.get("epoch") not in (None, "", 0, "0"):
                evr = f"{p['epoch']}:{evr}"
            if name:
                out[name] = evr
        elif isinstance(p, str) and p:
            # name-version-release[.arch]: the name is everything before the second-to-last dash
            parts = p.rsplit("-", 2)
            if len(parts) == 3:
                out[parts[0]] = f"{parts[1]}-{parts[2]}"
            else:
                out[p] = ""
    return out


def package_changes(old: Iterable[Any], new: Iterable[Any]) -> dict[str, list[str]]:
    """{"added": ["name 1.0-1"], "removed": [...], "changed": ["name 1.0-1 → 1.1-1"]}, each sorted."""
    a, b = package_map(old), package_map(new)
    return {
        "added": sorted(f"{n} {b[n]}".strip() for n in b.keys() - a.keys()),
        "removed": sorted(f"{n} {a[n]}".strip() for n in a.keys() - b.keys()),
        "changed": sorted(f"{n} {a[n]} → {b[n]}" for n in a.keys() & b.keys() if a[n] != b[n]),
    }


def package_diff(old: Iterable[Any], new: Iterable[Any]) -> list[str]:
    """Lines like '+ name 1.0-1', '- name 1.0-1', '~ name 1.0-1 -> 1.1-1', by name."""
    a, b = package_map(old), package_map(new)
    lines = []
    for name in sorted(set(a) | set(b)):
        if name not in a:
            lines.append(f"+ {name} {b[name]}".rstrip())
        elif name not in b:
            lines.append(f"- {name} {a[name]}".rstrip())
        elif a[name] != b[name]:
            lines.append(f"~ {name} {a[name]} -> {b[name]}")
    return lines
