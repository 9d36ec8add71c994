"""Small text formatting shared by messages and reports."""

from __future__ import annotations

from typing import Any

_UNITS = {"iec": ("B", "KiB", "MiB", "GiB"), "short": ("B", "KB", "MB", "GB")}


def human_bytes(n: Any, *, units: str = "iec") -> str:
    """1536 -> '1.5 KiB' (binary units; whole bytes below 1 KiB); units="short" writes KB/MB/GB for the same
    binary multiples, as merge-request notes do. Anything that is not a number -> '?'."""
    try:
        size = float(n)
    except (TypeError, ValueError):
        return "?"
    names = _UNITS[units]
    for unit in names:
        if size < 1024 or unit == names[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # unreachable: the last unit always returns
