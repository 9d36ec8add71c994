"""Error types: one base class, one subclass per layer.

Domain code raises these; only edgeci.cli turns them into exit codes (docs/architecture.md: 1 = the candidate
failed, 2 = usage, configuration or infrastructure). A message is one line: what, where, the fix.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ERROR = 2


class EdgeCIError(Exception):
    """Base class. `exit_code` is 2 (usage/config/infrastructure) unless a subclass says otherwise."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.message = message
        self.where = where
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        parts = []
        if self.where:
            parts.append(f"{self.where}: ")
        parts.append(self.message.rstrip("."))
        if self.fix:
            fix = self.fix.rstrip(".")
            parts.append(f". {fix[:1].upper()}{fix[1:]}")
        text = "".join(parts)
        return text if text.endswith(("?", "!")) else text + "."


class ConfigError(EdgeCIError):
    """edgeci.yaml, environment or command-line values are wrong."""


class BlueprintError(EdgeCIError):
    """A blueprint or checks file cannot be read or parsed (lint findings are results, not errors)."""


class RecordError(EdgeCIError):
    """The build record is missing, unreadable, or lacks an earlier stage's section."""


class ComposerError(EdgeCIError):
    """Image Builder (or the local composer) could not be reached or refused a request."""


class ComposeFailed(ComposerError):
    """A compose ended FAILED: the candidate failed, exit 1."""

    exit_code = EXIT_FAILED


class ToolError(EdgeCIError):
    """An external program is missing, timed out or exited non-zero."""

    def __init__(
        self,
        message: str,
        *,
        argv: list[str] | None = None,
        returncode: int | None = None,
        stderr: str = "",
        where: str | None = None,
        fix: str | None = None,
        timed_out: bool = False,
    ) -> None:
        self.argv = argv or []
        self.returncode = returncode
        self.stderr = stderr
        self.timed_out = timed_out
        super().__init__(message, where=where, fix=fix)


class RegistryError(EdgeCIError):
    """The container registry refused or could not be reached."""


class StageError(EdgeCIError):
    """The stage repository could not be served, extracted or verified."""


class StageMismatch(StageError):
    """The stage serves a different commit than the record expects: the candidate failed."""

    exit_code = EXIT_FAILED


class BootTestError(EdgeCIError):
    """The boot test could not run (infrastructure); failing checks are results, not errors."""


class GateError(EdgeCIError):
    """The gate could not evaluate (approval source unreachable, bad policy)."""


class PromotionError(EdgeCIError):
    """Promotion to production refused or failed; production is unchanged."""


class PromotionRefused(PromotionError):
    """Promotion refused for a candidate reason (not approved, changed since boot test)."""

    exit_code = EXIT_FAILED


# -- signed evidence -----------------------------------------------------------------------------
# EvidenceError (exit 2): a key, envelope or bundle file cannot be read or is not what it must be.
# VerificationError (exit 1): the candidate's evidence does not hold up, so production refuses it; `code` names
# the kind of failure so callers and tests tell them apart without parsing text.

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
