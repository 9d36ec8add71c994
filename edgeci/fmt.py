"""Small text formatting shared by messages and reports."""

from __future__ import annotations


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB' (binary units; whole bytes below 1 KiB)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
