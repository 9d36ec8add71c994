"""Gate policy: the candidate, production's state and the approvals in → one verdict per rule, with reasons.

Pure code (no I/O, an injectable clock): the approval sources (local.py, gitlab.py, jenkins.py) gather the
evidence, stages/gate.py prints it and writes the record. promote.py re-checks versions, parent and windows
with the same functions under the production lock.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING, Any

from edgeci.errors import GateError
from edgeci.version import compare_versions

if TYPE_CHECKING:
    from edgeci.production import Production
    from edgeci.record import Candidate

APPROVED = "approved"
DENIED = "denied"
PENDING = "pending"

PASSED = "passed"
FAILED = "failed"
WAITING = "pending"

EARLIER_STAGES = ("lint", "compose", "push", "stage", "boot_test")
# What the boot test must have covered, unless the gate settings say otherwise (gate.required_scenarios,
# gate.accepted_backends): every scenario, on a backend that really boots the image.
DEFAULT_SCENARIOS = ("install", "upgrade", "rollback")
DEFAULT_BACKENDS = ("device", "qemu", "libvirt")
LOCAL_BACKENDS = ("device", "qemu", "libvirt", "sysroot")  # gate.source local (the embedded default) also takes sysroot
# The one reason a required scenario may be skipped: production has nothing to upgrade from or roll back to.
FIRST_RELEASE = "production is empty (first release)"
# An abbreviated checksum in an approval must be at least this long to count (git-style short ids).
MIN_ABBREV = 12
CHECKSUM_RE = re.compile(r"^[0-9a-f]{64}$")
APPROVE_MARK_RE = re.compile(r"edgeci-approve\s+([0-9a-f]{12,64})\b", re.IGNORECASE)

# Rule names: one JUnit testcase each, in this order.
RULES = (
    "stages-passed",
    "boot-test-coverage",
    "built-from-commit",
    "version-increases",
    "parent-is-production",
    "approvals-name-checksum",
    "no-self-approval",
    "approvers-allowed",
    "approvals-required",
    "change-window",
    "freeze",
)


# -- evidence ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Approval:
    """One person's decision about one candidate, as an approval source reported it."""

    user: str
    checksum: str  # the commit checksum the approval names; "" when it names none
    time: str = ""
    source: str = "local"
    comment: str = ""
    status: str = APPROVED  # approved | rejected
    aliases: tuple[str, ...] = ()  # other identities of the same account (e-mail, display name)
    groups: frozenset[str] | None = None  # group membership the source resolved; None = unknown

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"user": self.user, "checksum": self.checksum, "time": self.time,
                               "source": self.source}
        if self.status != APPROVED:
            out["status"] = self.status
        if self.comment:
            out["comment"] = self.comment
        return out


@dataclass(frozen=True)
class Person:
    """Someone whose approval never counts for this candidate, and why (their role)."""

    role: str  # "commit author", "merge-request author", "pipeline triggerer", "blueprint's last committer"
    identities: tuple[str, ...]  # usernames, e-mails, names

    def label(self) -> str:
        return f"{self.role} ({', '.join(i for i in self.identities if i)})"


@dataclass
class Evidence:
    approvals: list[Approval] = field(default_factory=list)
    people: list[Person] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # approval requests still open (e.g. a Jenkins input)
    notes: list[str] = field(default_factory=list)  # what the source could not check, shown with the verdict
    # Why the change's authors cannot be determined ("" = they are known). Unknown authorship denies: no approval
    # counts, because any approver might be an author.
    authors_unknown: str = ""
    # (required scenarios, accepted backends) from the gate settings the evidence was gathered under
    # (approvals.gather: boot_requirements(cfg.gate)); evaluate() uses them unless given explicitly.
    boot_requirements: tuple[tuple[str, ...], tuple[str, ...]] | None = None


@dataclass
class RuleResult:
    name: str
    outcome: str  # passed | failed | pending
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "outcome": self.outcome, "reason": self.reason}


