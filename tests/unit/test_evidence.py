"""edgeci.evidence: statements, DSSE signing and verification with real Ed25519 keys, key files, bundles."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from edgeci import errors as E
from edgeci.errors import EvidenceError, KeyFileError, VerificationError
from edgeci.evidence import dsse
from edgeci.evidence.bundle import Bundle, load_bundle, write_bundle
from edgeci.evidence.predicates import (
    APPROVAL,
    BOOT_TEST,
    SLSA_PROVENANCE,
    ApprovalDecision,
    BootTestResult,
    ComposeProvenance,
    ScenarioResult,
    parse_predicate,
)
from edgeci.evidence.rolekeys import (
    SigningKey,
    env_var,
    keyid_of,
    load_public_key,
    load_signing_key,
    parse_public_key,
    write_key_pair,
)
from edgeci.evidence.statement import PAYLOAD_TYPE, STATEMENT_TYPE, Statement, covers, subjects

C = "a" * 64
OTHER = "b" * 64
IMG = "sha256:" + "d" * 64
REF = "rhel/9/x86_64/edge"


def provenance(**kw: object) -> ComposeProvenance:
    base: dict[str, object] = dict(blueprint_path="blueprints/gateway.toml", blueprint_sha256="1" * 64,
                                   git_commit="f" * 40, ref=REF, version="1.2.0", composer_backend="weldr",
                                   compose_id="c0ffee", parent="c" * 64, checks_path="blueprints/gateway.checks.yaml",
                                   checks_sha256="2" * 64, change_authors=("alice@example.com", "Alice"),
                                   builder_id="https://gitlab.example.com/p/-/jobs/7")
    base.update(kw)
    return ComposeProvenance(**base)  # type: ignore[arg-type]


def test_pae_is_the_dsse_spec_encoding() -> None:
    # The DSSE protocol's own example.
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    # lengths are byte counts, not character counts
    assert dsse.pae("t", "é".encode()) == b"DSSEv1 1 t 2 " + "é".encode()
    # and byte for byte what securesystemslib's envelope (the signing side) signs
    from securesystemslib.dsse import Envelope

    for ptype, body in (("application/vnd.in-toto+json", b'{"a": 1}'), ("t", "é€".encode()), ("x", b"")):
        assert dsse.pae(ptype, body) == bytes(Envelope(body, ptype, {}).pae())


def test_sign_and_verify_round_trip() -> None:
    key = SigningKey.generate("compose", name="ci")
    st = provenance().statement(subjects(C, REF, IMG))
    env = dsse.sign(st, key)
    assert env["payloadType"] == PAYLOAD_TYPE
    assert env["signatures"][0]["keyid"] == key.keyid
    raw = json.loads(base64.b64decode(env["payload"]))
    assert raw["_type"] == STATEMENT_TYPE and raw["predicateType"] == SLSA_PROVENANCE
    assert raw["subject"] == [{"name": f"ostree-commit:{REF}", "digest": {"sha256": C}},
                              {"name": "oci-image:edge-container", "digest": {"sha256": "d" * 64}}]
    ext = raw["predicate"]["buildDefinition"]["externalParameters"]
    assert ext["change_authors"] == ["alice@example.com", "Alice"]
    assert raw["predicate"]["runDetails"]["builder"]["id"] == "https://gitlab.example.com/p/-/jobs/7"

    verified = dsse.verify_signed(json.loads(json.dumps(env)), [key.public], "compose")
    assert verified.statement == st
    assert verified.key.keyid == key.keyid
    assert parse_predicate(verified.statement) == provenance()


def test_predicates_round_trip_through_their_json() -> None:
    bt = BootTestResult("qemu", {"install": ScenarioResult("passed", {"sshd": "passed"}),
                                 "rollback": ScenarioResult("failed", {"greenboot": "failed"}, "no fallback")},
                        passed=False, checks_sha256="2" * 64, stage_url="http://stage/repo", time="t")
    ap = ApprovalDecision("bob", C, "2026-11-23T12:00:00Z", source="jenkins",
                          source_ref="https://jenkins/job/x/5/", comment="lgtm", groups=("ops",))
    for pred, ptype in ((bt, BOOT_TEST), (ap, APPROVAL), (provenance(parent="", checks_path=""), SLSA_PROVENANCE)):
        st = pred.statement(subjects(C, REF))
        assert st.predicate_type == ptype
        assert parse_predicate(Statement.from_dict(json.loads(st.to_bytes()))) == pred
    with pytest.raises(ValueError, match="source"):
        ApprovalDecision("bob", C, "", source="email")
    with pytest.raises(ValueError, match="passed"):
        BootTestResult.from_dict({"backend": "qemu", "scenarios": {}, "passed": "yes"})


def test_tampered_payload_is_a_bad_signature() -> None:
    key = SigningKey.generate("boot-test")
    bt = BootTestResult("qemu", {"install": ScenarioResult("failed")}, passed=False)
    env = dsse.sign(bt.statement(subjects(C, REF)), key)
    raw = json.loads(base64.b64decode(env["payload"]))
    raw["predicate"]["passed"] = True
    raw["predicate"]["scenarios"]["install"]["outcome"] = "passed"
    env["payload"] = base64.b64encode(json.dumps(raw).encode()).decode()
    with pytest.raises(VerificationError) as e:
        dsse.verify(env, [key.public], "boot-test")
    assert e.value.code == E.BAD_SIGNATURE
    assert "changed after signing" in str(e.value)
    assert e.value.exit_code == 1


def test_changed_payload_type_breaks_the_signature_too() -> None:
    key = SigningKey.generate("compose")
    env = dsse.sign(provenance().statement(subjects(C, REF)), key)
    env["payloadType"] = "application/json"
    with pytest.raises(VerificationError) as e:
        dsse.verify(env, [key.public], "compose")
    assert e.value.code == E.PAYLOAD_TYPE


def test_signature_by_another_roles_key_names_both_roles() -> None:
    compose, approver = SigningKey.generate("compose"), SigningKey.generate("approver", name="alice")
    env = dsse.sign(provenance().statement(subjects(C, REF)), approver)
    with pytest.raises(VerificationError) as e:
        dsse.verify(env, [compose.public, approver.public], "compose")
    assert e.value.code == E.WRONG_ROLE
    assert "approver key 'alice'" in str(e.value) and "not by a compose key" in str(e.value)


def test_unknown_key_is_refused() -> None:
    trusted, stranger = SigningKey.generate("compose"), SigningKey.generate("compose")
    env = dsse.sign(provenance().statement(subjects(C, REF)), stranger)
    with pytest.raises(VerificationError) as e:
        dsse.verify(env, [trusted.public], "compose")
    assert e.value.code == E.UNKNOWN_KEY
    assert stranger.keyid[:12] in str(e.value)


def test_a_forged_keyid_does_not_help() -> None:
    trusted, stranger = SigningKey.generate("compose"), SigningKey.generate("compose")
    env = dsse.sign(provenance().statement(subjects(C, REF)), stranger)
    env["signatures"][0]["keyid"] = trusted.keyid
    with pytest.raises(VerificationError) as e:
        dsse.verify(env, [trusted.public], "compose")
    assert e.value.code == E.BAD_SIGNATURE


@pytest.mark.parametrize("envelope, code", [
    ([], E.MALFORMED),
    ({"payload": "e30=", "signatures": []}, E.MALFORMED),
    ({"payloadType": PAYLOAD_TYPE, "payload": "%%%", "signatures": []}, E.MALFORMED),
    ({"payloadType": PAYLOAD_TYPE, "payload": "e30=", "signatures": {}}, E.MALFORMED),
    ({"payloadType": PAYLOAD_TYPE, "payload": "e30=", "signatures": [{"sig": "AA=="}]}, E.MALFORMED),
    ({"payloadType": PAYLOAD_TYPE, "payload": "e30=", "signatures": []}, E.UNSIGNED),
    ({"payloadType": "text/plain", "payload": "e30=", "signatures": []}, E.PAYLOAD_TYPE),
])
def test_malformed_envelopes(envelope: object, code: str) -> None:
    with pytest.raises(VerificationError) as e:
        dsse.verify(envelope, [SigningKey.generate("compose").public], "compose")
    assert e.value.code == code


def test_signed_payload_that_is_not_a_statement_is_malformed() -> None:
    key = SigningKey.generate("compose")
    env = dsse.sign(provenance().statement(subjects(C, REF)), key)
    bad = Statement.from_dict(json.loads(base64.b64decode(env["payload"])))
    assert bad.commits == [C]
    from securesystemslib.dsse import Envelope

    raw = Envelope(b'{"_type": "https://in-toto.io/Statement/v0.1"}', PAYLOAD_TYPE, {})
    raw.sign(key.signer())
    with pytest.raises(VerificationError) as e:
        dsse.verify(raw.to_dict(), [key.public], "compose")
    assert e.value.code == E.MALFORMED and "Statement/v1" in str(e.value)


def test_subjects_cover_the_checksum_and_image() -> None:
    st = provenance().statement(subjects(C, REF, IMG))
    assert covers(st, C) and covers(st, C.upper())
    assert covers(st, C, IMG)
    assert not covers(st, OTHER)
    assert not covers(st, C, "sha256:" + "e" * 64)
    only_commit = provenance().statement(subjects(C, REF))
    assert covers(only_commit, C, IMG)
    assert not covers(only_commit, C, IMG, require_image=True)
    with pytest.raises(ValueError, match="64 hex"):
        subjects("abc", REF)
    with pytest.raises(ValueError, match="sha256"):
        subjects(C, REF, "sha512:" + "d" * 64)


def test_key_files_modes_ids_and_loading(tmp_path: Path) -> None:
    key = SigningKey.generate("boot-test")
    priv, pub = write_key_pair(key, tmp_path / "keys")
    assert (priv.name, pub.name) == ("boot-test.key", "boot-test.pub")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert priv.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    loaded = load_signing_key("boot-test", env={env_var("boot-test"): str(priv)})
    assert env_var("boot-test") == "EDGECI_BOOT_TEST_KEY"
    assert loaded.keyid == key.keyid == keyid_of(load_public_key(pub, "boot-test").key)
    from cryptography.hazmat.primitives import serialization

    der = key.public.key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    import hashlib

    assert key.keyid == hashlib.sha256(der).hexdigest()
    # a config path wins over the environment
    other = SigningKey.generate("boot-test")
    opriv, _ = write_key_pair(other, tmp_path / "other")
    assert load_signing_key("boot-test", opriv, env={"EDGECI_BOOT_TEST_KEY": str(priv)}).keyid == other.keyid
    with pytest.raises(KeyFileError, match="already exists"):
        write_key_pair(SigningKey.generate("boot-test"), tmp_path / "keys")
    write_key_pair(other, tmp_path / "keys", force=True)
    assert load_public_key(pub, "boot-test").keyid == other.keyid
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600


def test_private_key_bytes_never_show(tmp_path: Path) -> None:
    key = SigningKey.generate("approver")
    priv, _ = write_key_pair(key, tmp_path)
    body = "".join(priv.read_text().splitlines()[1:-1])
    assert body not in repr(key) and body not in str(key)
    assert repr(key) == f"SigningKey(role='approver', keyid='{key.keyid[:12]}')"
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(key)
    # the key pasted into the variable instead of a path: refused without echoing it
    with pytest.raises(KeyFileError) as e:
        load_signing_key("approver", env={"EDGECI_APPROVER_KEY": priv.read_text()})
    assert body not in str(e.value) and "File variable" in str(e.value)
    # a file that is not a key: named, its content not shown
    junk = tmp_path / "junk.key"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nnot-base64-secret\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyFileError) as e:
        load_signing_key("approver", junk)
    assert "not-base64-secret" not in str(e.value) and str(junk) in str(e.value)


def test_signing_key_errors_name_the_variable_and_refuse_other_key_types(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="EDGECI_COMPOSE_KEY is not set"):
        load_signing_key("compose", env={})
    with pytest.raises(KeyFileError, match="not found"):
        load_signing_key("compose", env={"EDGECI_COMPOSE_KEY": str(tmp_path / "nope.key")})
    with pytest.raises(KeyFileError, match="production"):
        env_var("production")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ecpriv = ec.generate_private_key(ec.SECP256R1())
    p = tmp_path / "ec.key"
    p.write_bytes(ecpriv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    with pytest.raises(KeyFileError, match="not an Ed25519"):
        load_signing_key("compose", p)
    enc = tmp_path / "enc.key"
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    enc.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(KeyFileError, match="encrypted"):
        load_signing_key("compose", enc)
    ecpub = ecpriv.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(KeyFileError, match="not Ed25519"):
        parse_public_key(ecpub, "compose")


def test_bundle_write_and_load(tmp_path: Path) -> None:
    key = SigningKey.generate("compose")
    b = Bundle(C)
    b.add(dsse.sign(provenance().statement(subjects(C, REF)), key))
    path = write_bundle(tmp_path / "evidence" / "bundle.json", b)
    assert json.loads(path.read_text())["schema"] == 1
    loaded = load_bundle(path)
    assert loaded.checksum == C and loaded.envelopes == b.envelopes
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert dsse.verify(loaded.envelopes[0], [key.public], "compose").commits == [C]
    for text, message in (("{", "not valid JSON"), ('{"schema": 2, "checksum": "' + C + '", "envelopes": []}',
                                                    "schema 2"),
                          ('{"schema": 1, "checksum": "x", "envelopes": []}', "64 hex"),
                          ('{"schema": 1, "checksum": "' + C + '", "envelopes": {}}', "not a list")):
        path.write_text(text)
        with pytest.raises(EvidenceError, match=message):
            load_bundle(path)
    with pytest.raises(EvidenceError, match="no evidence bundle"):
        load_bundle(tmp_path / "missing.json")
    assert os.path.exists(path)
