"""The three predicates edgeci signs: compose provenance (SLSA v1), boot test, approval.

Each is a dataclass with PREDICATE_TYPE, as_dict() (the predicate's JSON) and from_dict() (strict:
ValueError naming the first missing or mistyped field). statement(subjects) wraps one in a Statement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edgeci.evidence.statement import Statement, Subject, make_statement

SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
COMPOSE_BUILD_TYPE = "https://edgeci.dev/buildtypes/compose/v1"
BOOT_TEST = "https://edgeci.dev/attestation/boot-test/v1"
APPROVAL = "https://edgeci.dev/attestation/approval/v1"
APPROVAL_SOURCES = ("local", "gitlab", "jenkins")
APPROVED = "approved"
REJECTED = "rejected"


def _obj(data: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a JSON object")
    return data


def _str(data: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise ValueError(f"{where}.{key} must be a non-empty string" if required else f"{where}.{key} must be a string")
    return value


def _strs(data: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}.{key} must be a list of strings")
    return tuple(value)


def _bool(data: Mapping[str, Any], key: str, where: str) -> bool:
    value = data.get(key)
    if not isinstance(value, bool):
        raise ValueError(f"{where}.{key} must be true or false")
    return value


class _Predicate:
    PREDICATE_TYPE: ClassVar[str]

    def as_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def statement(self, subject: Sequence[Subject]) -> Statement:
        return make_statement(subject, self.PREDICATE_TYPE, self.as_dict())


@dataclass(frozen=True)
class ComposeProvenance(_Predicate):
    """SLSA provenance v1 of a compose: what was built from what, by which builder.

    externalParameters (what the change author controls): the blueprint and checks files with their
    SHA-256 as built, the git commit, and the change's authors (the approvals link refuses them).
    internalParameters (what edgeci chose): composer backend, compose id, parent commit, ref, version."""

    PREDICATE_TYPE: ClassVar[str] = SLSA_PROVENANCE

    blueprint_path: str
    blueprint_sha256: str
    git_commit: str
    ref: str
    version: str
    composer_backend: str
    compose_id: str = ""
    parent: str = ""  # the parent ostree commit ("" for a first release)
    checks_path: str = ""
    checks_sha256: str = ""
    change_authors: tuple[str, ...] = ()
    authors_unknown: str = ""  # why the change's authors could not be determined ("" when they could)
    variables: Mapping[str, str] = field(default_factory=dict)  # template variable -> sha256 of its value
    git_repository: str = ""
    builder_id: str = "local"  # the CI job URL, or "local"
    invocation_id: str = ""  # the CI pipeline/build id
    started_on: str = ""
    finished_on: str = ""

    def as_dict(self) -> dict[str, Any]:
        external: dict[str, Any] = {
            "blueprint": {"path": self.blueprint_path, "sha256": self.blueprint_sha256},
            "git_commit": self.git_commit,
            "change_authors": list(self.change_authors),
        }
        if self.authors_unknown:
            external["authors_unknown"] = self.authors_unknown
        if self.checks_path or self.checks_sha256:
            external["checks"] = {"path": self.checks_path, "sha256": self.checks_sha256}
        if self.git_repository:
            external["git_repository"] = self.git_repository
        if self.variables:
            external["variables"] = {k: {"sha256": v} for k, v in sorted(self.variables.items())}
        internal = {
            "composer_backend": self.composer_backend,
            "compose_id": self.compose_id,
            "parent": self.parent,
            "ref": self.ref,
            "version": self.version,
        }
        deps: list[dict[str, Any]] = []
        if self.git_commit:
            deps.append({"uri": f"git+{self.git_repository}" if self.git_repository else "git",
                         "digest": {"gitCommit": self.git_commit}})
        if self.parent:
            deps.append({"name": f"ostree-commit:{self.ref}", "digest": {"sha256": self.parent}})
        metadata = {k: v for k, v in (("invocationId", self.invocation_id), ("startedOn", self.started_on),
                                      ("finishedOn", self.finished_on)) if v}
        run_details: dict[str, Any] = {"builder": {"id": self.builder_id}}
        if metadata:
            run_details["metadata"] = metadata
        return {
            "buildDefinition": {
                "buildType": COMPOSE_BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": internal,
                "resolvedDependencies": deps,
            },
            "runDetails": run_details,
        }

    @classmethod
    def from_dict(cls, data: Any) -> ComposeProvenance:
        p = _obj(data, "predicate")
        bd = _obj(p.get("buildDefinition"), "buildDefinition")
        if bd.get("buildType") != COMPOSE_BUILD_TYPE:
            raise ValueError(f"buildDefinition.buildType is {bd.get('buildType')!r}, not {COMPOSE_BUILD_TYPE}")
        ext = _obj(bd.get("externalParameters"), "externalParameters")
        internal = _obj(bd.get("internalParameters"), "internalParameters")
        bp = _obj(ext.get("blueprint"), "externalParameters.blueprint")
        checks = _obj(ext.get("checks", {}), "externalParameters.checks")
        rd = _obj(p.get("runDetails"), "runDetails")
        builder = _obj(rd.get("builder"), "runDetails.builder")
        meta = _obj(rd.get("metadata", {}), "runDetails.metadata")
        return cls(
            blueprint_path=_str(bp, "path", "externalParameters.blueprint"),
            blueprint_sha256=_str(bp, "sha256", "externalParameters.blueprint"),
            git_commit=_str(ext, "git_commit", "externalParameters", required=False),
            ref=_str(internal, "ref", "internalParameters"),
            version=_str(internal, "version", "internalParameters"),
            composer_backend=_str(internal, "composer_backend", "internalParameters"),
            compose_id=_str(internal, "compose_id", "internalParameters", required=False),
            parent=_str(internal, "parent", "internalParameters", required=False),
            checks_path=_str(checks, "path", "externalParameters.checks", required=False),
            checks_sha256=_str(checks, "sha256", "externalParameters.checks", required=False),
            change_authors=_strs(ext, "change_authors", "externalParameters"),
            authors_unknown=_str(ext, "authors_unknown", "externalParameters", required=False),
            variables=_variables(ext),
            git_repository=_str(ext, "git_repository", "externalParameters", required=False),
            builder_id=_str(builder, "id", "runDetails.builder"),
            invocation_id=_str(meta, "invocationId", "runDetails.metadata", required=False),
            started_on=_str(meta, "startedOn", "runDetails.metadata", required=False),
            finished_on=_str(meta, "finishedOn", "runDetails.metadata", required=False),
        )


def _variables(ext: Mapping[str, Any]) -> dict[str, str]:
    raw = _obj(ext.get("variables", {}), "externalParameters.variables")
    out = {}
    for name, value in raw.items():
        digest = _obj(value, f"externalParameters.variables.{name}")
        out[str(name)] = _str(digest, "sha256", f"externalParameters.variables.{name}")
    return out


@dataclass(frozen=True)
class ScenarioResult:
    """One boot-test scenario: its outcome and each health check's outcome (passed|failed|skipped)."""

    outcome: str
    checks: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"outcome": self.outcome, "checks": dict(self.checks)}
        if self.reason:
            out["reason"] = self.reason
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ScenarioResult:
        d = _obj(data, where)
        checks = _obj(d.get("checks", {}), f"{where}.checks")
        if not all(isinstance(v, str) for v in checks.values()):
            raise ValueError(f"{where}.checks must map check names to outcomes")
        return cls(_str(d, "outcome", where), dict(checks), _str(d, "reason", where, required=False))


