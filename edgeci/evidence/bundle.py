"""A release's evidence bundle: every signed envelope about one commit checksum, in one JSON file.

{"schema": 1, "checksum": <64 hex>, "envelopes": [<DSSE envelope>, …]}, written atomically (readers see
the old or the new file, never a mix). It carries no trust itself: production verifies each envelope.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeci.errors import EvidenceError
from edgeci.evidence.statement import HEX64_RE

BUNDLE_SCHEMA = 1


@dataclass
class Bundle:
    checksum: str
    envelopes: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not HEX64_RE.match(self.checksum or ""):
            raise EvidenceError(f"evidence bundle checksum '{self.checksum}' is not 64 hex digits")

    def add(self, envelope: Mapping[str, Any]) -> None:
        self.envelopes.append(dict(envelope))

    def as_dict(self) -> dict[str, Any]:
        return {"schema": BUNDLE_SCHEMA, "checksum": self.checksum, "envelopes": self.envelopes}


def write_bundle(path: str | os.PathLike[str], bundle: Bundle) -> Path:
    from edgeci.record import atomic_write_text

    p = Path(path)
    atomic_write_text(p, json.dumps(bundle.as_dict(), indent=2, sort_keys=True) + "\n")
    return p


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """The bundle at `path`; EvidenceError (exit 2) naming the file when it is missing or malformed."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvidenceError("no evidence bundle", where=str(p),
                            fix="run the compose and boot-test stages (they sign and add the evidence)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EvidenceError(f"cannot read evidence bundle: {getattr(e, 'strerror', None) or e}", where=str(p)) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise EvidenceError(f"evidence bundle is not valid JSON ({e.msg} at line {e.lineno})", where=str(p),
                            fix="fetch the bundle again from the pipeline's artifacts") from None
    if not isinstance(data, dict):
        raise EvidenceError("evidence bundle is not a JSON object", where=str(p))
    if data.get("schema") != BUNDLE_SCHEMA:
        raise EvidenceError(f"evidence bundle schema {data.get('schema')!r} is not supported "
                            f"(this edgeci reads {BUNDLE_SCHEMA})", where=str(p))
    envelopes = data.get("envelopes")
    if not isinstance(envelopes, list) or not all(isinstance(e, dict) for e in envelopes):
        raise EvidenceError("evidence bundle's 'envelopes' is not a list of objects", where=str(p))
    checksum = data.get("checksum")
    if not isinstance(checksum, str) or not HEX64_RE.match(checksum):
        raise EvidenceError(f"evidence bundle's checksum {checksum!r} is not 64 hex digits", where=str(p))
    return Bundle(checksum, envelopes)
