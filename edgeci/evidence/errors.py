"""Errors of the evidence layer.

EvidenceError (exit 2): a key, envelope or bundle file cannot be read or is not what it must be.
VerificationError (exit 1): the candidate's evidence does not hold up: production refuses it. `code`
names the kind of failure so callers and tests can tell them apart without parsing text.
"""

from __future__ import annotations

from edgeci.errors import EXIT_FAILED, EdgeCIError

# VerificationError.code values
MALFORMED = "malformed"  # not a DSSE envelope, or its payload is not an in-toto Statement v1
PAYLOAD_TYPE = "payload-type"  # the envelope's payloadType is not application/vnd.in-toto+json
UNKNOWN_KEY = "unknown-key"  # signed by a key the trust policy does not list
WRONG_ROLE = "wrong-role"  # signed by a trusted key of another role
BAD_SIGNATURE = "bad-signature"  # the signature does not match the payload: tampered
UNSIGNED = "unsigned"  # the envelope carries no signature


class EvidenceError(EdgeCIError):
    """A key, envelope or evidence bundle file is unreadable or malformed (usage/infrastructure, exit 2)."""


class KeyFileError(EvidenceError):
    """A signing or public key file is missing, unreadable, or not an Ed25519 key of the expected kind."""


class VerificationError(EdgeCIError):
    """Signed evidence did not verify: the candidate failed (exit 1)."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, code: str, where: str | None = None, fix: str | None = None) -> None:
        self.code = code
        super().__init__(message, where=where, fix=fix)
