"""DSSE envelopes: sign a Statement with a role's key, verify one against the trusted keys.

Envelope JSON: {"payloadType": "application/vnd.in-toto+json", "payload": <base64 Statement>,
"signatures": [{"keyid": <hex>, "sig": <base64>}]}. The signature is over PAE(payloadType, payload),
"DSSEv1 <len(type)> <type> <len(body)> <body>" (lengths in ASCII decimal bytes). securesystemslib's
dsse.Envelope and CryptoSigner sign; verification is done here with cryptography's Ed25519, one signature at a
time, so a failure says exactly what is wrong (malformed, wrong payload type, unknown key, a key of another
role, a signature that does not match: tampered) and the production host never imports the signer stack.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edgeci import errors as E
from edgeci.evidence.rolekeys import PublicKey, SigningKey, check_role, env_var
from edgeci.evidence.statement import PAYLOAD_TYPE, Statement


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body.

    Written out here (it is an encoding, not cryptography) so that verifying on the production host does not
    import securesystemslib's signer stack; a test checks it byte for byte against securesystemslib's."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def sign(statement: Statement, key: SigningKey) -> dict[str, Any]:
    """The DSSE envelope (a JSON-ready dict) of `statement`, signed by `key`."""
    from securesystemslib.dsse import Envelope

    env = Envelope(statement.to_bytes(), PAYLOAD_TYPE, {})
    env.sign(key.signer())
    out: dict[str, Any] = env.to_dict()
    return out


@dataclass(frozen=True)
class Verified:
    """A statement whose envelope verified, and the trusted key that signed it."""

    statement: Statement
    key: PublicKey


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise E.VerificationError(f"the envelope's {what} is not a base64 string", code=E.MALFORMED)
    try:  # standard or (as DSSE allows) URL-safe base64, padded or not
        std = value.replace("-", "+").replace("_", "/")
        return base64.b64decode(std + "=" * (-len(std) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise E.VerificationError(f"the envelope's {what} is not valid base64", code=E.MALFORMED) from None


def _parse(envelope: Any) -> tuple[str, bytes, list[tuple[str, bytes]]]:
    if not isinstance(envelope, Mapping):
        raise E.VerificationError("not a DSSE envelope (not a JSON object)", code=E.MALFORMED)
    missing = [k for k in ("payloadType", "payload", "signatures") if k not in envelope]
    if missing:
        raise E.VerificationError(f"not a DSSE envelope (no {', '.join(missing)})", code=E.MALFORMED)
    payload_type = envelope["payloadType"]
    if not isinstance(payload_type, str):
        raise E.VerificationError("the envelope's payloadType is not a string", code=E.MALFORMED)
    payload = _b64(envelope["payload"], "payload")
    raw = envelope["signatures"]
    if not isinstance(raw, list):
        raise E.VerificationError("the envelope's signatures is not a list", code=E.MALFORMED)
    sigs = []
    for i, s in enumerate(raw):
        if not isinstance(s, Mapping) or not isinstance(s.get("keyid"), str):
            raise E.VerificationError(f"signature {i} has no keyid", code=E.MALFORMED)
        sigs.append((s["keyid"], _b64(s.get("sig"), f"signature {i}")))
    return payload_type, payload, sigs


def peek(envelope: Any) -> Statement:
    """The statement inside an envelope WITHOUT verifying it (to choose which role must have signed it).

    VerificationError (malformed / payload-type) when it is not an in-toto statement in DSSE."""
    payload_type, payload, _ = _parse(envelope)
    if payload_type != PAYLOAD_TYPE:
        raise E.VerificationError(f"payloadType is '{payload_type}', not {PAYLOAD_TYPE}", code=E.PAYLOAD_TYPE)
    try:
        return Statement.from_dict(json.loads(payload))
    except (ValueError, UnicodeDecodeError) as e:
        raise E.VerificationError(f"the payload is not an in-toto Statement v1 ({e})", code=E.MALFORMED) from None


def verify_signed(envelope: Any, keys: Iterable[PublicKey], role: str) -> Verified:
    """Verify `envelope` against the trusted `keys` (all roles: a key of another role is named as such).

    Passes when a signature by a trusted key of `role` matches the PAE of the payload; otherwise
    VerificationError with a code: malformed, payload-type, unsigned, unknown-key, wrong-role,
    bad-signature (a signature by a trusted key of the right role that does not match: tampered)."""
    from cryptography.exceptions import InvalidSignature

    check_role(role)
    payload_type, payload, sigs = _parse(envelope)
    if payload_type != PAYLOAD_TYPE:
        raise E.VerificationError(f"payloadType is '{payload_type}', not {PAYLOAD_TYPE}", code=E.PAYLOAD_TYPE,
                                  fix="edgeci signs in-toto statements only")
    if not sigs:
        raise E.VerificationError("the envelope has no signature", code=E.UNSIGNED,
                                  fix=f"sign it with the {role} key")
    trusted: dict[str, list[PublicKey]] = {}
    for k in keys:
        trusted.setdefault(k.keyid, []).append(k)
    message = pae(payload_type, payload)
    problems: list[E.VerificationError] = []
    for keyid, sig in sigs:
        known = trusted.get(keyid, [])
        mine = [k for k in known if k.role == role]
        if not known:
            problems.append(E.VerificationError(
                f"signed by key {keyid[:12]}, which the trust policy does not list", code=E.UNKNOWN_KEY,
                fix=f"add that key's .pub under keys.{role} in the production host's trust policy, "
                    "if it is really yours"))
            continue
        if not mine:
            other = known[0]
            problems.append(E.VerificationError(
                f"signed by the {other.role} key {other.label}, not by a {role} key", code=E.WRONG_ROLE,
                fix=f"sign {role} statements with the {role} key ({env_var(role)})"))
            continue
        for k in mine:
            try:
                k.key.verify(sig, message)  # cryptography's Ed25519 verification
            except InvalidSignature:
                continue
            try:
                statement = Statement.from_dict(json.loads(payload))
            except (ValueError, UnicodeDecodeError) as e:
                raise E.VerificationError(f"the signed payload is not an in-toto Statement v1 ({e})",
                                          code=E.MALFORMED) from None
            return Verified(statement, k)
        problems.append(E.VerificationError(
            f"the signature by the {role} key {mine[0].label} does not match the payload: "
            "the statement was changed after signing", code=E.BAD_SIGNATURE,
            fix="discard this evidence and re-run the stage that signs it"))
    rank = {E.BAD_SIGNATURE: 0, E.WRONG_ROLE: 1, E.UNKNOWN_KEY: 2}
    raise min(problems, key=lambda p: rank.get(p.code, 3))


def verify(envelope: Any, keys: Iterable[PublicKey], role: str) -> Statement:
    """The verified Statement (see verify_signed for the errors)."""
    return verify_signed(envelope, keys, role).statement
