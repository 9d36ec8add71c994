"""Verify a release's chain of evidence on the production host: bundle → compose provenance → boot test
→ approvals → change window, each link passed or failed with a one-line reason and the fix.

Everything is checked against the trust policy (keys by role) and its effective settings, never against
anything the evidence says about itself: a statement counts only when a trusted key of the right role
signed it and its subject is this commit checksum (a statement about another checksum, replayed, fails).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from edgeci import errors as E
from edgeci.evidence.bundle import Bundle
from edgeci.evidence.dsse import Verified, peek, verify_signed
from edgeci.evidence.predicates import (
    APPROVED,
    REJECTED,
    ROLE_OF,
    ApprovalDecision,
    BootTestResult,
    ComposeProvenance,
    parse_predicate,
)
from edgeci.evidence.statement import coverage_problem

if TYPE_CHECKING:
    from edgeci.trust import Effective, TrustPolicy

BUNDLE_LINK = "bundle"
COMPOSE_LINK = "compose-provenance"
BOOT_TEST_LINK = "boot-test"
APPROVALS_LINK = "approvals"
WINDOW_LINK = "change-window"
LINKS = (BUNDLE_LINK, COMPOSE_LINK, BOOT_TEST_LINK, APPROVALS_LINK, WINDOW_LINK)


@dataclass(frozen=True)
class LinkResult:
    name: str
    passed: bool
    reason: str
    fix: str = ""

    def line(self) -> str:
        text = f"{'passed' if self.passed else 'FAILED'} {self.name}: {self.reason}"
        return text + (f" (fix: {self.fix})" if self.fix and not self.passed else "")

    def as_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "outcome": "passed" if self.passed else "failed", "reason": self.reason}
        if self.fix and not self.passed:
            out["fix"] = self.fix
        return out


@dataclass(frozen=True)
class ExternalApproval:
    """An approval fetched again from its source (GitLab, Jenkins) by the caller. Any object with `user`
    and `checksum` attributes is accepted in its place (e.g. the gate's Approval); `source`, `aliases`,
    `groups` (None = unknown), `status` ("approved" | "rejected") and `source_ref` are read when present."""

    user: str
    checksum: str
    source: str = "gitlab"
    source_ref: str = ""
    aliases: tuple[str, ...] = ()
    groups: frozenset[str] | None = None
    status: str = APPROVED


@dataclass(frozen=True)
class CountedApproval:
    approver: str
    source: str
    via: str  # "approver key 'alice' (…)" or "gitlab, verified by the caller"


@dataclass
class ChainResult:
    checksum: str
    links: list[LinkResult]
    approvals: list[CountedApproval] = field(default_factory=list)
    not_counted: list[str] = field(default_factory=list)
    provenance: ComposeProvenance | None = None
    boot_test: BootTestResult | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(link.passed for link in self.links)

    @property
    def failures(self) -> list[LinkResult]:
        return [link for link in self.links if not link.passed]

    def link(self, name: str) -> LinkResult:
        for link in self.links:
            if link.name == name:
                return link
        raise KeyError(name)

    def lines(self) -> list[str]:
        return [link.line() for link in self.links] + [f"note: {n}" for n in self.notes]

    def as_dict(self) -> dict[str, Any]:
        return {
            "checksum": self.checksum,
            "passed": self.passed,
            "links": [link.as_dict() for link in self.links],
            "approvals": [{"approver": a.approver, "source": a.source, "via": a.via} for a in self.approvals],
            "not_counted": list(self.not_counted),
            "notes": list(self.notes),
        }

    def raise_if_failed(self) -> None:
        """VerificationError (exit 1) naming the first failed link, its reason and fix."""
        for link in self.links:
            if not link.passed:
                raise E.VerificationError(f"evidence for {self.checksum[:12]}: {link.name}: {link.reason}",
                                          code=link.name, fix=link.fix or None)


def _ids(values: Iterable[str]) -> set[str]:
    from edgeci.policy import identities

    return identities(values)


@dataclass
class _Sorted:
    """Envelopes by role: the ones that verified for this checksum, and why the others did not."""

    valid: dict[str, list[tuple[int, Verified, Any]]] = field(default_factory=dict)
    rejected: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # role → (reason, fix)
    malformed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _sort(envelopes: Sequence[Any], policy: TrustPolicy, checksum: str, image_digest: str | None) -> _Sorted:
    out = _Sorted()
    for i, env in enumerate(envelopes, 1):
        try:
            peeked = peek(env)
        except E.VerificationError as e:
            out.malformed.append((f"envelope {i}: {e.message}", e.fix or "re-run the stage that signed it"))
            continue
        role = ROLE_OF.get(peeked.predicate_type)
        if role is None:
            out.notes.append(f"envelope {i}: predicate type {peeked.predicate_type} is not one edgeci checks; ignored")
            continue
        try:
            verified = verify_signed(env, policy.keys, role)
        except E.VerificationError as e:
            out.rejected.setdefault(role, []).append((f"envelope {i}: {e.message}", e.fix or ""))
            continue
        label = f"envelope {i} ({role} key {verified.key.label})"
        problem = coverage_problem(verified.statement, checksum, image_digest)
        if problem:
            out.rejected.setdefault(role, []).append(
                (f"{label}: {problem}", "this evidence belongs to another candidate: use the bundle of this "
                                        "checksum, or re-run the stage for it"))
            continue
        try:
            predicate = parse_predicate(verified.statement)
        except ValueError as e:
            out.rejected.setdefault(role, []).append((f"{label}: malformed predicate: {e}",
                                                      "re-run the stage that signed it"))
            continue
        out.valid.setdefault(role, []).append((i, verified, predicate))
    return out


def _compose(s: _Sorted, policy: TrustPolicy) -> tuple[LinkResult, list[ComposeProvenance]]:
    if s.rejected.get("compose"):
        reason, fix = s.rejected["compose"][0]
        return LinkResult(COMPOSE_LINK, False, reason, fix), []
    valid = s.valid.get("compose", [])
    if not valid:
        fix = ("run compose with EDGECI_COMPOSE_KEY set; it signs the provenance into the bundle"
               if policy.keys_for("compose") else "list the compose key's .pub under keys.compose in the trust policy")
        return LinkResult(COMPOSE_LINK, False, "no compose provenance signed by a compose key", fix), []
    provs: list[ComposeProvenance] = []
    for i, verified, prov in valid:
        if prov.ref != verified.statement.ref:
            return LinkResult(COMPOSE_LINK, False, f"envelope {i}: the provenance builds {prov.ref} but its subject "
                                                   f"is on {verified.statement.ref}", "re-run compose"), []
        provs.append(prov)
    _, verified, prov = valid[0]
    git = f" at git {prov.git_commit[:12]}" if prov.git_commit else ""
    return LinkResult(COMPOSE_LINK, True, f"{prov.ref} {prov.version} composed from {prov.blueprint_path}{git} by "
                                          f"{prov.builder_id}, signed by the compose key {verified.key.label}"), provs


# Scenarios that need a production commit to start from: on a first release they cannot run, and their signed
# "skipped" counts only when the caller established that production really is empty on the ref.
NEEDS_PRODUCTION = ("upgrade", "rollback")


def _boot_test(s: _Sorted, settings: Effective, first_release: bool = False,
               ) -> tuple[LinkResult, BootTestResult | None]:
    name = BOOT_TEST_LINK
    if s.rejected.get("boot-test"):
        reason, fix = s.rejected["boot-test"][0]
        return LinkResult(name, False, reason, fix), None
    valid = s.valid.get("boot-test", [])
    if not valid:
        return LinkResult(name, False, "no boot-test statement signed by a boot-test key",
                          "run boot-test with EDGECI_BOOT_TEST_KEY set; it signs its result into the bundle"), None
    accepted = settings.accepted_backends
    # A signed failure on a backend that counts is never outvoted by another run's success.
    for i, _verified, bt in valid:
        bad = {n: r for n, r in bt.scenarios.items() if r.outcome not in ("passed", "skipped")}
        if bt.backend in accepted and (not bt.passed or bad):
            failed = [f"{n} {r.outcome}" + (f" ({r.reason})" if r.reason else "") for n, r in bad.items()]
            return LinkResult(name, False, f"envelope {i}: the boot test on {bt.backend} failed"
                                           + (f": {'; '.join(failed)}" if failed else ""),
                              "fix the candidate; a failed boot test of this checksum stays failed"), None
    problems: list[str] = []
    for i, verified, bt in valid:
        if bt.backend not in accepted:
            problems.append(f"envelope {i}: the boot test ran on {bt.backend}, which the trust policy does not "
                            f"accept (accepted: {', '.join(accepted) or 'none'})")
            continue
        missing = [sc for sc in settings.required_scenarios
                   if sc not in bt.scenarios or not (bt.scenarios[sc].outcome == "passed" or (
                       first_release and sc in NEEDS_PRODUCTION and bt.scenarios[sc].outcome == "skipped"))]
        if missing:
            problems.append(f"envelope {i}: the boot test on {bt.backend} did not pass the required scenario"
                            f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
                            + "".join(f" ({sc} {bt.scenarios[sc].outcome})" for sc in missing if sc in bt.scenarios))
            continue
        ran = ", ".join(f"{n} {r.outcome}" for n, r in bt.scenarios.items())
        first = " (first release: nothing to upgrade from)" if first_release else ""
        return LinkResult(name, True, f"passed on {bt.backend} ({ran}){first}, signed by the boot-test key "
                                      f"{verified.key.label}"), bt
    return LinkResult(name, False, "; ".join(problems),
                      f"run the boot test on {' or '.join(accepted) or 'an accepted backend'} with every "
                      f"required scenario ({', '.join(settings.required_scenarios)})"), None


def _approvals(s: _Sorted, settings: Effective, checksum: str, provs: list[ComposeProvenance],
               compose_ok: bool, external: Iterable[Any]) -> tuple[LinkResult, list[CountedApproval], list[str]]:
    name = APPROVALS_LINK
    not_counted = [reason for reason, _ in s.rejected.get("approver", [])]
    authors = _ids(a for p in provs for a in p.change_authors)
    counted: dict[str, CountedApproval] = {}
    vetoes: list[str] = []

    def consider(user: str, named: str, source: str, via: str, aliases: Sequence[str],
                 groups: Iterable[str] | None, status: str) -> None:
        if (named or "").strip().lower() != checksum:
            not_counted.append(f"{user} ({via}) approved {(named or 'no checksum')[:12]}, not {checksum[:12]}")
            return
        if status == REJECTED:
            vetoes.append(f"{user} ({via}) rejected {checksum[:12]}")
            return
        if _ids([user, *aliases]) & authors:
            not_counted.append(f"{user} ({via}) is an author of the change: no one approves their own change")
            return
        why = settings.approver_problem(user, aliases, groups)
        if why:
            not_counted.append(f"{why} ({via})")
            return
        counted.setdefault(user.strip().casefold(), CountedApproval(user, source, via))

    for _, verified, decision in s.valid.get("approver", []):
        assert isinstance(decision, ApprovalDecision)
        key = verified.key
        via = f"approver key {key.label}"
        if key.approver and not (_ids([key.approver]) & _ids([decision.approver])):
            not_counted.append(f"the approver key {key.label} speaks only for {key.approver}, "
                               f"not for {decision.approver}")
            continue
        consider(decision.approver, decision.checksum, decision.source, via, (), decision.groups or None,
                 decision.decision)
    for a in external:
        source = str(getattr(a, "source", "external"))
        groups = getattr(a, "groups", None)
        consider(str(a.user), str(a.checksum), source, f"{source}, verified by the caller",
                 tuple(getattr(a, "aliases", ()) or ()), groups, str(getattr(a, "status", APPROVED)))

    required = settings.approvals_required
    names = ", ".join(sorted(c.approver for c in counted.values()))
    if not compose_ok:
        return LinkResult(name, False, "the change's authors are unknown because the compose provenance did not "
                                       "verify, so no approval can be counted", "fix the compose-provenance link"), \
            list(counted.values()), not_counted
    unknown = next((p.authors_unknown for p in provs if p.authors_unknown), "")
    if unknown:  # unknown authorship denies: anyone might be approving their own change
        return LinkResult(name, False, f"the change's authors are unknown ({unknown}), so no approval can be "
                                       "counted", "compose from a full git clone of committed blueprint files"), \
            [], not_counted
    if vetoes:
        return LinkResult(name, False, "; ".join(vetoes), "address the rejection, then ask for approval again"), \
            list(counted.values()), not_counted
    if len(counted) >= required:
        return LinkResult(name, True, f"{len(counted)} of {required} required approvals of {checksum[:12]}: {names}"), \
            list(counted.values()), not_counted
    reason = f"{len(counted)} of {required} required approvals of {checksum[:12]}" + (f" ({names})" if names else "")
    if not_counted:
        shown = not_counted[-3:]
        reason += "; not counted: " + "; ".join(shown) + (f"; and {len(not_counted) - 3} more"
                                                          if len(not_counted) > 3 else "")
    return LinkResult(name, False, reason, "get approvals of this checksum from allowed approvers who are not "
                                           "its authors"), list(counted.values()), not_counted


def verify_chain(
    evidence: Bundle | Iterable[Mapping[str, Any]],
    policy: TrustPolicy,
    checksum: str,
    *,
    image_digest: str | None = None,
    now: datetime | None = None,
    settings: Effective | None = None,
    external_approvals: Iterable[Any] = (),
    first_release: bool = False,
) -> ChainResult:
    """Every link of the candidate's evidence, checked against the production host's trust policy.

    `settings` (from trust.effective(policy, project)) default to the trust policy's own; they can only
    be stricter. `external_approvals` are approvals the caller fetched again from GitLab or Jenkins; they
    count under the same rules (checksum named, not an author, allowed, distinct identity). `first_release`:
    the caller read production and found nothing on the ref, so upgrade and rollback may be signed skipped."""
    from edgeci.trust import effective

    checksum = (checksum or "").strip().lower()
    eff = settings if settings is not None else effective(policy, None)[0]
    now = now or datetime.now(UTC)
    envelopes = list(evidence.envelopes if isinstance(evidence, Bundle) else evidence)
    notes: list[str] = []
    if isinstance(evidence, Bundle) and evidence.checksum != checksum:
        notes.append(f"the bundle was written for {evidence.checksum[:12]}, not {checksum[:12]}")

    s = _sort(envelopes, policy, checksum, image_digest)
    notes.extend(s.notes)
    links: list[LinkResult] = []
    if s.malformed:
        reason, fix = s.malformed[0]
        links.append(LinkResult(BUNDLE_LINK, False, reason + (f" (and {len(s.malformed) - 1} more)"
                                                              if len(s.malformed) > 1 else ""), fix))
    elif not envelopes:
        links.append(LinkResult(BUNDLE_LINK, False, "the evidence bundle is empty",
                                "run compose and boot-test with their signing keys set"))
    else:
        links.append(LinkResult(BUNDLE_LINK, True, f"{len(envelopes)} DSSE envelope"
                                                   f"{'s' if len(envelopes) != 1 else ''} of in-toto statements"))
    compose_link, provs = _compose(s, policy)
    links.append(compose_link)
    boot_link, boot = _boot_test(s, eff, first_release)
    links.append(boot_link)
    approvals_link, counted, not_counted = _approvals(s, eff, checksum, provs, compose_link.passed,
                                                      external_approvals)
    links.append(approvals_link)
    why = eff.window_problem(now)
    links.append(LinkResult(WINDOW_LINK, not why, why or eff.window_summary(now),
                            "promote inside a change window, outside the freeze" if why else ""))
    return ChainResult(checksum, links, counted, not_counted, provs[0] if provs else None, boot, notes)