@dataclass
class Verdict:
    decision: str
    rules: list[RuleResult]
    counted: list[Approval]
    rejected: list[tuple[Approval, str]]
    checksum: str
    notes: list[str] = field(default_factory=list)

    @property
    def approved(self) -> bool:
        return self.decision == APPROVED

    def rule(self, name: str) -> RuleResult:
        for r in self.rules:
            if r.name == name:
                return r
        raise KeyError(name)

    def as_record(self) -> dict[str, Any]:
        """The build record's gate section (see record.GateSection; plus the rejected approvals)."""
        return {
            "decision": self.decision,
            "checksum": self.checksum,
            "rules": [r.as_dict() for r in self.rules],
            "approvals": [a.as_dict() for a in self.counted],
            "rejected": [{**a.as_dict(), "reason": why} for a, why in self.rejected],
        }


# -- versions ---------------------------------------------------------------------------------------

# -- change windows and freezes ----------------------------------------------------------------------

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Window:
    text: str
    days: frozenset[int]
    start: time
    end: time  # exclusive; end <= start means the window runs past midnight

    def contains(self, now: datetime) -> bool:
        t = now.timetz().replace(tzinfo=None)
        wd = now.weekday()
        if self.start < self.end:
            return wd in self.days and self.start <= t < self.end
        # overnight: the evening part belongs to the listed day, the morning part to the day after
        return (wd in self.days and t >= self.start) or (((wd - 1) % 7) in self.days and t < self.end)


def _day(token: str, where: str) -> int:
    t = token.strip().lower()[:3]
    if t not in DAYS:
        raise GateError(f"'{token}' is not a weekday", where=where, fix="use Mon, Tue, Wed, Thu, Fri, Sat, Sun")
    return DAYS.index(t)


def _clock(token: str, where: str) -> time:
    m = re.match(r"^(\d{1,2}):(\d{2})$", token.strip())
    if not m or int(m.group(1)) > 24 or int(m.group(2)) > 59 or (int(m.group(1)) == 24 and m.group(2) != "00"):
        raise GateError(f"'{token}' is not a time of day", where=where, fix="use HH:MM (UTC), e.g. 08:00")
    h = int(m.group(1))
    return time(23, 59, 59, 999999) if h == 24 else time(h, int(m.group(2)))


def parse_window(text: str, where: str = "gate.windows") -> Window:
    """"Mon-Fri 08:00-17:00", "Sat,Sun 10:00-12:00", "daily 22:00-02:00" — UTC, end exclusive."""
    parts = text.split()
    if len(parts) == 1 and "-" in parts[0] and ":" in parts[0]:
        parts = ["daily", parts[0]]
    if len(parts) != 2 or "-" not in parts[1]:
        raise GateError(f"change window '{text}' is not 'DAYS HH:MM-HH:MM'", where=where,
                        fix="write e.g. 'Mon-Fri 08:00-17:00' (UTC)")
    days_text, hours = parts
    days: set[int] = set()
    if days_text.lower() in ("daily", "*", "every"):
        days = set(range(7))
    else:
        for item in days_text.split(","):
            if "-" in item:
                a, b = item.split("-", 1)
                i, j = _day(a, where), _day(b, where)
                days.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
            else:
                days.add(_day(item, where))
    a, b = hours.split("-", 1)
    start, end = _clock(a, where), _clock(b, where)
    if start == end:
        raise GateError(f"change window '{text}' is empty (start = end)", where=where)
    return Window(text, frozenset(days), start, end)


def parse_freeze(text: str, where: str = "gate.freeze") -> tuple[date, date]:
    """"2026-12-20..2027-01-05" (both days included, UTC) or a single day "2026-12-25"."""
    a, sep, b = text.strip().partition("..")
    try:
        first = date.fromisoformat(a.strip())
        last = date.fromisoformat(b.strip()) if sep else first
    except ValueError:
        raise GateError(f"freeze '{text}' is not 'YYYY-MM-DD..YYYY-MM-DD'", where=where,
                        fix="write e.g. '2026-12-20..2027-01-05'") from None
    if last < first:
        raise GateError(f"freeze '{text}' ends before it starts", where=where)
    return first, last


