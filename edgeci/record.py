"""BuildRecord: the one artifact that flows from stage to stage (and CI job to CI job).

build/<blueprint>/<arch>/record.json, schema-versioned JSON written atomically (temp file +
os.replace). Each section is written by exactly one stage; a stage refuses a record whose earlier
sections are missing or failed, and says which.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from edgeci.errors import RecordError

SCHEMA_VERSION = 1
# Pipeline order; `require()` checks against it.
SECTIONS = ("blueprint", "lint", "compose", "push", "stage", "boot_test", "gate", "promote")
PASSED = "passed"
FAILED = "failed"


def record_path(build_dir: str | os.PathLike[str], blueprint: str, arch: str) -> Path:
    return Path(build_dir) / blueprint / arch / "record.json"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def atomic_write_text(path: str | os.PathLike[str], text: str, mode: int = 0o644, *, fsync: bool = False) -> None:
    """Write `text` to `path` via a temp file in the same directory and os.replace().

    Readers see the old or the new content, never a mix, even when the writer is killed. `fsync=True`
    also survives a power loss (production's releases log); records and reports do without it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# -- typed sections ---------------------------------------------------------------------------------
# One dataclass per section. from_dict keeps keys it does not know in `extra` (a newer edgeci's fields, or
# per-backend detail), and as_dict writes them back, so a record round-trips unchanged.

S = TypeVar("S", bound="Section")


@dataclass
class Section:
    NAME: ClassVar[str] = ""
    status: str = PASSED
    time: str = ""
    seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls: type[S], data: dict[str, Any] | None) -> S:
        data = dict(data or {})
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: data.pop(k) for k in list(data) if k in known}
        return cls(**values, extra=data)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        for f in fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        if not out.get("time"):
            out.pop("time", None)
        if out.get("seconds") is None:
            out.pop("seconds", None)
        return out

    @property
    def passed(self) -> bool:
        return self.status == PASSED


@dataclass
class BlueprintSection(Section):
    NAME: ClassVar[str] = "blueprint"
    name: str = ""
    version: str = ""
    path: str = ""
    git_sha: str | None = None
    sha256: str = ""


@dataclass
class ComposeSection(Section):
    NAME: ClassVar[str] = "compose"
    backend: str = ""
    id: str = ""
    type: str = ""
    ref: str = ""
    url: str = ""
    artifact: str = ""
    artifact_sha256: str = ""
    commit: str = ""
    parent: str | None = ""
    packages: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class PushSection(Section):
    NAME: ClassVar[str] = "push"
    destination: str = ""
    tags: list[str] = field(default_factory=list)
    digest: str = ""
    image_ref: str = ""


@dataclass
class StageSection(Section):
    NAME: ClassVar[str] = "stage"
    url: str = ""
    commit: str = ""
    mode: str = ""
    dir: str = ""
    pid: int | None = None


@dataclass
class BootTestSection(Section):
    NAME: ClassVar[str] = "boot_test"
    backend: str = ""
    candidate: str = ""
    production: str | None = None
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)
    delta_bytes: int | None = None
    full_bytes: int | None = None


@dataclass
class GateSection(Section):
    NAME: ClassVar[str] = "gate"
    decision: str = ""
    checksum: str = ""
    rules: list[dict[str, Any]] = field(default_factory=list)
    approvals: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PromoteSection(Section):
    NAME: ClassVar[str] = "promote"
    repo: str = ""
    ref: str = ""
    checksum: str = ""
    previous: str | None = None
    version: str | None = None
    deltas: list[str] = field(default_factory=list)
    signed: bool = False


@dataclass
class Candidate:
    """The one reading of "the candidate" from a record, for gate, promote, boot test and report."""

    blueprint: str
    checksum: str  # the ostree commit checksum compose produced ("" before compose)
    ref: str = ""
    version: str | None = None
    parent: str | None = None
    arch: str = ""
    image_digest: str = ""
    image_ref: str = ""
    stage_url: str = ""
    packages: list[dict[str, Any]] = field(default_factory=list)
    blueprint_info: BlueprintSection = field(default_factory=BlueprintSection)
    compose: ComposeSection | None = None
    push: PushSection | None = None
    stage: StageSection | None = None
    boot_test: BootTestSection | None = None
    gate: GateSection | None = None
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)  # raw, for rules reporting on every stage

    @classmethod
    def from_sections(cls, sections: dict[str, dict[str, Any]], default_ref: str = "") -> Candidate:
        return BuildRecord(Path("record.json"), {"schema": SCHEMA_VERSION, "sections": sections}).candidate(default_ref)

    @property
    def boot_test_passed(self) -> bool:
        return self.boot_test is not None and self.boot_test.passed

    @property
    def approvals(self) -> list[dict[str, Any]]:
        return list(self.gate.approvals) if self.gate is not None else []