@dataclass(frozen=True)
class BootTestResult(_Predicate):
    """The boot test of one candidate: backend, every scenario with its checks, and the verdict."""

    PREDICATE_TYPE: ClassVar[str] = BOOT_TEST

    backend: str
    scenarios: Mapping[str, ScenarioResult]
    passed: bool
    checks_sha256: str = ""  # the blueprint's checks.yaml as the boot test ran it
    stage_url: str = ""
    builder_id: str = "local"  # the CI job URL, or "local"
    time: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "scenarios": {name: s.as_dict() for name, s in self.scenarios.items()},
            "passed": self.passed,
            "checks_file": {"sha256": self.checks_sha256},
            "stage_url": self.stage_url,
            "builder": {"id": self.builder_id},
            "time": self.time,
        }

    @classmethod
    def from_dict(cls, data: Any) -> BootTestResult:
        p = _obj(data, "predicate")
        raw = _obj(p.get("scenarios"), "predicate.scenarios")
        scenarios = {str(k): ScenarioResult.from_dict(v, f"scenarios.{k}") for k, v in raw.items()}
        checks_file = _obj(p.get("checks_file", {}), "predicate.checks_file")
        builder = _obj(p.get("builder", {}), "predicate.builder")
        return cls(
            backend=_str(p, "backend", "predicate"),
            scenarios=scenarios,
            passed=_bool(p, "passed", "predicate"),
            checks_sha256=_str(checks_file, "sha256", "predicate.checks_file", required=False),
            stage_url=_str(p, "stage_url", "predicate", required=False),
            builder_id=_str(builder, "id", "predicate.builder", required=False) or "local",
            time=_str(p, "time", "predicate", required=False),
        )