def _utc(now: datetime) -> datetime:
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def check_window(windows: Sequence[str], now: datetime) -> RuleResult:
    now = _utc(now)
    shown = now.strftime("%a %Y-%m-%d %H:%M UTC")
    if not windows:
        return RuleResult("change-window", PASSED, "no change windows configured (gate.windows)")
    parsed = [parse_window(w, f"gate.windows[{i}]") for i, w in enumerate(windows)]
    for w in parsed:
        if w.contains(now):
            return RuleResult("change-window", PASSED, f"{shown} is inside the change window '{w.text}'")
    listed = ", ".join(f"'{w.text}'" for w in parsed)
    return RuleResult("change-window", FAILED, f"{shown} is outside the change windows {listed}")


def check_freeze(freezes: Sequence[str], now: datetime) -> RuleResult:
    today = _utc(now).date()
    if not freezes:
        return RuleResult("freeze", PASSED, "no freeze dates configured (gate.freeze)")
    for i, f in enumerate(freezes):
        first, last = parse_freeze(f, f"gate.freeze[{i}]")
        if first <= today <= last:
            return RuleResult("freeze", FAILED, f"{today} is inside the freeze '{f}'")
    return RuleResult("freeze", PASSED, f"{today} is outside every freeze ({', '.join(freezes)})")


# -- rules ------------------------------------------------------------------------------------------

def short(checksum: str | None) -> str:
    return checksum[:12] if checksum else "(none)"


def names_checksum(named: str, checksum: str) -> bool:
    """An approval names `checksum` when it gives it in full, or as a prefix of at least MIN_ABBREV."""
    named = (named or "").strip().lower()
    if not named or not checksum:
        return False
    return named == checksum or (len(named) >= MIN_ABBREV and checksum.startswith(named))


def check_stages(candidate: Candidate) -> RuleResult:
    name = "stages-passed"
    s = candidate.sections
    if not CHECKSUM_RE.match(candidate.checksum):
        return RuleResult(name, FAILED, "the record has no composed commit checksum (run 'edgeci compose')")
    for sec in EARLIER_STAGES:
        section = s.get(sec)
        stage = sec.replace("_", "-")
        if section is None:
            return RuleResult(name, FAILED, f"the {stage} stage has not run for {short(candidate.checksum)}")
        if section.get("status") != PASSED:
            why = _failed_scenario(section) if sec == "boot_test" else ""
            return RuleResult(name, FAILED, f"the {stage} stage {section.get('status', 'did not pass')} "
                                            f"for {short(candidate.checksum)}" + (f": {why}" if why else ""))
    staged = s["stage"].get("commit")
    if staged != candidate.checksum:
        return RuleResult(name, FAILED, f"the stage served {short(staged)}, not the composed "
                                        f"{short(candidate.checksum)}")
    boot = s["boot_test"]
    if boot.get("commit") and boot["commit"] != candidate.checksum:
        return RuleResult(name, FAILED, f"the boot test ran {short(boot['commit'])}, not the composed "
                                        f"{short(candidate.checksum)}")
    scenarios = boot.get("scenarios") or {}
    if not scenarios:
        return RuleResult(name, FAILED, "the boot test recorded no scenario")
    failed = _failed_scenario(boot)
    if failed:
        return RuleResult(name, FAILED, failed)
    ran = ", ".join(f"{k} {v.get('outcome')}" for k, v in scenarios.items())
    return RuleResult(name, PASSED, f"lint, compose, push, stage and boot-test passed for "
                                    f"{short(candidate.checksum)} ({ran})")


def _failed_scenario(boot: Mapping[str, Any]) -> str:
    for scen, result in (boot.get("scenarios") or {}).items():
        outcome = (result or {}).get("outcome")
        if outcome not in (PASSED, "skipped"):
            why = (result or {}).get("reason") or ""
            return f"boot-test scenario '{scen}' {outcome or 'has no outcome'}" + (f": {why}" if why else "")
    return ""


