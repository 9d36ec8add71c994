"""Promotion that cannot be talked into it: production moves only on signed evidence it verifies itself.

Each attack ends with exit 1 (2 for configuration), production unchanged — ref, summary and releases log
byte-identical — and one clear line naming the broken link. Real Ed25519 keys, real ostree, real GnuPG.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from edgeci.evidence import SigningKey, sign
from edgeci.evidence.dsse import peek
from edgeci.record import BuildRecord
from edgeci.tools import ostree
from tests.fixtures.evidence import make_trust
from tests.fixtures.promote import PROMOTE_BP, PROMOTE_REF, PromoteLab


class Production:
    """A snapshot of what production serves: ref, summary and releases log bytes."""

    def __init__(self, lab: PromoteLab) -> None:
        self.lab = lab
        self.state = self.read()

    def read(self) -> tuple[str | None, bytes, bytes]:
        repo = self.lab.prod_repo
        summary = (repo / "summary").read_bytes() if (repo / "summary").exists() else b""
        log = (repo / "releases.json").read_bytes() if (repo / "releases.json").exists() else b""
        return self.lab.prod_commit(), summary, log

    def unchanged(self) -> bool:
        return self.read() == self.state


def refused(lab: PromoteLab, capsys: pytest.CaptureFixture[str], *args: str, code: int = 1,
            env: dict[str, str] | None = None) -> str:
    """Promote, expect `code`, production unchanged; the error line."""
    before = Production(lab)
    capsys.readouterr()
    assert lab.cli("promote", PROMOTE_BP, *args, env=env) == code
    err = capsys.readouterr().err
    assert before.unchanged(), "production changed although promote refused"
    errors = [line for line in err.splitlines() if line.startswith("edgeci: error:")]
    assert len(errors) == 1, err
    return errors[0]


def bundle_of(lab: PromoteLab) -> Path:
    return lab.record_path.parent / "evidence.json"


def envelopes(lab: PromoteLab) -> list[dict]:
    return list(json.loads(bundle_of(lab).read_text())["envelopes"])


def write_envelopes(lab: PromoteLab, envs: list[dict]) -> None:
    data = json.loads(bundle_of(lab).read_text())
    data["envelopes"] = envs
    bundle_of(lab).write_text(json.dumps(data))


def kind(env: dict) -> str:
    return peek(env).predicate_type.rsplit("/", 2)[-2]


@pytest.fixture
def released(promote_lab: PromoteLab) -> PromoteLab:
    """Production at 1.0.0 (promoted on evidence), and a 1.1.0 candidate built, boot-tested and approved."""
    lab = promote_lab
    lab.candidate("1.0.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    lab.candidate("1.1.0")
    return lab


def test_the_honest_candidate_promotes_and_its_evidence_is_published(released: PromoteLab) -> None:
    lab = released
    assert lab.cli("promote", PROMOTE_BP) == 0
    checksum = lab.prod_commit()
    assert checksum is not None
    published = lab.prod_repo / "edgeci-evidence" / f"{checksum}.json"
    assert json.loads(published.read_text())["checksum"] == checksum
    assert lab.cli("verify", checksum, "--repo", str(lab.prod_repo), "--policy", str(lab.trust.policy)) == 0


def test_a_record_forged_in_every_section_changes_nothing(released: PromoteLab,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The boot test failed (signed); mallory rewrites the record: boot test passed, gate approved by mallory."""
    lab = released
    rec = BuildRecord.load(lab.record_path)
    lab.write_record(rec.checksum, "1.1.0", boot="failed")  # the boot test as it really ran, signed
    rec = BuildRecord.load(lab.record_path)
    data = json.loads(lab.record_path.read_text())
    for s in data["sections"]["boot_test"]["scenarios"].values():
        s["outcome"] = "passed"
    data["sections"]["boot_test"]["status"] = "passed"
    data["sections"]["gate"] = {"decision": "approved", "checksum": rec.checksum, "status": "passed",
                                "approvals": [{"user": "mallory", "checksum": rec.checksum}], "rules": []}
    lab.record_path.write_text(json.dumps(data))
    line = refused(lab, capsys)
    assert "boot-test" in line and "failed" in line
    assert "mallory" not in json.dumps(lab.releases())


