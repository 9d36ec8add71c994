"""The image signing key of a CI push job: EDGECI_IMAGE_SIGNING_KEY, bound to the push job only.

The key that signs images is a security setting of edgeci.yaml (`image_mode.gpg_key`, a fingerprint, or
`image_mode.sigstore_key`); the environment never chooses another one. What CI adds is the key material: a
GitLab File variable scoped to the `edgeci/image-signing` environment (only the image push jobs deploy to it)
or a Jenkins Secret file bound inside the Push stage holds the path of

- gpg: the exported secret key (`gpg --export-secret-keys --armor FPR`). It is imported into a private
  throwaway GnuPG home for the push and removed afterwards; its fingerprint must be image_mode.gpg_key, else
  the push is refused (exit 2) before anything is signed;
- sigstore: the cosign-format private key file (its passphrase file, if any, stays image_mode's).

Without the variable the configured keyring (image_mode.gpg_homedir) or key file is used, as on a build host
that keeps its own keys.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from edgeci.errors import ConfigError, KeyFileError
from edgeci.imagemode.sign import GpgSigner, Signer, SigstoreSigner
from edgeci.tools import gpg
from edgeci.tools.run import run

ENV = "EDGECI_IMAGE_SIGNING_KEY"


def _key_file(value: str) -> Path:
    if "-----BEGIN" in value:  # the key pasted into the variable: say so, never echo it
        raise KeyFileError(f"{ENV} holds a key, not the path of one",
                           where=ENV, fix="make it a File variable (GitLab) or a Secret file (Jenkins)")
    path = Path(value)
    if not path.is_file():
        raise KeyFileError(f"{ENV} names no readable file", where=value,
                           fix=f"set {ENV} to the path of the exported image signing key")
    return path


def _secret_fingerprints(home: Path) -> list[str]:
    r = run(["gpg", "--batch", "--no-tty", f"--homedir={home}", "--with-colons", "--list-secret-keys"],
            check=False, timeout=60)
    return [line.split(":")[9].upper() for line in r.stdout.splitlines() if line.startswith("fpr:")]


@contextlib.contextmanager
def push_signer(configured: Signer | None, env: Mapping[str, str] | None = None) -> Iterator[Signer | None]:
    """The signer a push uses: `configured` (from edgeci.yaml) with the key material of EDGECI_IMAGE_SIGNING_KEY
    when it is set. A GnuPG home made here is removed (and its agent stopped) when the push is over."""
    env = os.environ if env is None else env
    value = env.get(ENV, "")
    if configured is None or not value:
        yield configured
        return
    key = _key_file(value)
    if isinstance(configured, SigstoreSigner):
        yield SigstoreSigner(key, configured.passphrase_file)
        return
    home = Path(tempfile.mkdtemp(prefix="edgeci-image-gnupg-"))
    try:
        home.chmod(0o700)
        imported = run(["gpg", "--batch", "--no-tty", f"--homedir={home}", "--import", os.fspath(key)],
                       check=False, timeout=120)
        found = _secret_fingerprints(home)
        if imported.returncode != 0 and not found:
            raise KeyFileError(f"{ENV} is not a GnuPG secret key gpg can import", where=ENV,
                               fix="export it with gpg --export-secret-keys --armor FINGERPRINT")
        wanted = configured.fingerprint.upper().replace(" ", "")
        try:
            resolved = gpg.fingerprint(wanted, home)
        except ConfigError:
            resolved = ""
        if not resolved or resolved not in found:
            raise ConfigError(f"the key in {ENV} ({', '.join(found) or 'no secret key'}) is not the image signing "
                              f"key image_mode.gpg_key ({wanted})", where=ENV,
                              fix="bind the secret half of image_mode.gpg_key to the push job (the setting itself "
                                  "changes only in edgeci.yaml)")
        yield GpgSigner(resolved, home)
    finally:
        gpg.kill_agent(home)
        shutil.rmtree(home, ignore_errors=True)
