"""Ed25519 keys by role: who may sign which statement.

Roles: compose (signs compose provenance), boot-test (signs boot-test results), approver (signs
approvals). "production" names the ostree repository's GPG key in the trust policy; it is not an
Ed25519 key and never signs statements.

Files: the private key is PKCS#8 PEM, unencrypted, mode 0600 (CI protects it: a GitLab File variable
or a Jenkins Secret file); the public key is SubjectPublicKeyInfo PEM. A key's id is the SHA-256 (hex)
of its public key in DER. A signing key's private bytes never appear in a message, a log or a repr.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeci.errors import KeyFileError

ROLES = ("compose", "boot-test", "approver")
PRODUCTION_ROLE = "production"  # the ostree GPG key id in the trust policy, not an Ed25519 key


def check_role(role: str) -> str:
    if role not in ROLES:
        hint = (" ('production' is the ostree GPG key, set under production: in trust.yaml)"
                if role == PRODUCTION_ROLE else "")
        raise KeyFileError(f"'{role}' is not a signing role{hint}", fix=f"use one of: {', '.join(ROLES)}")
    return role


def env_var(role: str) -> str:
    """EDGECI_COMPOSE_KEY, EDGECI_BOOT_TEST_KEY, EDGECI_APPROVER_KEY: the path of the role's private key."""
    return f"EDGECI_{check_role(role).upper().replace('-', '_')}_KEY"


def keyid_of(public: Ed25519PublicKey) -> str:
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


@dataclass(frozen=True)
class PublicKey:
    """A trusted public key: its role, id, an optional name, and where it came from (file:line)."""

    role: str
    key: Ed25519PublicKey = field(repr=False, compare=False)
    keyid: str = ""
    name: str = ""
    source: str = ""
    approver: str = ""  # approver keys: the one identity this key may approve as ("" = any)

    def __post_init__(self) -> None:
        if not self.keyid:
            object.__setattr__(self, "keyid", keyid_of(self.key))

    @property
    def label(self) -> str:
        """How messages name the key: 'name' (keyid prefix) or the keyid prefix alone."""
        return f"'{self.name}' ({self.keyid[:12]})" if self.name else self.keyid[:12]

    def pem(self) -> str:
        return public_pem(self.key)


def parse_public_key(pem: str | bytes, role: str, *, name: str = "", source: str = "",
                     approver: str = "") -> PublicKey:
    """A PublicKey from SubjectPublicKeyInfo PEM; KeyFileError when it is not an Ed25519 public key."""
    check_role(role)
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyFileError("not a PEM public key", where=source or None,
                           fix="give the .pub file 'edgeci keys init' wrote (-----BEGIN PUBLIC KEY-----)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"a {type(key).__name__.removesuffix('PublicKey') or 'non'} key, not Ed25519",
                           where=source or None, fix="create an Ed25519 key with 'edgeci keys init ROLE'")
    return PublicKey(role, key, name=name, source=source, approver=approver)


def load_public_key(path: str | os.PathLike[str], role: str, *, name: str = "", approver: str = "") -> PublicKey:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise KeyFileError("public key file not found", where=str(p),
                           fix=f"copy the {role} key's .pub file there (edgeci keys init {role} writes it)") from None
    except OSError as e:
        raise KeyFileError(f"cannot read public key: {e.strerror}", where=str(p)) from None
    return parse_public_key(data, role, name=name, source=str(p), approver=approver)


class SigningKey:
    """A role's private Ed25519 key. Its repr and every message show the role and keyid only."""

    __slots__ = ("_private", "public", "role", "source")

    def __init__(self, role: str, private: Ed25519PrivateKey, *, source: str = "", name: str = "") -> None:
        self.role = check_role(role)
        self._private = private
        self.source = source
        self.public = PublicKey(role, private.public_key(), name=name, source=source)

    @classmethod
    def generate(cls, role: str, *, name: str = "") -> SigningKey:
        return cls(role, Ed25519PrivateKey.generate(), name=name)

    @property
    def keyid(self) -> str:
        return self.public.keyid

    def __repr__(self) -> str:
        return f"SigningKey(role={self.role!r}, keyid={self.keyid[:12]!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # never pickled into a cache, a record or a subprocess by accident
        raise TypeError("a SigningKey cannot be pickled")

    def private_pem(self) -> bytes:
        """The PKCS#8 PEM bytes, for writing the key file; nothing else should call this."""
        return self._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())

    def signer(self) -> Any:
        """A securesystemslib CryptoSigner whose signatures carry this key's keyid."""
        from securesystemslib.signer import CryptoSigner, SSlibKey

        return CryptoSigner(self._private, SSlibKey.from_crypto(self.public.key, keyid=self.keyid))


def write_key_pair(key: SigningKey, directory: str | os.PathLike[str], *, force: bool = False) -> tuple[Path, Path]:
    """DIR/<role>.key (0600, created without ever being readable by others) and DIR/<role>.pub (0644).

    Refuses (KeyFileError) to replace either file unless `force`."""
    d = Path(directory)
    priv, pub = d / f"{key.role}.key", d / f"{key.role}.pub"
    if not force:
        for p in (priv, pub):
            if p.exists():
                raise KeyFileError(f"{p.name} already exists", where=str(p),
                                   fix="keep it, or pass --force to replace the key pair (re-publish the .pub)")
    d.mkdir(parents=True, exist_ok=True)
    from edgeci.record import atomic_write_text

    # The private key: a fresh temp file opened 0600, then renamed over the old one.
    tmp = d / f".{priv.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_pem())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, priv)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    atomic_write_text(pub, key.public.pem(), mode=0o644)
    return priv, pub


def load_signing_key(role: str, path: str | os.PathLike[str] | None = None, *,
                     env: Mapping[str, str] | None = None) -> SigningKey:
    """The role's private key from `path` (a config value), else from the file named by EDGECI_<ROLE>_KEY.

    KeyFileError (naming the file or the variable, never the key bytes) when neither is set, the file is
    unreadable, encrypted, or not an Ed25519 PKCS#8 private key."""
    var = env_var(role)
    env = os.environ if env is None else env
    chosen = os.fspath(path) if path else env.get(var, "")
    if not chosen:
        raise KeyFileError(f"no {role} signing key: {var} is not set",
                           fix=f"set {var} to the path of {role}.key (a GitLab File variable or a Jenkins "
                               f"Secret file; 'edgeci keys init {role}' creates one)")
    if "-----BEGIN" in chosen:  # the key itself pasted into the variable: say so, never echo it
        raise KeyFileError(f"{var} holds key material, not a path",
                           fix="make the CI variable a File variable (GitLab) or a Secret file (Jenkins)")
    p = Path(chosen)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{role} signing key file not found", where=str(p),
                           fix=f"check {var} (or the configured path); 'edgeci keys init {role}' creates one") from None
    except OSError as e:
        raise KeyFileError(f"cannot read the {role} signing key: {e.strerror}", where=str(p)) from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError("the signing key is encrypted", where=str(p),
                           fix="use an unencrypted PKCS#8 key; CI's protected variable is what guards it") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError("not a PEM private key", where=str(p),
                           fix=f"give the {role}.key file written by 'edgeci keys init {role}'") from None
    finally:
        del data
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError("not an Ed25519 private key", where=str(p),
                           fix=f"create one with 'edgeci keys init {role}'")
    return SigningKey(role, private, source=str(p))