class BuildRecord:
    """The JSON record of one blueprint × arch build."""

    def __init__(self, path: str | os.PathLike[str], data: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.opened = time.monotonic()  # a stage loads the record first: set() records its duration
        self.data: dict[str, Any] = data if data is not None else {
            "schema": SCHEMA_VERSION,
            "sections": {},
        }

    # -- loading and saving -------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BuildRecord:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RecordError(
                "no build record", where=str(p), fix="run the earlier stages first (edgeci compose …)"
            ) from None
        except OSError as e:
            raise RecordError(f"cannot read build record: {e.strerror}", where=str(p)) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordError(
                f"build record is not valid JSON ({e.msg} at line {e.lineno})",
                where=str(p),
                fix="delete it and re-run the pipeline from compose",
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("sections"), dict):
            raise RecordError("build record has no 'sections' object", where=str(p))
        schema = data.get("schema")
        if schema != SCHEMA_VERSION:
            raise RecordError(
                f"build record schema {schema!r} is not supported (this edgeci reads {SCHEMA_VERSION})",
                where=str(p),
                fix="re-run the pipeline with this edgeci version",
            )
        return cls(p, data)

    @classmethod
    def load_or_new(cls, path: str | os.PathLike[str]) -> BuildRecord:
        p = Path(path)
        return cls.load(p) if p.exists() else cls(p)

    def save(self) -> None:
        from edgeci.tools.run import mask

        self.data["updated"] = now_iso()
        atomic_write_text(self.path, mask(json.dumps(self.data, indent=2, sort_keys=True)) + "\n")

    # -- sections ------------------------------------------------------------------------------
    @property
    def sections(self) -> dict[str, dict[str, Any]]:
        return self.data["sections"]

    def get(self, name: str) -> dict[str, Any] | None:
        return self.sections.get(name)

    def section(self, name: str) -> dict[str, Any]:
        """The section, or RecordError if it is missing."""
        sec = self.sections.get(name)
        if sec is None:
            raise RecordError(f"build record has no '{name}' section", where=str(self.path),
                              fix=f"run the {name.replace('_', '-')} stage first")
        return sec

    def set(self, name: str, values: dict[str, Any], *, status: str = PASSED) -> dict[str, Any]:
        """Replace section `name` and drop every later section (they described an older candidate).

        `time` (UTC, ISO) and `seconds` (since the record was loaded, i.e. the stage's duration) are added
        unless given."""
        if name not in SECTIONS:
            raise ValueError(f"unknown record section {name!r}")
        sec = dict(values)
        sec["status"] = status
        sec.setdefault("time", now_iso())
        sec.setdefault("seconds", round(time.monotonic() - self.opened, 3))
        self.sections[name] = sec
        for later in SECTIONS[SECTIONS.index(name) + 1:]:
            self.sections.pop(later, None)
        return sec

    def require(self, *names: str) -> None:
        """Refuse unless every named section exists and passed; names the first that does not."""
        for name in names:
            sec = self.sections.get(name)
            stage = name.replace("_", "-")
            if sec is None:
                raise RecordError(
                    f"build record has no '{name}' section",
                    where=str(self.path),
                    fix=f"run 'edgeci {stage}' first",
                )
            if sec.get("status") != PASSED:
                raise RecordError(
                    f"the '{name}' stage {sec.get('status', 'did not pass')}",
                    where=str(self.path),
                    fix=f"fix the candidate and re-run 'edgeci {stage}'",
                )

    # -- convenience ---------------------------------------------------------------------------
    @property
    def blueprint(self) -> str:
        return str(self.section("blueprint")["name"])

    @property
    def checksum(self) -> str:
        """The candidate's ostree commit checksum (from the compose section)."""
        return str(self.section("compose")["commit"])

    def typed(self, cls: type[S]) -> S | None:
        """Section `cls.NAME` as its dataclass, or None when the record has no such section."""
        data = self.sections.get(cls.NAME)
        return None if data is None else cls.from_dict(data)

    def ref(self, default: str) -> str:
        """The ref the candidate was composed on (compose.ref), else `default` (the configured ref)."""
        compose = self.sections.get("compose") or {}
        return str(compose.get("ref") or default)

    def candidate(self, default_ref: str = "") -> Candidate:
        """The candidate this record describes: commit, ref, version, image, stage, boot test, approvals."""
        bp = self.typed(BlueprintSection) or BlueprintSection()
        compose, push = self.typed(ComposeSection), self.typed(PushSection)
        stage = self.typed(StageSection)
        c = self.sections.get("compose") or {}
        version = c.get("version") or bp.version
        return Candidate(
            blueprint=bp.name or (self.path.parent.parent.name if self.path.parent.name else ""),
            checksum=compose.commit if compose else "",
            ref=self.ref(default_ref),
            version=str(version) if version else None,
            parent=str(compose.parent) if compose and compose.parent else None,
            arch=self.path.parent.name,
            image_digest=push.digest if push else "",
            image_ref=push.image_ref if push else "",
            stage_url=stage.url if stage else "",
            packages=list(compose.packages) if compose else [],
            blueprint_info=bp,
            compose=compose, push=push, stage=stage,
            boot_test=self.typed(BootTestSection), gate=self.typed(GateSection),
            sections=self.sections,
        )

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=True)