def test_a_statement_of_another_checksum_replayed_is_refused(released: PromoteLab,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    lab = released
    old = lab.prod_repo / "edgeci-evidence" / f"{lab.prod_commit()}.json"
    replayed = [e for e in json.loads(old.read_text())["envelopes"] if kind(e) == "boot-test"]
    write_envelopes(lab, [e for e in envelopes(lab) if kind(e) != "boot-test"] + replayed)
    line = refused(lab, capsys)
    assert "boot-test" in line


def test_a_statement_signed_with_the_wrong_roles_key_is_refused(released: PromoteLab,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    lab = released
    envs = envelopes(lab)
    boot = next(e for e in envs if kind(e) == "boot-test")
    forged = sign(peek(boot), lab.trust.keys["compose"])  # the compose job's key signing a boot-test result
    write_envelopes(lab, [e for e in envs if e is not boot] + [forged])
    line = refused(lab, capsys)
    assert "boot-test" in line and "not by a boot-test key" in line


def test_a_statement_signed_by_an_unknown_key_is_refused(released: PromoteLab,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    lab = released
    envs = envelopes(lab)
    prov = next(e for e in envs if kind(e) == "provenance")
    forged = sign(peek(prov), SigningKey.generate("compose", name="mallory"))
    write_envelopes(lab, [e for e in envs if e is not prov] + [forged])
    line = refused(lab, capsys)
    assert "compose-provenance" in line and "does not list" in line


def test_a_tampered_envelope_is_refused(released: PromoteLab, capsys: pytest.CaptureFixture[str]) -> None:
    lab = released
    envs = envelopes(lab)
    boot = next(e for e in envs if kind(e) == "boot-test")
    stmt = json.loads(base64.b64decode(boot["payload"]))
    stmt["predicate"]["backend"] = "libvirt"
    boot["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    write_envelopes(lab, envs)
    line = refused(lab, capsys)
    assert "changed after signing" in line


def test_a_missing_boot_test_statement_is_refused(released: PromoteLab, capsys: pytest.CaptureFixture[str]) -> None:
    lab = released
    write_envelopes(lab, [e for e in envelopes(lab) if kind(e) != "boot-test"])
    line = refused(lab, capsys)
    assert "no boot-test statement" in line


def test_a_missing_bundle_is_refused(released: PromoteLab, capsys: pytest.CaptureFixture[str]) -> None:
    lab = released
    bundle_of(lab).unlink()
    assert "no evidence bundle" in refused(lab, capsys)


def test_a_boot_test_only_on_a_backend_the_policy_does_not_accept_is_refused(
        released: PromoteLab, capsys: pytest.CaptureFixture[str]) -> None:
    lab = released
    lab.trust.write_policy(backends=("libvirt",), gpg_key=lab.keys.key, gpg_homedir=str(lab.keys.home))
    line = refused(lab, capsys)
    assert "ran on qemu" in line and "does not accept" in line


def test_approvals_by_a_key_the_policy_does_not_list_do_not_count(released: PromoteLab,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    lab = released
    strangers = make_trust(lab.root / "strangers")
    envs = [e for e in envelopes(lab) if kind(e) != "approval"]
    write_envelopes(lab, envs)
    assert lab.approve("bob", env=strangers.env) == 0  # signed, but by an approver key production never trusted
    line = refused(lab, capsys)
    assert "approvals" in line and "0 of 1" in line


def test_fewer_approvals_than_the_policy_requires_are_refused(released: PromoteLab,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    lab = released
    lab.trust.write_policy(approvals_required=2, gpg_key=lab.keys.key, gpg_homedir=str(lab.keys.home))
    line = refused(lab, capsys)
    assert "1 of 2" in line


@pytest.mark.parametrize("how", ["environment", "--set", "edgeci.yaml"])
def test_the_trust_policy_cannot_be_weakened_by_the_project(released: PromoteLab, how: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The trust policy asks two approvals; the project says zero, whichever way it says it."""
    lab = released
    lab.trust.write_policy(approvals_required=2, gpg_key=lab.keys.key, gpg_homedir=str(lab.keys.home))
    args: list[str] = []
    env = None
    if how == "environment":
        env = {"EDGECI_GATE_APPROVALS_REQUIRED": "0"}
    elif how == "--set":
        args = ["--set", "gate.approvals_required=0"]
    else:
        lab.gate["approvals_required"] = 0
        lab.write_config()
    before = Production(lab)
    capsys.readouterr()
    code = lab.cli("promote", PROMOTE_BP, *args, env=env)
    assert code in (1, 2)  # refused as a lowered setting (2) or by the evidence (1): never promoted
    assert before.unchanged()
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if line.startswith("edgeci: error:")]) == 1


def test_an_emptied_production_signing_key_does_not_publish_unsigned(released: PromoteLab,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The trust policy names production's GPG key: the environment emptying the project's key either is refused
    as a lowered setting (production unchanged) or changes nothing (the policy's key signs) — never unsigned."""
    lab = released
    before = Production(lab)
    code = lab.cli("promote", PROMOTE_BP, env={"EDGECI_PROD_GPG_KEY": ""})
    if code != 0:
        assert code == 2 and before.unchanged()
        return
    commit = lab.prod_commit()
    assert commit is not None and commit != before.state[0]
    shown = ostree.cli(lab.prod_repo, "show", "--gpg-homedir", str(lab.keys.home), commit).stdout
    assert "Good signature" in shown
    assert (lab.prod_repo / "summary.sig").is_file()


def test_a_signed_production_is_refused_an_unsigned_release(released: PromoteLab,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    lab = released
    lab.trust.write_policy(signed=True)  # signing required, but the policy names no key
    lab.prod.update(gpg_key="", gpg_homedir="")
    lab.write_config()
    line = refused(lab, capsys, code=2)
    assert "signed" in line


def test_verify_names_the_link_of_an_edited_published_bundle(released: PromoteLab,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    lab = released
    assert lab.cli("promote", PROMOTE_BP) == 0
    checksum = lab.prod_commit()
    assert checksum is not None
    published = lab.prod_repo / "edgeci-evidence" / f"{checksum}.json"
    data = json.loads(published.read_text())
    for env in data["envelopes"]:
        if kind(env) == "approval":
            stmt = json.loads(base64.b64decode(env["payload"]))
            stmt["predicate"]["approver"] = "mallory"
            env["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    published.write_text(json.dumps(data))
    capsys.readouterr()
    assert lab.cli("verify", checksum, "--repo", str(lab.prod_repo), "--policy", str(lab.trust.policy)) == 1
    err = capsys.readouterr().err
    assert "approvals" in err and "changed after signing" in err
    shutil.rmtree(lab.prod_repo / "edgeci-evidence")
    assert lab.cli("verify", PROMOTE_REF, "--repo", str(lab.prod_repo), "--policy", str(lab.trust.policy)) == 1
    assert "publishes no evidence" in capsys.readouterr().err