def boot_requirements(gate: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required scenarios, accepted backends) from the gate settings: gate.required_scenarios, and
    gate.accepted_backends or, when empty, qemu and libvirt (plus sysroot when gate.source is local)."""
    scenarios = tuple(getattr(gate, "required_scenarios", None) or DEFAULT_SCENARIOS)
    backends = tuple(getattr(gate, "accepted_backends", None) or ())
    if not backends:
        backends = LOCAL_BACKENDS if getattr(gate, "source", "local") == "local" else DEFAULT_BACKENDS
    return scenarios, backends


def check_boot_coverage(candidate: Candidate, production: Production, required: Sequence[str],
                        backends: Sequence[str]) -> RuleResult:
    """The boot test ran on an accepted backend and every required scenario passed. A skipped scenario counts
    only when it was skipped because production is empty (first release) and production really is empty."""
    name = "boot-test-coverage"
    boot = candidate.sections.get("boot_test") or {}
    backend = str(boot.get("backend") or "")
    if not boot:
        return RuleResult(name, FAILED, "no boot test recorded")
    if backend not in backends:
        return RuleResult(name, FAILED, f"the boot test ran on '{backend or 'an unknown backend'}', which the gate "
                                        f"does not accept (gate.accepted_backends: {', '.join(backends)})")
    scenarios = boot.get("scenarios") or {}
    ok: list[str] = []
    for scen in required:
        result = scenarios.get(scen) or {}
        outcome = result.get("outcome")
        if outcome == PASSED:
            ok.append(scen)
            continue
        if outcome == "skipped" and result.get("reason") == FIRST_RELEASE and production.commit is None:
            ok.append(f"{scen} (skipped: first release)")
            continue
        if not result:
            why = "did not run"
        elif outcome == "skipped":
            why = f"was skipped ({result.get('reason') or 'no reason'})"
            if result.get("reason") == FIRST_RELEASE:
                why += f", but production runs {short(production.commit)}"
        else:
            why = f"{outcome or 'has no outcome'}"
        return RuleResult(name, FAILED, f"required scenario '{scen}' {why} (gate.required_scenarios: "
                                        f"{', '.join(required)})")
    return RuleResult(name, PASSED, f"{backend}: " + ", ".join(ok))


def check_built_from_commit(candidate: Candidate) -> RuleResult:
    """The candidate was composed from committed files only (compose --allow-uncommitted records them)."""
    name = "built-from-commit"
    bp = candidate.sections.get("blueprint") or {}
    dirty = bp.get("uncommitted") or []
    if dirty:
        return RuleResult(name, FAILED, "composed from uncommitted files (" + ", ".join(str(d) for d in dirty)
                                        + "): nobody can review or attribute them; commit and compose again")
    sha = bp.get("git_sha")
    return RuleResult(name, PASSED, f"composed from git commit {sha[:12]}" if sha else
                      "composed outside git (its authors are judged by the no-self-approval rule)")


def check_version(candidate_version: str | None, production: Production) -> RuleResult:
    name = "version-increases"
    if not candidate_version:
        return RuleResult(name, FAILED, "the candidate has no version (set 'version' in the blueprint)")
    if production.commit is None:
        return RuleResult(name, PASSED, f"{candidate_version}: first release on {production.ref}")
    if not production.version:
        return RuleResult(name, FAILED, f"production's commit {short(production.commit)} on {production.ref} is not "
                                        "in production's releases log (released outside edgeci), so its version is "
                                        "unknown and anti-rollback cannot be checked")
    try:
        c = compare_versions(candidate_version, production.version)
    except ValueError as e:
        return RuleResult(name, FAILED, f"cannot compare versions: {e}")
    if c > 0:
        return RuleResult(name, PASSED, f"{candidate_version} > production's {production.version}")
    return RuleResult(name, FAILED, f"{candidate_version} is not greater than production's {production.version} "
                                    "(versions only go up; bump the blueprint version)")


def check_parent(parent: str | None, production: Production, allow_fork: bool) -> RuleResult:
    name = "parent-is-production"
    if production.commit is None:
        return RuleResult(name, PASSED, f"first release: production has no commit on {production.ref}")
    if parent == production.commit:
        return RuleResult(name, PASSED, f"built on production's {short(production.commit)}")
    what = f"built on {short(parent)}" if parent else "built without a parent"
    if allow_fork:
        return RuleResult(name, PASSED, f"{what}, not production's {short(production.commit)}; "
                                        "allowed by gate.allow_fork")
    return RuleResult(name, FAILED, f"{what}, but production runs {short(production.commit)} "
                                    "(rebuild on top of production, or set gate.allow_fork)")


def identities(values: Iterable[str]) -> set[str]:
    """The forms an identity is matched by: casefolded, and an e-mail also by its local part."""
    out = set()
    for v in values:
        v = (v or "").strip().casefold()
        if not v:
            continue
        out.add(v)
        if "@" in v:
            out.add(v.split("@", 1)[0])
    return out


def _join(reasons: list[str], limit: int = 3) -> str:
    """Reasons joined with '; ', the newest `limit` of them (stale approvals pile up over releases)."""
    shown = reasons[-limit:]
    more = len(reasons) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more else "")


def author_of(approval: Approval, people: Sequence[Person]) -> Person | None:
    mine = identities([approval.user, *approval.aliases])
    for p in people:
        if mine & identities(p.identities):
            return p
    return None


def _allowed(approval: Approval, users: Sequence[str], groups: Sequence[str]) -> tuple[bool, str]:
    if not users and not groups:
        return True, ""
    if identities([approval.user, *approval.aliases]) & identities(users):
        return True, ""
    if groups:
        if approval.groups is None:
            return False, (f"{approval.user} is not in gate.allowed_users and the {approval.source} approval "
                           "source cannot tell group membership")
        wanted = {g.casefold() for g in groups}
        if wanted & {g.casefold() for g in approval.groups}:
            return True, ""
        return False, f"{approval.user} is neither in gate.allowed_users nor in the groups {', '.join(groups)}"
    return False, f"{approval.user} is not in gate.allowed_users ({', '.join(users)})"


def evaluate(
    candidate: Candidate,
    production: Production,
    evidence: Evidence,
    *,
    approvals_required: int = 1,
    allowed_users: Sequence[str] = (),
    allowed_groups: Sequence[str] = (),
    allow_fork: bool = False,
    windows: Sequence[str] = (),
    freeze: Sequence[str] = (),
    required_scenarios: Sequence[str] | None = None,
    accepted_backends: Sequence[str] | None = None,
    now: datetime,
) -> Verdict:
    """Every rule, each with its reason, and the decision: approved, denied, or pending (not enough yet).
    required_scenarios/accepted_backends: as given, else the evidence's boot_requirements, else production's
    strictest (DEFAULT_SCENARIOS on DEFAULT_BACKENDS)."""
    checksum = candidate.checksum
    from_settings = evidence.boot_requirements or (DEFAULT_SCENARIOS, DEFAULT_BACKENDS)
    if required_scenarios is None:
        required_scenarios = from_settings[0]
    if accepted_backends is None:
        accepted_backends = from_settings[1]
    rules = [
        check_stages(candidate),
        check_boot_coverage(candidate, production, required_scenarios, accepted_backends),
        check_built_from_commit(candidate),
        check_version(candidate.version, production),
        check_parent(candidate.parent, production, allow_fork),
    ]

    # Each approval passes three filters in turn; the first that rejects it gives the reason.
    wrong_checksum: list[tuple[Approval, str]] = []
    self_approved: list[tuple[Approval, str]] = []
    not_allowed: list[tuple[Approval, str]] = []
    vetoes: list[tuple[Approval, str]] = []
    counted: dict[str, Approval] = {}
    for a in evidence.approvals:
        if a.status == "rejected":
            if not a.checksum or names_checksum(a.checksum, checksum):
                vetoes.append((a, f"{a.user} rejected {short(checksum)}" + (f": {a.comment}" if a.comment else "")))
            continue
        if not a.checksum:
            wrong_checksum.append((a, f"{a.user}'s approval ({a.source}) names no commit checksum"))
            continue
        if not names_checksum(a.checksum, checksum):
            wrong_checksum.append((a, f"{a.user} approved {short(a.checksum)}, not this candidate {short(checksum)}"))
            continue
        if evidence.authors_unknown:
            self_approved.append((a, f"{a.user}'s approval cannot count: {evidence.authors_unknown}"))
            continue
        who = author_of(a, evidence.people)
        if who is not None:
            self_approved.append((a, f"{a.user} is the {who.label()}: no one approves their own change"))
            continue
        ok, why = _allowed(a, allowed_users, allowed_groups)
        if not ok:
            not_allowed.append((a, why))
            continue
        counted.setdefault(a.user.casefold(), a)

    enough = len(counted) >= approvals_required

    def filter_rule(name: str, rejected: list[tuple[Approval, str]], ok_text: str) -> RuleResult:
        if not rejected:
            return RuleResult(name, PASSED, ok_text)
        text = _join([why for _, why in rejected])
        if enough:
            return RuleResult(name, PASSED, f"not counted: {text}")
        return RuleResult(name, FAILED, text)

    rules.append(filter_rule("approvals-name-checksum", wrong_checksum,
                             f"every approval names {short(checksum)}" if evidence.approvals
                             else "no approvals yet"))
    if evidence.authors_unknown:
        rules.append(RuleResult("no-self-approval", FAILED, f"the change's authors cannot be determined "
                                f"({evidence.authors_unknown}), so no approval counts"))
    else:
        rules.append(filter_rule(
            "no-self-approval", self_approved,
            "no approver is an author or committer of the change, the merge-request author or the pipeline "
            "triggerer" + (f" ({'; '.join(p.label() for p in evidence.people)})" if evidence.people else "")))
    rules.append(filter_rule("approvers-allowed", not_allowed,
                             "every approver is allowed" if (allowed_users or allowed_groups)
                             else "anyone but the authors may approve (no gate.allowed_users/allowed_groups)"))

    names = ", ".join(sorted(a.user for a in counted.values()))
    rejected_all = wrong_checksum + self_approved + not_allowed
    if vetoes:
        req = RuleResult("approvals-required", FAILED, "; ".join(why for _, why in vetoes))
    elif enough:
        req = RuleResult("approvals-required", PASSED,
                         f"{len(counted)} of {approvals_required} required approvals of {short(checksum)}"
                         + (f": {names}" if names else ""))
    else:
        waiting = f"{len(counted)} of {approvals_required} required approvals of {short(checksum)}"
        if names:
            waiting += f" ({names})"
        if evidence.pending:
            waiting += "; waiting for: " + "; ".join(evidence.pending)
        req = RuleResult("approvals-required", FAILED if rejected_all else WAITING, waiting)
    rules.append(req)
    rules.append(check_window(windows, now))
    rules.append(check_freeze(freeze, now))

    if any(r.outcome == FAILED for r in rules):
        decision = DENIED
    elif any(r.outcome == WAITING for r in rules):
        decision = PENDING
    else:
        decision = APPROVED
    return Verdict(decision, rules, list(counted.values()), rejected_all + vetoes, checksum, list(evidence.notes))


# -- what is being approved -------------------------------------------------------------------------

def text_diff(old: str, new: str, old_name: str, new_name: str) -> list[str]:
    return [line.rstrip("\n") for line in difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), old_name, new_name)]


def variables_diff(old: Mapping[str, str] | None, new: Mapping[str, str] | None) -> list[str]:
    """What changed in a templated blueprint's values, by name and sha256 (never a value): one line per added,
    removed or changed variable, for the approver (production's release against the candidate)."""
    old, new = dict(old or {}), dict(new or {})
    lines = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        if a is None:
            lines.append(f"+ {name} (sha256 {str(b)[:12]})")
        elif b is None:
            lines.append(f"- {name} (sha256 {a[:12]})")
        else:
            lines.append(f"~ {name} sha256 {a[:12]} -> {str(b)[:12]}")
    return lines


def approve_mark(text: str) -> str:
    """The checksum named by an 'edgeci-approve <checksum>' comment, or ""."""
    m = APPROVE_MARK_RE.search(text or "")
    return m.group(1).lower() if m else ""
