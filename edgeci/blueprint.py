"""Blueprints: strict TOML parsing (tomllib) into a Blueprint value.

Lint rules live below load(); every problem names file:line and the key.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeci.errors import BlueprintError


@dataclass
class Blueprint:
    name: str
    version: str
    path: Path
    text: str
    sha256: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def customizations(self) -> dict[str, Any]:
        c = self.data.get("customizations")
        return c if isinstance(c, dict) else {}

    @property
    def checks_path(self) -> Path:
        """blueprints/NAME.checks.yaml beside the TOML (may not exist)."""
        return self.path.with_name(f"{self.path.stem}.checks.yaml")


def _toml_line(e: tomllib.TOMLDecodeError) -> int | None:
    # tomllib messages end with "(at line L, column C)"
    msg = str(e)
    if "(at line " in msg:
        try:
            return int(msg.rsplit("(at line ", 1)[1].split(",")[0])
        except ValueError:
            return None
    return None


def parse(text: str, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse TOML text strictly; BlueprintError with file:line on a syntax error."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line = _toml_line(e)
        where = f"{path}:{line}" if line else str(path)
        reason = str(e).split(" (at line ")[0]
        raise BlueprintError(f"invalid TOML: {reason}", where=where, fix="fix the TOML syntax") from None


def load(path: str | os.PathLike[str]) -> Blueprint:
    """Read and parse a blueprint file. Only syntax and the name/version basics are checked here."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise BlueprintError("blueprint file not found", where=str(p)) from None
    except OSError as e:
        raise BlueprintError(f"cannot read blueprint: {e.strerror}", where=str(p)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BlueprintError(f"blueprint is not UTF-8 (byte {e.start})", where=str(p)) from None
    data = parse(text, p)
    name = data.get("name")
    version = data.get("version", "")
    return Blueprint(
        name=name if isinstance(name, str) else "",
        version=version if isinstance(version, str) else "",
        path=p,
        text=text,
        sha256=hashlib.sha256(raw).hexdigest(),
        data=data,
    )
