"""edgeci.evidence.chain: a release's evidence verified link by link against a trust policy (real keys)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgeci.errors import VerificationError
from edgeci.evidence import dsse
from edgeci.evidence.bundle import Bundle, load_bundle, write_bundle
from edgeci.evidence.chain import ExternalApproval, verify_chain
from edgeci.evidence.predicates import ApprovalDecision, BootTestResult, ComposeProvenance, ScenarioResult
from edgeci.evidence.rolekeys import SigningKey, write_key_pair
from edgeci.evidence.statement import subjects
from edgeci.trust import effective, load_policy

C = "a" * 64
OTHER = "b" * 64
REF = "rhel/9/x86_64/edge"
IMG = "sha256:" + "d" * 64
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # a Monday


@dataclass
class World:
    compose: SigningKey
    boot: SigningKey
    alice: SigningKey  # bound to alice
    gate: SigningKey  # a CI approver key that may sign for anyone
    stranger: SigningKey
    policy_path: Path

    def policy(self, extra: str = ""):
        return load_policy(self.policy_path) if not extra else self._with(extra)

    def _with(self, extra: str):
        p = self.policy_path.with_name("trust2.yaml")
        p.write_text(self.policy_path.read_text() + extra)
        return load_policy(p)


@pytest.fixture()
def world(tmp_path: Path) -> World:
    keys = {n: SigningKey.generate(r) for n, r in (("compose", "compose"), ("boot", "boot-test"),
                                                    ("alice", "approver"), ("gate", "approver"),
                                                    ("stranger", "approver"))}
    for n, k in keys.items():
        write_key_pair(k, tmp_path / n)
    pol = tmp_path / "trust.yaml"
    pol.write_text("""\
schema: 1
require_signed_production: false
keys:
  compose: [{name: ci-compose, file: compose/compose.pub}]
  boot-test: [{name: ci-boot, file: boot/boot-test.pub}]
  approver:
    - {name: alice, approver: alice, file: alice/approver.pub}
    - {name: gate-job, file: gate/approver.pub}
