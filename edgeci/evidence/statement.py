"""in-toto Statement v1: what the evidence is about (subjects) and what it says (predicate).

A subject is the ostree commit, named "ostree-commit:<ref>" with digest {"sha256": <commit checksum>}
(an ostree commit checksum is the SHA-256 of the commit object), and, when the candidate was pushed,
the OCI image, named "oci-image:<name>" with digest {"sha256": <hex of the manifest digest>}. An image-mode
(bootc) candidate has the image as its only subject, named "oci-image:<HOST/REPO:TAG devices follow>"; its
"checksum" everywhere in the chain is the hex of the manifest digest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
COMMIT_PREFIX = "ostree-commit:"
IMAGE_PREFIX = "oci-image:"
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


def _hex64(value: str, what: str) -> str:
    v = (value or "").strip().lower()
    if not HEX64_RE.match(v):
        raise ValueError(f"{what} '{value}' is not 64 hex digits")
    return v


def image_hex(digest: str) -> str:
    """The hex part of an OCI digest 'sha256:<hex>' (the bare hex is accepted too)."""
    algo, sep, hexpart = (digest or "").strip().partition(":")
    if sep and algo.lower() != "sha256":
        raise ValueError(f"image digest '{digest}' is not a sha256 digest")
    return _hex64(hexpart if sep else algo, "image digest")


@dataclass(frozen=True)
class Subject:
    name: str
    digest: Mapping[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "digest": dict(self.digest)}

    @property
    def is_commit(self) -> bool:
        return self.name.startswith(COMMIT_PREFIX)

    @property
    def is_image(self) -> bool:
        return self.name.startswith(IMAGE_PREFIX)


def commit_subject(checksum: str, ref: str) -> Subject:
    if not ref:
        raise ValueError("the ostree ref is empty")
    return Subject(f"{COMMIT_PREFIX}{ref}", {"sha256": _hex64(checksum, "commit checksum")})


def image_subject(digest: str, name: str = "") -> Subject:
    return Subject(f"{IMAGE_PREFIX}{name or 'edge-container'}", {"sha256": image_hex(digest)})


def image_mode_subjects(digest: str, ref: str) -> list[Subject]:
    """An image-mode (bootc) candidate's one subject: the image, named by the reference devices follow."""
    return [image_subject(digest, ref)]


def subjects(checksum: str, ref: str, image_digest: str | None = None, image_name: str = "") -> list[Subject]:
    """The candidate's subjects: its ostree commit, and its OCI image when it has one."""
    out = [commit_subject(checksum, ref)]
    if image_digest:
        out.append(image_subject(image_digest, image_name))
    return out


@dataclass(frozen=True)
class Statement:
    subject: tuple[Subject, ...]
    predicate_type: str
    predicate: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "_type": STATEMENT_TYPE,
            "subject": [s.as_dict() for s in self.subject],
            "predicateType": self.predicate_type,
            "predicate": self.predicate,
        }

    def to_bytes(self) -> bytes:
        """The DSSE payload: compact JSON with sorted keys (any JSON is valid; this one is reproducible)."""
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_dict(cls, data: Any) -> Statement:
        """A Statement from its JSON form; ValueError naming the first thing that is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError("the statement is not a JSON object")
        if data.get("_type") != STATEMENT_TYPE:
            raise ValueError(f"_type is {data.get('_type')!r}, not {STATEMENT_TYPE}")
        raw = data.get("subject")
        if not isinstance(raw, list) or not raw:
            raise ValueError("subject must be a non-empty list")
        subs = []
        for i, s in enumerate(raw):
            if not isinstance(s, Mapping) or not isinstance(s.get("name"), str):
                raise ValueError(f"subject[{i}] has no name")
            digest = s.get("digest")
            if (not isinstance(digest, Mapping) or not digest
                    or not all(isinstance(k, str) and isinstance(v, str) for k, v in digest.items())):
                raise ValueError(f"subject[{i}] ({s['name']}) needs a digest of algorithm → hex strings")
            subs.append(Subject(s["name"], dict(digest)))
        ptype = data.get("predicateType")
        if not isinstance(ptype, str) or not ptype:
            raise ValueError("predicateType is missing")
        predicate = data.get("predicate", {})
        if not isinstance(predicate, Mapping):
            raise ValueError("predicate must be a JSON object")
        return cls(tuple(subs), ptype, dict(predicate))

    @property
    def commits(self) -> list[str]:
        return [s.digest.get("sha256", "") for s in self.subject if s.is_commit]

    @property
    def images(self) -> list[str]:
        return [s.digest.get("sha256", "") for s in self.subject if s.is_image]

    @property
    def ref(self) -> str:
        """The commit subject's ref; for an image-mode statement (an image subject only) the image's name,
        which is the reference devices follow (HOST/REPO:TAG)."""
        for s in self.subject:
            if s.is_commit:
                return s.name[len(COMMIT_PREFIX):]
        if not self.commits:
            for s in self.subject:
                if s.is_image:
                    return s.name[len(IMAGE_PREFIX):]
        return ""

    def covers(self, checksum: str, image_digest: str | None = None, *, require_image: bool = False) -> bool:
        return not coverage_problem(self, checksum, image_digest, require_image=require_image)


def make_statement(subject: Sequence[Subject], predicate_type: str, predicate: Mapping[str, Any]) -> Statement:
    if not subject:
        raise ValueError("a statement needs at least one subject")
    return Statement(tuple(subject), predicate_type, dict(predicate))


def coverage_problem(statement: Statement, checksum: str, image_digest: str | None = None, *,
                     require_image: bool = False) -> str:
    """"" when the statement is about `checksum` (and, if it names an image, about `image_digest`;
    with `require_image`, it must name that image), else why not, in words."""
    want = (checksum or "").lower()
    commits = statement.commits
    if not commits and want in statement.images:
        return ""  # an image-mode candidate: its subject is the image, the checksum its manifest digest's hex
    if want not in commits:
        named = ", ".join(c[:12] for c in commits) or "no ostree commit"
        return f"the statement is about {named}, not {want[:12]}"
    if image_digest and require_image and not statement.images:
        return f"the statement names no OCI image (expected {image_digest})"
    if image_digest and statement.images:
        hexpart = image_hex(image_digest)
        if hexpart not in statement.images:
            named = ", ".join(f"sha256:{h[:12]}" for h in statement.images)
            return f"the statement names the image {named}, not sha256:{hexpart[:12]}"
    return ""


def covers(statement: Statement, checksum: str, image_digest: str | None = None, *,
           require_image: bool = False) -> bool:
    """True when `statement` has the ostree commit `checksum` as a subject and names no other image than
    `image_digest` (when both are given; with `require_image` it must name that image)."""
    return not coverage_problem(statement, checksum, image_digest, require_image=require_image)