@dataclass(frozen=True)
class ApprovalDecision(_Predicate):
    """One person's decision about one checksum, from the source that reported it."""

    PREDICATE_TYPE: ClassVar[str] = APPROVAL

    approver: str
    checksum: str
    time: str
    source: str = "local"  # local | gitlab | jenkins
    source_ref: str = ""  # GitLab pipeline/deployment id, Jenkins build URL, local approval file
    comment: str = ""
    decision: str = APPROVED  # approved | rejected
    groups: tuple[str, ...] = ()  # group membership the source resolved

    def __post_init__(self) -> None:
        if self.source not in APPROVAL_SOURCES:
            raise ValueError(f"approval source {self.source!r} is not one of {', '.join(APPROVAL_SOURCES)}")
        if self.decision not in (APPROVED, REJECTED):
            raise ValueError(f"approval decision {self.decision!r} is not approved or rejected")

    def as_dict(self) -> dict[str, Any]:
        return {
            "approver": self.approver,
            "checksum": self.checksum,
            "time": self.time,
            "source": self.source,
            "source_ref": self.source_ref,
            "comment": self.comment,
            "decision": self.decision,
            "groups": list(self.groups),
        }

    @classmethod
    def from_dict(cls, data: Any) -> ApprovalDecision:
        p = _obj(data, "predicate")
        return cls(
            approver=_str(p, "approver", "predicate"),
            checksum=_str(p, "checksum", "predicate"),
            time=_str(p, "time", "predicate", required=False),
            source=_str(p, "source", "predicate"),
            source_ref=_str(p, "source_ref", "predicate", required=False),
            comment=_str(p, "comment", "predicate", required=False),
            decision=_str(p, "decision", "predicate", required=False) or APPROVED,
            groups=_strs(p, "groups", "predicate"),
        )


PREDICATES: dict[str, type[ComposeProvenance] | type[BootTestResult] | type[ApprovalDecision]] = {
    SLSA_PROVENANCE: ComposeProvenance,
    BOOT_TEST: BootTestResult,
    APPROVAL: ApprovalDecision,
}
# Which key role signs which predicate type.
ROLE_OF: dict[str, str] = {SLSA_PROVENANCE: "compose", BOOT_TEST: "boot-test", APPROVAL: "approver"}


def parse_predicate(statement: Statement) -> ComposeProvenance | BootTestResult | ApprovalDecision:
    """The typed predicate of a statement; ValueError for an unknown type or a malformed predicate."""
    cls = PREDICATES.get(statement.predicate_type)
    if cls is None:
        raise ValueError(f"unknown predicateType {statement.predicate_type}")
    return cls.from_dict(statement.predicate)
