"""edgeci.policy: every rule denies with its reason; approvals count only for the checksum they name."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from edgeci import policy
from edgeci.errors import GateError
from edgeci.packages import package_diff
from edgeci.policy import Approval, Evidence, Person
from edgeci.production import Production
from edgeci.record import Candidate

C = "a" * 64  # the candidate
OTHER = "b" * 64  # another candidate
PROD = "c" * 64  # production's commit
MONDAY_NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # a Monday


def sections(checksum: str = C, *, boot: str = "passed", parent: str | None = PROD, version: str = "1.2.0",
             staged: str | None = None) -> dict[str, Any]:
    scen = {s: {"outcome": boot if s == "upgrade" else "passed",
                "reason": "" if boot == "passed" else "health check 'sshd' failed"}
            for s in ("install", "upgrade", "rollback")}
    return {
        "blueprint": {"name": "edge", "version": version, "status": "passed"},
        "lint": {"findings": [], "status": "passed"},
        "compose": {"commit": checksum, "parent": parent, "ref": "rhel/9/x86_64/edge", "status": "passed"},
        "push": {"digest": "sha256:" + "d" * 64, "status": "passed"},
        "stage": {"url": "http://127.0.0.1:1/repo", "commit": staged or checksum, "status": "passed"},
        "boot_test": {"backend": "qemu", "scenarios": scen,
                      "status": "passed" if boot == "passed" else "failed"},
    }


def evaluate(approvals: list[Approval] | None = None, *, people: list[Person] | None = None,
             secs: dict[str, Any] | None = None, prod: Production | None = None,
             now: datetime = MONDAY_NOON, **policy_kw: Any) -> policy.Verdict:
    cand = Candidate.from_sections(secs or sections())
    return policy.evaluate(
        cand, prod or Production("rhel/9/x86_64/edge", PROD, "1.1.0"),
        Evidence(approvals=approvals if approvals is not None else [Approval("carol", C)],
                 people=people if people is not None else [Person("commit author", ("alice@example.com", "Alice"))]),
        now=now, **policy_kw)


def test_clean_candidate_with_one_approval_is_approved() -> None:
    v = evaluate()
    assert v.decision == policy.APPROVED
    assert [r.outcome for r in v.rules] == ["passed"] * len(policy.RULES)
    assert [r.name for r in v.rules] == list(policy.RULES)
    assert [a.user for a in v.counted] == ["carol"]
    assert v.as_record()["approvals"] == [{"user": "carol", "checksum": C, "time": "", "source": "local"}]


def test_no_approval_yet_is_pending_not_denied() -> None:
    v = evaluate([])
    assert v.decision == policy.PENDING
    assert v.rule("approvals-required").outcome == policy.WAITING
    assert "0 of 1" in v.rule("approvals-required").reason


@pytest.mark.parametrize("role,identity,approver", [
    ("commit author", "alice@example.com", "alice"),  # username = e-mail local part
    ("merge-request author", "bob", "Bob"),  # case-insensitive
    ("pipeline triggerer", "dave", "dave"),
    ("blueprint's last committer", "erin@example.com", "erin@example.com"),
])
def test_self_approval_is_denied_with_its_reason(role: str, identity: str, approver: str) -> None:
    v = evaluate([Approval(approver, C)], people=[Person(role, (identity,))])
    assert v.decision == policy.DENIED
    rule = v.rule("no-self-approval")
    assert rule.outcome == policy.FAILED
    assert role in rule.reason and "no one approves their own change" in rule.reason
    assert v.counted == []


def test_self_approval_is_ignored_when_others_approved() -> None:
    v = evaluate([Approval("alice", C), Approval("carol", C)])
    assert v.decision == policy.APPROVED
    assert v.rule("no-self-approval").reason.startswith("not counted: alice is the commit author")
    assert [a.user for a in v.counted] == ["carol"]


def test_approval_of_another_checksum_is_denied_with_its_reason() -> None:
    v = evaluate([Approval("carol", OTHER)])
    assert v.decision == policy.DENIED
    rule = v.rule("approvals-name-checksum")
    assert rule.outcome == policy.FAILED
    assert f"carol approved {OTHER[:12]}, not this candidate {C[:12]}" in rule.reason


def test_approval_naming_no_checksum_does_not_count() -> None:
    v = evaluate([Approval("carol", "")])
    assert v.decision == policy.DENIED
    assert "names no commit checksum" in v.rule("approvals-name-checksum").reason


def test_abbreviated_checksum_counts_from_twelve_digits() -> None:
    assert evaluate([Approval("carol", C[:12])]).approved
    assert not evaluate([Approval("carol", C[:11])]).approved


def test_older_or_equal_version_is_denied_with_its_reason() -> None:
    for version in ("1.0.9", "1.1.0", "1.1.0-rc.1"):
        v = evaluate(secs=sections(version=version))
        assert v.decision == policy.DENIED
        rule = v.rule("version-increases")
        assert rule.outcome == policy.FAILED
        assert f"{version} is not greater than production's 1.1.0" in rule.reason


def test_failed_boot_test_is_denied_with_its_reason() -> None:
    v = evaluate(secs=sections(boot="failed"))
    assert v.decision == policy.DENIED
    rule = v.rule("stages-passed")
    assert rule.outcome == policy.FAILED
    assert "boot-test" in rule.reason and "failed" in rule.reason


def test_failed_boot_scenario_denies_even_when_the_section_says_passed() -> None:
    secs = sections(boot="failed")
    secs["boot_test"]["status"] = "passed"
    v = evaluate(secs=secs)
    assert v.rule("stages-passed").reason == "boot-test scenario 'upgrade' failed: health check 'sshd' failed"


def test_missing_earlier_stage_is_denied() -> None:
    secs = sections()
    del secs["push"]
    rule = evaluate(secs=secs).rule("stages-passed")
    assert rule.outcome == policy.FAILED and "the push stage has not run" in rule.reason


def test_stage_serving_another_commit_is_denied() -> None:
    rule = evaluate(secs=sections(staged=OTHER)).rule("stages-passed")
    assert rule.outcome == policy.FAILED and f"the stage served {OTHER[:12]}" in rule.reason


def test_fork_is_denied_unless_allowed() -> None:
    v = evaluate(secs=sections(parent=OTHER))
    assert v.decision == policy.DENIED
    assert "production runs" in v.rule("parent-is-production").reason
    v = evaluate(secs=sections(parent=OTHER), allow_fork=True)
    assert v.approved and "allowed by gate.allow_fork" in v.rule("parent-is-production").reason


def test_first_release_needs_no_parent_or_older_version() -> None:
    v = evaluate(secs=sections(parent=None, version="0.1.0"), prod=Production("rhel/9/x86_64/edge", None, None))
    assert v.approved
    assert "first release" in v.rule("version-increases").reason


def test_outside_change_window_is_denied_with_its_reason() -> None:
    saturday = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    v = evaluate(now=saturday, windows=["Mon-Fri 08:00-17:00"])
    assert v.decision == policy.DENIED
    assert v.rule("change-window").reason == \
        "Sat 2026-11-28 12:00 UTC is outside the change windows 'Mon-Fri 08:00-17:00'"
    assert evaluate(windows=["Mon-Fri 08:00-17:00"]).approved
    late = datetime(2026, 11, 23, 17, 0, tzinfo=UTC)  # the end is exclusive
    assert not evaluate(now=late, windows=["Mon-Fri 08:00-17:00"]).approved


def test_overnight_and_listed_day_windows() -> None:
    w = policy.parse_window("Fri 22:00-02:00")
    assert w.contains(datetime(2026, 11, 27, 23, 0, tzinfo=UTC))  # Friday night
    assert w.contains(datetime(2026, 11, 28, 1, 0, tzinfo=UTC))  # Saturday early morning
    assert not w.contains(datetime(2026, 11, 28, 3, 0, tzinfo=UTC))
    assert policy.parse_window("Sat,Sun 10:00-12:00").days == frozenset({5, 6})


def test_freeze_is_denied_with_its_reason_both_ends_included() -> None:
    freeze = ["2026-12-20..2027-01-05"]
    for day in (datetime(2026, 12, 20, 0, 0, tzinfo=UTC), datetime(2027, 1, 5, 23, 59, tzinfo=UTC)):
        v = evaluate(now=day, freeze=freeze)
        assert v.decision == policy.DENIED
        assert "is inside the freeze '2026-12-20..2027-01-05'" in v.rule("freeze").reason
    assert evaluate(now=datetime(2027, 1, 6, tzinfo=UTC), freeze=freeze).approved


@pytest.mark.parametrize("bad", ["weekdays 8-17", "Mon-Fri 08:00", "Mon-Xyz 08:00-17:00", "Mon 25:00-26:00"])
def test_bad_window_is_a_gate_error_naming_the_key(bad: str) -> None:
    with pytest.raises(GateError) as e:
        evaluate(windows=["Mon-Fri 08:00-17:00", bad])
    assert "gate.windows[1]" in str(e.value)


def test_bad_freeze_is_a_gate_error() -> None:
    with pytest.raises(GateError, match=r"gate.freeze\[0\]"):
        evaluate(freeze=["2027-01-05..2026-12-20"])


def test_approvals_must_be_distinct_people() -> None:
    twice = [Approval("carol", C), Approval("Carol", C, source="gitlab")]
    v = evaluate(twice, approvals_required=2)
    assert v.decision == policy.PENDING and "1 of 2" in v.rule("approvals-required").reason
    assert evaluate([Approval("carol", C), Approval("dave", C)], approvals_required=2).approved


def test_only_allowed_users_or_groups_count() -> None:
    v = evaluate([Approval("mallory", C, groups=frozenset({"devs"}))], allowed_users=["carol"],
                 allowed_groups=["release"])
    assert v.decision == policy.DENIED
    assert "mallory is neither in gate.allowed_users nor in the groups release" in v.rule("approvers-allowed").reason
    assert evaluate([Approval("mallory", C, groups=frozenset({"Release"}))], allowed_groups=["release"]).approved
    unknown = evaluate([Approval("mallory", C, source="jenkins", groups=None)], allowed_groups=["release"])
    assert "cannot tell group membership" in unknown.rule("approvers-allowed").reason


def test_a_rejection_vetoes() -> None:
    v = evaluate([Approval("carol", C), Approval("dave", C, status="rejected", comment="breaks VPN")])
    assert v.decision == policy.DENIED
    assert "dave rejected" in v.rule("approvals-required").reason and "breaks VPN" in v.rule(
        "approvals-required").reason
    # a rejection of an older candidate does not veto this one
    assert evaluate([Approval("carol", C), Approval("dave", OTHER, status="rejected")]).approved


def test_package_diff_and_approval_mark() -> None:
    old = ["bash-5.1.8-6.el9.x86_64", "vim-enhanced-8.2-1.el9.x86_64", "gone-1-1.noarch"]
    new = ["bash-5.1.8-9.el9.x86_64", "vim-enhanced-8.2-1.el9.x86_64", {"name": "new", "version": "2", "release": "1"}]
    assert package_diff(old, new) == ["~ bash 5.1.8-6.el9.x86_64 -> 5.1.8-9.el9.x86_64",
                                             "- gone 1-1.noarch", "+ new 2-1"]
    assert policy.approve_mark(f"LGTM\nedgeci-approve {C}") == C
    assert policy.approve_mark("edgeci-approve abc") == ""