""")
    return World(keys["compose"], keys["boot"], keys["alice"], keys["gate"], keys["stranger"], pol)


def prov_env(w: World, checksum: str = C, authors: tuple[str, ...] = ("dave@example.com",),
             key: SigningKey | None = None) -> dict:
    p = ComposeProvenance("blueprints/gw.toml", "1" * 64, "f" * 40, REF, "1.2.0", "weldr", "id1",
                          change_authors=authors)
    return dsse.sign(p.statement(subjects(checksum, REF, IMG)), key or w.compose)


def boot_env(w: World, checksum: str = C, backend: str = "qemu", scenarios: tuple[str, ...] = ("install", "upgrade",
             "rollback"), outcome: str = "passed", key: SigningKey | None = None) -> dict:
    bt = BootTestResult(backend, {s: ScenarioResult(outcome, {"sshd": outcome}) for s in scenarios},
                        passed=outcome == "passed", checks_sha256="2" * 64, stage_url="http://stage/repo")
    return dsse.sign(bt.statement(subjects(checksum, REF, IMG)), key or w.boot)


def approval_env(key: SigningKey, who: str, checksum: str = C, named: str | None = None,
                 decision: str = "approved", groups: tuple[str, ...] = ()) -> dict:
    a = ApprovalDecision(who, named or checksum, "2026-11-23T11:00:00Z", decision=decision, groups=groups)
    return dsse.sign(a.statement(subjects(checksum, REF)), key)


def complete(w: World) -> list[dict]:
    return [prov_env(w), boot_env(w), approval_env(w.alice, "alice")]


def outcomes(result) -> dict[str, bool]:
    return {link.name: link.passed for link in result.links}


def test_a_complete_chain_passes_and_survives_the_bundle_file(world: World, tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "evidence.json", Bundle(C, complete(world)))
    result = verify_chain(load_bundle(path), world.policy(), C, image_digest=IMG, now=NOW)
    assert result.passed, result.lines()
    assert outcomes(result) == dict.fromkeys(("bundle", "compose-provenance", "boot-test", "approvals",
                                              "change-window"), True)
    assert [a.approver for a in result.approvals] == ["alice"]
    assert "signed by the compose key 'ci-compose'" in result.link("compose-provenance").reason
    assert "passed on qemu" in result.link("boot-test").reason
    assert result.provenance is not None and result.provenance.change_authors == ("dave@example.com",)
    result.raise_if_failed()
    assert result.as_dict()["passed"] is True


def test_tampered_boot_test_fails_its_link(world: World) -> None:
    import base64
    import json

    envs = complete(world)
    envs[1] = boot_env(world, outcome="failed")
    raw = json.loads(base64.b64decode(envs[1]["payload"]))
    raw["predicate"]["passed"] = True
    for s in raw["predicate"]["scenarios"].values():
        s["outcome"] = "passed"
    envs[1]["payload"] = base64.b64encode(json.dumps(raw).encode()).decode()
    result = verify_chain(envs, world.policy(), C, now=NOW)
    assert outcomes(result)["boot-test"] is False
    assert "changed after signing" in result.link("boot-test").reason
    with pytest.raises(VerificationError) as e:
        result.raise_if_failed()
    assert e.value.exit_code == 1 and e.value.code == "boot-test"


def test_provenance_signed_by_the_boot_test_key_is_the_wrong_role(world: World) -> None:
    envs = complete(world)
    envs[0] = prov_env(world, key=world.boot)
    result = verify_chain(envs, world.policy(), C, now=NOW)
    link = result.link("compose-provenance")
    assert not link.passed and "boot-test key 'ci-boot'" in link.reason and "not by a compose key" in link.reason
    # without trusted provenance the change's authors are unknown: no approval counts
    assert not result.link("approvals").passed
    assert "authors are unknown" in result.link("approvals").reason


def test_provenance_by_an_unknown_key(world: World) -> None:
    envs = complete(world)
    envs[0] = prov_env(world, key=SigningKey.generate("compose"))
    link = verify_chain(envs, world.policy(), C, now=NOW).link("compose-provenance")
    assert not link.passed and "does not list" in link.reason and "keys.compose" in link.fix


def test_a_statement_for_another_checksum_is_not_replayable(world: World) -> None:
    envs = complete(world)
    envs[1] = boot_env(world, checksum=OTHER)  # a real, passed boot test, of another candidate
    result = verify_chain(envs, world.policy(), C, now=NOW)
    link = result.link("boot-test")
    assert not link.passed
    assert f"about {OTHER[:12]}, not {C[:12]}" in link.reason and "another candidate" in link.fix
    # a statement whose image is another one is refused as well
    other_image = verify_chain(complete(world), world.policy(), C, image_digest="sha256:" + "e" * 64, now=NOW)
    assert not other_image.passed and "names the image" in other_image.link("compose-provenance").reason


def test_missing_boot_test(world: World) -> None:
    envs = complete(world)
    del envs[1]
    link = verify_chain(envs, world.policy(), C, now=NOW).link("boot-test")
    assert not link.passed and link.reason == "no boot-test statement signed by a boot-test key"
    assert "EDGECI_BOOT_TEST_KEY" in link.fix


def test_boot_test_passed_only_on_a_backend_the_policy_does_not_accept(world: World) -> None:
    envs = complete(world)
    envs[1] = boot_env(world, backend="sysroot")
    link = verify_chain(envs, world.policy(), C, now=NOW).link("boot-test")
    assert not link.passed and "ran on sysroot, which the trust policy does not accept" in link.reason
    # the project asking for sysroot does not widen it
    eff, _ = effective(world.policy(), {"accepted_backends": ["sysroot"]})
    assert not verify_chain(envs, world.policy(), C, now=NOW, settings=eff).link("boot-test").passed
    # a trust policy that accepts sysroot does
    pol = world.policy("accepted_backends: [sysroot]\n")
    assert verify_chain(envs, pol, C, now=NOW).link("boot-test").passed


def test_missing_required_scenario(world: World) -> None:
    envs = complete(world)
    envs[1] = boot_env(world, scenarios=("install", "upgrade"))
    link = verify_chain(envs, world.policy(), C, now=NOW).link("boot-test")
    assert not link.passed and "did not pass the required scenario rollback" in link.reason
    pol = world.policy("required_scenarios: [install, upgrade]\n")
    assert verify_chain(envs, pol, C, now=NOW).link("boot-test").passed


def test_a_signed_failure_is_not_outvoted_by_a_rerun(world: World) -> None:
    envs = [*complete(world), boot_env(world, outcome="failed")]
    link = verify_chain(envs, world.policy(), C, now=NOW).link("boot-test")
    assert not link.passed and "failed" in link.reason


def test_approval_by_a_key_not_in_the_policy_does_not_count(world: World) -> None:
    envs = [prov_env(world), boot_env(world), approval_env(world.stranger, "bob")]
    result = verify_chain(envs, world.policy(), C, now=NOW)
    link = result.link("approvals")
    assert not link.passed and link.reason.startswith("0 of 1 required approvals")
    assert "does not list" in link.reason
    assert result.approvals == []


def test_fewer_approvals_than_required(world: World) -> None:
    pol = world.policy("approvals_required: 2\n")
    envs = [*complete(world), approval_env(world.alice, "alice")]  # the same person twice counts once
    link = verify_chain(envs, pol, C, now=NOW).link("approvals")
    assert not link.passed and link.reason.startswith("1 of 2 required approvals") and "(alice)" in link.reason
    envs.append(approval_env(world.gate, "bob"))
    assert verify_chain(envs, pol, C, now=NOW).link("approvals").passed
    # the project may ask for more, never for fewer
    eff, _ = effective(pol, {"approvals_required": 3})
    assert not verify_chain(envs, pol, C, now=NOW, settings=eff).link("approvals").passed
    eff, _ = effective(pol, {"approvals_required": 1})
    assert eff.approvals_required == 2


def test_self_approval_by_a_change_author_does_not_count(world: World) -> None:
    envs = [prov_env(world, authors=("Alice <alice@example.com>", "alice@example.com")), boot_env(world),
            approval_env(world.alice, "alice")]
    link = verify_chain(envs, world.policy(), C, now=NOW).link("approvals")
    assert not link.passed and "alice" in link.reason and "author of the change" in link.reason
    # the same holds for an approval fetched from GitLab by the caller
    envs[2] = approval_env(world.gate, "carol")
    ext = [ExternalApproval("Alice Doe", C, aliases=("alice@example.com",))]
    result = verify_chain(envs, world.policy("approvals_required: 2\n"), C, now=NOW, external_approvals=ext)
    assert not result.link("approvals").passed and "author of the change" in result.link("approvals").reason


def test_a_bound_approver_key_cannot_approve_as_someone_else(world: World) -> None:
    envs = [prov_env(world), boot_env(world), approval_env(world.alice, "bob")]
    link = verify_chain(envs, world.policy(), C, now=NOW).link("approvals")
    assert not link.passed and "speaks only for alice, not for bob" in link.reason


def test_approval_naming_another_checksum_or_rejecting(world: World) -> None:
    envs = [prov_env(world), boot_env(world), approval_env(world.gate, "bob", named=OTHER)]
    link = verify_chain(envs, world.policy(), C, now=NOW).link("approvals")
    assert not link.passed and f"approved {OTHER[:12]}, not {C[:12]}" in link.reason
    envs = [*complete(world), approval_env(world.gate, "bob", decision="rejected")]
    link = verify_chain(envs, world.policy(), C, now=NOW).link("approvals")
    assert not link.passed and "bob" in link.reason and "rejected" in link.reason


def test_allowed_approvers_and_groups_are_honoured(world: World) -> None:
    pol = world.policy("allowed_approvers: [alice]\nallowed_groups: [ops]\napprovals_required: 2\n")
    envs = [*complete(world), approval_env(world.gate, "bob")]
    link = verify_chain(envs, pol, C, now=NOW).link("approvals")
    assert not link.passed and "bob" in link.reason and "groups" in link.reason
    envs[-1] = approval_env(world.gate, "bob", groups=("ops",))
    assert verify_chain(envs, pol, C, now=NOW).link("approvals").passed


def test_external_approvals_count_under_the_same_rules(world: World) -> None:
    pol = world.policy("approvals_required: 2\nallowed_groups: [ops]\nallowed_approvers: [alice]\n")
    envs = complete(world)
    ext = [ExternalApproval("carol", C, source="gitlab", groups=frozenset({"ops"})),
           ExternalApproval("erin", C, source="jenkins", groups=None),
           ExternalApproval("frank", OTHER, source="gitlab", groups=frozenset({"ops"}))]
    result = verify_chain(envs, pol, C, now=NOW, external_approvals=ext)
    assert result.link("approvals").passed, result.lines()
    assert sorted(a.approver for a in result.approvals) == ["alice", "carol"]
    assert any("erin" in r for r in result.not_counted) and any("frank" in r for r in result.not_counted)


def test_change_window_and_freeze(world: World) -> None:
    pol = world.policy('windows: ["Mon-Fri 08:00-17:00"]\nfreeze: ["2026-12-20..2027-01-05"]\n')
    assert verify_chain(complete(world), pol, C, now=NOW).passed
    sunday = verify_chain(complete(world), pol, C, now=datetime(2026, 11, 22, 12, 0, tzinfo=UTC))
    assert [link.name for link in sunday.failures] == ["change-window"]
    frozen = verify_chain(complete(world), pol, C, now=datetime(2026, 12, 22, 12, 0, tzinfo=UTC))
    assert "freeze" in frozen.link("change-window").reason


def test_malformed_and_empty_bundles(world: World) -> None:
    result = verify_chain([{"payloadType": "x"}, *complete(world)], world.policy(), C, now=NOW)
    assert [link.name for link in result.failures] == ["bundle"]
    assert "envelope 1" in result.link("bundle").reason
    empty = verify_chain([], world.policy(), C, now=NOW)
    assert {link.name for link in empty.failures} == {"bundle", "compose-provenance", "boot-test", "approvals"}
