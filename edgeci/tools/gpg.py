"""Thin wrappers over gpg/gpgconf for the production signing key (one function per operation).

Every call passes --homedir explicitly (the configured prod.gpg_homedir, or a throwaway GNUPGHOME in
tests) and --batch, so nothing ever prompts.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgeci.errors import ConfigError
from edgeci.tools.run import run

PathLike = str | os.PathLike[str]


def _base(homedir: PathLike | None) -> list[str]:
    argv = ["gpg", "--batch", "--no-tty"]
    if homedir:
        argv.append(f"--homedir={os.fspath(homedir)}")
    return argv


def fingerprint(key: str, homedir: PathLike | None = None, *, secret: bool = True) -> str:
    """The fingerprint of `key` (an ID, fingerprint or e-mail); ConfigError when the keyring lacks it."""
    listing = "--list-secret-keys" if secret else "--list-keys"
    r = run([*_base(homedir), "--with-colons", listing, key], check=False, timeout=60)
    for line in r.stdout.splitlines():
        if line.startswith("fpr:"):
            return line.split(":")[9].upper()
    kind = "secret key" if secret else "key"
    raise ConfigError(
        f"no {kind} '{key}' in the GnuPG keyring {os.fspath(homedir) if homedir else '(default GNUPGHOME)'}",
        where="prod.gpg_key",
        fix="import the key there (gpg --import) or fix prod.gpg_key / prod.gpg_homedir",
    )


def generate_key(homedir: PathLike, name: str, email: str) -> str:
    """Create an unprotected ed25519 signing key in `homedir` (created 0700); returns its fingerprint."""
    home = Path(homedir)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    params = (
        "%no-protection\nKey-Type: EdDSA\nKey-Curve: ed25519\nKey-Usage: sign\n"
        f"Name-Real: {name}\nName-Email: {email}\nExpire-Date: 0\n%commit\n"
    )
    run([*_base(home), "--gen-key"], input=params, timeout=120)
    return fingerprint(email, home)


def export_public(homedir: PathLike, key: str) -> str:
    """The ASCII-armoured public key (what clients import with `ostree remote gpg-import`)."""
    return run([*_base(homedir), "--armor", "--export", key], timeout=60).stdout


def kill_agent(homedir: PathLike) -> None:
    """Stop the gpg-agent that signing started for `homedir` (tests and throwaway homes)."""
    run(["gpgconf", f"--homedir={os.fspath(homedir)}", "--kill", "all"], check=False, timeout=30)
