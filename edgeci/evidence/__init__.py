"""Signed evidence: in-toto Statement v1 in DSSE envelopes, signed with Ed25519 keys by role.

compose signs SLSA provenance, boot-test signs its result, approvers sign approvals; the production host
verifies the whole chain against its own trust policy (edgeci.trust) before production moves.

    statement.py   Statement, Subject, subjects(), covers()
    predicates.py  ComposeProvenance (SLSA v1), BootTestResult, ApprovalDecision
    keys.py        SigningKey, PublicKey, load_signing_key(), write_key_pair(), roles
    dsse.py        sign(), verify(), pae()
    bundle.py      Bundle, write_bundle(), load_bundle()
    chain.py       verify_chain() → ChainResult
"""

from edgeci.errors import EvidenceError, KeyFileError, VerificationError
from edgeci.evidence.bundle import Bundle, load_bundle, write_bundle
from edgeci.evidence.chain import ChainResult, ExternalApproval, LinkResult, verify_chain
from edgeci.evidence.dsse import Verified, pae, sign, verify, verify_signed
from edgeci.evidence.predicates import ApprovalDecision, BootTestResult, ComposeProvenance, ScenarioResult
from edgeci.evidence.rolekeys import (
    ROLES,
    PublicKey,
    SigningKey,
    env_var,
    keyid_of,
    load_public_key,
    load_signing_key,
    parse_public_key,
    write_key_pair,
)
from edgeci.evidence.statement import Statement, Subject, covers, subjects

__all__ = [
    "ROLES",
    "ApprovalDecision",
    "BootTestResult",
    "Bundle",
    "ChainResult",
    "ComposeProvenance",
    "EvidenceError",
    "ExternalApproval",
    "KeyFileError",
    "LinkResult",
    "PublicKey",
    "ScenarioResult",
    "SigningKey",
    "Statement",
    "Subject",
    "VerificationError",
    "Verified",
    "covers",
    "env_var",
    "keyid_of",
    "load_bundle",
    "load_public_key",
    "load_signing_key",
    "pae",
    "parse_public_key",
    "sign",
    "subjects",
    "verify",
    "verify_chain",
    "verify_signed",
    "write_bundle",
    "write_key_pair",
]
